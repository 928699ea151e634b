"""The mock store web app built from a catalog, its layout variants and its order log.

    catalog.py       one shop's products (synthetic prices and readable titles where data lacks them)
    variants.py      the Variant dataclass; built-in variants are JSON files in variants/
    checkout.py      the checkout steps a variant strings together, as data
    presentation.py  placeholder images, product copy, pagination
    app.py           the Starlette app: routes, sessions, templates/ rendering
    orderlog.py      the SQLite log of every view, cart change and order (ground truth for conversion)
    faults.py        optional fault injection (errors, delays, dropped connections)
    server.py        serve_store(): uvicorn in a background thread, started and stopped cleanly;
                     apps_in_process() for clients of this process that call the app directly
    fixtures.py      demo_catalog() and save_fixtures() for tests/fixtures/store
    oscar/           django-oscar, a real shop nobody here wrote, loaded from the same catalog
"""

import os
from pathlib import Path

# Every request of a synthetic buyer carries this header; the store logs it with every page view,
# cart change and order, so conversions are counted per buyer by the store itself.
BUYER_HEADER = "X-SimPersona-Buyer"


def cache_dir(name: str) -> Path:
    """A folder of SimPersona's cache: ~/.cache/simpersona/<name>, or $SIMPERSONA_CACHE/<name>."""
    root = os.environ.get("SIMPERSONA_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "simpersona") / name
