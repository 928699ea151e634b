"""Calibrate `simpersona ab`: A/A false-positive rate over repeats, and power against `worse`.

    .venv/bin/python scripts/ab_calibration.py --repeats 100 --buyers 100 --detect-buyers 200

1. A/A: the default variant served twice, the same codes in both arms but independent buyer
   seeds, repeated with seeds 0, 1, …; the share of repeats with McNemar mid-p < α is the
   false-positive rate (should be ≈ α = 0.05), reported with its Wilson interval and the p-value
   histogram (runs/<id>/aa/aa_calibration.json, aa_pvalues.png). The JSON is rewritten after
   every repeat, so an interrupted calibration keeps what it measured.
2. Detection: default (A) against worse (B: seven checkout steps, buy button below a long
   description) with shared seeds; `worse` should come out worse with p < 0.01
   (runs/<id>/detect/ab_summary.json, ab_effects.png).

Store: our mock store serving products of the real REES46 log (../shared/data). Policy: the
type-profile baseline over the http driver, for speed. Buyer types: --codebook (any codebook
artifact with shop_mix.json and types.json, and --shop), or by default a small ILLUSTRATIVE
artifact written next to the results: three types with conversion rates 0.8, 0.3 and 0.05 —
picked so that a third of the buyers convert and the test has discordant pairs to work with,
not measured on real buyers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.baselines import TypeProfilePolicy  # noqa: E402
from harness.sim.ab import CALIBRATION_FILE, ABConfig, plot_pvalue_histogram, run_aa_calibration, run_ab  # noqa: E402
from harness.sim.paired import wilson_interval  # noqa: E402
from storefronts.fixtures import rees46_catalog  # noqa: E402

REES46 = REPO.parent / "shared" / "data" / "rees46_multicategory_2019oct" / "2019-Oct_head17k.csv"
STORE_SHOP = "rees46"


def write_illustrative_codebook(directory: Path) -> Path:
    """Three made-up buyer types (see the module docstring); one shop, "calibration"."""
    directory.mkdir(parents=True, exist_ok=True)
    types = [
        {"code": 0, "conversion_rate": 0.8, "cart_rate": 0.9, "median_product_views": 2, "top_categories": []},
        {"code": 1, "conversion_rate": 0.3, "median_product_views": 3, "top_categories": []},
        {"code": 2, "conversion_rate": 0.05, "median_product_views": 1, "top_categories": []},
    ]
    (directory / "types.json").write_text(json.dumps({"codebook_size": 3, "illustrative": True, "types": types}))
    (directory / "shop_mix.json").write_text(json.dumps({"shops": {"calibration": {"probs": [0.3, 0.4, 0.3]}}}))
    return directory


def calibrate_aa(console, policy, common: dict, repeats: int, buyers: int) -> dict:
    started = time.perf_counter()
    aa = ABConfig(**common, variant_a="default", buyers=buyers, aa=True, run_id="aa")
    with Progress(TextColumn("[bold]A/A repeats"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[hits]} significant"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("aa", total=repeats, hits=0)
        hits = []

        def on_repeat(_, result):
            hits.append(result.overall.p_value < aa.alpha)
            progress.update(task, advance=1, hits=sum(hits))

        calibration = asyncio.run(run_aa_calibration(aa, policy, repeats, on_repeat))
    aa_wall = time.perf_counter() - started
    low, high = calibration["false_positive_rate_wilson_95"]
    console.print(
        f"A/A: {calibration['false_positives']}/{calibration['repeats']} significant at α={aa.alpha} "
        f"→ FPR {calibration['false_positive_rate']:.3f} (Wilson 95% [{low:.3f}, {high:.3f}]); "
        f"exact test FPR {calibration['false_positive_rate_exact_test']:.3f}; "
        f"{calibration['buyers_per_repeat']} buyers/arm, mean CR {calibration['mean_conversion_a']:.3f}, "
        f"mean discordant pairs {calibration['mean_discordant_pairs']:.1f}; {aa_wall:.0f} s"
    )
    return {"aa": {k: v for k, v in calibration.items() if not k.startswith("p_values")}, "aa_wall_s": aa_wall}


def merge_shards(console, shard_dirs: list[Path], out: Path) -> dict:
    """Pool A/A calibrations run as shards (disjoint --seed ranges, same settings) into one."""
    shards = [json.loads((d / CALIBRATION_FILE).read_text()) for d in shard_dirs]
    settings = {(s["buyers_per_repeat"], s["alpha"], s["variant"], s["driver"]) for s in shards}
    if len(settings) != 1:
        raise SystemExit(f"shards were run with different settings (buyers, alpha, variant, driver): {sorted(settings)}")
    buyers, alpha, variant, driver = settings.pop()
    seeds = [seed for s in shards for seed in s["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit("shards overlap: some A/A seeds were run twice; give each shard its own --seed range")
    p_mid = [p for s in shards for p in s["p_values_mid"]]
    p_exact = [p for s in shards for p in s["p_values_exact"]]
    hits, hits_exact, n = sum(p < alpha for p in p_mid), sum(p < alpha for p in p_exact), len(p_mid)
    pooled = {
        "shards": [str(d) for d in shard_dirs], "repeats": n, "buyers_per_repeat": buyers, "alpha": alpha,
        "variant": variant, "driver": driver, "false_positives": hits, "false_positive_rate": hits / n,
        "false_positive_rate_wilson_95": list(wilson_interval(hits, n)),
        "false_positive_rate_exact_test": hits_exact / n,
        "false_positive_rate_exact_test_wilson_95": list(wilson_interval(hits_exact, n)),
        "mean_conversion": sum(s["mean_conversion_a"] * s["repeats"] for s in shards) / n,
        "mean_discordant_pairs": sum(s["mean_discordant_pairs"] * s["repeats"] for s in shards) / n,
        "p_value_histogram_10_bins": np.histogram(p_mid, bins=np.linspace(0, 1, 11))[0].tolist(),
        "seeds": seeds, "p_values_mid": p_mid, "p_values_exact": p_exact,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / CALIBRATION_FILE).write_text(json.dumps(pooled, indent=2))
    plot_pvalue_histogram(p_mid, alpha, out / "aa_pvalues.png",
                          title=f"A/A {variant}: {n} repeats × {buyers} buyers, FPR {hits / n:.3f}")
    low, high = pooled["false_positive_rate_wilson_95"]
    console.print(f"pooled A/A: {hits}/{n} significant → FPR {hits / n:.3f} (Wilson 95% [{low:.3f}, {high:.3f}]); "
                  f"exact test FPR {hits_exact / n:.3f}; histogram {pooled['p_value_histogram_10_bins']}; {out}")
    return pooled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=100, help="A/A repeats")
    parser.add_argument("--buyers", type=int, default=100, help="buyers per A/A arm")
    parser.add_argument("--detect-buyers", type=int, default=200, help="buyers of the default-vs-worse run (0: skip)")
    parser.add_argument("--codebook", type=Path, default=None)
    parser.add_argument("--shop", default="calibration")
    parser.add_argument("--products", type=int, default=60, help="REES46 products in the store")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="first A/A seed (repeat r uses seed + r); shards use disjoint ranges")
    parser.add_argument("--out", type=Path, default=REPO / "runs")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="pool finished shards' aa/ directories (their aa_calibration.json) into --out/--run-id")
    args = parser.parse_args()

    console = Console()
    if args.merge:
        merge_shards(console, args.merge, args.out / (args.run_id or "ab-calibration-merged"))
        return 0
    if not REES46.is_file():
        console.print(f"[red]error:[/red] real data not found at {REES46}")
        return 1
    run_id = args.run_id or time.strftime("ab-calibration-%Y%m%d-%H%M%S")
    root = args.out / run_id
    codebook = args.codebook or write_illustrative_codebook(root / "codebook")
    catalog = rees46_catalog(REES46, STORE_SHOP, args.products)
    policy = TypeProfilePolicy.from_codebook(codebook)
    common = dict(shop=args.shop, codebook_dir=codebook, catalog=catalog, catalog_shop=STORE_SHOP,
                  driver="http", concurrency=args.concurrency, out_dir=root, seed=args.seed)

    report = {}
    if args.repeats:
        report.update(calibrate_aa(console, policy, common, args.repeats, args.buyers))
    if args.detect_buyers:
        started = time.perf_counter()
        detect = ABConfig(**common, variant_a="default", variant_b="worse", buyers=args.detect_buyers, run_id="detect")
        summary = asyncio.run(run_ab(detect, policy)).summary
        mc = summary["mcnemar"]
        console.print(
            f"default vs worse ({summary['n']} buyers): CR {summary['conversion_a']:.3f} → {summary['conversion_b']:.3f}, "
            f"ΔCR {summary['delta']:+.3f} [{summary['ci'][0]:+.3f}, {summary['ci'][1]:+.3f}], "
            f"McNemar b={mc['b_only_a_converted']} c={mc['c_only_b_converted']} mid-p {mc['p_mid']:.2g} "
            f"(exact {mc['p_exact']:.2g}); {summary['verdict']}"
        )
        report["detect"] = {k: summary[k] for k in ("n", "conversion_a", "conversion_b", "delta", "ci", "mcnemar", "p_value", "verdict")}
        report["detect_wall_s"] = time.perf_counter() - started
    (root / "calibration_report.json").write_text(json.dumps(report, indent=2))
    console.print(f"results in {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
