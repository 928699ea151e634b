"""`simpersona sensitivity`: type-oracle fidelity on held-out shops across codebook sizes and
commitment weights (harness.eval.sensitivity)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from harness.cli.app import app
from harness.cli.defaults import comma_joined, comma_numbers, default_of
from harness.eval.sensitivity import TABLE_HEADER, SensitivityConfig, table_rows


def _default(name: str):
    return default_of(SensitivityConfig, name)


class Protocol(str, Enum):
    paper = "paper"
    strict = "strict"


@app.command()
def sensitivity(
    input_dir: Path = typer.Option(..., "--input", exists=True, file_okay=False,
                                   help="An ingested directory holding events.parquet and catalog.parquet."),
    out: Path = typer.Option(..., "--out", help="Output directory (rerun with the same one to resume)."),
    folds: int = typer.Option(_default("folds"), "--folds", min=2, help="Merchant-disjoint cross-validation folds."),
    sizes: str = typer.Option(comma_joined(_default("sizes")), "--sizes", help="Comma-separated codebook sizes K."),
    commitment: str = typer.Option(comma_joined(_default("commitment_weights")), "--commitment",
                                   help="Comma-separated commitment weights."),
    protocol: Protocol = typer.Option(Protocol(_default("protocol")), "--protocol",
                                      help="paper: types from all features; strict: browse-only."),
    min_buyers: int = typer.Option(_default("min_buyers"), "--min-buyers", min=1,
                                   help="Buyers a shop needs to be eligible (held out once)."),
    epochs: int = typer.Option(_default("codebook_epochs"), "--epochs", min=1, help="Codebook training epochs."),
    seed: int = typer.Option(_default("seed"), "--seed"),
) -> None:
    """Train a codebook per (K, commitment weight, fold) on training shops; score the type oracle on held-out shops."""
    from harness.eval.sensitivity import run_sensitivity

    console = Console()
    try:
        config = SensitivityConfig(out_dir=out, input_dir=input_dir, sizes=comma_numbers(sizes, int, "--sizes", comma_joined(_default("sizes"))),
                                   commitment_weights=comma_numbers(
                                       commitment, float, "--commitment", comma_joined(_default("commitment_weights"))), folds=folds,
                                   protocol=protocol.value, min_buyers=min_buyers, codebook_epochs=epochs, seed=seed)
    except (ValueError, FileNotFoundError) as error:
        raise typer.BadParameter(str(error)) from None
    result = run_sensitivity(config, console)
    table = Table(title=f"type oracle on held-out shops, {folds}-fold CV ({result['eligible_shops']} shops, {protocol.value})")
    for name in TABLE_HEADER:
        table.add_column(name, justify="left" if name == "K" else "right")
    for row in table_rows(result):
        table.add_row(*row)
    console.print(table)
    console.print(f"{out / 'sensitivity.json'}\n{out / 'sensitivity.md'}  ({result['seconds']:.0f} s)")
