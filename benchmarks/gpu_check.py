"""The GPU check: persona-token SFT of a SmolLM2-135M-sized model, batched action generation and a
held-out simulation, measured on one GPU in one run that writes one JSON of figures.

Two modes, one module (benchmarks/gpu_check.sh calls it):

    prepare DIR   here, on a CPU with the project's full environment: ingest the Tmall brand log,
                  split the shops, build the buyer features, train the codebook on training shops,
                  give every buyer its code and replay training buyers into traces; all with
                  harness.eval.evaluate's own steps and EvaluateConfig's defaults. DIR then holds
                  what the GPU side reads (a few MiB): the ingested events and catalog, the shop
                  split, the real conversion per shop, codes.parquet, the codebook artifact,
                  traces.jsonl, and SmolLM2-135M-Instruct's config and tokenizer without its weights
                  (the 98 MB GGUF cannot travel).
    run DIR       on the GPU machine (no Chromium, no DuckDB, no registry): every phase below has
                  its own time budget (cut, where the run is late, so that each later phase keeps
                  some), and the JSON is rewritten after each phase, so a phase cut short or
                  failing still leaves every figure measured before it.

Phases of `run`, in order:
    sft          the SmolLM2-135M configuration, randomly initialised (same shapes, so the same
                 speed as the real weights), saved and loaded as `train-agent --base PATH` does; two-
                 stage SFT on the traces (stage 1 persona-token warm-up, backbone frozen; stage 2
                 full fine-tuning, bf16 autocast) with agent.sft inside a step and time budget:
                 the loss curve, steps, examples/s, wall time.
    throughput   agent.generate.generate_batch (the product's batched generation) on prompts
                 rendered from the traces: actions/s at batch 1, 64, 256 and up, greedy and sampled,
                 and with prompts of similar length batched together (what padding costs).
    throughput_compiled  the same with a static KV cache, whose decoding step transformers
                 compiles with torch.compile on CUDA; in a child process stopped at its budget.
    simulation   per agent (the SmolLM2-sized one and the tiny one, trained here as `evaluate`
                 trains it): each held-out shop's population sampled from its real type mix,
                 simulated with the http driver against the mock store served in this process
                 (harness.eval.evaluate.plan_shops / simulate_shop); per shop real vs simulated
                 conversion, the alignment (conversion_alignment), and per type the agent's
                 conversion next to its traces' (Pearson over types, agent_code_check).

`--tiny` (the CPU dry run in tests/test_gpu_check.py) shrinks the SmolLM2 configuration to two
narrow layers, keeping its tokenizer and architecture, so every code path runs in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from harness.eval.evaluate import EvaluateConfig  # noqa: E402  (after the path fix above)

# The prepared folder's layout (written by prepare, read by run).
INPUT = "input"  # events.parquet, catalog.parquet (codebook.ingest)
WORK = "paper"  # harness.eval.evaluate's protocol folder: codebook/, codes.parquet, traces/
REAL_FILE = "real_conversion.parquet"  # harness.eval.evaluate.real_conversion, all shops
SMOLLM2_FILES = "smollm2"  # config.json, generation_config.json, tokenizer files: no weights
MANIFEST = "prepared.json"
TRACES = Path(WORK) / "traces" / "traces.jsonl"
TARGET_ACTIONS_PER_S = 5000  # SmolLM2-135M on one H100/H200 (issue 20)
# What the GPU machine has (Python 3.12, no registry), and the wheels that travel for the rest of
# the run's imports: the store (starlette, uvicorn), the http driver (beautifulsoup4, lxml) and the
# per-type statistics (scikit-learn, through codebook.metrics), with their own requirements.
GPU_MACHINE_HAS = ("torch", "transformers", "peft", "accelerate", "pandas", "pyarrow", "numpy", "scipy", "httpx",
                   "jinja2", "rich", "typer", "tqdm")
CARRIED_WHEELS = ("starlette", "uvicorn", "h11", "anyio", "typing_extensions", "beautifulsoup4", "soupsieve", "lxml",
                  "scikit-learn", "joblib", "threadpoolctl", "narwhals", "cloudpickle", "sniffio")


# ---------------------------------------------------------------------------------------------
# Configuration: every budget and size in one place


@dataclass
class PrepareConfig:
    """What `prepare` builds; the evaluation settings are EvaluateConfig's own defaults."""

    source: Path = REPO_ROOT.parent / "shared" / "data" / "tmall_brand_2014" / "t_alibaba_data.csv"
    held_out_shops: int = 6  # enough shops for a per-shop comparison, few enough to simulate in minutes
    wheels: Path | None = None  # download CARRIED_WHEELS here (None: no download)
    # For the CI dry run: keep only these brands of the source log (None: the whole log).
    brands: tuple[str, ...] | None = None
    evaluate: dict = field(default_factory=dict)  # EvaluateConfig overrides (the dry run's small sizes)


