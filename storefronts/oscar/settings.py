"""Django settings of the Oscar shop: django-oscar as its documentation sets it up, plus our buyer tags.

Read from the environment by `storefronts.oscar.run` before Django starts:
SIMPERSONA_OSCAR_DB (the SQLite file: Oscar's own tables are the store's truth about orders) and
SIMPERSONA_OSCAR_VARIANT (one of storefronts.oscar.VARIANTS; storefronts/oscar/shipping/repository.py).
"""

import os
from pathlib import Path

from oscar import INSTALLED_APPS as OSCAR_APPS  # Django's and Oscar's apps, as Oscar lists them
from oscar.defaults import *  # noqa: F403 (Oscar's documented way: its defaults, then ours)

HERE = Path(__file__).resolve().parent
DB_PATH = os.environ.get("SIMPERSONA_OSCAR_DB", str(HERE / "oscar.sqlite"))
SIMPERSONA_OSCAR_VARIANT = os.environ.get("SIMPERSONA_OSCAR_VARIANT", "default")

SECRET_KEY = "simpersona-local-oscar-store"  # a store on 127.0.0.1 for simulated buyers only
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
ROOT_URLCONF = "storefronts.oscar.urls"
SITE_ID = 1
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-gb"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
STATIC_URL = "/static/"
MEDIA_ROOT = str(Path(DB_PATH).with_suffix("")) + "-media"
MEDIA_URL = "/media/"

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DB_PATH,
                         "OPTIONS": {"timeout": 30}}}

# Oscar's shipping app forked (storefronts/oscar/shipping) to offer a choice of delivery by variant;
# its models and migrations stay Oscar's, so every variant shares one migrated database.
INSTALLED_APPS = [("storefronts.oscar.shipping.apps.ShippingConfig" if app == "oscar.apps.shipping.apps.ShippingConfig" else app)
                  for app in OSCAR_APPS] + ["sorl.thumbnail", "storefronts.oscar.apps.BuyerTagConfig"]
MIGRATION_MODULES = {"shipping": "oscar.apps.shipping.migrations"}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "oscar.apps.basket.middleware.BasketMiddleware",
    "django.contrib.flatpages.middleware.FlatpageFallbackMiddleware",
]

TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [str(HERE / "templates")],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.debug",
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.template.context_processors.i18n",
        "django.contrib.messages.context_processors.messages",
        "oscar.apps.search.context_processors.search_form",
        "oscar.apps.checkout.context_processors.checkout",
        "oscar.apps.communication.notifications.context_processors.notifications",
        "oscar.core.context_processors.metadata",
    ]},
}]

AUTHENTICATION_BACKENDS = ["oscar.apps.customer.auth_backends.EmailBackend",
                           "django.contrib.auth.backends.ModelBackend"]
# Oscar browses its catalogue through a search index; Whoosh is the pure-Python one (no server).
HAYSTACK_CONNECTIONS = {"default": {"ENGINE": "haystack.backends.whoosh_backend.WhooshEngine",
                                    "PATH": str(Path(DB_PATH).with_suffix("")) + "-whoosh"}}
EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
THUMBNAIL_DEBUG = False
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "handlers": {"console": {"class": "logging.StreamHandler"}},
           "root": {"handlers": ["console"], "level": "WARNING"}}

# Guests check out without an account (an email address is all Oscar asks for).
OSCAR_ALLOW_ANON_CHECKOUT = True
OSCAR_SHOP_NAME = "Oscar Shop"
OSCAR_DEFAULT_CURRENCY = "EUR"
