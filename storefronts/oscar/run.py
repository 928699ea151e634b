"""The Oscar store process: `python -m storefronts.oscar.run --catalog C --shop S --db D [--port P]`.

Django's settings are global to a process, so each Oscar store runs in a process of its own
(storefronts.oscar.serve_oscar starts and stops it). It migrates the database when new (copying
a migrated empty database from the cache when one exists: Oscar's ~300 migrations take a while),
loads the shop's catalog when the database has no products, serves Oscar under uvicorn with its
static files, prints one JSON line {"url": …} when it accepts connections, and serves until its
standard input closes or it gets SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

TEMPLATE_DB_NAME = "oscar-{oscar}-django-{django}-migrated.sqlite"


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    os.environ["DJANGO_SETTINGS_MODULE"] = "storefronts.oscar.settings"
    os.environ["SIMPERSONA_OSCAR_DB"] = str(args.db)
    os.environ["SIMPERSONA_OSCAR_VARIANT"] = args.variant
    _copy_migrated_template(args.db, args.cache)

    import django
    from django.core.management import call_command

    django.setup()
    _migrate(args.db, args.cache)

    from storefronts.catalog import StoreCatalog
    from storefronts.oscar.load import catalog_loaded, load_catalog

    if not catalog_loaded():
        load_catalog(StoreCatalog.load(args.catalog, args.shop))
        call_command("rebuild_index", interactive=False, verbosity=0)  # Oscar's catalogue pages read the index
    _serve(args.host, args.port)


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m storefronts.oscar.run")
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--shop", required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="directory holding a migrated empty database")
    parser.add_argument("--variant", default="default", help="one of storefronts.oscar.VARIANTS")
    return parser.parse_args(argv)


def _template_path(cache: Path | None) -> Path | None:
    if cache is None:
        return None
    import django
    import oscar

    return cache / TEMPLATE_DB_NAME.format(oscar=oscar.get_version(), django=django.get_version())


def _copy_migrated_template(db: Path, cache: Path | None) -> None:
    template = _template_path(cache)
    if not db.exists() and template is not None and template.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, db)


def _migrate(db: Path, cache: Path | None) -> None:
    """Apply Oscar's migrations (a no-op on a database copied from the template), then keep a
    copy of the migrated, still empty database for the next store."""
    from django.core.management import call_command

    from storefronts.oscar.load import catalog_loaded

    db.parent.mkdir(parents=True, exist_ok=True)
    call_command("migrate", verbosity=0, interactive=False)
    template = _template_path(cache)
    if template is not None and not template.exists() and not catalog_loaded():
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_suffix(f".{os.getpid()}.part")
        shutil.copyfile(db, partial)
        partial.replace(template)


def _serve(host: str, port: int) -> None:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
    from django.core.asgi import get_asgi_application

    from storefronts.server import serve_app

    app = ASGIStaticFilesHandler(get_asgi_application())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with serve_app(app, host, port, "oscar") as bound_port:
        url_host = f"[{host}]" if ":" in host else host
        print(json.dumps({"url": f"http://{url_host}:{bound_port}/", "port": bound_port}), flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
