"""Replay exactness and speed on bigger real samples: http driver on many buyers, Chromium on a
subset of them; prints the exact fractions and buyers/min, and the browser/http speed ratio.

    .venv/bin/python benchmarks/bench_replay.py --data tmall --buyers 300 --browser-buyers 40
    .venv/bin/python benchmarks/bench_replay.py --data rees46 --buyers 400 --browser-buyers 40

Samples (seeded): tmall_brand_2014: the 10 shops with the most buyers, every buyer of theirs who
purchased, topped up with viewers to --buyers; REES46: every buyer × shop who carted or purchased,
topped up with viewers (a --buyers below the number of those keeps the first --buyers). The browser run takes the first --browser-buyers of the sample (purchasers
first). Codes are all 0 (exactness does not depend on them). Outputs go to runs/bench-replay-*.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from codebook.ingest import ingest
from harness.eval.replay import ReplayConfig, make_traces

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SOURCES = {
    "tmall": DATA / "tmall_brand_2014" / "t_alibaba_data.csv",
    "rees46": DATA / "rees46_multicategory_2019oct" / "2019-Oct_head17k.csv",
}


def choose_buyers(events: pd.DataFrame, data: str, buyers: int, seed: int) -> pd.DataFrame:
    """(shop_id, buyer_id, purchased) of the sample, purchasers first."""
    pairs = events.groupby(["shop_id", "buyer_id"])["event_type"].agg(
        purchased=lambda s: (s == "purchase").any(), carted=lambda s: s.isin(["add_to_cart", "purchase"]).any()
    ).reset_index()
    if data == "tmall":
        top = events.groupby("shop_id")["buyer_id"].nunique().nlargest(10).index
        pairs = pairs[pairs["shop_id"].isin(top)]
        must = pairs[pairs["purchased"]]
    else:
        must = pairs[pairs["carted"]]
    rest = pairs.drop(must.index)
    extra = max(0, buyers - len(must))
    rng = np.random.default_rng(seed)
    viewers = rest.iloc[np.sort(rng.choice(len(rest), size=min(extra, len(rest)), replace=False))]
    return pd.concat([must.sort_values("purchased", ascending=False), viewers]).head(buyers)


def run(events_path: Path, catalog: Path, chosen: pd.DataFrame, out: Path, driver: str, concurrency: int) -> dict:
    codes = chosen[["shop_id", "buyer_id"]].assign(code=0)
    events = pd.read_parquet(events_path)
    keys = set(zip(chosen["shop_id"], chosen["buyer_id"]))
    subset = events[[key in keys for key in zip(events["shop_id"], events["buyer_id"])]]
    subset_path = events_path.parent / f"events_{driver}.parquet"  # beside ingest.json for the catalog note
    subset.to_parquet(subset_path)
    started = time.perf_counter()
    report = make_traces(subset_path, catalog, codes, out, ReplayConfig(driver=driver, concurrency=concurrency))
    elapsed = time.perf_counter() - started
    details = report.details
    return {"driver": driver, "buyers": report.n_buyers, "exact": report.n_exact,
            "exact_fraction": round(report.exact_fraction(), 4), "buyers_per_min": round(60 * report.n_buyers / elapsed, 1),
            "steps_per_s": round(details["steps"]["total"] / elapsed, 2),
            "steps": details["steps"], "shortened": details["shortened"], "orders": details["n_orders_confirmed"],
            "purchase_units": details["n_purchase_units"], "failed_events": details["failed_events"],
            "mismatches": report.mismatches[:5], "out": str(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(SOURCES), default="tmall")
    parser.add_argument("--buyers", type=int, default=300)
    parser.add_argument("--browser-buyers", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = SOURCES[args.data]
    if not source.is_file():
        raise SystemExit(f"{source}: real data not found (expected ../shared/data next to the repo)")
    out = REPO / "runs" / f"bench-replay-{args.data}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory() as scratch:
        ingested = ingest(source, Path(scratch) / "ingest")
        events = pd.read_parquet(ingested.events_path)
        chosen = choose_buyers(events, args.data, args.buyers, args.seed)
        results = {"http": run(ingested.events_path, ingested.catalog_path, chosen, out / "http", "http", args.concurrency)}
        if args.browser_buyers:
            results["browser"] = run(ingested.events_path, ingested.catalog_path, chosen.head(args.browser_buyers),
                                     out / "browser", "browser", args.concurrency)
    for result in results.values():
        print(f"{args.data} {result['driver']:7}: {result['exact']}/{result['buyers']} exact "
              f"({result['exact_fraction']:.1%}), {result['buyers_per_min']} buyers/min, {result['steps_per_s']} steps/s, steps {result['steps']}, "
              f"orders {result['orders']}, shortened {result['shortened']}")
    if "browser" in results:
        # Steps/s, not buyers/min: the browser sample is the purchasers-first head (longer buyers).
        print(f"speed ratio browser/http (steps/s): "
              f"{results['browser']['steps_per_s'] / results['http']['steps_per_s']:.3f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"details: {out / 'bench.json'}")


if __name__ == "__main__":
    main()