@dataclass
class CheckConfig:
    """The GPU run's budgets (seconds) and sizes; the defaults fit one H200 in 8 minutes plus
    start-up (benchmarks/gpu_check.sh stops the process at 9 minutes whatever happens)."""

    device: str = "auto"
    tiny: bool = False  # shrink the SmolLM2 configuration (CPU dry run)
    seed: int = 0
    # The whole run; a phase gets its own budget, cut so that every later phase keeps
    # min_phase_seconds of what is left.
    total_seconds: float = 480.0
    min_phase_seconds: float = 30.0
    # sft: stage 2 is full fine-tuning: LoRA adapters on randomly initialised weights learn little.
    sft_stage1_seconds: float = 20.0
    sft_stage2_seconds: float = 80.0
    sft_setup_seconds: float = 45.0  # building the model, the examples, saving the agent dir
    sft_stage1_max_steps: int = 60
    sft_stage2_max_steps: int = 1500
    sft_batch_size: int = 16
    sft_grad_accumulation: int = 2
    sft_stage1_lr: float = 5e-2
    sft_stage2_lr: float = 1e-3  # from random weights: well above the 5e-5 meant for a pretrained model
    # throughput: the prompts are ~250 SmolLM2 tokens, so large batches are prefill-bound
    throughput_seconds: float = 60.0
    batch_sizes: tuple[int, ...] = (1, 64, 256, 1024, 4096)
    # A static KV cache, whose decoding step transformers compiles with torch.compile on CUDA; in a
    # child process stopped at its budget, since a compilation cannot be interrupted otherwise.
    compiled_seconds: float = 80.0
    compiled_batch_sizes: tuple[int, ...] = (1024, 4096)
    max_new_tokens: int = 32  # agent.generate.GenerationSettings's default
    # simulation, per agent
    simulation_seconds: float = 80.0
    buyers_per_shop: int = 60
    concurrency: int = 64  # buyers in flight: a shop's buyers all step together, one batched generate call
    # The tiny agent trains as `evaluate` trains it, which has a step cap but no clock: the cap
    # keeps it near its budget.
    tiny_agent_seconds: float = 60.0
    tiny_agent_max_steps: int = 800

    @classmethod
    def dry_run(cls, **options) -> "CheckConfig":
        """CI-sized: a few steps, a few buyers, small batches."""
        sizes = dict(tiny=True, device="cpu", total_seconds=240, min_phase_seconds=5, sft_stage1_seconds=10,
                     sft_stage2_seconds=10, sft_stage1_max_steps=2, sft_stage2_max_steps=3, sft_batch_size=1,
                     throughput_seconds=20, batch_sizes=(1, 4), compiled_seconds=60, compiled_batch_sizes=(4,),
                     max_new_tokens=8, simulation_seconds=30, buyers_per_shop=3, concurrency=3, tiny_agent_seconds=20,
                     tiny_agent_max_steps=3)
        sizes.update(options)
        return cls(**sizes)


# ---------------------------------------------------------------------------------------------
# prepare (CPU, full environment)


