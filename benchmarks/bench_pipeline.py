"""Benchmark: raw CSV -> buyer features, SimPersona's DuckDB pipeline against plain pandas.

Measured in one run, on the real logs in /work/shared/data (Tmall brand 2014, REES46 head,
Taobao UserBehavior head), each repeated into a larger CSV under a scratch folder so the timing
means something (every copy gets its own buyer ids, so copies are new buyers, not heavier ones):

- pipeline: codebook.ingest.ingest (validation, sessions, Parquet) + codebook.features.build_features
  (behavioural features, no embedding block);
- baseline: what one would write without the pipeline: pd.read_csv, map event codes, cut
  sessions, then groupby per shop×buyer for the same features (`pandas_features` below).

It prints events/s for both and their ratio (targets: pipeline ≥ 1M events/s, ≥ 3× the baseline)
and a floor (DuckDB copying the same CSV to Parquet with nothing checked or computed: the most any
pipeline on this reader could reach on this machine), checks that both computed the same numbers,
and times the embedding step apart (cold and warm title cache). Not a test: run it by hand.

    .venv/bin/python benchmarks/bench_pipeline.py [--events-per-dataset 1500000] [--work /tmp/...]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from codebook.features import DAY_PARTS, build_features
from codebook.ingest import PARQUET_OPTIONS, ingest
from codebook.schema import CATALOG_FILE, EVENT_TYPES, EVENTS_FILE, FEATURES_FILE

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
console = Console(width=200)


@dataclass(frozen=True)
class Dataset:
    name: str
    csv: Path
    has_header: bool
    user_column: str  # the buyer id column, rewritten per copy
    day_level: bool


DATASETS = [
    Dataset("tmall_brand_2014", DATA / "tmall_brand_2014" / "t_alibaba_data.csv", True, "user_id", True),
    Dataset("rees46", DATA / "rees46_multicategory_2019oct" / "2019-Oct_head17k.csv", True, "user_id", False),
    Dataset("taobao", DATA / "taobao_userbehavior_2017" / "UserBehavior_head.csv", False, "column0", False),
]


# ------------------------------------------------------------------------------ scaled copies


def scaled_copy(dataset: Dataset, copies: int, folder: Path) -> tuple[Path, int]:
    """Write `copies` concatenated copies of the dataset's CSV; copy k has buyer ids id*1000+k."""
    target = folder / f"{dataset.name}_x{copies}.csv"
    header = "true" if dataset.has_header else "false"
    read = f"read_csv('{dataset.csv}', all_varchar = true, header = {header})"
    columns = duckdb.sql(f"SELECT * FROM {read} LIMIT 0").columns
    select = ", ".join(
        f"(CAST({c} AS BIGINT) * 1000 + k)::VARCHAR AS {c}" if c == dataset.user_column else c for c in columns
    )
    duckdb.sql(
        f"COPY (SELECT {select} FROM {read}, range({copies}) AS r(k) ORDER BY k)"
        f" TO '{target}' (HEADER {header}, DELIMITER ',')"
    )
    rows = duckdb.sql(f"SELECT count(*) FROM {read}").fetchall()[0][0] * copies
    return target, rows


# ----------------------------------------------------------------------- the pandas baseline


