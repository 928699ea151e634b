"""Two-stage supervised fine-tuning of the persona-token agent (PAPER.md, step 3).

Stage 1, token warm-up: the backbone is frozen and only the persona-token rows of the embedding
matrix learn (a gradient mask on the embedding matrix; with tied embeddings this is also the output
matrix, and the mask covers both uses). AdamW runs with weight decay 0, so every other weight stays
bit-identical: zero gradient gives zero Adam update.
Stage 2, acting: full fine-tuning, or LoRA on every linear layer with the persona rows still
trainable (PEFT `trainable_token_indices`), merged back into plain weights at the end.
`single_stage=True` skips stage 1 (the paper's ablation).

Each example is one step of one trace: the prompt (agent/prompt.py) with the buyer's persona token
and the action as the answer; the loss covers the answer tokens only. With probability
`neutral_dropout` an example gets the neutral token instead, so `<persona_neutral>` learns the
population's average buyer, which the token ablation compares against.

Two details decide whether the persona token is learned at all (measured on Tmall traces: without
them the trained tiny agent's action probabilities were identical under every persona token):
- Batches are drawn at random. Grouping examples by length made each batch one page type (product
  pages, carts, checkout steps have their own lengths), and the model swung from one page type's
  answers to the next instead of learning them together.
- Persona tokens are input-only, so they are left out of the answer's softmax (`action_loss`). In
  the softmax every answer token pushes all of them down the same way; with tied embeddings that
  common push outweighs the small per-persona signal, and the tokens stay interchangeable.
Everything random draws from `seed`.

Where it runs: `device` ("auto" picks CUDA when present) and `precision` ("auto": bf16 autocast on
CUDA, fp32 on CPU; the master weights stay fp32 either way). One optimiser step averages
`grad_accumulation` forward passes of `batch_size` examples, so a large effective batch fits in
memory. Each stage stops at its epochs, its step cap or its wall-clock budget, whichever comes first;
the curves record which.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup, set_seed

from agent.models import PRECISIONS, LocalModel, align_generation_config, autocast_context, compute_dtypes, resolve_device
from agent.persona import PersonaAnchors, PersonaMap, Sampling, add_persona_tokens, persona_token_ids
from agent.prompt import PromptConfig, answer_text, fit_prompt_ids, prompt_budget
from agent.traces import Trace, cart_decision_step, decision_index, rename_shop

IGNORE_INDEX = -100
STAGE2_MODES = ("full", "lora")


@dataclass
class SFTConfig:
    stage2: str = "full"  # "full" fine-tuning or "lora"
    single_stage: bool = False  # skip the token warm-up (ablation)
    stage1_epochs: int = 2
    stage1_lr: float = 1e-2  # only K+1 embedding rows move, so a large rate is safe
    stage2_epochs: int = 2
    stage2_lr: float = 5e-5  # full fine-tuning; LoRA uses lora_lr
    lora_lr: float = 5e-4
    lora_r: int = 16
    lora_alpha: int = 32
    batch_size: int = 8  # examples per forward pass
    grad_accumulation: int = 1  # forward passes per optimiser step: the effective batch is their product
    max_length: int = 1024  # tokens per example; longer observations are cut (prompt.shorten_observation)
    neutral_dropout: float = 0.1
    # Every epoch sees each trace in a renamed shop (agent.traces.rename_shop: a fresh shop id of
    # the same form). With one or two traces per shop, the tiny model otherwise
    # pins a type's buy-or-leave decision to the shop's page and, on a page it never saw, falls back
    # to the average buyer: a type that buys half the time then buys a quarter of the time.
    rename_shops: bool = False
    # The loss weight of each trace's buy-or-leave step (its first product page) against 1 for every
    # other step. Navigation is shared by every type, and a base that shops already knows it; what a
    # persona token has to carry is that decision, one step among many and, for a type that leaves,
    # a one-word answer ("stop") next to long typed queries.
    decision_weight: float = 4.0
    # Each trace's first cart page is a decision step too (weighed like the product page, and the
    # persona tokens' anchors are matched on it): there a buyer with something in the cart checks
    # out or browses on. On long searching sessions (the synthetic log) that step, not the product
    # page, decides, and a navigation base that checks out after every add-to-cart keeps that habit.
    cart_page_decides: bool = True
    num_codes: int | None = None  # default: largest code in the traces + 1
    init: str = "mean"  # persona-row initialisation, see agent/persona.py
    init_noise_scale: float = 0.1  # spread of the new rows relative to the existing rows' spread
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0
    stage1_max_steps: int | None = None  # optimiser-step caps, for smoke runs and benchmarks
    stage2_max_steps: int | None = None
    stage1_max_seconds: float | None = None  # wall-clock budgets; a stage stops at the first step past it
    stage2_max_seconds: float | None = None
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32"
    seed: int = 0
    prompt: PromptConfig = field(default_factory=PromptConfig)

    def __post_init__(self):
        if self.stage2 not in STAGE2_MODES:
            raise ValueError(f"stage2 must be one of {STAGE2_MODES}, got {self.stage2!r}")
        if not 0.0 <= self.neutral_dropout < 1.0:
            raise ValueError(f"neutral_dropout must be in [0, 1), got {self.neutral_dropout}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1 or self.grad_accumulation < 1:
            raise ValueError(f"batch_size and grad_accumulation must be >= 1, got {self.batch_size}, {self.grad_accumulation}")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    weight: float = 1.0  # of this step's mean answer-token loss in the batch's loss


@dataclass
class TrainResult:
    model: LocalModel
    persona_map: PersonaMap
    curves: list[dict]  # one record per optimiser step: stage, step, epoch, loss, lr, seconds
    stages: dict = field(default_factory=dict)  # per stage: steps, seconds, why it stopped


# --- examples and batches -------------------------------------------------------------------------


def build_examples(traces: list[Trace], tokenizer, persona_map: PersonaMap, config: SFTConfig) -> list[Example]:
    """One example per trace step; prompt tokens are masked out of the loss; the decision step
    weighs config.decision_weight."""
    rng = random.Random(config.seed)
    examples = []
    for trace in traces:
        decisions = decision_steps(trace, config)
        for index, step in enumerate(trace.steps):
            neutral = rng.random() < config.neutral_dropout
            token = persona_map.token_for(trace.code, neutral=neutral)
            history = [earlier.action for earlier in trace.steps[:index]]
            example = _example(tokenizer, token, step.observation, history, step.action, config, trace.goal)
            example.weight = config.decision_weight if index in decisions else 1.0
            examples.append(example)
    return examples


def decision_step(trace: Trace) -> int | None:
    """The trace's buy-or-leave step (agent.traces.decision_index); None without a product page."""
    try:
        return decision_index(trace)
    except ValueError:
        return None


