"""A faulty run accounted for buyer by buyer, then an interrupted run resumed and compared.

    .venv/bin/python benchmarks/bench_faults.py [--buyers 2000] [--concurrency 8] [--resume-buyers 200]

Part 1, faults. The mock store (real REES46 products, default layout) answers --error-rate of all
requests with HTTP 500; the type-profile policy drives --buyers buyers in headless Chromium,
--concurrency at a time; when half of them are written, the Chromium browser process is killed
(SIGKILL). Printed: the accounting table (outcome x reason, attempts), the retries and browser
relaunches, the faults the store injected, buyers per minute, and the peak RSS and Chromium
process count sampled every second over the run, first half against second half (flat: no leak).

Part 2, SIGINT and --resume. `simpersona simulate` runs --resume-buyers buyers in a subprocess
(no faults, so a deterministic policy must repeat itself); it gets SIGINT when half are written,
then `--resume` finishes it; an uninterrupted run of the same population is the baseline. Printed:
exit status, buyers written before the stop, seconds from signal to exit, buyers the resume ran,
duplicates, per-buyer outcome matches and whether the summaries' conversion figures are equal,
and the time of interrupted + resumed against the uninterrupted run (the ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from agent.baselines import TypeProfilePolicy  # noqa: E402
from bench_simulate import REES46, SHOP, real_catalog, write_codebook  # noqa: E402
from harness.sim.rundir import latest_per_buyer  # noqa: E402
from harness.sim.simulate import SimulationConfig, run_simulation  # noqa: E402
from storefronts.faults import Faults  # noqa: E402
from storefronts.server import serve_store  # noqa: E402

SIMPERSONA = REPO / ".venv" / "bin" / "simpersona"
CONVERSION_KEYS = ("buyers", "completed", "converted", "conversion_rate", "conversion_gap", "outcomes", "per_type", "complete")


# --- processes ------------------------------------------------------------------------------------


def chromium_processes(root: psutil.Process) -> list[psutil.Process]:
    found = []
    for process in root.children(recursive=True):
        try:
            if "chrom" in process.name():
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def is_browser_process(process: psutil.Process) -> bool:
    """The browser process itself, not a renderer, GPU or utility process."""
    try:
        return not any(arg.startswith("--type=") for arg in process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def rss(processes: list[psutil.Process]) -> int:
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def written_lines(trajectories: Path) -> int:
    return trajectories.read_bytes().count(b"\n") if trajectories.exists() else 0


class Sampler:
    """Every interval: buyers written, this process's RSS, Chromium's RSS and process count."""

    def __init__(self, trajectories: Path, interval_s: float = 1.0):
        self.trajectories = trajectories
        self.interval_s = interval_s
        self.samples: list[dict] = []
        self._task: asyncio.Task | None = None

    def take(self) -> dict:
        me = psutil.Process(os.getpid())
        chromium = chromium_processes(me)
        return {"t": time.perf_counter(), "written": written_lines(self.trajectories), "python_rss": me.memory_info().rss,
                "chromium_rss": rss(chromium), "chromium_processes": len(chromium)}

    async def _run(self) -> None:
        while True:
            self.samples.append(await asyncio.to_thread(self.take))
            await asyncio.sleep(self.interval_s)

    def __enter__(self) -> "Sampler":
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc_info) -> None:
        self._task.cancel()


# --- part 1: faults -------------------------------------------------------------------------------


async def faulty_run(store, codebook: Path, out: Path, buyers: int, concurrency: int) -> dict:
    config = SimulationConfig(
        store_url=store.url, shop=SHOP, codebook_dir=codebook, buyers=buyers, concurrency=concurrency,
        driver="browser", max_steps=30, seed=0, out_dir=out, run_id="faulty", store_db=store.db_path,
        our_store=True, variant=store.variant.name, settle_ms=0, progress=True, buyer_timeout_s=120,
    )
    trajectories = config.run_dir / "trajectories.jsonl"
    killed: dict = {}

    async def kill_when_half_written() -> None:
        while written_lines(trajectories) < buyers // 2:
            await asyncio.sleep(0.2)
        for process in chromium_processes(psutil.Process(os.getpid())):
            if is_browser_process(process):
                killed.update(pid=process.pid, at_written=written_lines(trajectories))
                process.kill()
                return

    killer = asyncio.create_task(kill_when_half_written())
    with Sampler(trajectories) as sampler:
        result = await run_simulation(config, TypeProfilePolicy.from_codebook(codebook))
    killer.cancel()
    return {"summary": result.summary, "records": result.trajectories, "samples": sampler.samples, "killed": killed}


def reason_class(record: dict) -> str:
    reason = record["terminate_reason"]
    if record["outcome"] == "error":
        return reason.split(":")[0]  # the exception type; the message names ports and pages
    return reason


def report_faults(console: Console, part: dict, faults: Faults, args, wall_s: float) -> dict:
    records, summary = part["records"], part["summary"]
    table = Table(title=f"accounting: {len(records)} of {args.buyers} buyers, {args.error_rate:.0%} HTTP 500s, "
                        f"Chromium killed at {part['killed'].get('at_written', '-')} written")
    for column in ("outcome", "reason", "buyers", "retried (attempts 2)"):
        table.add_column(column, justify="right" if column != "reason" else "left")
    cells = Counter((r["outcome"], reason_class(r)) for r in records)
    retried = Counter((r["outcome"], reason_class(r)) for r in records if r.get("attempts", 1) > 1)
    for (outcome, reason), n in sorted(cells.items(), key=lambda item: (item[0][0], -item[1])):
        table.add_row(outcome, reason[:60], str(n), str(retried[(outcome, reason)]))
    table.add_row("all", "", str(len(records)), str(sum(retried.values())))
    console.print(table)
    first_errors = Counter(r["first_error"].split(":")[0] for r in records if r.get("first_error"))
    session = summary["faults_this_session"]
    console.print(
        f"retries: {session['retried']} buyers rerun after an infrastructure error, {session['recovered_by_retry']} "
        f"of them finished; first errors {dict(first_errors)}; browser relaunches {session['browser_relaunches']}"
    )
    injected = faults.injected
    console.print(f"store injected: {injected['errors']} HTTP 500s in {injected['requests']} requests "
                  f"({injected['errors'] / max(injected['requests'], 1):.1%})")
    accounted = len({r["buyer_index"] for r in records}) == args.buyers == len(records)
    console.print(f"every buyer accounted for once: {accounted}; complete: {summary['complete']}; "
                  f"{summary['throughput']['buyers_per_min']:.1f} buyers/min ({wall_s:.0f} s)")

    samples = part["samples"]
    half = len(samples) // 2 or 1
    first, second = samples[:half], samples[half:] or samples[:half]

    def peak(rows, key):
        return max(row[key] for row in rows)

    console.print(
        "memory/processes (peak, first half -> second half of the run): "
        f"python RSS {peak(first, 'python_rss') / 2**20:.0f} -> {peak(second, 'python_rss') / 2**20:.0f} MB, "
        f"Chromium RSS {peak(first, 'chromium_rss') / 2**20:.0f} -> {peak(second, 'chromium_rss') / 2**20:.0f} MB, "
        f"Chromium processes {peak(first, 'chromium_processes')} -> {peak(second, 'chromium_processes')}"
        f"  ({len(samples)} samples)"
    )
    return {
        "accounting": {f"{o} | {r}": n for (o, r), n in cells.items()},
        "retried": session["retried"], "recovered_by_retry": session["recovered_by_retry"],
        "browser_relaunches": session["browser_relaunches"], "first_errors": dict(first_errors),
        "injected": dict(injected), "all_accounted": accounted, "buyers_per_min": summary["throughput"]["buyers_per_min"],
        "peak_python_rss_mb": [peak(first, "python_rss") / 2**20, peak(second, "python_rss") / 2**20],
        "peak_chromium_rss_mb": [peak(first, "chromium_rss") / 2**20, peak(second, "chromium_rss") / 2**20],
        "peak_chromium_processes": [peak(first, "chromium_processes"), peak(second, "chromium_processes")],
        "killed": part["killed"],
    }


# --- part 2: SIGINT and --resume ------------------------------------------------------------------


def cli(catalog: Path, codebook: Path, out: Path, run_id: str, buyers: int, concurrency: int) -> list[str]:
    return [
        str(SIMPERSONA), "simulate", "--catalog", str(catalog), "--catalog-shop", SHOP, "--shop", SHOP,
        "--codebook", str(codebook), "--policy", "type-profile", "--buyers", str(buyers), "--concurrency",
        str(concurrency), "--driver", "browser", "--settle-ms", "0", "--max-steps", "30", "--seed", "1",
        "--out", str(out), "--run-id", run_id,
    ]


def lines_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines() if line.strip()]


def interrupted_and_resumed(console: Console, catalog: Path, codebook: Path, out: Path, buyers: int, concurrency: int) -> dict:
    env = {**os.environ, "COLUMNS": "160"}
    run_dir = out / "interrupted"
    started = time.perf_counter()
    process = subprocess.Popen(cli(catalog, codebook, out, "interrupted", buyers, concurrency), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    trajectories = run_dir / "trajectories.jsonl"
    while written_lines(trajectories) < buyers // 2:
        if process.poll() is not None:
            raise RuntimeError(f"the run ended before the signal: {process.stderr.read()}")
        time.sleep(0.1)
    signalled = time.perf_counter()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    stopped = time.perf_counter()
    written = lines_of(run_dir)
    partial = json.loads((run_dir / "summary.json").read_text())

    resumed = subprocess.run([*cli(catalog, codebook, out, "interrupted", buyers, concurrency), "--resume"],
                             cwd=REPO, env=env, capture_output=True, text=True)
    resumed_at = time.perf_counter()
    if resumed.returncode != 0:
        raise RuntimeError(f"--resume failed: {resumed.stdout[-2000:]}{resumed.stderr[-2000:]}")
    reference = subprocess.run(cli(catalog, codebook, out, "uninterrupted", buyers, concurrency),
                               cwd=REPO, env=env, capture_output=True, text=True)
    reference_s = time.perf_counter() - resumed_at
    if reference.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed: {reference.stderr[-2000:]}")

    after = lines_of(run_dir)
    indices = [r["buyer_index"] for r in after]
    expected = {r["buyer_index"]: r for r in lines_of(out / "uninterrupted")}
    latest = {r["buyer_index"]: r for r in latest_per_buyer(after)}
    same_outcome = sum(latest[i]["outcome"] == expected[i]["outcome"] for i in expected if i in latest)
    same_actions = sum([s["action"] for s in latest[i]["steps"]] == [s["action"] for s in expected[i]["steps"]]
                       for i in expected if i in latest)
    summary = json.loads((run_dir / "summary.json").read_text())
    reference_summary = json.loads((out / "uninterrupted" / "summary.json").read_text())
    figures_equal = {k: summary[k] for k in CONVERSION_KEYS} == {k: reference_summary[k] for k in CONVERSION_KEYS}
    figures = {
        "buyers": buyers, "exit_status": process.returncode, "written_before_stop": len(written),
        "partial_summary_complete": partial["complete"], "partial_summary_interrupted": partial["interrupted"],
        "signal_to_exit_s": round(stopped - signalled, 2), "resume_ran": summary["throughput"]["buyers_this_session"],
        "duplicates": len(indices) - len(set(indices)), "missing": buyers - len(set(indices)),
        "same_outcome": same_outcome, "same_actions": same_actions, "conversion_figures_equal": figures_equal,
        "converted": [summary["converted"], reference_summary["converted"]],
        "interrupted_plus_resumed_s": round(resumed_at - started, 1), "uninterrupted_s": round(reference_s, 1),
    }
    table = Table(title=f"SIGINT at {buyers // 2} of {buyers} written, then --resume, against an uninterrupted run")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, str(value))
    table.add_row("time ratio (interrupted+resumed / uninterrupted)",
                  f"{figures['interrupted_plus_resumed_s'] / max(figures['uninterrupted_s'], 1e-9):.2f}x")
    console.print(table)
    for index in sorted(expected):
        ours, theirs = latest.get(index), expected[index]
        if ours is None or [s["action"] for s in ours["steps"]] != [s["action"] for s in theirs["steps"]]:
            def brief(record):
                if record is None:
                    return "missing"
                errors = [s["error"] for s in record["steps"] if s["error"]]
                return f"{record['outcome']} ({record['terminate_reason'][:50]}), {record['n_steps']} steps, step errors {errors[:2]}"
            console.print(f"  buyer {index} differs: resumed {brief(ours)} | uninterrupted {brief(theirs)}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buyers", type=int, default=2000, help="buyers of the faulty run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--error-rate", type=float, default=0.10, help="share of store requests answered 500")
    parser.add_argument("--resume-buyers", type=int, default=None, help="buyers of the SIGINT/resume runs (default: buyers/10, at least 20)")
    parser.add_argument("--skip-resume", action="store_true", help="only the faulty run")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it (runs, store logs)")
    args = parser.parse_args()
    if not REES46.is_file():
        sys.exit(f"real data not found at {REES46}")
    resume_buyers = args.resume_buyers or max(20, args.buyers // 10)

    console = Console(width=150)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"buyers": args.buyers, "concurrency": args.concurrency, "cpus": os.cpu_count()}
    try:
        codebook = write_codebook(work / "codebook")
        faults = Faults(error_rate=args.error_rate, seed=0)
        started = time.perf_counter()
        with serve_store(real_catalog(), SHOP, variant="default", db_path=work / "store.sqlite", faults=faults) as store:
            part = asyncio.run(faulty_run(store, codebook, work / "runs", args.buyers, args.concurrency))
        results["faults"] = report_faults(console, part, faults, args, time.perf_counter() - started)
        if not args.skip_resume:
            catalog = work / "catalog.parquet"
            real_catalog().to_parquet(catalog)
            results["resume"] = interrupted_and_resumed(console, catalog, codebook, work / "cli-runs", resume_buyers, args.concurrency)
        console.print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