def load_raw(dataset: Dataset, csv: Path) -> pd.DataFrame:
    """pd.read_csv + event-code mapping into shop_id, buyer_id, session_id, ts, event_type, ..."""
    if dataset.name == "tmall_brand_2014":
        raw = pd.read_csv(csv, dtype=str)
        codes = {"0": "product_view", "1": "purchase", "2": "add_to_wishlist", "3": "add_to_cart"}
        ts = pd.to_datetime("2013-" + raw["visit_datetime"], format="%Y-%m-%d", utc=True)
        frame = pd.DataFrame({
            "shop_id": raw["brand_id"], "buyer_id": raw["user_id"], "ts": ts,
            "event_type": raw["type"].map(codes), "product_id": "brand:" + raw["brand_id"],
            "category": None, "price": np.nan,
        })
        frame["session_id"] = frame["buyer_id"] + "@" + ts.dt.strftime("%Y-%m-%d")
        return frame
    if dataset.name == "rees46":
        raw = pd.read_csv(csv, dtype=str)
        codes = {"view": "product_view", "cart": "add_to_cart", "remove_from_cart": "remove_from_cart",
                 "purchase": "purchase"}
        return pd.DataFrame({
            "shop_id": raw["brand"], "buyer_id": raw["user_id"], "session_id": raw["user_session"],
            "ts": pd.to_datetime(raw["event_time"], format="%Y-%m-%d %H:%M:%S UTC", utc=True),
            "event_type": raw["event_type"].map(codes), "product_id": raw["product_id"],
            "category": raw["category_code"].fillna(raw["category_id"]), "price": raw["price"].astype(float),
        }).dropna(subset=["shop_id"])  # the pipeline rejects rows without a shop
    raw = pd.read_csv(csv, header=None, names=["user_id", "item_id", "category_id", "behavior", "timestamp"],
                      dtype=str)
    codes = {"pv": "product_view", "cart": "add_to_cart", "fav": "add_to_wishlist", "buy": "purchase"}
    frame = pd.DataFrame({
        "shop_id": raw["category_id"], "buyer_id": raw["user_id"],
        "ts": pd.to_datetime(raw["timestamp"].astype("int64"), unit="s", utc=True),
        "event_type": raw["behavior"].map(codes), "product_id": raw["item_id"],
        "category": raw["category_id"], "price": np.nan,
    })
    # Sessions: a new visit after 30 minutes of inactivity, per buyer across shops.
    frame = frame.sort_values(["buyer_id", "ts"], kind="stable")
    new_visit = frame.groupby("buyer_id")["ts"].diff().gt(pd.Timedelta(minutes=30)).astype(int)
    frame["session_id"] = frame["buyer_id"] + "#" + new_visit.groupby(frame["buyer_id"]).cumsum().astype(str)
    return frame


def _entropy(counts: pd.Series, key: list[str]) -> pd.DataFrame:
    """Per buyer: distinct items, Shannon entropy (nats) and total from a (buyer, item) count series."""
    by_buyer = counts.groupby(level=key)
    total = by_buyer.sum()
    share = counts / total.reindex(counts.index.droplevel(-1)).to_numpy()
    entropy = (-share * np.log(share)).groupby(level=key).sum()
    return pd.DataFrame({"distinct": by_buyer.size(), "entropy": entropy.clip(lower=0), "total": total})


