"""`simpersona serve-store`: serve one shop's catalog as the mock store until Ctrl-C."""

from __future__ import annotations

import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console

from harness.cli.app import app
from storefronts.catalog import CatalogError
from storefronts.faults import Faults
from storefronts.server import serve_store
from storefronts.variants import VariantError, builtin_themes, builtin_variants, load_variant


@app.command("serve-store")
def serve_store_command(
    catalog: Path = typer.Option(..., "--catalog", help="catalog.parquet written by `simpersona ingest`."),
    shop: str = typer.Option(..., "--shop", help="Shop id whose products the store sells."),
    variant: str = typer.Option(
        "default", "--variant", help=f"Built-in layout ({', '.join(builtin_variants())}), theme ({', '.join(builtin_themes())}) "
                                      "or a variant JSON file."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; keep 127.0.0.1 unless you mean it."),
    port: int = typer.Option(0, "--port", help="Port to listen on; 0 picks a free one."),
    db: Path | None = typer.Option(
        None, "--db", help="SQLite order log to write [default: runs/store/<shop>-<variant>-<UTC time>.sqlite]."
    ),
    error_rate: float = typer.Option(0.0, "--error-rate", help="Fault injection: share of requests answered 500."),
    delay_ms: int = typer.Option(0, "--delay-ms", help="Fault injection: delay added to every request."),
    drop_rate: float = typer.Option(0.0, "--drop-rate", help="Fault injection: share of connections dropped."),
    fault_seed: int = typer.Option(0, "--fault-seed", help="Seed choosing which requests fail."),
    engine: str = typer.Option("mock", "--engine", help="mock: our store; oscar: django-oscar, a shop nobody here wrote."),
) -> None:
    """Serve the mock store (or Oscar) for one shop; every visit, cart change and order goes to --db."""
    console = Console()
    if engine == "oscar":
        _serve_oscar(console, catalog, shop, variant, host, port, db)
        return
    if engine != "mock":
        raise typer.BadParameter(f"--engine must be mock or oscar; got {engine!r}")
    try:
        chosen = load_variant(variant)
        faults = Faults(error_rate=error_rate, delay_ms=delay_ms, drop_rate=drop_rate, seed=fault_seed)
    except (VariantError, ValueError) as error:
        raise typer.BadParameter(str(error)) from None
    if db is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        db = Path("runs") / "store" / f"{shop}-{chosen.name}-{stamp}.sqlite"
    try:
        with serve_store(catalog, shop, variant=chosen, db_path=db, host=host, port=port, faults=faults) as store:
            lines = [f"Store for shop [bold]{shop}[/] ({chosen.name} layout) at [bold]{store.url}[/]",
                     f"Order log: {store.db_path}"]
            if store.prices_synthetic:
                lines.append(f"{len(store.prices_synthetic)} products had no price; synthetic prices are shown.")
            _serve_until_interrupted(console, lines)
    except (CatalogError, OSError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from None


def _serve_oscar(console: Console, catalog: Path, shop: str, variant: str, host: str, port: int, db: Path | None) -> None:
    """Oscar for one shop until Ctrl-C; its own database holds the orders (buyer tags as order notes)."""
    from storefronts.oscar import serve_oscar

    if db is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        db = Path("runs") / "store" / f"oscar-{shop}-{stamp}.sqlite"
    try:
        with serve_oscar(catalog, shop, db_path=db, host=host, port=port, variant=variant) as store:
            _serve_until_interrupted(console, [f"Oscar store for shop [bold]{shop}[/] at [bold]{store.url}[/]",
                                               f"Oscar database (orders): {store.db_path}"])
    except (ValueError, RuntimeError, OSError) as error:   # no django-oscar, a bad catalog, a busy port
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from None


def _serve_until_interrupted(console: Console, lines: list[str]) -> None:
    """Announce the running store and wait for Ctrl-C."""
    # Ctrl-C may come as soon as the URL is out, so the announcement is inside the try too.
    # A shell without job control starts background commands with SIGINT ignored, and the
    # child inherits that; we tell the user Ctrl-C stops the store, so it must.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for line in lines + ["Press Ctrl-C to stop."]:
            console.print(line)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("Stopping the store.")