def prepare(out: Path, config: PrepareConfig = PrepareConfig()) -> dict:
    """Build everything `run` reads into `out`, with harness.eval.evaluate's own steps."""
    from rich.console import Console

    from codebook.ingest import IngestConfig, ingest
    from harness.eval.evaluate import (REPLAY_DIR, build_protocol_features, make_protocol_traces,
                                       real_conversion, train_protocol_codebook)
    from harness.eval.split import SPLIT_FILE, SplitConfig, buyers_per_shop, make_or_load_split

    console = Console()
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if config.wheels is not None:
        download_wheels(config.wheels)
    source = config.source
    if config.brands is not None:
        source = _brand_subset(config.source, config.brands, out / "source")
    if not (out / INPUT / "events.parquet").is_file():
        ingest([source], out / INPUT, IngestConfig())
    evaluate_config = _evaluate_config(out, max_held_out_shops=config.held_out_shops, **config.evaluate)
    split = make_or_load_split(out / SPLIT_FILE, buyers_per_shop(evaluate_config.events), SplitConfig(
        evaluate_config.held_out_fraction, evaluate_config.min_buyers, evaluate_config.max_held_out_shops,
        evaluate_config.seed))
    real_conversion(evaluate_config.events).to_parquet(out / REAL_FILE)
    work = out / WORK
    features = build_protocol_features(evaluate_config, "paper", console)
    train_protocol_codebook(evaluate_config, features, split, work, console)
    traces = asyncio.run(make_protocol_traces(evaluate_config, work, console))
    # Only traces.jsonl travels: the replay with its store logs, the replays kept for other folds
    # and the features (the codes are assigned) are tens of MiB the GPU side never reads.
    shutil.rmtree(traces.parent / REPLAY_DIR, ignore_errors=True)
    shutil.rmtree(evaluate_config.out_dir / "replays", ignore_errors=True)
    features.unlink()
    _copy_smollm2_files(out / SMOLLM2_FILES)
    manifest = {"source": str(config.source), "brands": config.brands, "held_out": split.held_out,
                "training_shops": len(split.training), "evaluate": config.evaluate,
                "seconds": round(time.perf_counter() - started, 1)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(out / "source", ignore_errors=True)
    return manifest


def download_wheels(folder: Path) -> None:
    """CARRIED_WHEELS at the versions installed here, built for the GPU machine's CPython 3.12."""
    import subprocess
    from importlib.metadata import version

    folder.mkdir(parents=True, exist_ok=True)
    for name in CARRIED_WHEELS:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_17_x86_64",
                        "--platform", "manylinux_2_28_x86_64", "-d", str(folder), f"{name}=={version(name)}"], check=True)


def _evaluate_config(prepared: Path, **options) -> EvaluateConfig:
    """The evaluation settings of both sides: EvaluateConfig's defaults, the prepared inputs."""
    manifest = prepared / MANIFEST
    if manifest.is_file():  # run: the same overrides prepare used
        recorded = json.loads(manifest.read_text())
        options = {"max_held_out_shops": len(recorded["held_out"]), **recorded["evaluate"], **options}
    return EvaluateConfig(out_dir=prepared, input_dir=prepared / INPUT, protocol="paper", progress=False, **options)


def _brand_subset(source: Path, brands: tuple[str, ...], folder: Path) -> Path:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    raw = pd.read_csv(source, dtype={"brand_id": str})
    path = folder / source.name
    raw[raw["brand_id"].isin(set(brands))].to_csv(path, index=False)
    return path


def _copy_smollm2_files(folder: Path) -> None:
    """SmolLM2-135M-Instruct's config and tokenizer (from the cache load_smollm2 fills), no weights."""
    from agent.models import load_smollm2, smollm2_cache

    if not (smollm2_cache() / "config.json").is_file():
        load_smollm2()
    folder.mkdir(parents=True, exist_ok=True)
    for path in smollm2_cache().iterdir():
        if path.suffix in (".json", ".jinja", ".txt"):
            shutil.copy2(path, folder / path.name)


# ---------------------------------------------------------------------------------------------
# run (GPU machine)


class Report:
    """The JSON of figures, rewritten after every phase."""

    def __init__(self, path: Path, config: CheckConfig):
        self.path = path
        self.data = {"config": _jsonable(asdict(config)), "environment": _environment(), "phases": {}}
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.data, indent=1, default=_jsonable) + "\n")
        partial.replace(self.path)

    def phase(self, name: str, budget_s: float, function, *args):
        """Run one phase; its figures (or its error) go under `name`, its timing under phases."""
        print(f"== {name} (budget {budget_s:.0f} s)", flush=True)
        started = time.perf_counter()
        status, result = "ok", None
        try:
            result = function(*args, started + budget_s)
            self.data[name] = result
        except Exception as error:  # a failed phase is a figure too; the next phases still run
            status = "error"
            self.data[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-4000:]}
            print(self.data[name]["traceback"], file=sys.stderr, flush=True)
        seconds = time.perf_counter() - started
        self.data["phases"][name] = {"status": status, "seconds": round(seconds, 1), "budget_s": round(budget_s, 1),
                                     "over_budget": seconds > budget_s}
        self.write()
        return result

    def skip(self, name: str, why: str) -> None:
        print(f"== {name}: skipped ({why})", flush=True)
        self.data[name] = {"skipped": why}
        self.data["phases"][name] = {"status": "skipped", "seconds": 0.0, "budget_s": 0.0, "over_budget": False}
        self.write()