def pandas_features(events: pd.DataFrame, *, day_level: bool) -> pd.DataFrame:
    """The same behavioural features as codebook.features, written as plain pandas groupbys."""
    key = ["shop_id", "buyer_id"]
    by_buyer = events.groupby(key)
    out = pd.DataFrame({"event_count": by_buyer.size().astype(float)})
    counts = events.groupby(key + ["event_type"]).size().unstack(fill_value=0)
    for kind in EVENT_TYPES:
        column = counts[kind] if kind in counts else 0
        out[f"count_{kind}"] = column
        out[f"share_{kind}"] = out[f"count_{kind}"] / out["event_count"]

    events = events.assign(bought=events["event_type"].eq("purchase"))
    visits = events.groupby(key + ["session_id"]).agg(
        events=("ts", "size"), first=("ts", "min"), last=("ts", "max"), bought=("bought", "any"))
    visits["duration"] = (visits["last"] - visits["first"]).dt.total_seconds()
    per_visit = visits.groupby(level=key)
    out["session_count"] = per_visit.size()
    out["events_per_session_mean"] = per_visit["events"].mean()
    out["events_per_session_max"] = per_visit["events"].max()
    out["active_days"] = events["ts"].dt.floor("D").groupby([events[k] for k in key]).nunique()

    def ratio(num, den):
        return np.where(den > 0, np.minimum(num / den.where(den > 0), 1.0), np.where(num > 0, 1.0, 0.0))

    out["view_to_cart"] = ratio(out["count_add_to_cart"], out["count_product_view"])
    out["cart_to_purchase"] = ratio(out["count_purchase"], out["count_add_to_cart"])
    out["view_to_purchase"] = ratio(out["count_purchase"], out["count_product_view"])
    out["purchase_session_share"] = per_visit["bought"].mean()

    views = events[events["event_type"].eq("product_view")]
    carts = events[events["event_type"].eq("add_to_cart")]
    if events["price"].notna().any():
        for who, rows in [("viewed", views), ("carted", carts)]:
            stats = rows.groupby(key)["price"].agg(["mean", "median", "max"])
            for stat in ["mean", "median", "max"]:
                out[f"{who}_price_{stat}"] = stats[stat]

    products = _entropy(views.groupby(key + ["product_id"]).size(), key)
    out["distinct_products"] = products["distinct"].reindex(out.index, fill_value=0)
    out["product_entropy"] = products["entropy"]
    out["repeat_view_share"] = 1 - products["distinct"] / products["total"]
    if events["category"].notna().any():
        categories = _entropy(views.groupby(key + ["category"]).size(), key)
        out["distinct_categories"] = categories["distinct"].reindex(out.index, fill_value=0)
        out["category_entropy"] = categories["entropy"]

    if not day_level:
        # gaps between consecutive events of the buyer in the shop, within one visit
        ordered = events.sort_values(key + ["ts", "session_id"], kind="stable")
        same_visit = ordered["session_id"].eq(ordered.groupby(key)["session_id"].shift())
        gaps = ordered.groupby(key)["ts"].diff().dt.total_seconds().where(same_visit)
        gap_stats = gaps.groupby([ordered[k] for k in key]).agg(["median", "mean"])
        out["gap_median_s"] = gap_stats["median"]
        out["gap_mean_s"] = gap_stats["mean"]
        out["session_duration_mean_s"] = per_visit["duration"].mean()
        hour = events["ts"].dt.hour
        for part, (lo, hi) in DAY_PARTS.items():
            out[f"share_{part}"] = hour.between(lo, hi - 1).groupby([events[k] for k in key]).mean()
    out["weekend_share"] = events["ts"].dt.day_of_week.ge(5).groupby([events[k] for k in key]).mean()
    first, last = by_buyer["ts"].min(), by_buyer["ts"].max()
    out["tenure_days"] = (last - first).dt.total_seconds() / 86400
    out["recency_days"] = (events["ts"].max() - last).dt.total_seconds() / 86400

    out["converted"] = counts.get("purchase", 0) > 0
    out["n_events"] = out["event_count"]
    out["n_purchases"] = out["count_purchase"]
    return out.sort_index()


# -------------------------------------------------------------------------------- the runs


