"""The OpenAI-compatible endpoint backend (agent/models.py OpenAIEndpoint) at scale.

A real local HTTP server speaks the completions API of `vllm serve` (one prompt, or a list of
prompts in one request), backed by a real forward pass of the tiny model; it can answer 503s or
be slow on demand, or not be there at all. Checked: list-of-prompts batching gives the same
answers as local generation, 503s are retried with backoff, an endpoint that stays down raises
EndpointUnavailable (within the deadline), latencies are recorded (p50/p95), and in a simulation
a down endpoint turns its buyers into errors while the run goes on, and a resume completes them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agent.generate import GenerationSettings
from agent.llm_policy import LLMPolicy
from agent.models import EndpointConfig, EndpointUnavailable, OpenAIEndpoint, RequestStats, load_tiny
from agent.persona import add_persona_tokens
from agent.policy import BuyerTurn
from agent.traces import make_synthetic_traces
from harness.sim.scale import record_policy_stats
from harness.sim.simulate import SimulationConfig, run_simulation

from test_policies import STORE_SHOP, real_catalog, write_codebook

torch.set_num_threads(1)
TRACES = make_synthetic_traces(8, seed=4, compact=True)
TEXTS = [s.observation for t in TRACES for s in t.steps] + [s.action for t in TRACES for s in t.steps]


@pytest.fixture(scope="module")
def tiny():
    local = load_tiny(TEXTS)
    persona_map = add_persona_tokens(local.model, local.tokenizer, num_codes=4, noise_scale=1.0)
    return local, persona_map


def _turns(n: int) -> list[BuyerTurn]:
    steps = [(trace, i) for trace in TRACES for i in range(len(trace.steps))]
    turns = []
    for k in range(n):
        trace, i = steps[k % len(steps)]
        turns.append(BuyerTurn(k, trace.code % 4, trace.steps[i].observation, [s.action for s in trace.steps[:i]], seed=k))
    return turns


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CompletionsServer:
    """`vllm serve`'s /v1/completions backed by the tiny model: a prompt string or a list of them.

    fail_next: answer that many requests with 503 first; always_fail: every request; delay_s: wait
    before answering. Records each request's number of prompts.
    """

    def __init__(self, local, port: int | None = None):
        self.local, self.lock, self.model_lock = local, threading.Lock(), asyncio.Lock()
        self.fail_next, self.always_fail, self.delay_s = 0, False, 0.0
        self.prompts_per_request: list[int] = []
        app = Starlette(routes=[Route("/v1/completions", self.completions, methods=["POST"])])
        self.port = port or _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def completions(self, request: Request):
        body = await request.json()
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        with self.lock:
            self.prompts_per_request.append(len(prompts))
            if self.always_fail or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                return JSONResponse({"error": "overloaded"}, status_code=503)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        settings = GenerationSettings(body["max_tokens"], body["temperature"], 0)
        choices = [body["structured_outputs"]["choice"]] if "structured_outputs" in body else None
        async with self.model_lock:  # the real forward pass, one batch per request, one at a time
            result = await asyncio.to_thread(self.local.generate, prompts, settings, [body["seed"]] * len(prompts), choices)
        return JSONResponse({
            "object": "text_completion", "model": body["model"],
            "choices": [{"index": i, "text": text, "finish_reason": "stop"} for i, text in enumerate(result.texts)],
            "usage": {"prompt_tokens": sum(result.prompt_tokens), "completion_tokens": sum(result.completion_tokens)},
        })

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test completions server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(tiny):
    with CompletionsServer(tiny[0]) as running:
        yield running


def _endpoint(url: str, tokenizer, **options) -> OpenAIEndpoint:
    defaults = dict(backoff_s=0.01, max_retries=2, deadline_s=30)
    return OpenAIEndpoint(EndpointConfig(url, "tiny", **{**defaults, **options}), tokenizer)


def test_list_of_prompts_requests_match_local_generation(tiny, server):
    local, persona_map = tiny
    settings = GenerationSettings(max_new_tokens=8)  # greedy: rows may share a request
    turns = _turns(6)
    endpoint = _endpoint(server.url, local.tokenizer, prompts_per_request=4)
    server.prompts_per_request.clear()
    remote = LLMPolicy(endpoint, persona_map, generation=settings).decide(turns)
    expected = LLMPolicy(local, persona_map, generation=settings).decide(turns)
    assert [d.raw_output for d in remote] == [d.raw_output for d in expected]
    assert [d.action for d in remote] == [d.action for d in expected]
    assert all(d.prompt_tokens > 0 for d in remote)
    # First pass: 6 greedy rows in two list requests; the constrained retries go one row each.
    retried = sum(d.retried for d in expected)
    assert sorted(server.prompts_per_request[:2]) == [2, 4] and server.prompts_per_request[2:] == [1] * retried
    stats = endpoint.request_stats.as_dict()
    assert stats["requests"] == 2 + retried and stats["failed_requests"] == 0
    assert 0 < stats["latency_p50_ms"] <= stats["latency_p95_ms"] <= stats["latency_max_ms"]
    endpoint.close()


def test_sampled_rows_keep_one_request_each_with_their_own_seed(tiny, server):
    local, _ = tiny
    endpoint = _endpoint(server.url, local.tokenizer, prompts_per_request=8)
    server.prompts_per_request.clear()
    sampled = GenerationSettings(max_new_tokens=4, temperature=1.0, seed=3)
    result = endpoint.generate(["a", "b", "c"], sampled, row_seeds=[1, 2, 3])
    assert server.prompts_per_request == [1, 1, 1] and result.errors == [None] * 3
    # Persona guidance needs the neutral prompt's log-probabilities at every step: refused, unsent.
    with pytest.raises(ValueError, match="persona guidance 2 needs .* which an HTTP endpoint does not return"):
        endpoint.generate(["a"], GenerationSettings(max_new_tokens=4, guidance=2.0), contrast_prompts=["b"])
    assert server.prompts_per_request == [1, 1, 1]
    endpoint.close()


def test_503s_are_retried_with_backoff_and_counted(tiny, server):
    local, _ = tiny
    endpoint = _endpoint(server.url, local.tokenizer, concurrency=1, backoff_s=0.05, max_retries=3)
    server.fail_next = 3
    started = time.perf_counter()
    result = endpoint.generate(["one prompt"], GenerationSettings(max_new_tokens=4))
    assert result.errors == [None] and server.fail_next == 0
    assert time.perf_counter() - started >= 0.05 + 0.1 + 0.2  # exponential: 0.05, 0.1, 0.2 s
    stats = endpoint.request_stats.as_dict()
    assert stats == {**stats, "requests": 1, "retries": 3, "failed_requests": 0}
    endpoint.close()


def test_endpoint_that_stays_down_raises_within_the_deadline(tiny, server):
    local, _ = tiny
    endpoint = _endpoint(server.url, local.tokenizer, max_retries=2)
    server.always_fail = True
    try:
        with pytest.raises(EndpointUnavailable, match=r"2 of 2 prompts got no answer .*gave up after 3 attempts \(HTTP 503"):
            endpoint.generate(["x", "y"], GenerationSettings(max_new_tokens=4))
    finally:
        server.always_fail = False
    assert endpoint.request_stats.as_dict()["failed_requests"] == 2

    # A slow endpoint: requests are cut at the deadline, not at request_timeout_s.
    slow = _endpoint(server.url, local.tokenizer, deadline_s=0.5, request_timeout_s=30)
    server.delay_s = 3.0
    started = time.perf_counter()
    try:
        with pytest.raises(EndpointUnavailable, match=r"deadline of 0\.5s passed \(ReadTimeout"):
            slow.generate(["x"], GenerationSettings(max_new_tokens=4))
    finally:
        server.delay_s = 0.0
    assert time.perf_counter() - started < 2.0
    # Without fail_when_down, the rows come back empty with the error (LLMPolicy then falls back).
    lenient = _endpoint(f"http://127.0.0.1:{_free_port()}", local.tokenizer, max_retries=0, fail_when_down=False)
    result = lenient.generate(["x"], GenerationSettings(max_new_tokens=4))
    assert result.texts == [""] and "ConnectError" in result.errors[0]


def test_request_stats_merge_across_processes():
    a, b = RequestStats([10.0, 20.0], retries=1), RequestStats([30.0, 40.0, 1000.0], failures=1)
    merged = RequestStats.merged([a.to_state(), b.to_state()]).as_dict()
    assert merged["requests"] == 5 and merged["retries"] == 1 and merged["failed_requests"] == 1
    assert merged["latency_p50_ms"] == 30.0 and merged["latency_p95_ms"] == pytest.approx(808.0)


# --- in a simulation ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store():
    from storefronts.server import serve_store

    with serve_store(real_catalog(), STORE_SHOP, variant="default") as running:
        yield running


def test_down_endpoint_makes_buyers_errors_and_resume_completes_them(tiny, store, tmp_path):
    local, persona_map = tiny
    codebook_dir = write_codebook(tmp_path / "codebook")
    port = _free_port()  # nothing listens here yet: the endpoint is down
    endpoint = _endpoint(f"http://127.0.0.1:{port}", local.tokenizer, max_retries=1, deadline_s=5)
    policy = LLMPolicy(endpoint, persona_map, generation=GenerationSettings(max_new_tokens=8))

    def config(resume: bool) -> SimulationConfig:
        return SimulationConfig(store_url=store.url, shop="mixed", codebook_dir=codebook_dir, buyers=3, concurrency=3,
                                driver="http", max_steps=3, seed=2, out_dir=tmp_path, run_id="down", resume=resume,
                                progress=False, our_store=True, store_db=store.db_path)

    down = asyncio.run(run_simulation(config(resume=False), policy))
    assert [r["outcome"] for r in down.trajectories] == ["error"] * 3  # the run went on to the end
    assert all("EndpointUnavailable" in r["terminate_reason"] for r in down.trajectories)
    assert down.summary["outcomes"]["error"] == 3
    assert record_policy_stats(down.run_dir, policy)["failed_requests"] >= 3

    with CompletionsServer(local, port=port):
        endpoint.request_stats = RequestStats()
        resumed = asyncio.run(run_simulation(config(resume=True), policy))
        stats = record_policy_stats(resumed.run_dir, policy)
    endpoint.close()
    assert sorted(r["buyer_index"] for r in resumed.trajectories) == [0, 1, 2]
    assert all(r["outcome"] != "error" and r["n_steps"] > 0 for r in resumed.trajectories)
    summary = json.loads((resumed.run_dir / "summary.json").read_text())
    assert summary["outcomes"]["error"] == 0 and summary["completed"] == 3
    assert summary["policy_stats"] == stats and stats["requests"] > 0 and stats["failed_requests"] == 0
    assert stats["latency_p50_ms"] <= stats["latency_p95_ms"]
