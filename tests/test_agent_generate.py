"""Batched generation, the LLM policy's validation / retry / fallback, and the OpenAI-compatible
backend against a real local HTTP server that serves the tiny model."""

from __future__ import annotations

import math
import socket
import threading
import time
from dataclasses import replace

import pytest
import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from transformers import LogitsProcessor

from agent.generate import GenerationSettings, PrefixCache, generate_batch
from agent.llm_policy import FALLBACK_ACTION, LLMPolicy
from agent.models import EndpointConfig, OpenAIEndpoint, load_tiny
from agent.persona import add_persona_tokens
from agent.policy import BuyerTurn
from agent.prompt import candidate_actions, element_ids, is_valid, render_prompt, validate_action
from agent.actions import ActionError
from agent.traces import make_synthetic_traces

torch.set_num_threads(1)
TRACES = make_synthetic_traces(8, seed=4, compact=True)
TEXTS = [s.observation for t in TRACES for s in t.steps] + [s.action for t in TRACES for s in t.steps]
OBSERVATION = TRACES[0].steps[-1].observation


@pytest.fixture(scope="module")
def tiny():
    local = load_tiny(TEXTS)
    persona_map = add_persona_tokens(local.model, local.tokenizer, num_codes=2, noise_scale=1.0)
    return local, persona_map


def _turns(n):
    steps = [(t, i) for t in TRACES for i in range(len(t.steps))]
    return [BuyerTurn(k, steps[k % len(steps)][0].code, steps[k % len(steps)][0].steps[steps[k % len(steps)][1]].observation,
                      [s.action for s in steps[k % len(steps)][0].steps[: steps[k % len(steps)][1]]], seed=k) for k in range(n)]


class ForceText(LogitsProcessor):
    """A generation hook that makes the real model say `text` (then end of turn), whatever it would."""

    def __init__(self, tokenizer, text):
        self.ids = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        self.start = None

    def __call__(self, input_ids, scores):
        self.start = self.start if self.start is not None else input_ids.shape[1]
        position = min(input_ids.shape[1] - self.start, len(self.ids) - 1)
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.ids[position]] = 0.0
        return forced


# --- prompt and validation --------------------------------------------------------------------------


def test_prompt_holds_persona_token_observation_and_recent_actions(tiny):
    local, _ = tiny
    prompt = render_prompt(local.tokenizer, "<persona_1>", OBSERVATION, ["a1", "a2", "a3", "a4", "a5", "a6"])
    system, user = prompt.split("<|im_start|>user\n")
    assert system.startswith("<|im_start|>system\n<persona_1> ")
    assert OBSERVATION in user and "Last actions: a3; a4; a5; a6" in user
    # The token again right before the answer, where the decision is read.
    assert prompt.endswith("Last actions: a3; a4; a5; a6\nShopper: <persona_1><|im_end|>\n<|im_start|>assistant\n")
    assert prompt.count("<persona_1>") == 2


def test_validation_checks_grammar_and_ids_on_the_page():
    ids = element_ids(OBSERVATION)
    assert ids and str(validate_action(f"click [{min(ids)}]\nmore text", OBSERVATION)) == f"click [{min(ids)}]"
    with pytest.raises(ActionError, match=r"element \[999\] is not on the page"):
        validate_action("click [999]", OBSERVATION)
    with pytest.raises(ActionError, match="unknown action"):
        validate_action("buy everything", OBSERVATION)
    assert not is_valid("", OBSERVATION)
    assert all(is_valid(candidate, OBSERVATION) for candidate in candidate_actions(OBSERVATION))


# --- batched generation ------------------------------------------------------------------------------