class Clock:
    """Wall time and CPU time of this process (all threads). On a shared machine the CPU time is
    the steadier measure: it does not count the time other people's jobs hold the cores."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def time_pipeline(csv: Path, work: Path) -> dict:
    clock = Clock()
    ingested = ingest([csv], work)
    ingest_wall, ingest_cpu = clock.read()
    result = build_features(work / EVENTS_FILE, work / CATALOG_FILE, work / FEATURES_FILE,
                            embedding="none", progress=False)
    wall, cpu = clock.read()
    return {"events": ingested.rows_kept, "rows": result.rows, "ingest_s": ingest_wall, "ingest_cpu": ingest_cpu,
            "features_s": wall - ingest_wall, "features_cpu": cpu - ingest_cpu, "total_s": wall, "total_cpu": cpu}


def time_floor(dataset: Dataset, csv: Path, work: Path) -> dict:
    """The least any CSV -> Parquet ingest does: DuckDB reads every field as text (in parallel)
    and writes it out as Parquet, with no validation, no sessions and no features. No pipeline
    built on this reader beats it; it shows how much of the hardware the pipeline leaves unused."""
    header = "true" if dataset.has_header else "false"
    clock = Clock()
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT * FROM read_csv('{csv}', all_varchar = true, header = {header})) "
                    f"TO '{work / 'floor.parquet'}' ({PARQUET_OPTIONS})")  # as ingest writes events.parquet
    wall, cpu = clock.read()
    (work / "floor.parquet").unlink()
    return {"total_s": wall, "total_cpu": cpu}


def time_baseline(dataset: Dataset, csv: Path) -> tuple[dict, pd.DataFrame]:
    clock = Clock()
    events = load_raw(dataset, csv)
    load_wall, _ = clock.read()
    features = pandas_features(events, day_level=dataset.day_level)
    wall, cpu = clock.read()
    return {"events": len(events), "rows": len(features), "load_s": load_wall, "total_s": wall, "total_cpu": cpu}, features


def largest_difference(work: Path, baseline: pd.DataFrame) -> tuple[float, str]:
    """Max |pipeline - baseline| over the common feature columns, after a stable row alignment."""
    pipeline = pd.read_parquet(work / FEATURES_FILE).set_index(["shop_id", "buyer_id"])
    baseline = baseline.set_axis(baseline.index.set_names(["shop_id", "buyer_id"]))
    if len(pipeline) != len(baseline):
        return math.inf, f"rows {len(pipeline)} vs {len(baseline)}"
    baseline = baseline.reindex(pipeline.index)
    worst, where = 0.0, ""
    for column in pipeline.columns.intersection(baseline.columns).drop("top_category", errors="ignore"):
        a = pipeline[column].to_numpy(float)
        b = baseline[column].to_numpy(float)
        if (np.isnan(a) != np.isnan(b)).any():
            return math.inf, f"{column}: missing in one only"
        diff = np.nanmax(np.abs(a - b) / np.maximum(1.0, np.abs(b)), initial=0.0)
        if diff > worst:
            worst, where = diff, column
    return worst, where


def time_embeddings(work: Path, cache: Path) -> tuple[float, float, str]:
    runs = []
    for _ in range(2):  # cold cache, then warm
        result = build_features(work / EVENTS_FILE, work / CATALOG_FILE, work / "with_embedding.parquet",
                                embedding="auto", cache_dir=cache, progress=False)
        runs.append(result.embedding_seconds)
    return runs[0], runs[1], f"{result.embedding_kind} {result.embedding_stats}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-per-dataset", type=int, default=1_500_000,
                        help="each log is repeated until it has about this many rows")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--skip-embeddings", action="store_true")
    args = parser.parse_args()
    missing = [d.csv for d in DATASETS if not d.csv.exists()]
    if missing:
        raise SystemExit(f"real data not found: {missing}")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    work.mkdir(parents=True, exist_ok=True)

    table = Table(title=f"raw CSV -> buyer features, seconds as wall / CPU ({work})")
    for name in ["dataset", "events", "buyers", "ingest", "features", "pipeline", "pipeline ev/s", "floor ev/s",
                 "pandas (read_csv)", "pandas ev/s", "speed-up wall / CPU", "max rel diff"]:
        table.add_column(name, justify="right")
    keys = ["events", "total_s", "total_cpu"]
    totals = {"pipeline": dict.fromkeys(keys, 0.0), "pandas": dict.fromkeys(keys, 0.0), "floor": dict.fromkeys(keys, 0.0)}
    embedding_lines = []
    for dataset in DATASETS:
        rows_per_copy = sum(1 for _ in open(dataset.csv)) - dataset.has_header
        copies = max(1, round(args.events_per_dataset / rows_per_copy))
        with console.status(f"{dataset.name}: writing {copies} copies"):
            csv, _ = scaled_copy(dataset, copies, work)
        with console.status(f"{dataset.name}: pandas baseline"):
            base, base_features = time_baseline(dataset, csv)
        out = work / dataset.name
        shutil.rmtree(out, ignore_errors=True)
        with console.status(f"{dataset.name}: ingest + build_features"):
            pipe = time_pipeline(csv, out)
        with console.status(f"{dataset.name}: bare CSV -> Parquet copy (the floor)"):
            floor = time_floor(dataset, csv, work) | {"events": pipe["events"]}
        diff, where = largest_difference(out, base_features)
        table.add_row(
            dataset.name, f"{pipe['events']:,}", f"{pipe['rows']:,}",
            f"{pipe['ingest_s']:.1f} / {pipe['ingest_cpu']:.1f}", f"{pipe['features_s']:.1f} / {pipe['features_cpu']:.1f}",
            f"{pipe['total_s']:.1f} / {pipe['total_cpu']:.1f}", f"{pipe['events'] / pipe['total_s']:,.0f}",
            f"{floor['events'] / floor['total_s']:,.0f}",
            f"{base['total_s']:.1f} / {base['total_cpu']:.1f} ({base['load_s']:.1f})",
            f"{base['events'] / base['total_s']:,.0f}",
            f"{base['total_s'] / pipe['total_s']:.2f}× / {base['total_cpu'] / pipe['total_cpu']:.2f}×",
            f"{diff:.1e} {where}",
        )
        for side, run in [("pipeline", pipe), ("pandas", base), ("floor", floor)]:
            for key in keys:
                totals[side][key] += run[key]
        if not args.skip_embeddings:
            with console.status(f"{dataset.name}: embedding block"):
                cold, warm, what = time_embeddings(out, work / "embedding_cache")
            embedding_lines.append(f"{dataset.name}: embedding step {cold:.2f}s cold cache, {warm:.2f}s warm ({what})")
        csv.unlink()

    pipe, base, floor = totals["pipeline"], totals["pandas"], totals["floor"]
    table.add_row(
        "all", f"{pipe['events']:,.0f}", "", "", "", f"{pipe['total_s']:.1f} / {pipe['total_cpu']:.1f}",
        f"{pipe['events'] / pipe['total_s']:,.0f}", f"{floor['events'] / floor['total_s']:,.0f}",
        f"{base['total_s']:.1f} / {base['total_cpu']:.1f}",
        f"{base['events'] / base['total_s']:,.0f}",
        f"{base['total_s'] / pipe['total_s']:.2f}× / {base['total_cpu'] / pipe['total_cpu']:.2f}×", "",
    )
    console.print(table)
    console.print(
        f"pipeline (ingest + features): {pipe['events'] / pipe['total_s']:,.0f} events/s wall, "
        f"{pipe['events'] / pipe['total_cpu']:,.0f} events per CPU-second; pandas baseline: "
        f"{base['events'] / base['total_s']:,.0f} events/s wall, {base['events'] / base['total_cpu']:,.0f} per CPU-second; "
        f"ratio {base['total_s'] / pipe['total_s']:.2f}× wall, {base['total_cpu'] / pipe['total_cpu']:.2f}× CPU "
        f"(load average at the end: {open('/proc/loadavg').read().split()[0]} on {os.cpu_count()} cores)"
    )
    console.print(
        f"floor (bare DuckDB CSV -> Parquet copy of the same files, nothing checked or computed): "
        f"{floor['events'] / floor['total_s']:,.0f} events/s wall, {floor['total_s']:.1f} / {floor['total_cpu']:.1f} s; "
        f"the pipeline takes {pipe['total_s'] / floor['total_s']:.2f}× its wall time"
    )
    for line in embedding_lines:
        console.print(line)


if __name__ == "__main__":
    main()