def decision_steps(trace: Trace, config: SFTConfig) -> set[int]:
    """The steps where a type decides: its buy-or-leave step and, with config.cart_page_decides,
    its first cart page; empty for a trace that reaches neither."""
    steps = {decision_step(trace)} | ({cart_decision_step(trace)} if config.cart_page_decides else set())
    return steps - {None}


def _example(tokenizer, token, observation, history, action, config: SFTConfig, goal: str = "") -> Example:
    answer_ids = tokenizer(answer_text(tokenizer, action), add_special_tokens=False).input_ids
    # Too long: show less of the page rather than cutting the answer or the persona token.
    prompt_ids = fit_prompt_ids(tokenizer, token, observation, history, config.prompt, prompt_budget(config.max_length), goal)
    return Example(prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids)


def random_batches(count: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Every example index once, in random batches (see the module docstring for why not by length)."""
    order = list(range(count))
    rng.shuffle(order)
    return [order[start : start + batch_size] for start in range(0, count, batch_size)]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right padding for training; padded positions are ignored by attention and loss."""
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        labels[row, :length] = torch.tensor(example.labels)
        attention_mask[row, :length] = 1
    weights = torch.tensor([example.weight for example in examples], dtype=torch.float32)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "weights": weights}


def action_loss(logits: torch.Tensor, labels: torch.Tensor, blocked_ids: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the answer tokens with `blocked_ids` (the persona tokens) out of the softmax:
    the mean over each example's tokens, then the `weights`-weighted mean over examples, so a step
    counts as one step whether its answer is "stop" or a long typed query."""
    targets = labels[:, 1:]
    answer = targets != IGNORE_INDEX
    answer_logits = logits[:, :-1][answer].float()  # only the answer positions: small even for a 49k vocabulary
    answer_logits = answer_logits.index_fill(-1, blocked_ids.to(answer_logits.device), float("-inf"))
    token_losses = torch.nn.functional.cross_entropy(answer_logits, targets[answer], reduction="none")
    rows = answer.nonzero()[:, 0]
    per_example = torch.zeros(len(labels), device=token_losses.device).index_add(0, rows, token_losses)
    per_example = per_example / answer.sum(dim=1).clamp(min=1)
    weights = torch.ones(len(labels)) if weights is None else weights
    weights = weights.to(per_example.device) * (answer.sum(dim=1) > 0)
    return (per_example * weights).sum() / weights.sum().clamp(min=1e-8)


# --- stages ----------------------------------------------------------------------------------------


def freeze_all_but_rows(model, row_ids: list[int]):
    """Stage 1: only the given embedding rows get gradients; returns the hook handle to remove."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    embeddings = model.get_input_embeddings().weight
    embeddings.requires_grad_(True)
    mask = torch.zeros(embeddings.shape[0], 1, dtype=embeddings.dtype, device=embeddings.device)
    mask[row_ids] = 1.0
    # A tied output matrix is the same Parameter: its gradient is summed first, then masked here.
    return embeddings.register_hook(lambda grad: grad * mask.to(grad.dtype))


def epoch_examples(traces: list[Trace], tokenizer, persona_map: PersonaMap, config: SFTConfig) -> Callable[[int], list[Example]]:
    """epoch -> that epoch's examples: the same list every epoch, or with `rename_shops` the traces
    in freshly renamed shops (seeded per epoch)."""
    if not config.rename_shops:
        examples = build_examples(traces, tokenizer, persona_map, config)
        return lambda epoch: examples

    def renamed(epoch: int) -> list[Example]:
        rng = random.Random(f"{config.seed}-rename-{epoch}")
        return build_examples([rename_shop(trace, rng) for trace in traces], tokenizer, persona_map, config)

    return renamed


def _per_epoch(examples: list[Example] | Callable[[int], list[Example]]) -> Callable[[int], list[Example]]:
    """A plain list of examples is the same list every epoch."""
    return examples if callable(examples) else (lambda epoch: examples)


@dataclass(frozen=True)
class Runtime:
    """Where training runs: the device and the autocast dtype (None: plain fp32)."""

    device: torch.device
    autocast_dtype: torch.dtype | None

    @classmethod
    def from_config(cls, config: SFTConfig) -> "Runtime":
        """Training keeps fp32 master weights: whatever the model would compute in at inference
        (compute_dtypes), as weights or as autocast, is autocast here."""
        device = resolve_device(config.device)
        weights, autocast = compute_dtypes(config.precision, device)
        return cls(device, autocast or (weights if weights != torch.float32 else None))

    def autocast(self):
        return autocast_context(self.device, self.autocast_dtype)


def _run_stage(stage: str, model, parameters, examples, config: SFTConfig, epochs: int, lr: float,
               max_steps: int | None, max_seconds: float | None, runtime: Runtime, pad_id: int,
               curves: list[dict], persona_ids: list[int]) -> dict:
    """Train `parameters` for up to `epochs`; returns the stage's steps, seconds and stop reason."""
    started = time.perf_counter()
    examples_for = _per_epoch(examples)
    rng = random.Random(f"{config.seed}-{stage}")
    examples = examples_for(0)
    batches_per_epoch = math.ceil(len(examples) / config.batch_size)  # renaming keeps the count
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accumulation)
    total = epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, max_steps)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup_fraction * total), total)
    model.train()
    step, stopped = 0, None
    blocked = torch.tensor(persona_ids, device=runtime.device)
    progress = tqdm(total=total, desc=f"SFT {stage}", leave=False)
    for epoch in range(epochs):
        examples = examples if epoch == 0 else examples_for(epoch)
        batches = random_batches(len(examples), config.batch_size, rng)
        for first in range(0, len(batches), config.grad_accumulation):
            stopped = _stop_reason(step, total, max_seconds, started)
            if stopped:
                break
            group = batches[first : first + config.grad_accumulation]
            loss = _accumulate_gradients(model, [[examples[i] for i in b] for b in group], runtime, pad_id, blocked)
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            curves.append({"stage": stage, "step": step, "epoch": epoch, "loss": loss, "lr": schedule.get_last_lr()[0],
                           "seconds": round(time.perf_counter() - started, 3)})
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.3f}")
        if stopped:
            break
    progress.close()
    model.eval()
    return {"steps": step, "planned_steps": total, "seconds": round(time.perf_counter() - started, 3),
            "stopped_by": stopped or "epochs"}


