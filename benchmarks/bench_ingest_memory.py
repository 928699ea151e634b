"""Benchmark: ingest memory stays bounded while the log grows (not a test).

Generates REES46-like CSVs of growing size in /tmp (DuckDB writes them, so generation is quick),
ingests each one in a fresh subprocess while polling the subprocess's resident memory with
psutil, and prints file size, events/s, peak RSS and the ratio of peak-RSS growth to file-size
growth against the smallest file of the same run (the baseline). A ratio near 0 means memory does
not follow the file size; a loader that holds the log in memory would show a ratio of 1 or more.
With --pandas-baseline it also loads the smallest file with pandas.read_csv, for scale.

    .venv/bin/python benchmarks/bench_ingest_memory.py --sizes 0.25 1 3
    .venv/bin/python benchmarks/bench_ingest_memory.py --quick
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import psutil
from rich.console import Console
from rich.table import Table

BYTES_PER_ROW = 150  # about what one REES46-like row takes; refined after a small probe
GB = 1024**3
MB = 1024**2

INGEST_SCRIPT = """
import sys
from pathlib import Path
from codebook.ingest import IngestConfig, ingest
result = ingest(Path(sys.argv[1]), Path(sys.argv[2]),
                IngestConfig(memory_limit=sys.argv[3], threads=int(sys.argv[4]),
                             shop_field=sys.argv[5]))
print(result.rows_read, result.rows_kept, result.rows_rejected, result.buyers, result.seconds)
"""

PANDAS_SCRIPT = """
import sys
import pandas as pd
frame = pd.read_csv(sys.argv[1], dtype=str)
print(len(frame))
"""


def write_rees46_like(path: Path, rows: int, seed: int = 0) -> None:
    """A REES46-schema CSV with `rows` events: 1 event/s from 2019-10-01, ~14 % empty brands."""
    brands = ["samsung", "apple", "xiaomi", "huawei", "bosch", "lg", "sony", "lucente", "", ""]
    codes = ["electronics.smartphone", "appliances.kitchen.washer", "computers.notebook",
             "furniture.living_room.sofa", "apparel.shoes.keds", ""]
    users = max(1_000, rows // 4)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SELECT setseed({seed / 1000})")
    con.execute(f"""
        COPY (
            SELECT strftime(TIMESTAMP '2019-10-01' + to_seconds(i // 20), '%Y-%m-%d %H:%M:%S')
                       || ' UTC' AS event_time,
                   CASE WHEN random() < 0.02 THEN 'cart' WHEN random() < 0.015 THEN 'purchase'
                        ELSE 'view' END AS event_type,
                   (1000000 + hash(i) % 500000)::VARCHAR AS product_id,
                   (2053013552226107603 + hash(i * 7) % 600)::VARCHAR AS category_id,
                   {_pick_sql(codes, "i * 3")} AS category_code,
                   {_pick_sql(brands, "i * 5")} AS brand,
                   round(1 + (hash(i * 11) % 100000) / 100.0, 2)::VARCHAR AS price,
                   (500000000 + u)::VARCHAR AS user_id,
                   md5((u * 1000 + i // 200000)::VARCHAR) AS user_session
            FROM (SELECT range AS i, hash(range * 13) % {users} AS u FROM range({rows}))
        ) TO '{path}' (HEADER, DELIMITER ',')
    """)


def _pick_sql(options: list[str], key: str) -> str:
    cases = " ".join(f"WHEN {i} THEN '{o}'" for i, o in enumerate(options))
    return f"CASE hash({key}) % {len(options)} {cases} END"


def peak_rss_of(command: list[str]) -> tuple[int, float, str]:
    """Run command; return (peak RSS of it and its children in bytes, seconds, stdout)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            tree = [watched, *watched.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{stderr}")
    return peak, time.perf_counter() - started, stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0, 3.0],
                        help="CSV sizes in GB, smallest first (the smallest is the baseline)")
    parser.add_argument("--quick", action="store_true", help="sizes 0.02 0.05 0.1 GB")
    parser.add_argument("--memory-limit", default="512MB", help="DuckDB memory_limit for ingest")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shop-field", default="brand")
    parser.add_argument("--pandas-baseline", action="store_true",
                        help="also load the smallest CSV with pandas.read_csv")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    sizes = sorted([0.02, 0.05, 0.1] if args.quick else args.sizes)
    console = Console()

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=args.workdir))
    repo = Path(__file__).resolve().parents[1]
    measured = []
    try:
        probe = work / "probe.csv"
        write_rees46_like(probe, 100_000)
        bytes_per_row = probe.stat().st_size / 100_000
        probe.unlink()
        for size_gb in sizes:
            csv_path = work / f"rees46_like_{size_gb:g}GB.csv"
            rows = int(size_gb * GB / bytes_per_row)
            console.print(f"generating {csv_path.name}: {rows:,} rows")
            write_rees46_like(csv_path, rows)
            file_size = csv_path.stat().st_size
            console.print(f"ingesting {csv_path.name} ({file_size / MB:,.0f} MB)")
            peak, seconds, stdout = peak_rss_of([
                sys.executable, "-c", INGEST_SCRIPT, str(csv_path), str(work / "out"),
                args.memory_limit, str(args.threads), args.shop_field,
            ])
            read, kept, rejected, buyers, _ = stdout.splitlines()[-1].split()
            assert int(read) == rows == int(kept) + int(rejected)
            pandas_peak = None
            if args.pandas_baseline and not measured:
                pandas_peak, _, _ = peak_rss_of([sys.executable, "-c", PANDAS_SCRIPT,
                                                 str(csv_path)])
            measured.append((file_size, rows, seconds, peak, pandas_peak))
            csv_path.unlink()
            shutil.rmtree(work / "out", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title=f"ingest peak memory vs log size (memory_limit {args.memory_limit}, "
                        f"{args.threads} threads; baseline = first row)")
    for column in ("CSV size", "rows", "seconds", "events/s", "peak RSS",
                   "RSS growth / size growth"):
        table.add_column(column, justify="right")
    base_size, _, _, base_peak, _ = measured[0]
    for size, rows, seconds, peak, _ in measured:
        ratio = "baseline" if size == base_size else (
            f"{(peak - base_peak) / (size - base_size):.3f}"
        )
        table.add_row(f"{size / MB:,.0f} MB", f"{rows:,}", f"{seconds:.1f}",
                      f"{rows / seconds:,.0f}", f"{peak / MB:,.0f} MB", ratio)
    console.print(table)
    if measured[0][4] is not None:
        console.print(f"pandas.read_csv(dtype=str) of the {base_size / MB:,.0f} MB file: peak RSS "
                      f"{measured[0][4] / MB:,.0f} MB ({measured[0][4] / base_peak:.1f}x ingest)")
    console.print(f"(run from {repo})")


if __name__ == "__main__":
    main()