def run_check(prepared: Path, config: CheckConfig, json_path: Path, work: Path) -> dict:
    """Every phase in order; returns the figures (also at `json_path`)."""
    report = Report(json_path, config)
    started = time.perf_counter()
    smollm2_agent = _agent_work(prepared, work / "smollm2") / "agent"
    tiny_agent = _agent_work(prepared, work / "tiny") / "agent"
    sft_budget = config.sft_stage1_seconds + config.sft_stage2_seconds + config.sft_setup_seconds
    phases = [  # name, budget, function, the agent dir it writes or reads, whether it reads it
        ("sft", sft_budget, train_smollm2_agent, smollm2_agent, False),
        ("throughput", config.throughput_seconds, measure_throughput, smollm2_agent, True),
        ("throughput_compiled", config.compiled_seconds, measure_compiled_throughput, smollm2_agent, True),
        ("simulation_smollm2", config.simulation_seconds, simulate_agent, smollm2_agent, True),
        ("sft_tiny", config.tiny_agent_seconds, train_tiny_agent, tiny_agent, False),
        ("simulation_tiny", config.simulation_seconds, simulate_agent, tiny_agent, True),
    ]
    for index, (name, budget, function, agent_dir, reads_agent) in enumerate(phases):
        if reads_agent and not (agent_dir / "persona.json").is_file():
            report.skip(name, f"no agent at {agent_dir}: its training phase failed")
            continue
        left = config.total_seconds - (time.perf_counter() - started)
        budget = min(budget, left - config.min_phase_seconds * (len(phases) - index - 1))
        if budget <= 0:
            report.skip(name, "no time left in total_seconds")
            continue
        report.phase(name, budget, function, prepared, config, agent_dir)
    report.data["comparison"] = compare_agents(report.data)
    report.data["seconds"] = round(time.perf_counter() - started, 1)
    report.write()
    return report.data


def _agent_work(prepared: Path, folder: Path) -> Path:
    """One agent's protocol folder, laid out as `evaluate` lays it out: the codebook beside the
    agent dir (persona.json records it, the simulation checks it) and the runs under sim/."""
    work = folder / WORK
    if not (work / "codebook").is_dir():
        shutil.copytree(prepared / WORK / "codebook", work / "codebook")
    return work


# --- sft ---------------------------------------------------------------------------------------


