"""The fast paths of ingest and features compute what a plain implementation computes.

- features: DuckDB's numbers equal the straightforward pandas groupby of
  benchmarks/bench_pipeline.py on the real logs, and the rows come out in (shop_id, buyer_id)
  order (the behaviour query's own ORDER BY);
- ingest: a large file is read in parallel and numbered by rowid (_is_batch_insert), and the
  row numbers stay exact past rejected and blank lines.
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from codebook.features import build_features
from codebook import ingest as ingest_module
from codebook.ingest import IngestConfig, ingest
from codebook.schema import CATALOG_FILE, EVENTS_FILE, FEATURES_FILE

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_pipeline  # noqa: E402  (benchmarks/ is not a package)


@pytest.mark.parametrize("dataset", bench_pipeline.DATASETS, ids=lambda d: d.name)
def test_features_equal_the_pandas_baseline_on_real_logs(tmp_path, dataset):
    if not dataset.csv.exists():
        pytest.skip(f"real data not found: {dataset.csv}")
    ingest(dataset.csv, tmp_path)
    build_features(tmp_path / EVENTS_FILE, tmp_path / CATALOG_FILE, tmp_path / FEATURES_FILE,
                   embedding="none", progress=False)
    baseline = bench_pipeline.pandas_features(bench_pipeline.load_raw(dataset, dataset.csv),
                                              day_level=dataset.day_level)
    difference, column = bench_pipeline.largest_difference(tmp_path, baseline)
    assert difference < 1e-9, f"{column}: {difference}"


def test_feature_rows_are_in_key_order(tmp_path):
    ids = ["b", "B", "a10", "a9", "ä", "a", "Z", "é1", "10", "9"]
    rows = [f"{shop},{buyer},2024-01-0{1 + i % 3} 10:00:0{i % 10},view,p{i}\n"
            for i, (shop, buyer) in enumerate((s, b) for s in ids[:5] for b in ids)]
    log = tmp_path / "log.csv"
    log.write_text("shop_id,buyer_id,ts,event_type,product_id\n" + "".join(rows))
    ingest(log, tmp_path / "out")
    out = tmp_path / "out"
    build_features(out / EVENTS_FILE, out / CATALOG_FILE, out / FEATURES_FILE, embedding="none",
                   progress=False)
    keys = pq.read_table(out / FEATURES_FILE, columns=["shop_id", "buyer_id"]).to_pylist()
    expected = duckdb.sql(
        f"SELECT DISTINCT shop_id, buyer_id FROM '{out / EVENTS_FILE}' ORDER BY shop_id, buyer_id"
    ).fetchall()
    assert [(k["shop_id"], k["buyer_id"]) for k in keys] == expected
    assert expected == sorted(expected, key=lambda k: (k[0].encode(), k[1].encode()))


def test_a_large_file_is_read_in_parallel_with_exact_row_numbers(tmp_path, monkeypatch):
    header = "shop_id,buyer_id,ts,event_type,product_id\n"
    lines = []
    for i in range(1, 400_001):
        if i % 1_013 == 0:
            lines.append("broken\n")
        elif i % 2_003 == 0:
            lines.append("\n")
        else:  # the line's own number is stored in product_id
            lines.append(f"s{i % 3},b{i % 1_000},2024-01-01 00:00:{i % 60:02d},view,{i}\n")
    log = tmp_path / "big.csv"
    log.write_text(header + "".join(lines))

    used_rowid = []
    real = ingest_module._is_batch_insert
    monkeypatch.setattr(ingest_module, "_is_batch_insert",
                        lambda con, sql: used_rowid.append(real(con, sql)) or used_rowid[-1])
    result = ingest(log, tmp_path / "out", IngestConfig(threads=2))
    mismatched = duckdb.sql(f"SELECT count(*) FROM '{result.events_path}' "
                            f"WHERE CAST(product_id AS BIGINT) <> source_row").fetchall()[0][0]
    assert mismatched == 0
    rejected = pq.read_table(result.rejected_path).to_pylist()
    assert sorted(r["source_row"] for r in rejected) == list(range(1_013, 400_001, 1_013))
    assert result.rows_read == result.rows_kept + result.rows_rejected
    assert used_rowid == [True]  # the parallel path, not the one-thread row_number() fallback
