"""`simpersona ab`: the same synthetic buyers against layout A and layout B, compared pairwise.

    simpersona ab --catalog C --shop S --codebook DIR --variant A=default --variant B=worse --buyers 200
    simpersona ab --store A=https://a.example --store B=https://b.example --shop S --codebook DIR
    simpersona ab --catalog C --shop S --codebook DIR --variant A=default --aa-repeats 100   (calibration)
    simpersona ab --catalog C --shop S --codebook DIR --policy AGENT_DIR        (the persona agent)
    simpersona ab --catalog C --shop S --codebook DIR --engine oscar --variant A=default --variant B=shipping_choice

--policy is built by harness.sim.policies.build_policy, as for `simulate`: an agent samples at the
temperature its agent dir records unless --temperature is given.

Results go to runs/<run_id>/ (harness/sim/ab.py): A/, B/, ab_summary.json, ab_effects.png; a
calibration writes aa_calibration.json and aa_pvalues.png.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from codebook.artifact import CodebookArtifact
from harness.cli.app import app
from harness.cli.defaults import default_of
from harness.cli.simulate import AGENT_DIR_HELP, GUIDANCE_HELP, POLICY_HELP, TEMPERATURE_HELP
from harness.drivers import Driver
from harness.sim.ab import ABConfig
from harness.sim.policies import DEFAULT_POLICY, PolicySpec, build_policy, close_policy
from harness.sim.rundir import RunDirError


def _default(name: str):
    return default_of(ABConfig, name)


def parse_arms(values: list[str], option: str) -> dict[str, str]:
    """`A=default B=worse` (repeatable option) -> {"A": "default", "B": "worse"}."""
    arms: dict[str, str] = {}
    for value in values:
        arm, sep, setting = value.partition("=")
        arm = arm.strip().upper()
        if not sep or arm not in ("A", "B") or not setting.strip():
            raise typer.BadParameter(f"expected A=<value> or B=<value>, got {value!r}", param_hint=option)
        if arm in arms:
            raise typer.BadParameter(f"arm {arm} given twice", param_hint=option)
        arms[arm] = setting.strip()
    return arms


@app.command("ab")
def ab_command(
    shop: str = typer.Option(..., "--shop", help="Shop id whose buyer-type mix is sampled (a key of shop_mix.json)."),
    codebook: Path = typer.Option(..., "--codebook", exists=True, file_okay=False, help="Codebook artifact directory."),
    catalog: Path = typer.Option(None, "--catalog", exists=True, dir_okay=False, help="Serve our mock store from this catalog.parquet, once per arm."),
    catalog_shop: str = typer.Option(None, "--catalog-shop", help="Shop id of the products in --catalog (default: --shop)."),
    engine: str = typer.Option(_default("engine"), "--engine", help="With --catalog: mock (our store) or oscar "
                               "(django-oscar, a shop nobody here wrote; variants default and shipping_choice)."),
    variant: list[str] = typer.Option([], "--variant", help="A=<variant> / B=<variant>: built-in name or variant JSON "
                                      f"(default A={_default('variant_a')}, B={_default('variant_b')})."),
    store: list[str] = typer.Option([], "--store", help="A=<url> / B=<url>: live stores instead of --catalog."),
    policy: str = typer.Option(DEFAULT_POLICY, "--policy", help=POLICY_HELP),
    agent_dir: Path = typer.Option(None, "--agent-dir", file_okay=False, help=AGENT_DIR_HELP),
    temperature: float = typer.Option(None, "--temperature", min=0.0, help=TEMPERATURE_HELP),
    guidance: float = typer.Option(None, "--guidance", help=GUIDANCE_HELP),
    buyers: int = typer.Option(_default("buyers"), "--buyers", min=2, help="Synthetic buyers (each shops once in each arm)."),
    concurrency: int = typer.Option(_default("concurrency"), "--concurrency", min=1, help="Buyers shopping at the same time."),
    driver: Driver = typer.Option(Driver(_default("driver")), "--driver", help="http: plain HTTP, fast; browser: headless Chromium."),
    max_steps: int = typer.Option(_default("max_steps"), "--max-steps", min=1, help="Actions per buyer before the episode is cut."),
    seed: int = typer.Option(_default("seed"), "--seed", help="Seed of the population (codes and per-buyer seeds) and of an agent's sampling."),
    alpha: float = typer.Option(_default("alpha"), "--alpha", help="Significance level (the interval is 1 - alpha)."),
    aa: bool = typer.Option(False, "--aa", help="A/A run: variant A twice, independent buyer seeds in arm B."),
    aa_repeats: int = typer.Option(0, "--aa-repeats", min=0, help="Calibrate: repeat A/A runs this often and report the false-positive rate."),
    out: Path = typer.Option(_default("out_dir"), "--out", help="Directory that holds run directories."),
    run_id: str = typer.Option(None, "--run-id", help="Name of the run directory (default: time and shop)."),
) -> None:
    """Run the same buyers against two layouts; ΔCR with a paired interval, McNemar, per-type effects."""
    variants = {"A": _default("variant_a"), "B": _default("variant_b")} | parse_arms(variant, "--variant")
    stores = parse_arms(store, "--store")
    if (catalog is None) == (not stores):
        raise typer.BadParameter("give exactly one of --catalog PATH or --store A=URL --store B=URL", param_hint="--catalog/--store")
    console = Console()
    try:
        artifact = CodebookArtifact.load(codebook)
        config = ABConfig(
            shop=shop, codebook_dir=artifact.path, catalog=catalog, catalog_shop=catalog_shop, engine=engine,
            variant_a=variants["A"], variant_b=variants["B"],
            store_url_a=stores.get("A"), store_url_b=stores.get("B") or (stores.get("A") if aa or aa_repeats else None),
            buyers=buyers, seed=seed, driver=driver.value, concurrency=concurrency, max_steps=max_steps,
            aa=aa or aa_repeats > 0, alpha=alpha, out_dir=out, run_id=run_id,
        )
        # Built (and checked against the codebook) before any store is served or buyer runs.
        chosen = build_policy(PolicySpec(policy, agent_dir=agent_dir, temperature=temperature, guidance=guidance,
                                          seed=seed), artifact)
        try:
            if aa_repeats:
                _calibrate(console, config, chosen, aa_repeats, artifact)
            else:
                _compare(console, config, chosen, artifact)
        finally:
            close_policy(chosen)
    except (ValueError, RunDirError) as error:  # bad input: say which file or option, no traceback
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None


def _compare(console: Console, config: ABConfig, policy, codebook: CodebookArtifact) -> None:
    from harness.sim.ab import PLOT_FILE, SUMMARY_FILE, run_ab

    summary = asyncio.run(run_ab(config, policy, codebook=codebook)).summary
    table = Table(title=f"{summary['kind']} {config.shop}: A={config.variant_a}  B={config.variant_b}  ({summary['policy']}, {config.driver})")
    for column in ("group", "n", "CR A", "CR B", "ΔCR", f"{summary['confidence']:.0%} CI", "b / c", "mid-p"):
        table.add_column(column, justify="right")
    rows = [("all", summary | {"n": summary["n"]})] + [(f"type {code}", row) for code, row in summary["per_type"].items()]
    for label, row in rows:
        mc = row.get("mcnemar") or {"b_only_a_converted": row.get("b_only_a_converted"), "c_only_b_converted": row.get("c_only_b_converted"), "p_mid": row.get("p_mid")}
        table.add_row(
            label, str(row["n"]), f"{row['conversion_a']:.3f}", f"{row['conversion_b']:.3f}", f"{row['delta']:+.3f}",
            f"[{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}]", f"{mc['b_only_a_converted']} / {mc['c_only_b_converted']}", f"{mc['p_mid']:.3g}",
        )
    console.print(table)
    console.print(f"[bold]{summary['verdict']}[/bold] (α={summary['alpha']}, McNemar mid-p {summary['p_value']:.3g}, exact p {summary['mcnemar']['p_exact']:.3g}; outcomes from the {summary['outcome_source']})")
    for arm, figures in summary["arms"].items():
        if figures["converted_store_counted"] is not None:
            console.print(f"  arm {arm}: store counted {figures['converted_store_counted']} converted buyers, trajectories claim {figures['converted_claimed']}")
    console.print(f"results: {config.run_dir / SUMMARY_FILE}, {config.run_dir / PLOT_FILE}")


def _calibrate(console: Console, config: ABConfig, policy, repeats: int, codebook: CodebookArtifact) -> None:
    from harness.sim.ab import CALIBRATION_FILE, CALIBRATION_PLOT_FILE, run_aa_calibration

    with Progress(TextColumn("[bold]A/A repeats"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[hits]} significant"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("aa", total=repeats, hits=0)
        hits: list[bool] = []

        def on_repeat(_, result) -> None:
            hits.append(result.overall.p_value < config.alpha)
            progress.update(task, advance=1, hits=sum(hits))

        calibration = asyncio.run(run_aa_calibration(config, policy, repeats, on_repeat, codebook))
    low, high = calibration["false_positive_rate_wilson_95"]
    console.print(
        f"A/A false-positive rate {calibration['false_positive_rate']:.3f} ({calibration['false_positives']}/{calibration['repeats']}, "
        f"Wilson 95% [{low:.3f}, {high:.3f}]) at α={config.alpha}, McNemar mid-p; exact test: {calibration['false_positive_rate_exact_test']:.3f}"
    )
    counts = calibration["p_value_histogram"]["counts"]
    console.print("p-value histogram (10 bins over [0, 1]): " + " ".join(str(c) for c in counts))
    console.print(f"results: {config.run_dir / CALIBRATION_FILE}, {config.run_dir / CALIBRATION_PLOT_FILE}")
