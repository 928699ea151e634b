"""`simpersona make-traces`: replay real buyers in the mock store and write SFT traces.

Each buyer's persona code comes from the codebook: its encoder types every row of the buyer
features (`load_codebook(DIR).assign(read_features(F))`), the same forward pass as `simpersona
assign`. Buyers without a features row are skipped and counted in replay_report.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd
import typer
from rich.console import Console

from harness.cli.app import app
from harness.drivers import Driver

console = Console(width=None if Console().is_terminal else 160)


def codes_from_codebook(codebook_dir: Path, features: Path) -> pd.DataFrame:
    """shop_id, buyer_id, code for every row of buyer_features.parquet."""
    from codebook.train import load_codebook, read_features

    frame, _, _ = read_features(features)
    codes = load_codebook(codebook_dir).assign(frame)
    return pd.DataFrame({"shop_id": frame["shop_id"].astype(str), "buyer_id": frame["buyer_id"].astype(str),
                         "code": codes.astype("int64")})


@app.command("make-traces")
def make_traces_command(
    events: Path = typer.Option(..., "--events", exists=True, dir_okay=False, help="events.parquet from `simpersona ingest`."),
    catalog: Path = typer.Option(..., "--catalog", exists=True, dir_okay=False, help="catalog.parquet from `simpersona ingest`."),
    codebook: Path = typer.Option(..., "--codebook", exists=True, file_okay=False, help="Codebook artifact directory (types the buyers)."),
    features: Optional[Path] = typer.Option(None, "--features", dir_okay=False, help="buyer_features.parquet (default: next to --events)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for traces.jsonl, replay_report.json and the store order logs."),
    driver: Driver = typer.Option(Driver.browser, "--driver", help="browser (Chromium) or http (no JavaScript, faster)."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Buyers replayed at the same time."),
    shops: Optional[list[str]] = typer.Option(None, "--shops", help="Only these shops (repeat the option, or comma-separate)."),
    max_buyers_per_shop: Optional[int] = typer.Option(None, "--max-buyers-per-shop", min=1, help="Seeded sample of each shop's buyers."),
    max_steps: int = typer.Option(60, "--max-steps-per-buyer", min=1, help="Step budget per buyer; longer buyers are shortened (never their purchases)."),
    variant: str = typer.Option("default", "--variant", help="Store layout variant."),
    themes: bool = typer.Option(False, "--themes", help="Spread the buyers over the training themes (every theme but "
                                "the held-out ones) instead of one --variant: the same real decisions on other pages."),
    goal_buyers: int = typer.Option(0, "--goal-buyers", min=0, help="Add this many goal sessions per shop: buyers of the "
                                    "most-converting type told to buy one product (`simpersona tasks` asks the same)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the buyer sample and of the goal sessions' targets."),
) -> None:
    """Act out every real buyer × shop in the mock store and record (observation, action) traces."""
    from harness.eval.replay import ReplayConfig, ReplayError, make_traces

    features = features or events.parent / "buyer_features.parquet"
    if not features.is_file():
        console.print(f"[bold red]error:[/] {features}: buyer features not found; run `simpersona features` "
                      "on the ingest directory or pass --features")
        raise typer.Exit(code=2)
    wanted = tuple(shop.strip() for item in shops or [] for shop in item.split(",") if shop.strip()) or None
    from codebook.artifact import CodebookArtifact
    from harness.eval.tasks import buying_code
    from storefronts.variants import training_themes

    config = ReplayConfig(driver=driver.value, concurrency=concurrency, variant=variant, shops=wanted,
                          themes=tuple(training_themes()) if themes else (),
                          max_buyers_per_shop=max_buyers_per_shop, max_steps_per_buyer=max_steps, seed=seed,
                          progress=True, goal_buyers_per_shop=goal_buyers,
                          goal_code=buying_code(CodebookArtifact.load(codebook)) if goal_buyers else None)
    try:
        report = make_traces(events, catalog, codes_from_codebook(codebook, features), out, config)
    except ReplayError as error:
        console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(code=2)
    print_summary(report)


def print_summary(report) -> None:
    details = report.details
    goal_note = f", {details['n_goal_sessions']:,} of them goal sessions" if details.get("n_goal_sessions") else ""
    console.print(f"replayed {report.n_buyers:,} buyers in {details['n_shops']:,} shops{goal_note} "
                  f"({details['buyers_per_minute']} buyers/min); skipped: {details['n_skipped'] or 'none'}")
    colour = "green" if report.n_exact == report.n_buyers else "yellow"
    console.print(f"[bold {colour}]exact: {report.n_exact:,}/{report.n_buyers:,} "
                  f"({report.exact_fraction():.1%})[/] — the store's orders equal the real purchases, buyer by buyer")
    steps, shortened = details["steps"], details["shortened"]
    console.print(f"steps per buyer: mean {steps['mean']}, median {steps['median']}, max {steps['max']}; "
                  f"shortened buyers: {shortened['buyers']} ({shortened['views_collapsed']} repeated views collapsed, "
                  f"{shortened['events_dropped']} events dropped)")
    for mismatch in report.mismatches[:10]:
        console.print(f"  [yellow]{mismatch['shop_id']}/{mismatch['buyer_id']}[/]: missing {mismatch['missing']}, "
                      f"extra {mismatch['extra']} — {mismatch['reason'] or 'no reason recorded'}")
    if len(report.mismatches) > 10:
        console.print(f"  … {len(report.mismatches) - 10} more in {report.report_path}")
    console.print(f"traces: {report.traces_path}\nreport: {report.report_path}")
