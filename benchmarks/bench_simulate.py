"""Throughput of the population simulation against the mock store, all measured in one run.

    .venv/bin/python benchmarks/bench_simulate.py [--buyers 16] [--levels 1,2,4,8] [--rounds 2]

Runs of the same population (same shop mix, same seed, so the same buyers doing the same things)
with the type-profile policy, all through one BrowserPool (the same code path and settings at
every concurrency). The levels take turns, round after round (1, 8, 1, 8, ...), and each level's
rounds are added up: this machine's speed drifts by tens of percent over minutes, and a drift
then falls on every level alike instead of on whichever ran last. Each round's own ratio is
printed too.

    browser, concurrency 1          the baseline
    browser, concurrency 2, 4, 8    target at the highest level: at least 4x the baseline's buyers/min
    http,    highest concurrency    the plain-HTTP driver against the browser driver

plus what the browser costs: the proportional set size (PSS, so pages shared between Chromium
processes count once) of this process and all its children, sampled during the highest-concurrency
run, minus the same measure with the browser open and no context, over C; and the Chromium process
count and resident memory before and after all runs (they should come back to where they were).

The store serves products of the real REES46 log (/work/shared/data) in the built-in default
layout (address, delivery, payment, review), and the codebook artifact is a small hand-written one with a buying,
a browsing and an in-between type, so buyers do whole funnels.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from harness.drivers.browser import BrowserPool, pool_rss_mb  # noqa: E402
from harness.sim.simulate import SimulationConfig, run_simulation  # noqa: E402
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


class CpuMeter:
    """CPU seconds spent by this process tree (Python, Playwright's driver, every Chromium process)
    while open. A renderer's time is read while it lives (sampled), so one that ends between two
    samples loses at most an interval's worth. Less disturbed by other load than wall time."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self._start: dict[tuple[int, float], float] = {}
        self._last: dict[tuple[int, float], float] = {}
        self._task: asyncio.Task | None = None

    def _read(self) -> dict[tuple[int, float], float]:
        me = psutil.Process(os.getpid())
        readings = {}
        for process in [me, *me.children(recursive=True)]:
            try:
                times = process.cpu_times()
                readings[(process.pid, process.create_time())] = times.user + times.system
            except psutil.Error:
                continue
        return readings

    async def _sample(self) -> None:
        while True:
            self._last.update(await asyncio.to_thread(self._read))
            await asyncio.sleep(self.interval_s)

    @property
    def seconds(self) -> float:
        return sum(value - self._start.get(key, 0.0) for key, value in self._last.items())

    async def __aenter__(self) -> "CpuMeter":
        self._start = self._read()
        self._last = dict(self._start)
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._task.cancel()
        self._last.update(self._read())


def combine(rounds: list[dict]) -> dict:
    """One level's rounds as one run: totals of buyers, steps and seconds, so rates are pooled."""
    throughputs = [r["throughput"] for r in rounds]
    buyers = sum(t["buyers_this_session"] for t in throughputs)
    steps = sum(t["steps_this_session"] for t in throughputs)
    seconds = sum(t["wall_s"] for t in throughputs)
    return {
        "throughput": {"buyers_this_session": buyers, "steps_this_session": steps, "wall_s": seconds,
                       "buyers_per_min": 60 * buyers / seconds, "steps_per_s": steps / seconds,
                       "mean_batch_size": sum(t["mean_batch_size"] for t in throughputs) / len(rounds)},
        "converted": sum(r["converted"] for r in rounds),
        "completed": sum(r["completed"] for r in rounds),
        "store_counted": {"agreement": min(r["store_counted"]["agreement"] for r in rounds)},
        "cpu_idle_share": sum(r["cpu_idle_share"] * r["throughput"]["wall_s"] for r in rounds) / seconds,
        "cpu_s_per_buyer": sum(r["cpu_s_per_buyer"] * r["throughput"]["buyers_this_session"] for r in rounds) / buyers,
        "rounds": rounds,
    }


async def measure(store, codebook: Path, out: Path, buyers: int, levels: list[int], rounds: int) -> dict:
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
        async with CpuMeter() as cpu:
            summary = (await run_simulation(config(run_id, driver, c), policy(), pool)).summary
        after = psutil.cpu_times()
        spent = sum(after) - sum(before)
        summary["cpu_idle_share"] = (after.idle - before.idle) / spent if spent > 0 else None
        summary["cpu_s_per_buyer"] = cpu.seconds / max(1, summary["throughput"]["buyers_this_session"])
        return summary

    top = max(levels)
    results = {"http": await timed(f"http-c{top}", "http", top), "browser": {}}
    per_level: dict[int, list[dict]] = {c: [] for c in levels}
    sampler = PssSampler()
    async with BrowserPool(max_concurrency=top) as pool:
        await asyncio.sleep(1.0)
        idle = PssSampler.current()  # browser open, no context
        results["processes_before"] = (len(pool.processes()), pool_rss_mb(pool.processes()))
        for round_index in range(rounds):
            for c in levels:
                with sampler if c == top else contextlib.nullcontext():  # peak memory at the top level
                    per_level[c].append(await timed(f"browser-c{c}-r{round_index}", "browser", c, pool))
        results["browser"] = {c: combine(runs) for c, runs in per_level.items()}
        await asyncio.sleep(1.0)  # closed contexts take their renderers down asynchronously
        results["processes_after"] = (len(pool.processes()), pool_rss_mb(pool.processes()))
        results["relaunches"] = pool.relaunches
    results["pss_idle_mb"] = idle / 2**20
    results["pss_peak_mb"] = sampler.peak / 2**20
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buyers", type=int, default=16, help="buyers per run (the same population each time)")
    parser.add_argument("--levels", default="1,2,4,8", help="browser concurrency levels, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="turns of every level, added up per level")
    args = parser.parse_args()
    args.levels = sorted({int(level) for level in args.levels.split(",")})
    if args.levels[0] != 1:
        sys.exit("--levels must include 1 (the baseline)")
    if not REES46.is_file():
        sys.exit(f"real data not found at {REES46}")

    console = Console(width=150)
    work = Path(tempfile.mkdtemp(prefix="bench-simulate-"))
    try:
        codebook = write_codebook(work / "codebook")
        variant = Variant()  # the built-in default store, payment step included
        started = time.perf_counter()
        with serve_store(real_catalog(), SHOP, variant=variant, db_path=work / "store.sqlite") as store:
            results = asyncio.run(measure(store, codebook, work / "runs", args.buyers, args.levels, args.rounds))
        report(console, results, args, time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(console: Console, results: dict, args, total_s: float) -> None:
    c = max(args.levels)
    rows = [("browser", level, results["browser"][level]) for level in args.levels] + [("http", c, results["http"])]
    baseline = results["browser"][1]["throughput"]["buyers_per_min"]
    browser_top = results["browser"][c]["throughput"]["buyers_per_min"]
    table = Table(title=f"simulate throughput: {args.buyers} buyers per run, browser runs x {args.rounds} rounds, "
                        f"type-profile policy, {os.cpu_count()} CPUs")
    for column in ("driver", "C", "buyers/min", "steps/s", "steps", "converted", "store agrees", "mean batch", "CPU idle",
                   "CPU s/buyer", "vs browser C=1"):
        table.add_column(column, justify="right")
    for driver, concurrency, summary in rows:
        throughput = summary["throughput"]
        table.add_row(
            driver, str(concurrency), f"{throughput['buyers_per_min']:.1f}", f"{throughput['steps_per_s']:.2f}",
            str(throughput["steps_this_session"]), f"{summary['converted']}/{summary['completed']}",
            f"{summary['store_counted']['agreement']:.0%}", f"{throughput['mean_batch_size']:.2f}",
            f"{summary['cpu_idle_share']:.0%}", f"{summary['cpu_s_per_buyer']:.2f}",
            f"{throughput['buyers_per_min'] / baseline:.2f}x",
        )
    console.print(table)
    per_context = (results["pss_peak_mb"] - results["pss_idle_mb"]) / c
    console.print(f"concurrency speed-up (browser c={c} / c=1): {browser_top / baseline:.2f}x  (target >= 4x)")
    by_round = [top["throughput"]["buyers_per_min"] / one["throughput"]["buyers_per_min"]
                for one, top in zip(results["browser"][1]["rounds"], results["browser"][c]["rounds"])]
    console.print(f"  round by round: {', '.join(f'{ratio:.2f}x' for ratio in by_round)}")
    # What a machine with nothing else running could reach: c buyers at the C=1 pace, or all cores
    # busy with this run's own CPU cost per buyer, whichever is lower.
    c1 = results["browser"][1]
    seconds_per_buyer_c1 = 60 / baseline
    cpu_bound = os.cpu_count() * seconds_per_buyer_c1 / results["browser"][c]["cpu_s_per_buyer"]
    console.print(
        f"  on an otherwise idle machine at most {min(c, cpu_bound):.1f}x: C=1 takes {seconds_per_buyer_c1:.1f} s "
        f"per buyer, one buyer costs {results['browser'][c]['cpu_s_per_buyer']:.2f} CPU s at c={c} "
        f"({c1['cpu_s_per_buyer']:.2f} at C=1), {os.cpu_count()} CPUs"
    )
    console.print(f"http / browser at c={c}: {results['http']['throughput']['buyers_per_min'] / browser_top:.2f}x")
    console.print(
        f"memory: browser idle {results['pss_idle_mb']:.0f} MB PSS, peak at c={c} {results['pss_peak_mb']:.0f} MB "
        f"-> {per_context:.0f} MB per browser context"
    )
    (count_before, rss_before), (count_after, rss_after) = results["processes_before"], results["processes_after"]
    console.print(
        f"Chromium processes before/after all runs: {count_before} / {count_after}, "
        f"RSS {rss_before:.0f} / {rss_after:.0f} MB; browser relaunches: {results['relaunches']}"
    )
    console.print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}; total {total_s:.0f} s")


if __name__ == "__main__":
    main()
