"""Run every benchmark once, one after another (`make bench`).

Each benchmark measures its own baseline in the same run and prints the ratio, so the table is
meaningful on a noisy machine. Pass --quick for a smoke run in a few minutes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS = [
    # (script, full arguments, quick arguments)
    ("bench_pipeline.py", [], ["--events-per-dataset", "200000"]),
    ("bench_encoder.py", [], ["--rows", "200000"]),
    ("bench_ingest_memory.py", ["--sizes", "0.25", "1", "2", "--memory-limit", "256MB"], ["--quick"]),
    ("bench_observation.py", [], ["--repeats", "3"]),
    ("bench_simulate.py", [], ["--buyers", "8"]),
    ("bench_scale.py", [], ["--buyers", "6", "--levels", "1", "4", "--ray-concurrency", "2"]),
    ("bench_agent.py", [], ["--batch", "8", "--skip-smollm2"]),
    ("bench_replay.py", ["--data", "tmall", "--buyers", "300", "--browser-buyers", "40"], ["--data", "tmall", "--buyers", "30", "--browser-buyers", "6"]),
    ("bench_faults.py", [], ["--buyers", "40", "--resume-buyers", "12"]),
    ("bench_http_parser.py", [], ["--buyers", "30", "--rounds", "1"]),
    ("bench_http_driver.py", [], ["--buyers", "30", "--rounds", "1"]),
]


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failed = []
    for script, full, quick_args in BENCHMARKS:
        args = quick_args if quick else full
        print(f"\n=== {script} {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *args]).returncode != 0:
            failed.append(script)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
