"""Throughput of the population simulation against the mock store, all measured in one run.

    .venv/bin/python benchmarks/bench_simulate.py [--buyers 16] [--concurrency 8]

Three runs of the same population (same shop mix, same seed, so the same buyers doing the same
things) with the type-profile policy:

    browser, concurrency 1   the baseline
    browser, concurrency C   target: at least 4x the baseline's buyers per minute
    http,    concurrency C   the plain-HTTP driver against the browser driver at the same C

plus the memory one browser context costs: the proportional set size (PSS, so pages shared
between Chromium processes count once) of this process and all its children, sampled during the
concurrency-C browser run, minus the same measure with the browser open and no context, over C.

The store serves products of the real REES46 log (/work/shared/data) in the built-in default
layout (address, delivery, payment, review), and the codebook artifact is a small hand-written one with a buying,
a browsing and an in-between type, so buyers do whole funnels.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.baselines import TypeProfilePolicy  # noqa: E402
from harness.browser import BrowserPool  # noqa: E402
from harness.simulate import SimulationConfig, run_simulation  # noqa: E402
from storefronts.fixtures import rees46_catalog  # noqa: E402
from storefronts.server import serve_store  # noqa: E402
from storefronts.variants import Variant  # noqa: E402

REES46 = REPO.parent / "shared" / "data" / "rees46_multicategory_2019oct" / "2019-Oct_head17k.csv"
SHOP = "bench"


def real_catalog(products: int = 60) -> pd.DataFrame:
    return rees46_catalog(REES46, SHOP, products)


def write_codebook(directory: Path) -> Path:
    """shop_mix.json and types.json in the shape codebook/profiles.py writes."""
    directory.mkdir(parents=True, exist_ok=True)
    shop_mix = {"codebook_size": 3, "shops": {SHOP: {"n_buyers": 100, "probs": [0.4, 0.4, 0.2]}}}
    types = {
        "codebook_size": 3,
        "types": [
            {"code": 0, "share": 0.4, "conversion_rate": 0.8, "cart_rate": 0.9, "median_product_views": 2,
             "top_categories": [{"category": "electronics.smartphone", "share": 0.6}]},
            {"code": 1, "share": 0.4, "conversion_rate": 0.05, "median_events": 3, "top_categories": []},
            {"code": 2, "share": 0.2, "conversion_rate": 0.3, "median_events": 2, "top_categories": []},
        ],
    }
    (directory / "shop_mix.json").write_text(json.dumps(shop_mix))
    (directory / "types.json").write_text(json.dumps(types))
    return directory


class PssSampler:
    """Peak PSS of this process tree (Python, Playwright's driver, every Chromium process)."""

    def __init__(self, interval_s: float = 0.25):
        self.interval_s = interval_s
        self.peak = 0
        self._task: asyncio.Task | None = None

    @staticmethod
    def current() -> int:
        me = psutil.Process(os.getpid())
        total = 0
        for process in [me, *me.children(recursive=True)]:
            try:
                total += process.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, await asyncio.to_thread(self.current))
            await asyncio.sleep(self.interval_s)

    def __enter__(self) -> "PssSampler":
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *exc_info) -> None:
        self._task.cancel()


async def measure(store, codebook: Path, out: Path, buyers: int, concurrency: int) -> dict:
    def config(run_id: str, driver: str, c: int) -> SimulationConfig:
        return SimulationConfig(
            store_url=store.url, shop=SHOP, codebook_dir=codebook, buyers=buyers, concurrency=c, driver=driver,
            max_steps=30, seed=0, out_dir=out, run_id=run_id, store_db=store.db_path, our_store=True,
            variant=store.variant.name, progress=True,
        )

    def policy() -> TypeProfilePolicy:
        return TypeProfilePolicy.from_codebook(codebook)

    async def timed(run_id: str, driver: str, c: int, pool=None) -> dict:
        """One run's summary, plus the share of the machine's CPU time that stayed idle meanwhile."""
        before = psutil.cpu_times()
        summary = (await run_simulation(config(run_id, driver, c), policy(), pool)).summary
        after = psutil.cpu_times()
        spent = sum(after) - sum(before)
        summary["cpu_idle_share"] = (after.idle - before.idle) / spent if spent > 0 else None
        return summary

    results = {"http_cN": await timed(f"http-c{concurrency}", "http", concurrency)}
    async with BrowserPool(max_concurrency=concurrency) as pool:
        await asyncio.sleep(1.0)
        idle = PssSampler.current()  # browser open, no context
        results["browser_c1"] = await timed("browser-c1", "browser", 1, pool)
        with PssSampler() as sampler:
            results["browser_cN"] = await timed(f"browser-c{concurrency}", "browser", concurrency, pool)
    results["pss_idle_mb"] = idle / 2**20
    results["pss_peak_mb"] = sampler.peak / 2**20
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buyers", type=int, default=16, help="buyers per run (the same population each time)")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    if not REES46.is_file():
        sys.exit(f"real data not found at {REES46}")

    console = Console(width=150)
    work = Path(tempfile.mkdtemp(prefix="bench-simulate-"))
    try:
        codebook = write_codebook(work / "codebook")
        variant = Variant()  # the built-in default store, payment step included
        started = time.perf_counter()
        with serve_store(real_catalog(), SHOP, variant=variant, db_path=work / "store.sqlite") as store:
            results = asyncio.run(measure(store, codebook, work / "runs", args.buyers, args.concurrency))
        report(console, results, args, time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(console: Console, results: dict, args, total_s: float) -> None:
    c = args.concurrency
    rows = [("browser", 1, results["browser_c1"]), ("browser", c, results["browser_cN"]), ("http", c, results["http_cN"])]
    baseline = results["browser_c1"]["throughput"]["buyers_per_min"]
    browser_cn = results["browser_cN"]["throughput"]["buyers_per_min"]
    table = Table(title=f"simulate throughput: {args.buyers} buyers per run, type-profile policy, {os.cpu_count()} CPUs")
    for column in ("driver", "C", "buyers/min", "steps/s", "steps", "converted", "store agrees", "mean batch", "CPU idle", "vs browser C=1"):
        table.add_column(column, justify="right")
    for driver, concurrency, summary in rows:
        throughput = summary["throughput"]
        table.add_row(
            driver, str(concurrency), f"{throughput['buyers_per_min']:.1f}", f"{throughput['steps_per_s']:.2f}",
            str(throughput["steps_this_session"]), f"{summary['converted']}/{summary['completed']}",
            f"{summary['store_counted']['agreement']:.0%}", f"{throughput['mean_batch_size']:.2f}",
            f"{summary['cpu_idle_share']:.0%}",
            f"{throughput['buyers_per_min'] / baseline:.2f}x",
        )
    console.print(table)
    per_context = (results["pss_peak_mb"] - results["pss_idle_mb"]) / c
    console.print(f"concurrency speed-up (browser c={c} / c=1): {browser_cn / baseline:.2f}x  (target >= 4x)")
    console.print(f"http / browser at c={c}: {results['http_cN']['throughput']['buyers_per_min'] / browser_cn:.2f}x")
    console.print(
        f"memory: browser idle {results['pss_idle_mb']:.0f} MB PSS, peak at c={c} {results['pss_peak_mb']:.0f} MB "
        f"-> {per_context:.0f} MB per browser context"
    )
    console.print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}; total {total_s:.0f} s")


if __name__ == "__main__":
    main()