def _stop_reason(step: int, total: int, max_seconds: float | None, started: float) -> str | None:
    """Why the stage ends before its next step (None: it goes on)."""
    if step >= total:
        return "max_steps"
    if max_seconds is not None and time.perf_counter() - started >= max_seconds:
        return "max_seconds"
    return None


def _accumulate_gradients(model, micro_batches: list[list[Example]], runtime: Runtime, pad_id: int,
                          blocked: torch.Tensor) -> float:
    """Forward and backward every micro-batch, each loss weighted by its share of the examples'
    weight, so the summed gradient is the weighted mean over all of them; returns that mean loss."""
    batches = [collate(examples, pad_id) for examples in micro_batches]
    batch_weights = [float(batch["weights"].sum()) for batch in batches]
    total_weight = max(1e-8, sum(batch_weights))
    loss_sum = 0.0
    for batch, weight in zip(batches, batch_weights):
        batch = {key: value.to(runtime.device) for key, value in batch.items()}
        with runtime.autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = action_loss(logits, batch["labels"], blocked, batch["weights"]) * (weight / total_weight)
        loss.backward()
        loss_sum += float(loss.detach())
    return loss_sum


def run_stage1(model, persona_ids, examples, config, runtime, pad_id, curves) -> dict:
    handle = freeze_all_but_rows(model, persona_ids)
    try:
        parameters = [model.get_input_embeddings().weight]
        return _run_stage("stage1", model, parameters, examples, config, config.stage1_epochs, config.stage1_lr,
                          config.stage1_max_steps, config.stage1_max_seconds, runtime, pad_id, curves, persona_ids)
    finally:
        handle.remove()
        for parameter in model.parameters():
            parameter.requires_grad_(True)


