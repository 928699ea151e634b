"""`make demo`: the whole loop end to end on one log, in minutes on a laptop.

    1. ingest            raw log → events.parquet + catalog.parquet (+ rejected rows)
    2. features          one row per shop × buyer
    3. codebook          behaviour-aware VQ-VAE over every shop: the buyer types and each shop's mix
    4. evaluation        held-out shops: codebook and agent learn on training shops only; real
                         sessions of training buyers are replayed into traces; the persona agent
                         (the cached navigation base) is fine-tuned on them in two stages, its
                         sampling temperature chosen on training shops, where it is also checked
                         against its types (one that fails is kept and named, not trained again
                         within the demo's time); held-out shops are simulated and their
                         store-counted conversion compared with the real one (harness.eval.evaluate)
    5. A/B what-if       the same synthetic population of the largest training shop on two layouts
    6. report            report.html with every plot, summary.json with every figure

The input is the user's log, else the shared real Tmall log where present, else the embedded
synthetic generator (clearly named as such). Every step writes its files into the run directory.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from codebook.baselines import compare_baselines
from codebook.ingest import summary_table
from codebook.train import TrainConfig, read_features
from harness.eval import pipeline

# Layouts of the demo's A/B: the evaluation's layout against a deliberately worse one.
DEMO_VARIANT_A = "saved_details"
DEMO_VARIANT_B = "worse_saved_details"


@dataclass
class DemoConfig:
    run_dir: Path
    data: list[Path] | None = None  # the user's raw log; None: shared real data or the synthetic default
    synthetic: bool = False  # use the embedded synthetic log even where real data is present
    k: int = 32  # buyer types of the step-3 codebook (the evaluation's own codebook uses its preset)
    types_only: bool = False  # stop after the codebook (steps 1 to 3)
    ab_buyers: int | None = None  # None: ab_buyers_for(the A/B shop's expected rate)
    seed: int = 0


# Buyers per A/B arm: enough that arm A expects this many conversions, so that a layout losing
# most of them shows at p < 0.01 (McNemar, paired by buyer; 7 of 7 discordant pairs give 0.016,
# 10 of 10 give 0.002), within a floor and a cap that keep the step short.
AB_EXPECTED_CONVERSIONS = 20
AB_BUYERS_RANGE = (50, 400)


def ab_buyers_for(expected_rate: float) -> int:
    """Buyers per arm for a shop expected to convert at `expected_rate`."""
    low, high = AB_BUYERS_RANGE
    wanted = math.ceil(AB_EXPECTED_CONVERSIONS / expected_rate) if expected_rate > 0 else high
    return min(high, max(low, wanted))


def run_demo(config: DemoConfig, console: Console) -> Path:
    """Run the loop; returns the run directory."""
    started = time.perf_counter()
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    chosen = pipeline.choose_demo_input(config.data, run_dir, config.synthetic)
    console.rule("SimPersona demo")
    console.print(f"input: {chosen.description}")
    console.print(f"run directory: {run_dir}")

    console.rule("1. ingest")
    console.print(summary_table(pipeline.run_ingest(chosen.paths, run_dir, console=console)))
    console.rule("2. buyer features")
    features = pipeline.run_features(run_dir)
    frame, columns, meta = read_features(features)
    console.print(f"{len(frame):,} shop × buyer rows, {len(columns)} features (embedding: {meta.get('embedding')})")
    console.rule("3. behaviour-aware VQ-VAE codebook")
    train_config = TrainConfig(codebook_size=config.k, progress=console.is_terminal)
    result = pipeline.run_codebook(features, run_dir / "codebook", train_config)
    console.print(pipeline.types_table(result.types, max_rows=config.k))
    console.print(pipeline.metrics_line(result.metrics))
    console.print(compare_baselines(features, train_config, trained=result).table)
    recovery = None
    if chosen.synthetic_dir is not None:
        recovery = pipeline.planted_type_recovery(chosen.synthetic_dir, run_dir)
        console.print(f"oracle check (browse-only features, one code per planted type): adjusted Rand index {recovery:.3f}")
    record = {"input": chosen.description, "k": config.k, "planted_type_ari": recovery}
    if not config.types_only:
        record.update(run_loop(config, run_dir, console))
    record["seconds"] = round(time.perf_counter() - started, 1)
    (run_dir / "demo.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    console.print(f"[bold green]done[/] in {record['seconds'] / 60:.1f} min — artifacts in {run_dir}")
    if "report" in record:
        console.print(f"[bold]report:[/] {record['report']}")
    return run_dir


def run_loop(config: DemoConfig, run_dir: Path, console: Console) -> dict:
    """Steps 4 to 6: held-out evaluation, A/B what-if, report."""
    from harness.eval.evaluate import EvaluateConfig, evaluate
    from harness.eval.report import write_report
    from harness.eval.verdicts import ab_verdicts, evaluation_verdicts

    console.rule("4. held-out evaluation: replay → traces → two-stage SFT → simulate held-out shops")
    eval_dir = run_dir / "evaluation"
    eval_config = EvaluateConfig.demo(eval_dir, input_dir=run_dir, protocol="paper", seed=config.seed,
                                      progress=console.is_terminal)
    summary = evaluate(eval_config, console)
    headline = summary["headline"]["paper"]
    result = summary["protocols"]["paper"]
    console.print(shops_table(result))
    console.print(types_table(result))
    console.print("conversion alignment per policy (1 = perfect): "
                  + ", ".join(f"{name} {value:.3f}" for name, value in headline.items() if value is not None))
    for line in evaluation_verdicts(summary):
        console.print(f"verdict: {line}", markup=False, highlight=False)

    console.rule("5. A/B what-if: the same buyers on two layouts")
    ab = run_demo_ab(config, eval_dir, eval_config.catalog, console)
    console.print(f"shop {ab['shop']}, {ab['buyers']} buyers per arm (its types' real conversion predicts "
                  f"{100 * ab['expected_rate']:.1f} %)")
    console.print(f"{ab['variant_a']} → {ab['variant_b']}: ΔCR {ab['delta_cr']:+.3f} "
                  f"(95 % CI {ab['ci'][0]:+.3f} … {ab['ci'][1]:+.3f}), McNemar p = {ab['p_value']:.3g}")
    for line in ab_verdicts(json.loads(Path(ab["summary"]).read_text())):
        console.print(f"verdict: {line}", markup=False, highlight=False)

    console.rule("6. report")
    report = write_report(eval_dir)
    return {"evaluation": str(eval_dir / "summary.json"), "alignment": headline, "ab": ab, "report": str(report)}


def run_demo_ab(config: DemoConfig, eval_dir: Path, catalog: Path, console: Console) -> dict:
    """A/B of two layouts with the trained persona agent on the largest training shop's mix, sized
    by the rate its types' real conversion predicts; the agent samples as its dir records (the
    evaluation's calibrated temperature)."""
    from codebook.artifact import CodebookArtifact
    from harness.eval.metrics import type_oracle_rate
    from harness.sim.ab import ABConfig, run_ab
    from harness.sim.policies import PolicySpec, build_policy, close_policy

    work = eval_dir / "paper"
    codebook = CodebookArtifact.load(work / "codebook")
    shop = max(codebook.shops, key=codebook.shop_buyers)
    expected_rate = type_oracle_rate(codebook.shop_mix(shop), codebook.real_conversion_rates(), fallback=0.0)
    buyers = config.ab_buyers or ab_buyers_for(expected_rate)
    policy = build_policy(PolicySpec(str(work / "agent"), seed=config.seed, label="persona"), codebook)
    ab_config = ABConfig(shop=shop, codebook_dir=codebook.path, catalog=catalog, variant_a=DEMO_VARIANT_A,
                         variant_b=DEMO_VARIANT_B, buyers=buyers, seed=config.seed, driver="http", max_steps=30,
                         out_dir=eval_dir, run_id="ab", progress=console.is_terminal)
    try:
        result = asyncio.run(run_ab(ab_config, policy, codebook=codebook))
    finally:
        close_policy(policy)
    overall = result.overall
    return {"shop": shop, "variant_a": DEMO_VARIANT_A, "variant_b": DEMO_VARIANT_B, "buyers": buyers,
            "expected_rate": expected_rate,
            "delta_cr": overall.delta, "ci": [overall.ci_low, overall.ci_high], "p_value": overall.p_value,
            "summary": str(result.run_dir / "ab_summary.json")}



