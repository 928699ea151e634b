"""Benchmark: the http driver's HTML parser, lxml against Python's html.parser (not a test).

The same buyers of the embedded synthetic log (or Tmall with --data tmall) are replayed into the
mock store with each parser in turn (harness.drivers.http_driver.HTML_PARSER), `--rounds` times,
alternating so that both meet the same machine load. It prints buyers/min per parser, the ratio
lxml / html.parser, and whether the two wrote the same traces (every observation and action of
every buyer): the parser may change the speed, never what a buyer sees.

    .venv/bin/python benchmarks/bench_http_parser.py
    .venv/bin/python benchmarks/bench_http_parser.py --buyers 200 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent.traces import read_traces  # noqa: E402
from bench_replay import SOURCES, choose_buyers  # noqa: E402
from codebook.ingest import ingest  # noqa: E402
from codebook.synthetic import SyntheticConfig, generate_synthetic  # noqa: E402
import harness.drivers.http_driver as http_driver  # noqa: E402
from harness.eval.replay import ReplayConfig, make_traces  # noqa: E402

PARSERS = ("html.parser", "lxml")


def traces_by_buyer(path: Path) -> dict:
    """(shop, buyer) -> trace; buyers finish in any order."""
    return {(trace.shop_id, trace.buyer_id): trace for trace in read_traces(path)}


def replay_with(parser: str, events: Path, catalog: Path, codes: pd.DataFrame, out: Path, concurrency: int) -> float:
    """Seconds to replay `codes`' buyers with `parser`."""
    http_driver.HTML_PARSER = parser
    started = time.perf_counter()
    make_traces(events, catalog, codes, out, ReplayConfig(driver="http", concurrency=concurrency,
                                                          variant="saved_details", progress=False))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["synthetic", *sorted(SOURCES)], default="synthetic")
    parser.add_argument("--buyers", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        source = generate_synthetic(scratch / "synthetic", SyntheticConfig()).events_csv if args.data == "synthetic" \
            else SOURCES[args.data]
        ingested = ingest(source, scratch / "ingest")
        events = pd.read_parquet(ingested.events_path)
        chosen = choose_buyers(events, "tmall", args.buyers, seed=0)  # purchasers of the 10 largest shops first
        codes = chosen[["shop_id", "buyer_id"]].assign(code=0)
        seconds = {name: [] for name in PARSERS}
        for round_index in range(args.rounds):
            for name in PARSERS if round_index % 2 == 0 else reversed(PARSERS):
                out = scratch / f"{name}-{round_index}"
                seconds[name].append(replay_with(name, ingested.events_path, ingested.catalog_path, codes, out,
                                                 args.concurrency))
        same = traces_by_buyer(scratch / "html.parser-0" / "traces.jsonl") == traces_by_buyer(scratch / "lxml-0" / "traces.jsonl")
    rates = {name: 60 * len(codes) / statistics.median(values) for name, values in seconds.items()}
    for name in PARSERS:
        print(f"{name:11}: {rates[name]:6.1f} buyers/min  (rounds: {', '.join(f'{s:.1f} s' for s in seconds[name])})")
    print(f"speed ratio lxml / html.parser: {rates['lxml'] / rates['html.parser']:.2f}x on {len(codes)} buyers of {args.data}")
    print(f"same traces, buyer by buyer: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