def run_stage2(model, persona_ids, examples, config, runtime, pad_id, curves):
    """Returns the trained model with plain (merged) weights, and the stage's record."""
    if config.stage2 == "full":
        parameters = [p for p in model.parameters() if p.requires_grad]
        record = _run_stage("stage2", model, parameters, examples, config, config.stage2_epochs, config.stage2_lr,
                            config.stage2_max_steps, config.stage2_max_seconds, runtime, pad_id, curves, persona_ids)
        return model, record
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      trainable_token_indices=persona_ids, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    parameters = [p for p in peft_model.parameters() if p.requires_grad]
    record = _run_stage("stage2", peft_model, parameters, examples, config, config.stage2_epochs, config.lora_lr,
                        config.stage2_max_steps, config.stage2_max_seconds, runtime, pad_id, curves, persona_ids)
    return peft_model.merge_and_unload(), record


ANCHOR_STEPS_PER_CODE = 24  # trace steps of each code scored under every anchor row


def example_losses(model, examples: list[Example], runtime: Runtime, pad_id: int, blocked: torch.Tensor,
                   batch_size: int) -> torch.Tensor:
    """Mean answer-token loss of each example (teacher-forced, no gradient)."""
    losses = []
    for start in range(0, len(examples), batch_size):
        batch = {key: value.to(runtime.device) for key, value in collate(examples[start : start + batch_size], pad_id).items()}
        with torch.no_grad(), runtime.autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        answer = targets != IGNORE_INDEX
        log_probs = torch.log_softmax(logits[:, :-1].float().index_fill(-1, blocked, float("-inf")), dim=-1)
        picked = log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        losses.append(-(picked * answer).sum(dim=1) / answer.sum(dim=1).clamp(min=1))
    return torch.cat(losses).cpu()


