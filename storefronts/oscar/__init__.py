"""A real open-source shop as a store nobody here wrote: django-oscar, loaded from our catalog.

    with serve_oscar("runs/tmall/catalog.parquet", "9563", db_path="runs/oscar/9563.sqlite") as store:
        ...  # buyers shop at store.url; storefronts.orderlog.orders_by_buyer(store.db_path, run_id) counts Oscar's orders

Oscar runs as users run it (its own templates, guest checkout, a payment step that takes no
payment) in a process of its own (storefronts/oscar/run.py), on SQLite. The one thing we add is a
note on each order naming the synthetic buyer that placed it (storefronts/oscar/apps.py), so the
store's own order table is the truth about conversions, buyer by buyer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd

from storefronts import cache_dir

STARTUP_TIMEOUT_S = 300.0  # a first start migrates a new database (about 10 s on 2 cores, more when busy)
# default: Oscar as it ships (free shipping only, so no shipping-method page); shipping_choice:
# standard or express delivery, one more checkout step (storefronts/oscar/shipping/repository.py)
VARIANTS = ("default", "shipping_choice")


class OscarUnavailable(ValueError):
    """django-oscar is not installed (pip install -e '.[oscar]')."""


def oscar_installed() -> bool:
    try:
        import oscar  # noqa: F401
        import sorl.thumbnail  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class OscarStore:
    url: str
    db_path: Path  # Oscar's SQLite database: its order tables are the truth about conversions
    shop_id: str
    variant: str = "default"


@contextmanager
def serve_oscar(catalog: str | Path | pd.DataFrame, shop_id: str, db_path: str | Path | None = None,
                host: str = "127.0.0.1", port: int = 0, variant: str = "default",
                cache: Path | None = None) -> Iterator[OscarStore]:
    """Run an Oscar store for one shop of the catalog until the block exits.

    db_path: Oscar's database; an existing one is reused as it is (its products and orders kept),
    None makes a temporary one deleted on exit. The first store on a machine migrates a database
    and caches it under `cache` (default: the SimPersona cache's oscar/), so later stores start
    in about a second. Raises OscarUnavailable (a ValueError) when django-oscar is not installed.
    """
    if not oscar_installed():
        raise OscarUnavailable("django-oscar is not installed: pip install -e '.[oscar]' (make setup does)")
    if variant not in VARIANTS:
        raise ValueError(f"Oscar variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    with tempfile.TemporaryDirectory(prefix="simpersona-oscar-") as scratch:
        catalog_path = _catalog_file(catalog, Path(scratch))
        db_file = Path(db_path) if db_path else Path(scratch) / "oscar.sqlite"
        command = [sys.executable, "-m", "storefronts.oscar.run", "--catalog", str(catalog_path), "--shop", shop_id,
                   "--db", str(db_file), "--host", host, "--port", str(port),
                   "--cache", str(cache or cache_dir("oscar")), "--variant", variant]
        log_path = Path(scratch) / "oscar.log"
        with open(log_path, "w+") as log, subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                           stderr=log, text=True) as process:
            try:
                started = _wait_started(process, log)
                yield OscarStore(url=started["url"], db_path=db_file, shop_id=shop_id, variant=variant)
            finally:
                _stop(process)


def _catalog_file(catalog: str | Path | pd.DataFrame, scratch: Path) -> Path:
    if isinstance(catalog, pd.DataFrame):
        path = scratch / "catalog.parquet"
        catalog.to_parquet(path)
        return path
    return Path(catalog).resolve()


def _wait_started(process: subprocess.Popen, log) -> dict:
    """The process's first stdout line, {"url": …}; its log in the error when it dies first."""
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    if selector.select(timeout=STARTUP_TIMEOUT_S):
        line = process.stdout.readline()
        if line.strip():
            return json.loads(line)
    log.seek(0)
    tail = log.read()[-3000:]
    reason = f"exited with status {process.poll()}" if process.poll() is not None else \
        f"did not start within {STARTUP_TIMEOUT_S:.0f} s"
    raise RuntimeError(f"the Oscar store {reason}:\n{tail}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            process.stdin.close()  # run.py stops serving when its stdin closes
            process.wait(timeout=15)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            process.kill()
            process.wait()
