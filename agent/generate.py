"""Batched action generation with a local transformers model.

Every waiting buyer's prompt goes into one `generate` call: left padding (so every row's answer
starts at the same position), KV cache, a short `max_new_tokens`. Decoding is greedy or sampled;
sampling is done row by row with the Gumbel-max trick from a generator seeded per buyer, so a
buyer's draw does not depend on which other buyers share its batch.

`ChoiceConstraint` restricts a row's output to one of a list of strings (a token trie), which is
how the policy's constrained retry keeps the model to the grammar's verbs and the page's ids.

`PrefixCache` keeps the key/value states of prompt openings that many prompts share: a chat
prompt's first turn (the agent's system line, one per persona token) is about a quarter of its
tokens and the same at every step of every buyer of that type. With a cache, the prefill runs only
on the rest of each prompt; the answers are the ones the full prefill gives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, SuppressTokensLogitsProcessor


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 32  # the longest action line ("type [12] \"…\"") fits
    temperature: float = 0.0  # 0 means greedy
    seed: int = 0  # mixed with each row's own seed when sampling
    # Token ids never generated: the persona tokens, which are input only (training leaves them out
    # of the answer's softmax, so nothing ever taught the model not to say them).
    suppressed_ids: tuple[int, ...] = ()


@dataclass
class GenerationResult:
    """One batch: the decoded answer per row and what the harness logs about the call."""

    texts: list[str]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    latency_s: float  # wall time of the whole batched call
    errors: list[str | None] = field(default_factory=list)  # per row, for remote backends


class ChoiceConstraint(LogitsProcessor):
    """Allow, per row, only continuations that spell one of that row's choices, then end of turn."""

    def __init__(self, tokenizer, choices_per_row: list[list[str] | None], prompt_length: int):
        self.prompt_length = prompt_length
        self.end_id = tokenizer.eos_token_id
        self.tries = [None if choices is None else self._trie(tokenizer, choices) for choices in choices_per_row]

    def _trie(self, tokenizer, choices: list[str]) -> dict:
        root: dict = {}
        for choice in choices:
            node = root
            for token_id in tokenizer(choice, add_special_tokens=False).input_ids + [self.end_id]:
                node = node.setdefault(token_id, {})
        return root

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, trie in enumerate(self.tries):
            if trie is None:
                continue
            node = trie
            for token_id in input_ids[row, self.prompt_length :].tolist():
                node = node.get(token_id, {})
            allowed = list(node) or [self.end_id]  # a finished row only pads with end of turn
            mask = torch.full_like(scores[row], float("-inf"))
            mask[allowed] = 0.0
            scores[row] = scores[row] + mask
        return scores


class SeededSampling(LogitsProcessor):
    """Turn greedy decoding into sampling at `temperature` with one random stream per row.

    argmax(logits / T + Gumbel noise) is a draw from softmax(logits / T); generating the noise from
    a per-row generator makes each row's draw independent of its batch neighbours.

    The generators live on the device of the scores (created at the first step), so on a GPU the
    noise never crosses to the CPU; a seed draws the same stream on every run on the same kind of
    device, whatever the batch (a CPU and a CUDA stream differ).
    """

    def __init__(self, temperature: float, row_seeds: list[int]):
        self.temperature = temperature
        self.row_seeds = [int(seed) for seed in row_seeds]
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(seed) for seed in self.row_seeds]
        noisy = scores.float() / self.temperature
        for row, generator in enumerate(self.generators):
            uniform = torch.rand(scores.shape[1], generator=generator, device=scores.device).clamp_(1e-10, 1.0)
            noisy[row] = noisy[row] - torch.log(-torch.log(uniform))
        return noisy