def anchor_steps(trace: Trace, config: SFTConfig) -> list[int]:
    """The steps a code is matched to an anchor on: its decision steps (decision_steps), where types
    differ most; every step of a trace that reaches none. Matched on every step, a type that leaves
    after one product view scores best under the anchor that opens that product as quickly, a buyer,
    and starts as one; matched on the product page alone, a type that carts and then leaves from the
    cart starts as a buyer too."""
    decisions = decision_steps(trace, config)
    return sorted(decisions) if decisions else list(range(len(trace.steps)))


def start_from_anchors(model, traces: list[Trace], tokenizer, persona_map: PersonaMap, persona_ids: list[int],
                       anchors: PersonaAnchors, config: SFTConfig, runtime: Runtime) -> dict:
    """Each code's row starts at the anchor row under which a sample of its traces' actions is
    likeliest; codes without traces and the neutral token start at the anchors' neutral row. A
    little noise keeps codes that share an anchor apart. Returns code -> anchor name."""
    started = time.perf_counter()
    rng = random.Random(f"{config.seed}-anchors")
    steps_by_code: dict[int, list[tuple[Trace, int]]] = {}
    for trace in traces:
        steps_by_code.setdefault(trace.code, []).extend((trace, index) for index in anchor_steps(trace, config))
    examples, owners = [], []
    for code, steps in sorted(steps_by_code.items()):
        for trace, index in rng.sample(steps, min(ANCHOR_STEPS_PER_CODE, len(steps))):
            step = trace.steps[index]
            history = [earlier.action for earlier in trace.steps[:index]]
            examples.append(_example(tokenizer, persona_map.token_for(code), step.observation, history, step.action, config,
                                     trace.goal))
            owners.append(code)
    weight = model.get_input_embeddings().weight
    rows = anchors.rows.to(weight.device, weight.dtype)
    code_ids, neutral_id = persona_ids[:-1], persona_ids[-1]
    blocked = torch.tensor(persona_ids, device=runtime.device)
    losses = torch.zeros(len(rows), len(examples))
    model.eval()
    with torch.no_grad():
        for index, row in enumerate(rows):
            weight[code_ids] = row
            losses[index] = example_losses(model, examples, runtime, tokenizer.pad_token_id, blocked, config.batch_size)
        generator = torch.Generator().manual_seed(config.seed)
        spread = rows.float().std(dim=0).cpu() if len(rows) > 1 else torch.zeros(weight.shape[1])
        weight[code_ids] = anchors.neutral.to(weight.device, weight.dtype)
        owner = torch.tensor(owners)
        matched = {}
        for code in sorted(steps_by_code):
            best = int(losses[:, owner == code].mean(dim=1).argmin())
            matched[str(code)] = anchors.names[best]
            noise = torch.randn(weight.shape[1], generator=generator) * spread * 0.1
            weight[persona_ids[code]] = rows[best] + noise.to(weight.device, weight.dtype)
        weight[neutral_id] = anchors.neutral.to(weight.device, weight.dtype)
    return {"matched": matched, "scored_steps": len(examples), "seconds": round(time.perf_counter() - started, 3)}


def train_agent(traces: list[Trace], base: LocalModel, config: SFTConfig = SFTConfig(),
                centroids: np.ndarray | None = None, anchors: PersonaAnchors | None = None) -> TrainResult:
    """Add persona tokens to `base`, run stage 1 (unless single-stage) and stage 2; in place.
    `anchors`: persona rows the base already reads (a navigation base's); the new tokens start
    from them (start_from_anchors) instead of `config.init`."""
    if not traces:
        raise ValueError("no traces to train on")
    traces = in_stable_order(traces)
    set_seed(config.seed)
    num_codes = config.num_codes or max(trace.code for trace in traces) + 1
    too_large = sorted({trace.code for trace in traces if trace.code >= num_codes})
    if too_large:
        raise ValueError(f"traces use codes {too_large[:5]} but num_codes is {num_codes}")
    model, tokenizer = base.model, base.tokenizer
    runtime = Runtime.from_config(config)
    model.to(device=runtime.device, dtype=torch.float32)  # fp32 master weights; bf16 only inside autocast
    persona_map = add_persona_tokens(model, tokenizer, num_codes, config.init, centroids, config.init_noise_scale, config.seed)
    persona_map.prompt_tokens = prompt_budget(config.max_length)
    persona_ids = persona_token_ids(tokenizer, persona_map)
    stages = {}
    if anchors is not None:
        persona_map.init = "anchored"
        stages["anchors"] = start_from_anchors(model, traces, tokenizer, persona_map, persona_ids, anchors, config, runtime)
    return _train_stages(traces, LocalModel(model, tokenizer, base.name), persona_map, persona_ids, config, runtime, stages)


