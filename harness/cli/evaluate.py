"""`simpersona evaluate` (held-out shops: simulated vs real conversion) and `simpersona report`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from harness.cli.app import app
from harness.cli.defaults import comma_joined, comma_numbers, default_of
from harness.drivers import Driver
from harness.eval.evaluate import BASELINES, EvaluateConfig, EvaluationInterrupted
from harness.eval.report import figure_with_interval
from harness.eval.verdicts import against_type_text, buyers_against_type_of


def _default(name: str):
    return default_of(EvaluateConfig, name)


class Protocol(str, Enum):
    paper = "paper"
    strict = "strict"
    both = "both"


MAX_SHOP_LINES = 12  # more held-out shops than this (folds): the table shows the overall rows only


def results_table(protocol: str, result: dict) -> Table:
    """Per shop: real and simulated (store-counted) conversion of every policy, then the overall row."""
    policies = list(result["policies"])
    table = Table(title=f"{protocol} protocol: held-out shops, conversion real vs simulated")
    table.add_column("shop")
    table.add_column("real", justify="right")
    for policy in policies:
        table.add_column(policy, justify="right")
    by_shop: dict[str, dict] = {}
    for row in result["shops"]:
        by_shop.setdefault(row["shop"], {"real": row["cr_real"], "n": row["real_buyers"]})[row["policy"]] = row["cr_sim"]
    if len(by_shop) > MAX_SHOP_LINES:
        table.add_row(f"{len(by_shop)} shops", "(each in summary.json and report.html)", *("" for _ in policies))
        by_shop = {}
    for shop, cells in by_shop.items():
        table.add_row(f"{shop} ({cells['n']})", f"{cells['real']:.1%}",
                      *(f"{cells[p]:.1%}" if p in cells else "—" for p in policies))
    figures = result["policies"]
    table.add_row("alignment", "", *(_number(figures[p].get("alignment")) for p in policies), style="bold")
    table.add_row("95 % interval over shops", "", *(_interval(figures[p].get("alignment_ci")) for p in policies))
    table.add_row("Pearson r", "", *(_number(figures[p].get("pearson")) for p in policies))
    table.add_row("Spearman ρ", "", *(_number(figures[p].get("spearman")) for p in policies))
    return table


def _number(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _interval(interval) -> str:
    return "—" if not interval else f"{interval[0]:.3f}–{interval[1]:.3f}"


def print_result(console: Console, protocol: str, result: dict, driver: str) -> None:
    """The per-shop table (a shop list, when there are few shops), the figures beside it, the driver check."""
    console.print(results_table(protocol, result))
    ceiling = result.get("sampling_ceiling")
    if ceiling is not None:
        console.print(f"sampling ceiling (every buyer buying with the shop's real probability; quota-sampled "
                      f"types can pass it): {ceiling:.3f}; "
                      f"persona / type oracle: {_number(result.get('persona_vs_oracle'))}")
    against = against_type_text(buyers_against_type_of(result), " held-out buyers")
    if against:
        console.print(f"persona against its type (every type converts at 0 % or 100 %): {against}")
    if result.get("people_overlap") is not None:
        console.print(f"held-out shops are not held-out people: {result['people_overlap']:.0%} of their buyers also shop in training shops")
    strata = (result.get("strata") or {}).get("persona") or {}
    cells = [f"{name} {entry['alignment']:.3f} (sim {entry['mean_sim']:.1%} vs real {entry['mean_real']:.1%})"
             for name, entry in strata.items() if entry]
    if cells:
        console.print("persona funnel strata, alignment: " + "; ".join(cells))
    for label, figures in (("per shop", (result.get("distances") or {}).get("persona")),
                           ("per type", (result.get("type_distances") or {}).get("summary"))):
        if figures:
            console.print(f"persona behaviour {label}, distance (noise floor): " + "; ".join(
                f"{measure.replace('_', ' ')} {entry['distance']:.3f} ({entry['floor']:.3f})" for measure, entry in figures.items()))
    phases = result.get("phases") or {}
    if phases.get("seconds"):
        console.print("time per step: " + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in phases["seconds"].items())
                      + "; buyers/min: " + ", ".join(f"{name.removeprefix('simulate ')} {rate:,.0f}"
                                                      for name, rate in phases["buyers_per_minute"].items()))
    check = result.get("browser_check")
    if check:
        console.print(f"driver check, shop {check['shop']}: browser {check['browser']['cr_sim']:.1%} vs "
                      f"{driver} {check['http']['cr_sim']:.1%} ({'agree' if check['agree'] else 'DISAGREE'} "
                      "within Wilson 95% intervals)")


@app.command()
def evaluate(
    out: Path = typer.Option(..., "--out", help="Evaluation directory (rerun with the same one to resume)."),
    events: Path = typer.Option(None, "--events", exists=True, dir_okay=False, help="events.parquet from `simpersona ingest`."),
    catalog: Path = typer.Option(None, "--catalog", exists=True, dir_okay=False, help="catalog.parquet from `simpersona ingest`."),
    input_dir: Path = typer.Option(None, "--input", exists=True, file_okay=False,
                                   help="An ingested directory holding events.parquet and catalog.parquet."),
    protocol: Protocol = typer.Option(Protocol(_default("protocol")), "--protocol", help="paper: types from all features; strict: browse-only."),
    held_out_fraction: float = typer.Option(_default("held_out_fraction"), "--held-out-fraction", help="Share of eligible shops held out."),
    min_buyers: int = typer.Option(_default("min_buyers"), "--min-buyers", min=1, help="Buyers a shop needs to be eligible for held-out."),
    folds: int = typer.Option(None, "--folds", min=1,
                              help=f"K merchant-disjoint folds: every eligible shop held out once (default {_default('folds')}; "
                                   "1: one held-out split)."),
    seeds: int = typer.Option(None, "--seeds", min=1, help="Repeat the whole evaluation with this many seeds; mean ± sd."),
    max_held_out: int = typer.Option(None, "--max-held-out", min=1,
                                     help=f"With --folds 1: cap on held-out shops (default {_default('max_held_out_shops')})."),
    buyers_per_shop: int = typer.Option(None, "--buyers-per-shop", min=1,
                                        help="Synthetic buyers per held-out shop (default: 100 (1-p)/p, capped)."),
    max_buyers_per_shop: int = typer.Option(None, "--max-buyers-per-shop", min=1, help="Cap on the automatic number."),
    driver: Driver = typer.Option(Driver(_default("driver")), "--driver", help="Driver of the main runs."),
    browser_check: bool = typer.Option(_default("browser_check"), "--browser-check/--no-browser-check",
                                       help="Also run one held-out shop with headless Chromium and compare."),
    transfer: str = typer.Option(None, "--transfer", help="Comma-separated stores the persona agent's buyers of the "
                                 "largest held-out shop(s) of each fold also shop: 'oscar' (django-oscar, a store nobody "
                                 "here wrote) or mock-store themes such as the held-out atelier,nordhaus,quickmart."),
    transfer_shops: int = typer.Option(None, "--transfer-shops", min=1, help="Held-out shops per fold run on --transfer "
                                       f"(default {_default('transfer_shops')})."),
    variant: str = typer.Option(None, "--variant", help="Store layout of replays and simulations (default saved_details: signed-in buyers)."),
    codebook_size: int = typer.Option(None, "--codebook-size", min=2, help="Number of buyer types K."),
    agent_base: str = typer.Option(None, "--agent-base", help="'nav' (the cached navigation base), 'nav-themes' (the same, "
                                   "also trained on the store themes), 'tiny', 'smollm2' or a model directory "
                                   f"(default {_default('agent_base')}; nav-themes with --themes)."),
    themes: bool = typer.Option(False, "--themes", help="Replay the training buyers over the store themes (the same "
                                "decisions on other wording, overlays and checkouts) and start from the nav-themes base."),
    sft_max_steps: int = typer.Option(None, "--sft-max-steps", min=1, help="Cap on optimiser steps per SFT stage."),
    retrain_from: str = typer.Option(None, "--retrain-from", help="Where an agent that fails the type check is trained "
                                     "again: 'rejected' (going on from it) or 'base' (a new agent from the base); both "
                                     f"end at twice the steps (default {_default('retrain_from')})."),
    agent_precision: str = typer.Option(None, "--agent-precision", help="How the agent computes in training and in the "
                                        "simulations: auto (bf16 on CUDA, fp32 on CPU), bf16 (on a CPU: bf16 matmuls over "
                                        "fp32 weights; a faster SFT where the CPU has bf16 instructions) or fp32."),
    sft_rename_shops: bool = typer.Option(_default("sft_rename_shops"), "--sft-rename-shops",
                                          help="Each SFT epoch shows every trace in a renamed shop (types keep their purchase rate on unseen pages)."),
    traces_per_code: int = typer.Option(None, "--traces-per-code", min=1, help="Training buyers replayed per code."),
    baselines: str = typer.Option(None, "--baselines", help=f"Comma-separated, from {','.join(BASELINES)} (default {','.join(_default('baselines'))})."),
    concurrency: int = typer.Option(None, "--concurrency", min=1, help="Buyers in flight per simulation."),
    calibrate_temperatures: str = typer.Option(
        None, "--calibrate-temperatures",
        help="Comma-separated sampling temperatures tried on training shops; the best is written into the agent dir "
             f"(default {comma_joined(_default('calibrate_temperatures'))}; 'none': no calibration)."),
    calibrate_plausibilities: str = typer.Option(
        None, "--calibrate-plausibilities",
        help="Comma-separated plausibility bars of the persona guidance, each tried with each temperature "
             f"(default {comma_joined(_default('calibrate_plausibilities'))}; 0: every token pushed)."),
    calibration_shops: int = typer.Option(
        None, "--calibration-shops", min=1,
        help=f"Training shops the temperatures are tried on (shops with >= {_default('calibration_min_purchases')} "
             f"real purchases first; default {_default('calibration_shops')})."),
    calibration_buyers: int = typer.Option(
        None, "--calibration-buyers", min=1,
        help=f"Cap on synthetic buyers per calibration shop and temperature (default {_default('calibration_buyers')})."),
    temperature: float = typer.Option(
        None, "--temperature", min=0.0,
        help="Sampling temperature of the agents (default: the one the agent dir records, which the calibration writes)."),
    guidance: float = typer.Option(
        None, "--guidance",
        help="Persona guidance of the agents in the calibration and the simulations: each step's log-probabilities "
             f"pushed away from the neutral token's by this factor (default {_default('guidance'):g}; 1: off)."),
    fast: bool = typer.Option(False, "--fast", help="The small preset (few shops, capped buyers; minutes on a laptop)."),
    seed: int = typer.Option(_default("seed"), "--seed"),
) -> None:
    """Hold out shops, learn types and the agent on the rest, and compare simulated with real conversion."""
    from harness.cli.simulate import INTERRUPT_SIGNALS
    from harness.eval.evaluate import evaluate as run_evaluation

    console = Console()
    options = dict(events=events, catalog=catalog, input_dir=input_dir, protocol=protocol.value,
                   held_out_fraction=held_out_fraction, min_buyers=min_buyers, driver=driver.value,
                   browser_check=browser_check, sft_rename_shops=sft_rename_shops, seed=seed, trace_themes=themes,
                   agent_base=agent_base or ("nav-themes" if themes else _default("agent_base")))
    # Options left out keep the default of the chosen preset (--fast or the full one).
    given = dict(folds=folds, seeds=seeds, max_held_out_shops=max_held_out, buyers_per_shop=buyers_per_shop, max_buyers_per_shop=max_buyers_per_shop,
                 codebook_size=codebook_size, sft_max_steps=sft_max_steps, retrain_from=retrain_from, agent_precision=agent_precision, traces_per_code=traces_per_code,
                 concurrency=concurrency, variant=variant, calibration_shops=calibration_shops,
                 calibration_buyers=calibration_buyers, temperature=temperature, guidance=guidance, transfer_shops=transfer_shops,
                 transfer_stores=tuple(part.strip() for part in transfer.split(",") if part.strip()) if transfer else None)
    options.update({k: v for k, v in given.items() if v is not None})
    if calibrate_temperatures is not None:
        options["calibrate_temperatures"] = () if calibrate_temperatures.strip() == "none" else comma_numbers(
            calibrate_temperatures, float, "--calibrate-temperatures", "1,0.7,0.5 or 'none'")
    if calibrate_plausibilities is not None:
        options["calibrate_plausibilities"] = comma_numbers(calibrate_plausibilities, float, "--calibrate-plausibilities", "0,0.1")
    if baselines is not None:
        options["baselines"] = tuple(name.strip() for name in baselines.split(",") if name.strip())
    try:
        config = EvaluateConfig.fast(out, **options) if fast else EvaluateConfig(out_dir=out, **options)
    except (ValueError, FileNotFoundError) as error:
        raise typer.BadParameter(str(error)) from None
    try:
        summary = run_evaluation(config, console)
    except EvaluationInterrupted as stop:
        console.print(f"[yellow]{stop}[/yellow]: every finished step and buyer is kept; the same command resumes")
        raise typer.Exit(128 + INTERRUPT_SIGNALS.get(stop.signal_name, 2)) from None
    for name, result in summary["protocols"].items():
        print_result(console, name, result, config.driver)
    for protocol, policies in (summary.get("seeds") or {}).items():
        console.print(f"{protocol}, over {config.seeds} seeds:")
        for policy, entry in policies.items():
            if entry["sd"] is not None:
                console.print(f"  {policy} {entry['mean']:.3f} ± {entry['sd']:.3f} (" + "; ".join(
                    f"seed {seed} {figure_with_interval(value, (entry.get('per_seed_ci') or {}).get(seed))}"
                    for seed, value in entry["per_seed"].items()) + ")")
    console.print(f"summary: {out / 'summary.json'}\nreport: [bold]{out / 'report.html'}[/]")


@app.command()
def report(run_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="A run or evaluation directory.")) -> None:
    """(Re)build report.html of a run directory from what it holds."""
    from harness.eval.report import ReportError, write_report

    try:
        path = write_report(run_dir)
    except ReportError as error:
        raise typer.BadParameter(str(error)) from None
    Console().print(f"report: [bold]{path}[/]")


@app.command()
def compare(
    base: Path = typer.Argument(..., exists=True, file_okay=False, help="An evaluation directory (or its seed<s>/)."),
    other: Path = typer.Argument(..., exists=True, file_okay=False, help="Another evaluation of the same shops."),
) -> None:
    """Two evaluations of the same held-out shops, shop by shop: OTHER − BASE alignment with a paired interval."""
    from harness.eval.compare import CompareError, compare_evaluations, comparison_line

    try:
        comparison = compare_evaluations(base, other)
    except CompareError as error:
        raise typer.BadParameter(str(error)) from None
    console = Console()
    console.print(f"alignment shop by shop, OTHER − BASE (95 % bootstrap interval over shops)\n"
                  f"BASE  {base}\nOTHER {other}")
    for protocol, policies in comparison.items():
        for policy, paired in policies.items():
            console.print(comparison_line(protocol, policy, paired), markup=False)