def _rate(rate: float | None, interval: list | None = None) -> str:
    if rate is None:
        return "–"
    text = f"{100 * rate:.1f} %"
    return text + (f" ({100 * interval[0]:.0f}–{100 * interval[1]:.0f})" if interval else "")


def shops_table(result: dict) -> Table:
    """Per held-out shop: the real conversion rate and each policy's, with 95 % Wilson intervals."""
    rows = result.get("shops") or []
    policies = list(dict.fromkeys(row["policy"] for row in rows))
    table = Table(title="held-out shops: conversion rate (95 % interval)")
    table.add_column("shop")
    table.add_column("real")
    for policy in policies:
        table.add_column(policy)
    for shop in dict.fromkeys(row["shop"] for row in rows):
        mine = {row["policy"]: row for row in rows if row["shop"] == shop}
        first = next(iter(mine.values()))
        cells = [_rate(mine[p].get("cr_sim"), mine[p].get("cr_sim_ci")) if p in mine else "–" for p in policies]
        table.add_row(str(shop), _rate(first["cr_real"], first.get("cr_real_ci")), *cells)
    return table


def types_table(result: dict) -> Table:
    """Per buyer type: how often its training traces convert vs how often the agent playing it does."""
    check = result.get("agent_check") or {}
    table = Table(title="buyer types: traces vs persona agent (held-out shops)")
    for column in ("type", "traces", "trace conversion", "agent buyers", "agent conversion"):
        table.add_column(column, justify="right")
    for code, row in sorted((check.get("per_code") or {}).items(), key=lambda item: int(item[0])):
        table.add_row(code, str(row.get("trace_count", 0)), _rate(row.get("trace_conversion")),
                      str(row.get("agent_buyers", 0)), _rate(row.get("agent_conversion")))
    pearson = check.get("pearson")
    table.caption = (f"Pearson r over types with buyers: {pearson:.3f}" if pearson is not None
                     else "Pearson r: undefined (the agent's rates do not vary)")
    return table