def test_left_padded_batch_equals_one_by_one_greedy(tiny):
    local, persona_map = tiny
    turns = _turns(6)
    policy = LLMPolicy(local, persona_map, generation=GenerationSettings(max_new_tokens=8))
    prompts = policy.prompts(turns)
    lengths = {len(local.tokenizer(p).input_ids) for p in prompts}
    assert len(lengths) > 1  # the batch really needs padding
    batched = local.generate(prompts, policy.generation)
    single = [local.generate([p], policy.generation).texts[0] for p in prompts]
    assert batched.texts == single
    assert all(0 < n <= 8 for n in batched.completion_tokens)
    assert batched.prompt_tokens == [len(local.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    assert batched.latency_s > 0


def test_persona_tokens_are_never_generated(tiny):
    local, persona_map = tiny
    policy = LLMPolicy(local, persona_map)
    persona_ids = [local.tokenizer.convert_tokens_to_ids(token) for token in persona_map.tokens]
    assert sorted(policy.generation.suppressed_ids) == sorted(persona_ids)
    # A hook that makes every persona token the likeliest next token, and "stop" the next likeliest.
    stop = local.tokenizer("stop", add_special_tokens=False).input_ids[0]

    class FavourPersona(LogitsProcessor):
        def __call__(self, input_ids, scores):
            top = scores.max()
            scores[:, persona_ids] = top + 50.0
            scores[:, stop] = top + 40.0
            return scores

    prompts = policy.prompts(_turns(3))
    free = local.generate(prompts, GenerationSettings(max_new_tokens=2), extra_processors=[FavourPersona()])
    banned = local.generate(prompts, GenerationSettings(max_new_tokens=2, suppressed_ids=policy.generation.suppressed_ids),
                            extra_processors=[FavourPersona()])
    assert free.texts == ["", "", ""]  # the hook works: persona tokens are special and decode to nothing
    assert banned.texts == [local.tokenizer.decode([stop, stop])] * 3


def test_sampling_is_reproducible_per_buyer_whatever_the_batch(tiny):
    local, persona_map = tiny
    prompts = LLMPolicy(local, persona_map).prompts(_turns(4))
    settings = GenerationSettings(max_new_tokens=6, temperature=1.5, seed=3)
    together = local.generate(prompts, settings, row_seeds=[10, 11, 12, 13]).texts
    alone = local.generate([prompts[2]], settings, row_seeds=[12]).texts
    other_seed = local.generate([prompts[2]] * 4, settings, row_seeds=[20, 21, 22, 23]).texts
    assert together[2] == alone[0]
    assert len(set(other_seed)) > 1  # different seeds really draw differently


class FirstScores(LogitsProcessor):
    """Keeps the scores of the first generated token: the logits the prefill ends with."""

    def __init__(self):
        self.scores = None

    def __call__(self, input_ids, scores):
        self.scores = scores.clone() if self.scores is None else self.scores
        return scores


def _first_scores(local, prompts, cache=None, settings=GenerationSettings()) -> torch.Tensor:
    hook = FirstScores()
    generate_batch(local.model, local.tokenizer, prompts, replace(settings, max_new_tokens=1), extra_processors=[hook],
                   prefix_cache=cache)
    return hook.scores


def test_cached_openings_give_the_logits_and_answers_of_full_prompts(tiny):
    local, persona_map = tiny
    turns = _turns(8)
    assert len({turn.code for turn in turns}) == 2  # two personas: two openings
    prompts = LLMPolicy(local, persona_map).prompts(turns)
    cache = PrefixCache()
    assert torch.allclose(_first_scores(local, prompts, cache), _first_scores(local, prompts), atol=1e-5)
    assert (cache.misses, cache.hits) == (2, 6)  # each opening computed once, then reused
    for settings in (GenerationSettings(max_new_tokens=8), GenerationSettings(max_new_tokens=8, temperature=1.5, seed=3)):
        plain = generate_batch(local.model, local.tokenizer, prompts, settings, list(range(8)))
        cached = generate_batch(local.model, local.tokenizer, prompts, settings, list(range(8)), prefix_cache=cache)
        assert cached.texts == plain.texts
        assert cached.prompt_tokens == plain.prompt_tokens
    choices = [candidate_actions(turn.observation) for turn in turns]
    constrained = generate_batch(local.model, local.tokenizer, prompts, GenerationSettings(), choices=choices, prefix_cache=cache)
    assert all(text in options for text, options in zip(constrained.texts, choices))
    assert constrained.texts == generate_batch(local.model, local.tokenizer, prompts, GenerationSettings(), choices=choices).texts


def test_buyers_of_a_type_on_one_page_share_their_prompt_up_to_their_own_last_actions(tiny):
    local, persona_map = tiny
    policy = LLMPolicy(local, persona_map)
    assert policy.generation.opening_end  # the policy names where a buyer's own part starts
    first = _turns(6)
    again = [BuyerTurn(index + 6, turn.code, turn.observation, turn.history + ["scroll down"] * (1 + index % 2), seed=index + 6)
             for index, turn in enumerate(first)]  # the same persona and page, other last actions
    turns = first + again
    pages = {(turn.code, turn.observation) for turn in turns}
    prompts = policy.prompts(turns)
    cache = PrefixCache()
    scores = _first_scores(local, prompts, cache, policy.generation)
    assert torch.allclose(scores, _first_scores(local, prompts, settings=policy.generation), atol=1e-5)
    assert (cache.misses, cache.hits) == (len(pages), len(turns) - len(pages))  # one opening per persona and page
    small = PrefixCache(max_bytes=1)  # keeps only the latest opening
    for settings in (replace(policy.generation, max_new_tokens=8), replace(policy.generation, max_new_tokens=8, temperature=1.5, seed=3)):
        plain = generate_batch(local.model, local.tokenizer, prompts, settings, list(range(len(turns))))
        for kept in (cache, small):
            cached = generate_batch(local.model, local.tokenizer, prompts, settings, list(range(len(turns))), prefix_cache=kept)
            assert cached.texts == plain.texts
            assert cached.prompt_tokens == plain.prompt_tokens
    assert len(small) == 1


def test_prefix_cache_forgets_openings_when_the_weights_change(tiny):
    local, persona_map = tiny
    prompts = LLMPolicy(local, persona_map).prompts(_turns(4))
    cache = PrefixCache()
    before = _first_scores(local, prompts, cache)
    weight = local.model.model.layers[0].mlp.up_proj.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(3.0)  # in place, as an optimiser step changes it
        after = _first_scores(local, prompts, cache)
        assert cache.misses == 4  # both openings computed again
        assert not torch.allclose(after, before, atol=1e-3)  # the change matters, so stale states would show
        assert torch.allclose(after, _first_scores(local, prompts), atol=1e-5)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_prompts_without_a_shared_opening_are_prefilled_whole(tiny):
    local, _ = tiny
    prompts = ["click [1] then", "stop"]  # no end-of-turn token: nothing to cache
    cache = PrefixCache()
    cached = generate_batch(local.model, local.tokenizer, prompts, GenerationSettings(max_new_tokens=4), prefix_cache=cache)
    assert cached.texts == generate_batch(local.model, local.tokenizer, prompts, GenerationSettings(max_new_tokens=4)).texts
    assert cache.misses == cache.hits == 0


# --- persona guidance ------------------------------------------------------------------------------


def test_persona_guidance_draws_from_the_persona_log_probabilities_pushed_away_from_the_neutral_ones(tiny):
    local, persona_map = tiny
    turns = _turns(8)
    policy = LLMPolicy(local, persona_map)
    prompts, neutral = policy.prompts(turns), policy.prompts(turns, neutral=True)
    assert all(persona_map.neutral in text and persona_map.token_for(turn.code) not in text for text, turn in zip(neutral, turns))
    persona_scores = torch.log_softmax(_first_scores(local, prompts).float(), dim=-1)
    neutral_scores = torch.log_softmax(_first_scores(local, neutral).float(), dim=-1)
    scale = 4.0
    expected = torch.log_softmax(neutral_scores + scale * (persona_scores - neutral_scores), dim=-1)
    hook = FirstScores()  # runs after the guidance: it sees what the answer is drawn from
    every_token_plausible = GenerationSettings(max_new_tokens=1, guidance=scale, guidance_plausibility=0.0)
    guided = generate_batch(local.model, local.tokenizer, prompts, every_token_plausible,
                            extra_processors=[hook], contrast_prompts=neutral)
    assert hook.scores.shape[0] == 2 * len(prompts)  # each prompt beside its neutral one
    assert torch.allclose(hook.scores[:8], expected, atol=1e-4) and torch.equal(hook.scores[:8], hook.scores[8:])
    assert not torch.allclose(expected, persona_scores, atol=1e-3)  # the guidance moves the distribution
    assert guided.texts == [local.tokenizer.decode([token], skip_special_tokens=True).strip()
                            for token in expected.argmax(dim=-1).tolist()]
    assert guided.prompt_tokens == [len(local.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]


def test_persona_guidance_keeps_the_persona_probability_of_tokens_it_finds_implausible(tiny):
    local, persona_map = tiny
    turns = _turns(8)
    policy = LLMPolicy(local, persona_map)
    prompts, neutral = policy.prompts(turns), policy.prompts(turns, neutral=True)
    persona_scores = torch.log_softmax(_first_scores(local, prompts).float(), dim=-1)
    neutral_scores = torch.log_softmax(_first_scores(local, neutral).float(), dim=-1)
    scale, plausibility = 4.0, 0.5  # the random tiny model is near uniform: a high bar splits its tokens
    plausible = persona_scores >= persona_scores.max(dim=-1, keepdim=True).values + math.log(plausibility)
    assert plausible.sum() >= 16 and (~plausible).any()
    hook = FirstScores()
    generate_batch(local.model, local.tokenizer, prompts, GenerationSettings(max_new_tokens=1, guidance=scale,
                   guidance_plausibility=plausibility), extra_processors=[hook], contrast_prompts=neutral)
    scores = hook.scores[:8]
    assert torch.allclose(torch.logsumexp(scores, dim=-1), torch.zeros(8), atol=1e-4)  # a distribution
    assert torch.allclose(scores[~plausible], persona_scores[~plausible], atol=1e-5)  # as the persona has them
    mass = lambda s: torch.logsumexp(s.masked_fill(~plausible, float("-inf")), dim=-1)
    assert torch.allclose(mass(scores), mass(persona_scores), atol=1e-4)  # the plausible tokens' mass is kept ...
    pushed = neutral_scores + scale * (persona_scores - neutral_scores)
    shift = (scores - pushed).masked_fill(~plausible, float("nan"))  # ... and shared out by the pushed scores
    assert torch.allclose(shift.nanmean(dim=-1, keepdim=True).expand_as(shift)[plausible], shift[plausible], atol=1e-4)
    assert not torch.allclose(scores[plausible], persona_scores[plausible], atol=1e-3)


def test_a_guided_buyer_draws_alike_whatever_the_batch_and_the_cache(tiny):
    local, persona_map = tiny
    policy = LLMPolicy(local, persona_map)
    turns = _turns(6)
    prompts, neutral = policy.prompts(turns), policy.prompts(turns, neutral=True)
    # The random tiny model's persona tokens barely move its (near uniform) distribution: a large
    # scale makes the guidance show in the draws.
    settings = GenerationSettings(max_new_tokens=6, temperature=1.5, seed=3, guidance=50.0)
    plain = generate_batch(local.model, local.tokenizer, prompts, settings, list(range(6)), contrast_prompts=neutral)
    cached = local.generate(prompts, settings, list(range(6)), contrast_prompts=neutral)
    alone = local.generate([prompts[4]], settings, [4], contrast_prompts=[neutral[4]])
    assert cached.texts == plain.texts and alone.texts[0] == plain.texts[4]
    unguided = generate_batch(local.model, local.tokenizer, prompts, replace(settings, guidance=1.0), list(range(6)))
    assert plain.texts != unguided.texts
    # At 1 the neutral prompts change nothing; without them guidance cannot run.
    assert local.generate(prompts, replace(settings, guidance=1.0), list(range(6)), contrast_prompts=neutral).texts == unguided.texts
    with pytest.raises(ValueError, match="needs one neutral prompt per prompt"):
        local.generate(prompts, settings, list(range(6)))


def test_the_policy_guides_its_first_answer_and_its_retry_alike(tiny):
    local, persona_map = tiny
    turns = _turns(4)
    policy = LLMPolicy(local, persona_map, generation=GenerationSettings(temperature=1.0, seed=5, guidance=3.0))
    seeds = [turn.seed * 7919 + len(turn.history) for turn in turns]
    expected = local.generate(policy.prompts(turns), policy.generation, seeds, contrast_prompts=policy.contrast_prompts(turns))
    assert [decision.raw_output for decision in policy.decide(turns)] == expected.texts
    assert LLMPolicy(local, persona_map).contrast_prompts(turns) is None  # unguided: nothing drawn beside
    forced = LLMPolicy(local, persona_map, generation=policy.generation,
                       first_pass_processors=[ForceText(local.tokenizer, "click [999]")])
    assert all(decision.retried and decision.action in candidate_actions(turn.observation)
               for decision, turn in zip(forced.decide(turns), turns))


# --- policy: retry and fallback ---------------------------------------------------------------------


def test_invalid_first_output_gets_a_constrained_retry(tiny):
    local, persona_map = tiny
    turns = _turns(3)
    policy = LLMPolicy(local, persona_map, first_pass_processors=[ForceText(local.tokenizer, "purchase [999] now")])
    decisions = policy.decide(turns)
    for decision, turn in zip(decisions, turns):
        assert decision.raw_output == "purchase [999] now"
        assert decision.retried and not decision.fallback
        assert "unknown action 'purchase'" in decision.error
        assert decision.action in candidate_actions(turn.observation)
        assert decision.completion_tokens > 4 and decision.latency_s > 0


def test_stale_id_is_rejected_and_retried(tiny):
    local, persona_map = tiny
    policy = LLMPolicy(local, persona_map, first_pass_processors=[ForceText(local.tokenizer, "click [999]")])
    [decision] = policy.decide(_turns(1))
    assert decision.retried and "not on the page" in decision.error
    assert is_valid(decision.action, _turns(1)[0].observation)


def test_valid_output_is_kept_without_retry(tiny):
    local, persona_map = tiny
    turn = _turns(1)[0]
    action = candidate_actions(turn.observation)[0]
    policy = LLMPolicy(local, persona_map, first_pass_processors=[ForceText(local.tokenizer, action)])
    [decision] = policy.decide([turn])
    assert decision.action == action and not decision.retried and decision.error is None
    assert policy.act([turn]) == [action]


def test_unreachable_endpoint_falls_back_without_crashing(tiny, caplog):
    local, persona_map = tiny
    endpoint = OpenAIEndpoint(EndpointConfig(f"http://127.0.0.1:{_free_port()}", "agent", max_retries=1, backoff_s=0.01,
                                             deadline_s=5, fail_when_down=False), local.tokenizer)
    policy = LLMPolicy(endpoint, persona_map)
    with caplog.at_level("WARNING"):
        decisions = policy.decide(_turns(2))
    assert [d.action for d in decisions] == [FALLBACK_ACTION] * 2
    assert all(d.fallback and d.retried and "gave up after 2 attempts" in d.error for d in decisions)
    assert "falling back to 'scroll down'" in caplog.text


# --- OpenAI-compatible endpoint against a real local server -----------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TinyServer:
    """The completions API of `vllm serve`, backed by the tiny model; fails the first requests on demand."""

    def __init__(self, local):
        self.local, self.lock, self.fail_next, self.requests = local, threading.Lock(), 0, 0
        app = Starlette(routes=[Route("/v1/completions", self.completions, methods=["POST"])])
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def completions(self, request: Request):
        body = await request.json()
        with self.lock:
            self.requests += 1
            if self.fail_next > 0:
                self.fail_next -= 1
                return JSONResponse({"error": "warming up"}, status_code=503)
        settings = GenerationSettings(body["max_tokens"], body["temperature"], 0)
        choices = [body["structured_outputs"]["choice"]] if "structured_outputs" in body else None
        with self.lock:
            result = self.local.generate([body["prompt"]], settings, row_seeds=[body["seed"]], choices=choices)
        return JSONResponse({
            "object": "text_completion", "model": body["model"],
            "choices": [{"index": 0, "text": result.texts[0], "finish_reason": "stop"}],
            "usage": {"prompt_tokens": result.prompt_tokens[0], "completion_tokens": result.completion_tokens[0]},
        })

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_openai_endpoint_matches_local_generation_with_retries(tiny):
    local, persona_map = tiny
    turns = _turns(5)
    settings = GenerationSettings(max_new_tokens=8)
    with TinyServer(local) as server:
        endpoint = OpenAIEndpoint(EndpointConfig(f"http://127.0.0.1:{server.port}", "tiny", concurrency=3, backoff_s=0.01),
                                  local.tokenizer)
        remote_policy = LLMPolicy(endpoint, persona_map, generation=settings)
        local_policy = LLMPolicy(local, persona_map, generation=settings)
        server.fail_next = 2  # two 503s: retried with backoff, not surfaced
        remote = remote_policy.decide(turns)
        expected = local_policy.decide(turns)
        assert [d.raw_output for d in remote] == [d.raw_output for d in expected]
        assert [d.action for d in remote] == [d.action for d in expected]
        assert [d.retried for d in remote] == [d.retried for d in expected]
        assert all(d.prompt_tokens > 0 and d.completion_tokens > 0 for d in remote)
        assert server.requests >= len(turns) + 2

        # A 4xx is not retried: the row falls back, the batch still answers.
        bad = OpenAIEndpoint(EndpointConfig(f"http://127.0.0.1:{server.port}/nope", "tiny", backoff_s=0.01), local.tokenizer)
        result = bad.generate(["x"], settings)
        assert result.texts == [""] and "refused the request: HTTP 404" in result.errors[0]
        endpoint.close()
