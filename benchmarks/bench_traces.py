"""The evaluation's traces step over all folds of a seed: each training buyer replayed once
(harness.eval.shared_replays) against every fold replaying its own, measured in one run.

    .venv/bin/python benchmarks/bench_traces.py --input runs/tmall --evaluation runs/tmall/folds_s4w --seed 4

Takes each fold's codes.parquet from a finished `simpersona evaluate` dir (the codebooks are the
fold's own) and runs the evaluation's own make_protocol_traces fold after fold in a fresh dir. The
first fold has nothing to share, so it replays all its buyers: that is what every fold costs when
each replays its own, and the baseline is that fold's time per buyer times all folds' buyers.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import pandas as pd
from rich.console import Console

from harness.eval.evaluate import REPLAY_DIR, EvaluateConfig, make_protocol_traces


async def bench(args) -> None:
    console = Console()
    folds = sorted(p.parent for p in Path(args.evaluation).glob(f"fold*/{args.protocol}/codes.parquet"))
    if not folds:
        raise SystemExit(f"{args.evaluation} has no fold*/{args.protocol}/codes.parquet (run `simpersona evaluate` first)")
    with tempfile.TemporaryDirectory(prefix="bench_traces_") as scratch:
        config = EvaluateConfig(out_dir=Path(scratch), input_dir=Path(args.input), seed=args.seed, folds=len(folds),
                                progress=False)
        rows = []
        for fold in folds:
            work = Path(scratch) / fold.parent.name / args.protocol
            work.mkdir(parents=True)
            pd.read_parquet(fold / "codes.parquet").to_parquet(work / "codes.parquet")
            started = time.perf_counter()
            traces = await make_protocol_traces(config, work, console)
            seconds = time.perf_counter() - started
            replay = traces.parent / REPLAY_DIR / "traces.jsonl"
            replayed = sum(1 for _ in replay.open()) if replay.is_file() else 0
            rows.append((fold.parent.name, sum(1 for _ in traces.open()), replayed, seconds))
    per_buyer = rows[0][3] / rows[0][2]
    baseline = per_buyer * sum(row[1] for row in rows)
    shared = sum(row[3] for row in rows)
    for name, buyers, replayed, seconds in rows:
        console.print(f"{name}: {buyers:,} trace buyers, {replayed:,} replayed, {seconds:.1f} s")
    console.print(f"each fold replaying its own (fold 0's {per_buyer * 1000:.0f} ms per buyer): {baseline / 60:.1f} min; "
                  f"shared: {shared / 60:.1f} min; [bold]{baseline / shared:.2f}×[/]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="ingested dir (events.parquet, catalog.parquet)")
    parser.add_argument("--evaluation", required=True, help="a finished `simpersona evaluate --folds K` dir")
    parser.add_argument("--seed", type=int, default=0, help="the evaluation's seed")
    parser.add_argument("--protocol", default="paper")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
