"""Run the mock store under uvicorn in a background thread: `with serve_store(...) as store:`.

The context manager binds 127.0.0.1 on a free port (or the one asked for), waits until uvicorn
accepts connections, yields a RunningStore, and on exit stops the server, joins its thread,
closes the listening socket and the order log. Several stores (say, two layout variants of one
catalog) can run side by side in one process, each on its own port and thread. While a store
without faults runs, apps_in_process() lists its app by origin, so that a client in this process
(the http driver) can call it without the socket.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
import uvicorn
from starlette.applications import Starlette

from storefronts.app import create_app
from storefronts.catalog import StoreCatalog
from storefronts.faults import Faults, HideDropMessages
from storefronts.orderlog import OrderLog
from storefronts.variants import Variant, load_variant, variant_to_dict

STARTUP_TIMEOUT_S = 20.0
SHUTDOWN_TIMEOUT_S = 10.0

# The stores this process serves, by origin ("http://127.0.0.1:54321"), while they run. A client in
# this process may call the app itself instead of its socket (the http driver does): the same app
# answers, without the TCP round trip, the HTTP parsing on both ends and the server thread's share
# of the GIL.
_IN_PROCESS: dict[str, Starlette] = {}


def apps_in_process() -> dict[str, Starlette]:
    """{origin: app} of the stores this process serves now, for clients that call them in-process."""
    return dict(_IN_PROCESS)


@dataclass(frozen=True)
class RunningStore:
    url: str  # e.g. "http://127.0.0.1:54321/"
    host: str
    port: int
    db_path: Path  # the SQLite order log of this run
    variant: Variant
    shop_id: str
    app: Starlette  # app.state.prices_synthetic etc.

    @property
    def prices_synthetic(self) -> frozenset[str]:
        return self.app.state.prices_synthetic


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket here, so a busy port fails in the caller with a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say so, and without
    # it every response waits 40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # Lets a store restart on a port whose old connections are still in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(error.errno, f"cannot bind {host}:{port}: {error.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextmanager
def serve_store(
    catalog: str | Path | pd.DataFrame | StoreCatalog,
    shop_id: str,
    variant: str | Path | Variant = "default",
    db_path: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults | None = None,
    log_level: str = "warning",
) -> Iterator[RunningStore]:
    """Serve one shop's catalog as a store until the block exits.

    catalog: catalog.parquet path, a DataFrame with CATALOG_SCHEMA columns, or a loaded StoreCatalog.
    variant: built-in name ("default", "list", "worse"), a variant JSON path, or a Variant.
    db_path: where the SQLite order log goes; None makes a temporary one that is deleted on exit
        (read it inside the block, or pass a path to keep it).
    port: 0 picks a free port.
    faults: optional fault injection (errors, delays, dropped connections); off by default.
    """
    chosen = load_variant(variant)
    store_catalog = catalog if isinstance(catalog, StoreCatalog) else StoreCatalog.load(catalog, shop_id)
    temp_dir = None if db_path else Path(tempfile.mkdtemp(prefix="simpersona-store-"))
    db_file = Path(db_path) if db_path else temp_dir / "store.sqlite"
    log = OrderLog(db_file, meta={
        "shop_id": store_catalog.shop_id,
        "variant": json.dumps(variant_to_dict(chosen)),
        "catalog": "DataFrame" if isinstance(catalog, (pd.DataFrame, StoreCatalog)) else str(catalog),
        "products": str(len(store_catalog.products)),
        "prices_synthetic": str(len(store_catalog.prices_synthetic)),
    })
    try:
        app = create_app(store_catalog, shop_id, log=log, variant=chosen, faults=faults)
        drop_filter = HideDropMessages()
        logging.getLogger("uvicorn.error").addFilter(drop_filter)
        try:
            with serve_app(app, host, port, f"store-{shop_id}-{chosen.name}", log_level) as bound_port:
                url_host = f"[{host}]" if ":" in host else host
                origin = f"http://{url_host}:{bound_port}"
                with _callable_in_process(origin, app, faults):
                    yield RunningStore(url=f"{origin}/", host=host, port=bound_port,
                                       db_path=db_file, variant=chosen, shop_id=store_catalog.shop_id, app=app)
        finally:
            logging.getLogger("uvicorn.error").removeFilter(drop_filter)
    finally:
        log.close()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


@contextmanager
def _callable_in_process(origin: str, app: Starlette, faults: Faults | None) -> Iterator[None]:
    """Lists the app in apps_in_process() until the block exits. A store with faults is left to
    its socket: slow answers and dropped connections are faults of the network path."""
    if faults is not None and faults.active:
        yield
        return
    _IN_PROCESS[origin] = app
    try:
        yield
    finally:
        _IN_PROCESS.pop(origin, None)


@contextmanager
def serve_app(app, host: str = "127.0.0.1", port: int = 0, thread_name: str = "server",
              log_level: str = "warning") -> Iterator[int]:
    """Serve an ASGI app under uvicorn on a background thread until the block exits; yields the
    port it listens on (port 0 picks a free one). The mock store and `serve-agent` both run on it."""
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    try:
        # Keep idle connections longer than clients do (httpx drops them after 5 s): with uvicorn's
        # own 5 s default, a loaded machine lets the server close a connection the client is just
        # reusing, and that request fails with a ReadError.
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, timeout_keep_alive=60)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"{thread_name}-{bound_port}",
                                  daemon=True)
        thread.start()
        try:
            _wait_started(server, thread)
            yield bound_port
        finally:
            server.should_exit = True
            thread.join(SHUTDOWN_TIMEOUT_S)
            if thread.is_alive():  # a request that will not finish: stop waiting for it
                server.force_exit = True
                thread.join(SHUTDOWN_TIMEOUT_S)
    finally:
        sock.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server thread {thread.name} stopped during startup (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server {thread.name} did not start within {STARTUP_TIMEOUT_S:.0f} s")
        time.sleep(0.01)
