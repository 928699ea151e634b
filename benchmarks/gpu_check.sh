#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): SmolLM2-sized persona SFT, batched generation and a
# held-out simulation on one GPU, one JSON of figures.
#
#   bash benchmarks/gpu_check.sh --prepare [DIR]   here (CPU, project venv, PyPI reachable): builds DIR
#                                                  (default .gpucheck/) and downloads the wheels the
#                                                  GPU machine lacks into .whl/
#   bash benchmarks/gpu_check.sh [DIR] [ARGS...]   on the GPU machine, from the repo root, with .whl/
#                                                  and DIR carried: writes $OUT/gpu_check.json (or
#                                                  DIR/gpu_check.json) and prints a summary
#
# The GPU machine has torch, transformers, peft, accelerate, pandas, pyarrow, numpy, scipy, httpx,
# jinja2, rich, typer and tqdm, but no registry: the rest travels as wheels (gpu_check.py's
# CARRIED_WHEELS), unpacked there where the machine lacks the package or has an older one.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl

if [[ "${1:-}" == "--prepare" ]]; then
    DIR=${2:-.gpucheck}
    .venv/bin/python benchmarks/gpu_check.py prepare "$DIR" --wheels "$WHEELS"
    du -sh "$DIR" "$WHEELS"
    exit 0
fi

DIR=${1:-.gpucheck}
shift || true
PYTHON=${PYTHON:-python3}
SITE="$WHEELS/site"
"$PYTHON" - "$WHEELS" "$SITE" <<'EOF'
"""Unpack each carried wheel whose distribution this Python lacks or has in an older version (a
wheel is a zip of site-packages content, so unpacking is installing; $SITE comes first on the
path). A distribution the machine has at the carried version or newer is left as it is."""
import sys, zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.version import Version

wheels, site = Path(sys.argv[1]), Path(sys.argv[2])
for wheel in sorted(wheels.glob("*.whl")):
    name, carried = wheel.name.split("-")[:2]
    try:
        present = version(name)
    except PackageNotFoundError:
        present = None
    if present is not None and Version(present) >= Version(carried):
        print(f"have {name} {present}")
        continue
    zipfile.ZipFile(wheel).extractall(site)
    print(f"unpacked {wheel.name}" + (f" (over {present})" if present else ""))
EOF
export PYTHONPATH="$PWD:$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
# Every phase keeps to its own budget and the JSON is rewritten after each; this is the backstop
# that holds the whole run to 9 minutes whatever a phase does (the JSON keeps what was measured).
exec timeout --kill-after=15 "${GPU_CHECK_LIMIT_S:-540}" "$PYTHON" benchmarks/gpu_check.py run "$DIR" "$@"