def continue_agent(traces: list[Trace], agent: LocalModel, persona_map: PersonaMap, config: SFTConfig) -> TrainResult:
    """Train an agent further: both stages again with `config`'s budget, from the agent's weights
    and persona rows instead of a fresh base; in place. Its sampling temperature is dropped (the
    weights it was chosen for change). Give a `config.seed` other than the first training's, or
    the stages draw the same batches in the same order again."""
    if not traces:
        raise ValueError("no traces to train on")
    traces = in_stable_order(traces)
    too_large = sorted({trace.code for trace in traces if trace.code >= persona_map.num_codes})
    if too_large:
        raise ValueError(f"traces use codes {too_large[:5]} but the agent has {persona_map.num_codes} persona tokens")
    set_seed(config.seed)
    runtime = Runtime.from_config(config)
    agent.model.to(device=runtime.device, dtype=torch.float32)
    persona_map = replace(persona_map, sampling=Sampling(), prompt_tokens=prompt_budget(config.max_length))
    persona_ids = persona_token_ids(agent.tokenizer, persona_map)
    return _train_stages(traces, agent, persona_map, persona_ids, config, runtime, {})


def in_stable_order(traces: list[Trace]) -> list[Trace]:
    """A replay writes traces as its buyers finish, in an order that changes from run to run; the
    same traces and seed must give the same agent."""
    return sorted(traces, key=lambda trace: (trace.shop_id, trace.buyer_id, trace.variant, trace.goal))


def _train_stages(traces: list[Trace], start: LocalModel, persona_map: PersonaMap, persona_ids: list[int],
                  config: SFTConfig, runtime: Runtime, stages: dict) -> TrainResult:
    """Stage 1 (unless single-stage) and stage 2 from `start`'s weights; `stages` gets their records."""
    model, tokenizer = start.model, start.tokenizer
    examples_for = epoch_examples(traces, tokenizer, persona_map, config)
    curves: list[dict] = []
    if not config.single_stage:
        stages["stage1"] = run_stage1(model, persona_ids, examples_for, config, runtime, tokenizer.pad_token_id, curves)
    model, stages["stage2"] = run_stage2(model, persona_ids, examples_for, config, runtime, tokenizer.pad_token_id, curves)
    for record in stages.values():
        record.update(device=str(runtime.device), autocast=str(runtime.autocast_dtype).removeprefix("torch.") if runtime.autocast_dtype else "fp32")
    return TrainResult(LocalModel(model.eval(), tokenizer, start.name), persona_map, curves, stages)


# --- output ----------------------------------------------------------------------------------------


def save_agent(result: TrainResult, out_dir: str | Path, config: SFTConfig | None = None, extra: dict | None = None) -> Path:
    """save_pretrained weights + tokenizer, persona.json, training curves (JSON and PNG)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # vllm and generate stop at the saved generation_config's end token: make it the end of turn.
    align_generation_config(result.model.model, result.model.tokenizer)
    result.model.model.save_pretrained(out_dir)
    result.model.tokenizer.save_pretrained(out_dir)
    result.persona_map.save(out_dir)
    record = {"base": result.model.name, "config": asdict(config) if config else None, "stages": result.stages,
              "curves": result.curves, **(extra or {})}
    (out_dir / "training.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    plot_curves(result.curves, out_dir / "training_curves.png")
    return out_dir


def plot_curves(curves: list[dict], path: Path) -> None:
    """The loss per optimiser step as a PNG; skipped where matplotlib is not installed (a bare GPU
    machine): training.json holds the same curve."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.5))
    offset = 0
    for stage in ("stage1", "stage2"):
        points = [c for c in curves if c["stage"] == stage]
        if points:
            axis.plot([offset + c["step"] for c in points], [c["loss"] for c in points], label=stage)
            offset += points[-1]["step"]
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("loss (action tokens)")
    axis.set_title("persona-token SFT")
    if curves:
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
