"""Batched action generation with a local transformers model.

Every waiting buyer's prompt goes into one `generate` call: left padding (so every row's answer
starts at the same position), KV cache, a short `max_new_tokens`. Decoding is greedy or sampled;
sampling is done row by row with the Gumbel-max trick from a generator seeded per buyer, so a
buyer's draw does not depend on which other buyers share its batch.

`ChoiceConstraint` restricts a row's output to one of a list of strings (a token trie), which is
how the policy's constrained retry keeps the model to the grammar's verbs and the page's ids.

`PersonaGuidance` draws each answer from the persona prompt's log-probabilities pushed away from
the same prompt's with the neutral token (classifier-free guidance, with the persona token as the
condition): the batch holds both prompts, and each pair generates one answer. Only the tokens the
persona itself finds plausible are pushed (contrastive decoding's plausibility constraint).

`PrefixCache` keeps the key/value states of prompt openings that many prompts share. The agent's
prompt is its system line (one per persona token), then the page, then the buyer's own last
actions; buyers of one type on one page share all but those last few tokens (nine steps in ten of
a simulated shop). With `GenerationSettings.opening_end` naming where the unshared part starts, the
opening runs to there; without it, to the first end of turn (the system line). The prefill then
runs only on the rest of each prompt; the answers are the ones the full prefill gives.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
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
    # Token ids that start the part of a prompt that is its own (agent.prompt.opening_end_ids):
    # PrefixCache keeps each prompt's states up to their last occurrence.
    opening_end: tuple[int, ...] = ()
    # Persona guidance g (1: off): answers are drawn from neutral + g × (persona − neutral) in
    # log-probabilities, the persona prompt's against the same prompt's with the neutral token
    # (the caller passes those as `contrast_prompts`). A small agent learns how its types differ
    # only faintly, and more so at decisions its base had a habit for; g > 1 scales the difference.
    guidance: float = 1.0
    # Under guidance, only the tokens with at least this share of the persona's top token's probability
    # are pushed; the rest keep the persona's own probability (0: every token is pushed). Guidance
    # amplifies whatever the token changes, its errors included: a "stop" on the home page that a
    # type's token raises from 0.002 to 0.06 becomes the likeliest answer there unless barred.
    guidance_plausibility: float = 0.0


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


class PersonaGuidance(LogitsProcessor):
    """Rows [0, n) of the batch hold the persona prompts and rows [n, 2n) the same prompts with the
    neutral token. Both rows of a pair get the same log-probabilities, so that, drawing from the same
    random stream, they generate the same answer: the persona's own outside its plausible tokens
    (>= `plausibility` × its top token's probability); inside them, the persona's mass there
    shared out by neutral + scale × (persona − neutral)."""

    def __init__(self, scale: float, plausibility: float):
        self.scale = scale
        self.log_plausibility = math.log(plausibility) if plausibility > 0 else float("-inf")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        persona, neutral = torch.log_softmax(scores.float(), dim=-1).chunk(2)
        plausible = persona >= persona.max(dim=-1, keepdim=True).values + self.log_plausibility
        plausible_mass = torch.logsumexp(persona.masked_fill(~plausible, float("-inf")), dim=-1, keepdim=True)
        pushed = (neutral + self.scale * (persona - neutral)).masked_fill(~plausible, float("-inf"))
        guided = torch.where(plausible, torch.log_softmax(pushed, dim=-1) + plausible_mass, persona)
        return torch.cat([guided, guided]).to(scores.dtype)


class PrefixCache:
    """Key/value states of prompt openings, computed once per distinct opening and model state and
    kept, least recently used first out, up to `max_bytes`.

    A prompt's opening runs up to the last occurrence of the settings' `opening_end` ids or, without
    them, through its first end-of-turn token. `batch_inputs` lays each row out as left padding +
    opening + padding + rest, with the openings' states (left padded alike) as the cache and every
    padding masked out. Positions come from the attention mask, so every token sits where it sits in
    the prompt alone, as with plain left padding. Entries are dropped when the model's weights change.
    """

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = max_bytes
        self._states: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._bytes = 0
        self._weights_version: tuple[int, ...] | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._states)

    @staticmethod
    def opening_length(ids: list[int], end_of_turn_id: int | None, opening_end: tuple[int, ...] = ()) -> int | None:
        if opening_end:
            start = _last_start(ids, list(opening_end))
            if start:
                return start
        return ids.index(end_of_turn_id) + 1 if end_of_turn_id in ids[:-1] else None

    def batch_inputs(self, model, ids_per_row: list[list[int]], end_of_turn_id: int | None, pad_id: int,
                     opening_end: tuple[int, ...] = ()) -> dict | None:
        """generate()'s inputs with the openings cached, or None when a row has no opening (the
        caller then prefills whole prompts)."""
        openings = [self.opening_length(ids, end_of_turn_id, opening_end) for ids in ids_per_row]
        if None in openings:
            return None
        self._forget_if_weights_changed(model)
        states = [self._states_of(model, tuple(ids[:opening])) for ids, opening in zip(ids_per_row, openings)]
        rests = [len(ids) - opening for ids, opening in zip(ids_per_row, openings)]
        width, rest_width = max(openings), max(rests)
        input_ids, mask = [], []
        for ids, opening, rest in zip(ids_per_row, openings, rests):
            lead, gap = width - opening, rest_width - rest
            input_ids.append([pad_id] * lead + ids[:opening] + [pad_id] * gap + ids[opening:])
            mask.append([0] * lead + [1] * opening + [0] * gap + [1] * rest)
        return {"input_ids": torch.tensor(input_ids, device=model.device),
                "attention_mask": torch.tensor(mask, device=model.device),
                "past_key_values": DynamicCache(ddp_cache_data=_left_padded(states, width), config=model.config)}

    def _states_of(self, model, opening: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if opening in self._states:
            self.hits += 1
            self._states.move_to_end(opening)
            return self._states[opening]
        self.misses += 1
        output = model(input_ids=torch.tensor([opening], device=model.device), use_cache=True)
        states = [(layer.keys, layer.values) for layer in output.past_key_values.layers]
        self._states[opening] = states
        self._bytes += _size(states)
        while self._bytes > self.max_bytes and len(self._states) > 1:
            self._bytes -= _size(self._states.popitem(last=False)[1])
        return states

    def _forget_if_weights_changed(self, model) -> None:
        # Every in-place update of a parameter (an optimiser step, a load) bumps its version.
        version = tuple(parameter._version for parameter in model.parameters())
        if version != self._weights_version:
            self._states.clear()
            self._bytes = 0
            self._weights_version = version


def _last_start(ids: list[int], pattern: list[int]) -> int | None:
    """Where the last occurrence of `pattern` in `ids` starts (None: nowhere)."""
    for start in range(len(ids) - len(pattern), -1, -1):
        if ids[start] == pattern[0] and ids[start:start + len(pattern)] == pattern:
            return start
    return None


def _size(states: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(keys.nbytes + values.nbytes for keys, values in states)


def _left_padded(states_per_row: list[list[tuple[torch.Tensor, torch.Tensor]]], width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's keys and values of all rows in one batch, every row's states at the right end
    of `width` positions (the zeros before them are masked out)."""
    layers = []
    for layer in range(len(states_per_row[0])):
        keys, values = states_per_row[0][layer]
        batch_keys = keys.new_zeros((len(states_per_row), keys.shape[1], width, keys.shape[3]))
        batch_values = values.new_zeros((len(states_per_row), values.shape[1], width, values.shape[3]))
        for row, states in enumerate(states_per_row):
            row_keys, row_values = states[layer]
            batch_keys[row, :, width - row_keys.shape[2]:] = row_keys[0]
            batch_values[row, :, width - row_values.shape[2]:] = row_values[0]
        layers.append((batch_keys, batch_values))
    return layers


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
    contrast_prompts: list[str] | None = None,
) -> GenerationResult:
    """Generate one answer per prompt in a single left-padded batch (openings from `prefix_cache`
    when given). Under persona guidance (settings.guidance != 1) `contrast_prompts` are the same
    prompts with the neutral token, one per prompt, generated beside them."""
    started = time.perf_counter()
    rows = len(prompts)
    seeds = row_seeds if row_seeds is not None else list(range(rows))
    guided = settings.guidance != 1.0
    if guided:
        if contrast_prompts is None or len(contrast_prompts) != rows:
            raise ValueError(f"persona guidance {settings.guidance:g} needs one neutral prompt per prompt "
                             f"(contrast_prompts), got {0 if contrast_prompts is None else len(contrast_prompts)} for {rows}")
        # Each pair draws from one random stream and, under a choice constraint, from one set of choices.
        prompts, seeds = list(prompts) + list(contrast_prompts), list(seeds) * 2
        choices = None if choices is None else list(choices) * 2
    tokenizer.padding_side = "left"
    ids_per_row = tokenizer(prompts, add_special_tokens=False).input_ids
    batch = None
    if prefix_cache is not None:
        batch = prefix_cache.batch_inputs(model, ids_per_row, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                          settings.opening_end)
    if batch is None:
        batch = tokenizer.pad({"input_ids": ids_per_row}, padding=True, return_tensors="pt").to(model.device)
    prompt_length = batch["input_ids"].shape[1]
    guidance = [PersonaGuidance(settings.guidance, settings.guidance_plausibility)] if guided else []
    processors = LogitsProcessorList(guidance + list(extra_processors))
    if choices is not None:
        processors.append(ChoiceConstraint(tokenizer, choices, prompt_length))
    if settings.suppressed_ids:
        processors.append(SuppressTokensLogitsProcessor(list(settings.suppressed_ids), device=model.device))
    if settings.temperature > 0:
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
    answers = output[:rows, prompt_length:]  # a guided pair's second row repeats the first's answer
    texts, completion_tokens = [], []
    for row in answers.tolist():
        length = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        completion_tokens.append(length)
        texts.append(tokenizer.decode(row[:length], skip_special_tokens=True).strip())
    prompt_tokens = batch["attention_mask"][:rows].sum(dim=1).tolist()
    return GenerationResult(texts, prompt_tokens, completion_tokens, time.perf_counter() - started, [None] * rows)


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
