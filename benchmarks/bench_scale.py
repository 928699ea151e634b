"""Scaling of the population simulation: buyers per minute against concurrency, and 1 vs 2 Ray workers.

    .venv/bin/python benchmarks/bench_scale.py [--buyers 16] [--levels 1 2 4 8 16] [--ray-concurrency 4]

All runs drive the same population (same shop mix, same seed) with the type-profile policy in
headless Chromium against our mock store (products of the real REES46 log, default layout).

    concurrency sweep   one process, one shared browser, C buyers at a time for each C in --levels;
                        ratio against C = 1 (the first level)
    Ray                 harness.sim.scale.run_sharded on a local Ray cluster (2 CPUs): 1 shard against
                        2 shards, each shard with its own Chromium and --ray-concurrency buyers at a
                        time; ratio against 1 shard. Ray's start-up is outside the timing, each
                        shard's Chromium launch inside it (a real sharded run pays it too).

Buyers per minute is the buyers of the run over its wall time. On a machine shared with other
work the absolute figures move; the ratios are measured within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent.baselines import TypeProfilePolicy  # noqa: E402
from bench_simulate import REES46, SHOP, real_catalog, write_codebook  # noqa: E402
from harness.drivers.browser import BrowserPool  # noqa: E402
from harness.sim.policies import PolicySpec  # noqa: E402
from harness.sim.scale import ScaleConfig, run_sharded  # noqa: E402
from harness.sim.simulate import SimulationConfig, run_simulation  # noqa: E402
from storefronts.server import serve_store  # noqa: E402

MAX_STEPS = 30


def _config(store, codebook: Path, out: Path, run_id: str, buyers: int, concurrency: int) -> SimulationConfig:
    return SimulationConfig(
        store_url=store.url, shop=SHOP, codebook_dir=codebook, buyers=buyers, concurrency=concurrency,
        driver="browser", max_steps=MAX_STEPS, seed=0, out_dir=out, run_id=run_id, store_db=store.db_path,
        our_store=True, variant=store.variant.name, progress=False,
    )


async def concurrency_sweep(store, codebook: Path, out: Path, buyers: int, levels: list[int]) -> list[dict]:
    rows = []
    async with BrowserPool(headless=True, max_concurrency=max(levels)) as pool:
        for concurrency in levels:
            started = time.perf_counter()
            result = await run_simulation(_config(store, codebook, out, f"c{concurrency}", buyers, concurrency),
                                          TypeProfilePolicy.from_codebook(codebook), pool)
            wall = time.perf_counter() - started
            rows.append(_row(f"1 process, concurrency {concurrency}", result.summary, wall))
            print(f"  concurrency {concurrency}: {rows[-1]['buyers_per_min']:.1f} buyers/min", flush=True)
    return rows


def ray_workers(store, codebook: Path, out: Path, buyers: int, concurrency: int) -> list[dict]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = []
    try:
        for shards in (1, 2):
            config = _config(store, codebook, out, f"ray{shards}", buyers, concurrency)
            started = time.perf_counter()
            result = run_sharded(config, PolicySpec("type-profile"), ScaleConfig(shards=shards))
            wall = time.perf_counter() - started
            rows.append(_row(f"Ray, {shards} worker{'s' if shards > 1 else ''} x concurrency {concurrency}", result.summary, wall))
            print(f"  {shards} Ray worker(s): {rows[-1]['buyers_per_min']:.1f} buyers/min", flush=True)
    finally:
        ray.shutdown()
    return rows


def _row(label: str, summary: dict, wall_s: float) -> dict:
    return {
        "setup": label,
        "buyers": summary["completed"],
        "errors": summary["outcomes"]["error"],
        "converted": summary["converted"],
        "wall_s": round(wall_s, 2),
        "buyers_per_min": 60 * summary["completed"] / wall_s,
    }


def print_table(title: str, rows: list[dict]) -> None:
    table = Table(title=title)
    for column in ("setup", "buyers", "errors", "converted", "wall s", "buyers/min", "ratio"):
        table.add_column(column, justify="left" if column == "setup" else "right")
    baseline = rows[0]["buyers_per_min"]
    for row in rows:
        table.add_row(row["setup"], str(row["buyers"]), str(row["errors"]), str(row["converted"]), f"{row['wall_s']:.1f}",
                      f"{row['buyers_per_min']:.1f}", f"{row['buyers_per_min'] / baseline:.2f}x")
    Console(width=120).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buyers", type=int, default=16, help="buyers per run")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="concurrency levels")
    parser.add_argument("--ray-concurrency", type=int, default=4, help="buyers at a time per Ray shard")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if not REES46.is_file():
        sys.exit(f"real data not found at {REES46}")

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        codebook = write_codebook(tmp / "codebook")
        with serve_store(real_catalog(), SHOP, variant="default", db_path=tmp / "store.sqlite") as store:
            print(f"concurrency sweep, {args.buyers} buyers per run", flush=True)
            sweep = asyncio.run(concurrency_sweep(store, codebook, tmp / "runs", args.buyers, args.levels))
            ray_rows = [] if args.skip_ray else ray_workers(store, codebook, tmp / "runs", args.buyers, args.ray_concurrency)
    print_table(f"browser driver, type-profile policy, {args.buyers} buyers: concurrency (ratio vs C={args.levels[0]})", sweep)
    if ray_rows:
        print_table("Ray workers (ratio vs 1 worker)", ray_rows)
    if args.json:
        args.json.write_text(json.dumps({"sweep": sweep, "ray": ray_rows}, indent=2))


if __name__ == "__main__":
    main()