def smollm2_sized_base(prepared: Path, config: CheckConfig, folder: Path) -> Path:
    """A randomly initialised model with SmolLM2-135M's configuration, saved as a model directory
    with SmolLM2's tokenizer, so it loads as `train-agent --base PATH` loads any base."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    source = prepared / SMOLLM2_FILES
    model_config = AutoConfig.from_pretrained(source)
    if config.tiny:  # same architecture and tokenizer, two narrow layers
        model_config.update({"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16})
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    model.generation_config = GenerationConfig.from_pretrained(source)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def train_smollm2_agent(prepared: Path, config: CheckConfig, agent_dir: Path, deadline: float) -> dict:
    """Two-stage SFT of the SmolLM2-sized model on the traces with agent.sft, saved as an agent dir;
    the stages stop at their step caps or clock budgets (the epochs are set out of reach)."""
    from agent.models import load_base
    from agent.persona import TraceSource
    from agent.sft import SFTConfig, save_agent, train_agent
    from agent.traces import read_traces
    from codebook.artifact import CodebookArtifact

    traces = read_traces(prepared / TRACES)
    evaluate_config = _evaluate_config(prepared)
    base_dir = smollm2_sized_base(prepared, config, agent_dir.parent / "base")
    base = load_base(str(base_dir))
    saving_s = 20  # left for writing the agent dir (135 M float32 weights)
    sft = SFTConfig(stage2="full", num_codes=evaluate_config.codebook_size, stage1_epochs=100, stage2_epochs=100,
                    stage1_lr=config.sft_stage1_lr, stage2_lr=config.sft_stage2_lr, batch_size=config.sft_batch_size,
                    grad_accumulation=config.sft_grad_accumulation, max_length=evaluate_config.sft_max_length,
                    stage1_max_steps=config.sft_stage1_max_steps, stage2_max_steps=config.sft_stage2_max_steps,
                    stage1_max_seconds=config.sft_stage1_seconds,
                    stage2_max_seconds=min(config.sft_stage2_seconds, _left(deadline) - config.sft_stage1_seconds - saving_s),
                    device=config.device, seed=config.seed)
    started = time.perf_counter()
    result = train_agent(traces, base, sft)
    wall = time.perf_counter() - started
    # As train_protocol_agent records it: the codebook and traces this agent was trained for.
    codebook = CodebookArtifact.load(agent_dir.parent / "codebook")
    result.persona_map = result.persona_map.trained_for(codebook.identity, TraceSource.of(prepared / TRACES, len(traces)))
    save_agent(result, agent_dir, sft, {"traces": str(prepared / TRACES), "base_spec": "smollm2-135m config, random init"})
    shutil.rmtree(base_dir)
    model = result.model.model
    return {
        "base": "SmolLM2-135M configuration, random init" + (" (shrunk: --tiny)" if config.tiny else ""),
        "parameters": sum(p.numel() for p in model.parameters()),
        "traces": len(traces), "steps_in_traces": sum(len(t.steps) for t in traces),
        "config": _jsonable(asdict(sft)), "stages": result.stages, "wall_s": round(wall, 1),
        "examples_per_s": _examples_per_s(result.stages, sft),
        "loss_first_last": _first_last(result.curves),
        "curve": [{k: c[k] for k in ("stage", "step", "loss", "seconds")} for c in result.curves],
    }


def train_tiny_agent(prepared: Path, config: CheckConfig, agent_dir: Path, deadline: float) -> dict:
    """The tiny agent exactly as `evaluate` trains it (train_protocol_agent and EvaluateConfig's
    SFT settings), on the same traces; a step cap keeps it inside the budget."""
    from rich.console import Console

    from harness.eval.evaluate import train_protocol_agent

    evaluate_config = _evaluate_config(prepared, agent_base="tiny", sft_max_steps=config.tiny_agent_max_steps)
    started = time.perf_counter()
    train_protocol_agent(evaluate_config, prepared / TRACES, agent_dir, False, Console(quiet=True))
    record = json.loads((agent_dir / "training.json").read_text())
    return {"base": "tiny", "wall_s": round(time.perf_counter() - started, 1), "stages": record.get("stages"),
            "loss_first_last": _first_last(record["curves"])}


def _examples_per_s(stages: dict, sft) -> dict:
    per_step = sft.batch_size * sft.grad_accumulation
    return {name: round(s["steps"] * per_step / s["seconds"], 1) if s["seconds"] else None for name, s in stages.items()}


def _first_last(curves: list[dict]) -> dict:
    out = {}
    for stage in ("stage1", "stage2"):
        losses = [c["loss"] for c in curves if c["stage"] == stage]
        if losses:
            window = max(1, min(10, len(losses) // 5))
            out[stage] = {"first": sum(losses[:window]) / window, "last": sum(losses[-window:]) / window}
    return out


# --- throughput --------------------------------------------------------------------------------


def measure_throughput(prepared: Path, config: CheckConfig, agent_dir: Path, deadline: float) -> dict:
    """Actions/s of one batched generate call (the product's generate_batch, dynamic KV cache)
    per batch size, greedy then sampled; each measurement starts only while budget is left.

    Every row of a batch is left-padded to its longest prompt, so a batch of mixed pages computes
    padding too. The length_bucketed rows take prompts of similar length (a window around the
    median of the prompts sorted by length), as a server that groups waiting prompts by length
    would: the gap between the two is what padding costs."""
    # Four times the largest batch: enough prompts that the length-bucketed window is narrow.
    local, turns = _throughput_setup(prepared, config, agent_dir, 4 * max(config.batch_sizes))
    by_length = sorted(turns, key=lambda turn_and_prompt: len(local.tokenizer(turn_and_prompt[1]).input_ids))
    rows = []
    for variant, temperature, sizes in (("dynamic_cache", 0.0, config.batch_sizes),
                                        ("dynamic_cache_length_bucketed", 0.0, config.batch_sizes[-2:]),
                                        ("dynamic_cache", 1.0, config.batch_sizes[1:])):
        for batch in sizes:
            chosen = turns if variant == "dynamic_cache" else _median_window(by_length, batch)
            if _left(deadline) > 0:
                rows.append(_measure_or_error(local, chosen, config, variant, batch, temperature))
    return _throughput_record(local, config, rows)


def _median_window(items: list, size: int) -> list:
    start = max(0, (len(items) - size) // 2)
    return items[start : start + size]


def measure_compiled_throughput(prepared: Path, config: CheckConfig, agent_dir: Path, deadline: float) -> dict:
    """The same with a static KV cache, whose decoding step transformers compiles with
    torch.compile on CUDA (on a CPU it runs uncompiled). A child process measures and writes each
    row as it goes; at the deadline it is stopped, and the rows it finished count."""
    import subprocess

    rows_file = agent_dir.parent / "compiled_rows.json"
    rows_file.unlink(missing_ok=True)
    command = [sys.executable, __file__, "compiled-throughput", str(prepared), str(agent_dir), str(rows_file),
               "--config", json.dumps(_jsonable(asdict(config)))]
    try:
        subprocess.run(command, check=True, timeout=max(1.0, _left(deadline)))
        stopped = None
    except subprocess.TimeoutExpired:
        stopped = "budget"
    record = json.loads(rows_file.read_text()) if rows_file.is_file() else {"rows": []}
    return {**record, "stopped_by": stopped}


def compiled_throughput_child(prepared: Path, agent_dir: Path, rows_file: Path, config: CheckConfig) -> None:
    local, turns = _throughput_setup(prepared, config, agent_dir, max(config.compiled_batch_sizes))
    local.model.generation_config.cache_implementation = "static"
    variant = "static_cache_compiled" if local.device.type == "cuda" else "static_cache"
    rows = []
    for batch in config.compiled_batch_sizes:
        rows.append(_measure_or_error(local, turns, config, variant, batch, 0.0))
        rows_file.write_text(json.dumps(_throughput_record(local, config, rows), default=_jsonable))


def _throughput_setup(prepared: Path, config: CheckConfig, agent_dir: Path, count: int):
    """The agent's model, and `count` buyer turns whose prompts the measurements send."""
    from agent.llm_policy import LLMPolicy

    policy = LLMPolicy.from_dir(agent_dir, device=config.device)
    turns = _turns_from_traces(prepared, count)
    return policy.backend, list(zip(turns, policy.prompts(turns)))


def _measure_or_error(local, turns, config: CheckConfig, variant: str, batch: int, temperature: float) -> dict:
    """_measure, or a row with the error (e.g. out of memory at the largest batch): the batch sizes
    measured before it still count."""
    try:
        return _measure(local, turns, config, variant, batch, temperature)
    except Exception as error:  # a figure like any other; the next batch size still runs
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(f"  {variant:>29} batch {batch:>5} T={temperature:g}: {type(error).__name__}: {error}", flush=True)
        return {"variant": variant, "batch": batch, "temperature": temperature, "error": f"{type(error).__name__}: {error}"}


def _measure(local, turns, config: CheckConfig, variant: str, batch: int, temperature: float) -> dict:
    """One timed batched call after a warm-up call with the same prompts."""
    from agent.generate import GenerationSettings, generate_batch
    from agent.prompt import validate_action

    settings = GenerationSettings(max_new_tokens=config.max_new_tokens, temperature=temperature, seed=config.seed)
    prompts = [prompt for _, prompt in turns[:batch]]
    generate_batch(local.model, local.tokenizer, prompts, settings, list(range(batch)))  # warm-up (and compilation)
    _synchronize()
    result = generate_batch(local.model, local.tokenizer, prompts, settings, list(range(batch)))
    _synchronize()
    valid = sum(_is_valid(validate_action, text, turn.observation) for text, (turn, _) in zip(result.texts, turns))
    row = {"variant": variant, "batch": batch, "temperature": temperature,
           "latency_s": round(result.latency_s, 4), "actions_per_s": round(batch / result.latency_s, 1),
           "prompt_tokens_mean": round(sum(result.prompt_tokens) / batch, 1),
           "prompt_tokens_max": max(result.prompt_tokens),  # every row is left-padded to this
           "completion_tokens_mean": round(sum(result.completion_tokens) / batch, 2), "valid_actions": valid}
    print(f"  {variant:>29} batch {batch:>5} T={temperature:g}: {row['actions_per_s']:>9.1f} actions/s", flush=True)
    return row


def _throughput_record(local, config: CheckConfig, rows: list[dict]) -> dict:
    best = max((row for row in rows if "error" not in row), key=lambda row: row["actions_per_s"], default=None)
    return {"model": local.name, "dtype": str(next(local.model.parameters()).dtype), "device": str(local.device),
            "max_new_tokens": config.max_new_tokens, "rows": rows, "best": best,
            "target_actions_per_s": TARGET_ACTIONS_PER_S,
            "target_met": bool(best and best["actions_per_s"] >= TARGET_ACTIONS_PER_S)}


def _turns_from_traces(prepared: Path, count: int) -> list:
    """`count` buyer turns from the traces' steps (each with the actions before it), cycling."""
    from agent.policy import BuyerTurn
    from agent.traces import read_traces

    steps = [(trace, index) for trace in read_traces(prepared / TRACES) for index in range(len(trace.steps))]
    turns = []
    for number in range(count):
        trace, index = steps[number % len(steps)]
        history = [step.action for step in trace.steps[:index]]
        turns.append(BuyerTurn(number, trace.code, trace.steps[index].observation, history, seed=number))
    return turns


def _is_valid(validate_action, text: str, observation: str) -> bool:
    try:
        validate_action(text, observation)
        return True
    except Exception:  # agent.actions.ActionError and its relatives: the point is only to count
        return False


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --- simulation --------------------------------------------------------------------------------


def simulate_agent(prepared: Path, config: CheckConfig, agent_dir: Path, deadline: float) -> dict:
    """Held-out shops one after another, each only while budget is left (a shop still running at
    the deadline is cut and left out); figures over the shops done."""
    import pandas as pd

    from codebook.artifact import CodebookArtifact
    from harness.eval.evaluate import (agent_code_check, per_type_behaviour, run_buyers, plan_shops, row_policy, shop_row,
                                       simulate_shop, summarize_policy, trace_code_rates)
    from harness.eval.split import SPLIT_FILE, ShopSplit

    work = agent_dir.parent
    evaluate_config = _evaluate_config(prepared, buyers_per_shop=config.buyers_per_shop, concurrency=config.concurrency)
    split = ShopSplit.load(prepared / SPLIT_FILE)
    codes = pd.read_parquet(prepared / WORK / "codes.parquet")
    real = pd.read_parquet(prepared / REAL_FILE)
    plans = plan_shops(evaluate_config, split.held_out, codes, real)
    # The persona row's policy exactly as `evaluate` builds it (its model on CUDA when present).
    codebook = CodebookArtifact.load(work / "codebook")
    policy = row_policy("persona", work, evaluate_config, codebook)
    rows, skipped, cut = [], [], []
    for plan in plans:
        if _left(deadline) <= 0:
            skipped.append(plan.shop)
            continue
        started = time.perf_counter()
        run = simulate_shop(evaluate_config, work, codebook, "persona", policy, plan, "http", "persona")
        try:
            summary = asyncio.run(asyncio.wait_for(run, timeout=_left(deadline)))
        except TimeoutError:
            cut.append(plan.shop)
            continue
        rows.append({**shop_row("persona", plan, summary, "http"), "seconds": round(time.perf_counter() - started, 1)})
        print(f"  shop {plan.shop}: real {rows[-1]['cr_real']:.3f} simulated {rows[-1]['cr_sim']:.3f} "
              f"({rows[-1]['sim_buyers']} buyers, {rows[-1]['seconds']} s)", flush=True)
    behaviour = per_type_behaviour(run_buyers(work, "persona", [row["shop"] for row in rows]))
    type_check = agent_code_check(trace_code_rates(prepared / TRACES), behaviour)
    return {"agent": str(agent_dir), "temperature": policy.generation.temperature, "driver": "http",
            "summary": summarize_policy(rows), "skipped_shops": skipped, "cut_shops": cut,
            # correlations() names its count n_shops; here its points are the types
            "per_type": {"n_types": type_check.get("n_shops"),
                         **{key: type_check.get(key) for key in ("pearson", "pearson_p", "spearman", "weighted_mean_abs_gap")}},
            "per_code": type_check["per_code"],
            "shops": [{key: row[key] for key in ("shop", "real_buyers", "cr_real", "sim_buyers", "cr_sim", "cr_sim_ci",
                                                 "alignment", "store_agreement", "step_errors", "seconds")} for row in rows]}


def compare_agents(data: dict) -> dict:
    """The headline: the two agents' alignment and per-type Pearson side by side."""
    def figures(name: str) -> dict:
        section = data.get(name) or {}
        summary, per_type = section.get("summary") or {}, section.get("per_type") or {}
        return {"shops": summary.get("shops"), "alignment": summary.get("alignment"),
                "per_type_pearson": per_type.get("pearson")}

    best = max(_throughput_rows(data), key=lambda row: row["actions_per_s"], default={})
    return {"smollm2": figures("simulation_smollm2"), "tiny": figures("simulation_tiny"),
            "best_actions_per_s": best.get("actions_per_s"), "at_batch": best.get("batch"),
            "best_variant": best.get("variant"),
            "target_met": bool(best) and best["actions_per_s"] >= TARGET_ACTIONS_PER_S}


def _throughput_rows(data: dict, with_errors: bool = False) -> list[dict]:
    return [row for name in ("throughput", "throughput_compiled") for row in (data.get(name) or {}).get("rows", [])
            if with_errors or "error" not in row]


# ---------------------------------------------------------------------------------------------
# helpers and entry point


def _left(deadline: float) -> float:
    return deadline - time.perf_counter()


def _environment() -> dict:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None, "cpus": os.cpu_count()}


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="build DIR here (CPU, full environment)")
    prep.add_argument("dir", type=Path)
    prep.add_argument("--brands", help="comma-separated brand ids: a subset of the log (the CI dry run)")
    prep.add_argument("--held-out-shops", type=int, default=PrepareConfig.held_out_shops)
    prep.add_argument("--wheels", type=Path, help="also download the wheels the GPU machine lacks into this folder")
    prep.add_argument("--evaluate", default="{}", help="EvaluateConfig overrides as JSON (the CI dry run's sizes)")
    run = commands.add_parser("run", help="the check itself (GPU machine)")
    run.add_argument("dir", type=Path)
    run.add_argument("--out", type=Path, help="the JSON of figures (default: $OUT/gpu_check.json, else DIR/gpu_check.json)")
    run.add_argument("--device", default=CheckConfig.device)
    run.add_argument("--tiny", action="store_true", help="CI dry run: shrunk model, tiny budgets")
    run.add_argument("--work", type=Path, help="scratch folder for agents and runs (default: a fresh temporary one)")
    child = commands.add_parser("compiled-throughput", help=argparse.SUPPRESS)  # run by measure_compiled_throughput
    child.add_argument("dir", type=Path)
    child.add_argument("agent_dir", type=Path)
    child.add_argument("rows_file", type=Path)
    child.add_argument("--config", required=True)
    args = parser.parse_args(argv)

    if args.command == "compiled-throughput":
        options = json.loads(args.config)
        options.update({key: tuple(options[key]) for key in ("batch_sizes", "compiled_batch_sizes")})
        compiled_throughput_child(args.dir, args.agent_dir, args.rows_file, CheckConfig(**options))
        return 0

    if args.command == "prepare":
        brands = tuple(args.brands.split(",")) if args.brands else None
        manifest = prepare(args.dir, PrepareConfig(held_out_shops=args.held_out_shops, brands=brands, wheels=args.wheels,
                                                   evaluate=json.loads(args.evaluate)))
        print(f"prepared {args.dir} in {manifest['seconds']} s: held-out shops {manifest['held_out']}")
        return 0
    config = CheckConfig.dry_run(device=args.device) if args.tiny else CheckConfig(device=args.device)
    json_path = args.out or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else args.dir / "gpu_check.json")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    data = run_check(args.dir, config, json_path, work)
    print_summary(data)
    print(f"figures written to {json_path}")
    return 0


def print_summary(data: dict) -> None:
    print("\n== summary")
    for name, phase in data["phases"].items():
        print(f"  {name:<20} {phase['status']:<6} {phase['seconds']:>7.1f} s (budget {phase['budget_s']:.0f} s)")
    sft = data.get("sft") or {}
    if "stages" in sft:
        print(f"  SFT: {sft['parameters']:,} parameters, stages {json.dumps(sft['stages'])}, loss {json.dumps(sft['loss_first_last'])}")
    for row in _throughput_rows(data, with_errors=True):
        figure = row.get("error") or (f"{row['actions_per_s']:>9.1f} actions/s (valid {row['valid_actions']}/{row['batch']}, "
                                      f"prompts {row['prompt_tokens_mean']:.0f} tokens on average)")
        print(f"  {row['variant']:>29} batch {row['batch']:>5} T={row['temperature']:g}: {figure}")
    for agent, figures in (data.get("comparison") or {}).items():
        print(f"  {agent}: {figures}")


if __name__ == "__main__":
    sys.exit(main())
