"""benchmarks/gpu_check: `prepare` on a small Tmall subset, then the check itself through
benchmarks/gpu_check.sh with `--tiny --device cpu` (a shrunk SmolLM2 configuration, CI budgets).

The check runs in a child process in which the packages the GPU machine lacks cannot be imported
(DuckDB, Playwright, gguf, sentence-transformers, matplotlib, Ray, vLLM), so an import that
would break the GPU run breaks here first. Every section of the JSON must be there, with figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_check import CARRIED_WHEELS, GPU_MACHINE_HAS, PrepareConfig, prepare  # noqa: E402
from tmall_data import TMALL_CSV  # noqa: E402

# The project's dependencies the GPU machine lacks, and packages that transformers and its
# requirements import only when present (Pillow, protobuf, charset-normalizer): not promised there.
ABSENT_ON_GPU_MACHINE = ("duckdb", "playwright", "gguf", "sentence_transformers", "matplotlib", "ray", "vllm",
                         "PIL", "google", "charset_normalizer")
BLOCKER = f'''
"""Make the packages the GPU machine lacks unimportable in this process; record what it imports."""
import atexit, json, os, sys
from importlib.abc import MetaPathFinder

class Absent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT_ON_GPU_MACHINE!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the GPU machine)", name=name)
        return None

sys.meta_path.insert(0, Absent())


@atexit.register
def record_imports():
    """The top-level modules this run imported, for the test to match against the GPU machine."""
    with open(os.environ["GPU_CHECK_IMPORTS"], "w") as out:
        json.dump(sorted({{name.split(".")[0] for name in sys.modules}}), out)
'''
# CI sizes for prepare (EvaluateConfig overrides, recorded for the check): a 4-type codebook, a
# dozen replayed traces, short training examples, buyers that stop after 4 steps.
SMALL_EVALUATE = dict(held_out_fraction=0.9, codebook_size=4, codebook_epochs=2, embedding="hashed",
                      traces_per_code=3, traces_per_shop=3, trace_max_steps=8, sft_batch_size=2, sft_max_length=256,
                      max_steps=4, calibrate_temperatures=())


def _brands() -> tuple[str, ...]:
    """Two brands with >= 50 buyers (the held-out shops) and 25 small ones (training shops)."""
    raw = pd.read_csv(TMALL_CSV, dtype={"brand_id": str})
    visitors = raw.groupby("brand_id")["user_id"].nunique().sort_values(ascending=False)
    return tuple(visitors.index[20:22]) + tuple(visitors[(visitors >= 8) & (visitors < 30)].index[:25])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    if not TMALL_CSV.is_file():
        pytest.skip(f"real data not present: {TMALL_CSV}")
    folder = tmp_path_factory.mktemp("gpucheck")
    prepare(folder, PrepareConfig(held_out_shops=2, brands=_brands(), evaluate=SMALL_EVALUATE))
    return folder


def test_prepare_writes_what_the_gpu_side_reads_and_nothing_heavy(prepared):
    manifest = json.loads((prepared / "prepared.json").read_text())
    assert len(manifest["held_out"]) == 2
    assert (prepared / "paper" / "traces" / "traces.jsonl").stat().st_size > 0
    assert (prepared / "paper" / "codebook" / "types.json").is_file()
    assert {"config.json", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in (prepared / "smollm2").iterdir()}
    assert not list(prepared.rglob("*.safetensors*")) or all("codebook" in str(p) for p in prepared.rglob("*.safetensors"))
    assert not list(prepared.rglob("*.sqlite*")) and not list(prepared.glob("features_*.parquet"))


def test_cpu_dry_run_writes_every_section(prepared, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    imports = tmp_path / "imports.json"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(blocker), "OUT": str(tmp_path / "out"),
           "GPU_CHECK_IMPORTS": str(imports)}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(prepared), "--tiny", "--device", "cpu",
                           "--work", str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert {name: phase["status"] for name, phase in data["phases"].items()} == {
        "sft": "ok", "throughput": "ok", "throughput_compiled": "ok", "simulation_smollm2": "ok", "sft_tiny": "ok",
        "simulation_tiny": "ok"}, \
        {name: data[name].get("error") for name in data["phases"]}

    sft = data["sft"]
    assert set(sft["stages"]) == {"stage1", "stage2"}
    for stage, cap in (("stage1", 2), ("stage2", 3)):  # the dry run's step caps, unless its clock ran out first
        record = sft["stages"][stage]
        assert [c["stage"] for c in sft["curve"]].count(stage) == record["steps"] >= 1
        assert record["steps"] == cap or record["stopped_by"] == "max_seconds"
    assert sft["parameters"] > 1_000_000  # SmolLM2's 49k-token vocabulary, two narrow layers
    assert sft["stages"]["stage2"]["device"] == "cpu"

    rows = data["throughput"]["rows"]
    assert [(r["variant"], r["batch"], r["temperature"]) for r in rows] == [
        ("dynamic_cache", 1, 0.0), ("dynamic_cache", 4, 0.0), ("dynamic_cache_length_bucketed", 1, 0.0),
        ("dynamic_cache_length_bucketed", 4, 0.0), ("dynamic_cache", 4, 1.0)]
    assert all(r["actions_per_s"] > 0 for r in rows)
    # The static-cache variant ran in its child process (compiled only on CUDA).
    assert [(r["variant"], r["batch"]) for r in data["throughput_compiled"]["rows"]] == [("static_cache", 4)]

    for name in ("simulation_smollm2", "simulation_tiny"):
        section = data[name]
        done_shops = [shop["shop"] for shop in section["shops"]]
        assert done_shops and set(done_shops) | set(section["skipped_shops"]) | set(section["cut_shops"]) <= \
            set(json.loads((prepared / "prepared.json").read_text())["held_out"])
        for shop in section["shops"]:
            assert shop["sim_buyers"] == 3 and shop["store_agreement"] == 1.0 and 0 <= shop["alignment"] <= 1
        assert section["summary"]["shops"] == len(done_shops)
        assert "pearson" in section["per_type"] and section["per_code"]
    assert data["comparison"]["tiny"]["shops"] >= 1 and data["comparison"]["best_actions_per_s"] > 0
    assert "== summary" in done.stdout

    # Every third-party module the run imported is on the GPU machine or in a carried wheel.
    imported = {name for name in json.loads(imports.read_text()) if not name.startswith("_") and name != "cython_runtime"}
    unexpected = imported - _importable_on_gpu_machine()  # (leading "_": extension modules' internals)
    assert not unexpected, f"the GPU machine could not import {sorted(unexpected)}: carry them (CARRIED_WHEELS)"


def _importable_on_gpu_machine() -> set[str]:
    """Top-level module names there: the standard library, this project, and the modules of the
    machine's packages and the carried wheels with everything they require (as installed here)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, requires

    from packaging.requirements import Requirement

    def key(name: str) -> str:
        return name.lower().replace("-", "_").replace(".", "_")

    wanted, seen = [*GPU_MACHINE_HAS, *CARRIED_WHEELS], set()
    while wanted:
        name = key(wanted.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in requirements:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": "", "python_version": "3.12"}):
                wanted.append(requirement.name)
    modules = {module for module, dists in packages_distributions().items() if any(key(d) in seen for d in dists)}
    project = {"agent", "codebook", "harness", "storefronts", "gpu_check", "sitecustomize", "__main__"}
    return modules | project | set(sys.stdlib_module_names) | set(sys.builtin_module_names)