class PrefixCache:
    """Key/value states of prompt openings (a chat prompt's tokens up to and including its first
    end-of-turn token), computed once per distinct opening and model state.

    A prompt whose opening is known is prefilled from its end: `batch_inputs` builds the batch as
    opening + left padding + rest, with the openings' states as the cache and the padding masked
    out. Positions come from the attention mask, so every token sits where it sits in the prompt
    alone, as with plain left padding. Entries are dropped when the model's weights change.
    """

    def __init__(self, max_entries: int = 64):
        self.max_entries = max_entries
        self._states: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._weights_version: tuple[int, ...] | None = None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def opening_length(ids: list[int], end_of_turn_id: int | None) -> int | None:
        return ids.index(end_of_turn_id) + 1 if end_of_turn_id in ids[:-1] else None

    def batch_inputs(self, model, ids_per_row: list[list[int]], end_of_turn_id: int | None, pad_id: int) -> dict | None:
        """generate()'s inputs with the openings cached, or None when the rows' openings differ in
        length or a row has none (the caller then prefills whole prompts)."""
        lengths = {self.opening_length(ids, end_of_turn_id) for ids in ids_per_row}
        if len(lengths) != 1 or None in lengths:
            return None
        opening = lengths.pop()
        self._forget_if_weights_changed(model)
        states = [self._states_of(model, tuple(ids[:opening])) for ids in ids_per_row]
        rests = [ids[opening:] for ids in ids_per_row]
        width = max(len(rest) for rest in rests)
        input_ids = [ids[:opening] + [pad_id] * (width - len(rest)) + rest for ids, rest in zip(ids_per_row, rests)]
        mask = [[1] * opening + [0] * (width - len(rest)) + [1] * len(rest) for rest in rests]
        layers = [(torch.cat([row[layer][0] for row in states]), torch.cat([row[layer][1] for row in states]))
                  for layer in range(len(states[0]))]
        return {"input_ids": torch.tensor(input_ids, device=model.device),
                "attention_mask": torch.tensor(mask, device=model.device),
                "past_key_values": DynamicCache(ddp_cache_data=layers, config=model.config)}

    def _states_of(self, model, opening: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if opening in self._states:
            self.hits += 1
            return self._states[opening]
        self.misses += 1
        if len(self._states) >= self.max_entries:
            self._states.pop(next(iter(self._states)))
        output = model(input_ids=torch.tensor([opening], device=model.device), use_cache=True)
        self._states[opening] = [(layer.keys, layer.values) for layer in output.past_key_values.layers]
        return self._states[opening]

    def _forget_if_weights_changed(self, model) -> None:
        # Every in-place update of a parameter (an optimiser step, a load) bumps its version.
        version = tuple(parameter._version for parameter in model.parameters())
        if version != self._weights_version:
            self._states.clear()
            self._weights_version = version


@torch.inference_mode()
def generate_batch(
    model,
    tokenizer,
    prompts: list[str],
    settings: GenerationSettings = GenerationSettings(),
    row_seeds: list[int] | None = None,
    choices: list[list[str] | None] | None = None,
    extra_processors: list[LogitsProcessor] = (),
    prefix_cache: PrefixCache | None = None,
) -> GenerationResult:
    """Generate one answer per prompt in a single left-padded batch (openings from `prefix_cache`
    when given)."""
    started = time.perf_counter()
    tokenizer.padding_side = "left"
    ids_per_row = tokenizer(prompts, add_special_tokens=False).input_ids
    batch = None
    if prefix_cache is not None:
        batch = prefix_cache.batch_inputs(model, ids_per_row, tokenizer.eos_token_id, tokenizer.pad_token_id)
    if batch is None:
        batch = tokenizer.pad({"input_ids": ids_per_row}, padding=True, return_tensors="pt").to(model.device)
    prompt_length = batch["input_ids"].shape[1]
    processors = LogitsProcessorList(list(extra_processors))
    if choices is not None:
        processors.append(ChoiceConstraint(tokenizer, choices, prompt_length))
    if settings.suppressed_ids:
        processors.append(SuppressTokensLogitsProcessor(list(settings.suppressed_ids), device=model.device))
    if settings.temperature > 0:
        seeds = row_seeds if row_seeds is not None else list(range(len(prompts)))
        processors.append(SeededSampling(settings.temperature, [settings.seed * 1_000_003 + seed for seed in seeds]))
    output = model.generate(
        **batch,
        do_sample=False,  # sampling, when asked, is SeededSampling's Gumbel noise + argmax
        max_new_tokens=settings.max_new_tokens,
        logits_processor=processors,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        top_k=None,
        top_p=None,
        temperature=None,
    )
    answers = output[:, prompt_length:]
    texts, completion_tokens = [], []
    for row in answers.tolist():
        length = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        completion_tokens.append(length)
        texts.append(tokenizer.decode(row[:length], skip_special_tokens=True).strip())
    prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
    return GenerationResult(texts, prompt_tokens, completion_tokens, time.perf_counter() - started, [None] * len(prompts))


@torch.inference_mode()
def score_answers(model, tokenizer, prompts: list[str], answers: list[str], suppressed_ids: tuple[int, ...] = ()) -> list[float]:
    """Log-probability of each answer (its tokens and the end of turn) given its prompt, with the
    `suppressed_ids` out of the softmax as generation leaves them out."""
    scores = []
    for prompt, answer in zip(prompts, answers):
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        answer_ids = tokenizer(answer.strip() + tokenizer.eos_token, add_special_tokens=False).input_ids
        ids = torch.tensor([prompt_ids + answer_ids], device=model.device)
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
        logits[:, list(suppressed_ids)] = float("-inf")
        picked = torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(prompt_ids) :, None])
        scores.append(float(picked.sum()))
    return scores
