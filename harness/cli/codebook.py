"""Commands that learn buyer types: ingest, features, train-codebook, assign, and the demo."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq
import typer
from rich.console import Console

from codebook.baselines import compare_baselines
from codebook.ingest import IngestError, summary_table
from codebook.train import TrainConfig, load_codebook, read_features
from harness.eval import pipeline
from harness.cli.app import app

# Piped output (CI logs, `| tee`) gets a width that fits the type table instead of rich's 80.
console = Console(width=None if Console().is_terminal else 160)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _new_run_dir(prefix: str) -> Path:
    return pipeline.REPO_ROOT / "runs" / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


@app.command("ingest")
def ingest_command(
    inputs: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="Raw log files (CSV or Parquet) of one format."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for events/catalog/rejected parquet and ingest.json."),
    shop_field: Optional[str] = typer.Option(None, help="Column that stands in for a shop (default: the format's own; 'single' = one shop)."),
) -> None:
    """Turn a raw event log into canonical events.parquet + catalog.parquet; bad rows go to rejected.parquet."""
    try:
        result = pipeline.run_ingest(inputs, out, shop_field, console)
    except IngestError as error:
        _fail(str(error))
    console.print(summary_table(result))


@app.command("features")
def features_command(
    run_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Directory written by `simpersona ingest`."),
    browse_only: bool = typer.Option(False, help="Leave out every purchase-derived feature (strict protocol)."),
    embedding: str = typer.Option("auto", help="Product embedding block: auto | text | hashed | none."),
) -> None:
    """Compute one row of behavioural features per shop × buyer (buyer_features.parquet)."""
    path = pipeline.run_features(run_dir, browse_only, embedding)
    frame, columns, meta = read_features(path)
    console.print(f"wrote {path}: {len(frame):,} buyers × {len(columns)} features "
                  f"(embedding: {meta.get('embedding', '?')}, browse-only: {browse_only})")


@app.command("train-codebook")
def train_codebook_command(
    features: Path = typer.Argument(..., exists=True, dir_okay=False, help="buyer_features.parquet"),
    out: Path = typer.Option(..., "--out", "-o", help="Codebook artifact directory to write."),
    k: int = typer.Option(32, "--k", help="Number of buyer types (codebook entries)."),
    epochs: int = typer.Option(20, help="Training epochs."),
    seed: int = typer.Option(0, help="Random seed."),
    decisive_weight: float = typer.Option(3.0, help="Loss weight of funnel/conversion features (behaviour-aware)."),
    conversion_weight: float = typer.Option(1.0, help="Weight of the auxiliary conversion head."),
    compare: bool = typer.Option(False, "--compare", help="Also fit k-means and a GMM and print the three side by side."),
) -> None:
    """Train the behaviour-aware VQ-VAE and write the codebook artifact (weights, mixes, types, metrics)."""
    config = TrainConfig(codebook_size=k, epochs=epochs, seed=seed, decisive_weight=decisive_weight,
                         conversion_weight=conversion_weight, progress=console.is_terminal)
    result = pipeline.run_codebook(features, out, config)
    console.print(pipeline.types_table(result.types))
    console.print(pipeline.metrics_line(result.metrics))
    if compare:
        console.print(compare_baselines(features, config, trained=result).table)
    console.print(f"codebook written to {out}")


@app.command("assign")
def assign_command(
    codebook_dir: Path = typer.Option(..., "--codebook", exists=True, file_okay=False, help="Codebook artifact directory."),
    features: Path = typer.Argument(..., exists=True, dir_okay=False, help="buyer_features.parquet of the buyers to type."),
    out: Path = typer.Option(..., "--out", "-o", help="Parquet file to write: shop_id, buyer_id, code."),
) -> None:
    """Give new buyers a type with one encoder forward pass."""
    codebook = load_codebook(codebook_dir)
    frame, _, _ = read_features(features)
    codes = codebook.assign(frame)
    table = pa.table({"shop_id": frame["shop_id"].astype(str), "buyer_id": frame["buyer_id"].astype(str),
                      "code": codes.astype("int32")})
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    used = len(set(codes.tolist()))
    console.print(f"assigned {len(codes):,} buyers to {used} types → {out}")


@app.command("demo")
def demo_command(
    data: Optional[list[Path]] = typer.Option(None, "--data", exists=True, dir_okay=False, help="Your own raw log (default: shared real data if present, else the embedded synthetic log)."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Use the embedded synthetic log even where real data is present."),
    k: int = typer.Option(32, "--k", help="Number of buyer types of the codebook over every shop."),
    types_only: bool = typer.Option(False, "--types-only", help="Stop after the codebook (ingest → features → types)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/demo-<time>)."),
) -> None:
    """The whole loop: ingest → types → replay traces → SFT → simulate held-out shops → A/B → report."""
    from harness.eval.demo import DemoConfig, run_demo

    run_demo(DemoConfig(run_dir=out or _new_run_dir("demo"), data=data, synthetic=synthetic, k=k,
                        types_only=types_only), console)
