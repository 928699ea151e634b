"""`simpersona serve-agent` without vLLM: the batched transformers server of agent/serve.py.

A tiny agent (trained for a few steps on synthetic traces, saved as an agent dir) is served on
127.0.0.1 and reached over real HTTP by the product's own client (agent.models.OpenAIEndpoint via
LLMPolicy.from_endpoint). Checked: the policy through the endpoint takes the same actions as the
same agent in process for the same buyer seeds (sampled, with the constrained retry's
structured_outputs choice lists), in a policy call and in a whole simulation against the mock store;
concurrent requests are answered in shared batches (the server's /stats) and a seeded request gets
the same text alone or batched; the API's errors; and the CLI command serving until stopped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from agent.llm_policy import LLMPolicy
from agent.models import load_tiny
from agent.policy import BuyerTurn
from agent.serve import ServeConfig, serve_in_thread
from agent.sft import SFTConfig, save_agent, train_agent
from agent.traces import make_synthetic_traces

from test_policies import STORE_SHOP, real_catalog, write_codebook

torch.set_num_threads(1)
TRACES = make_synthetic_traces(8, {0: "buy", 1: "leave", 2: "buy", 3: "leave"}, seed=4, compact=True)
TEXTS = [s.observation for t in TRACES for s in t.steps] + [s.action for t in TRACES for s in t.steps]
SAMPLING = dict(temperature=1.5, seed=5)  # sampled (warm, so buyers part ways), so every buyer's seed matters
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory):
    # Enough steps that most first answers are valid actions (the rest exercise the constrained retry).
    config = SFTConfig(num_codes=4, stage1_epochs=1, stage2_epochs=40, stage2_lr=1e-2, batch_size=8,
                       init_noise_scale=1.0, device="cpu", seed=0)
    result = train_agent(TRACES, load_tiny(TEXTS), config)
    return save_agent(result, tmp_path_factory.mktemp("served") / "agent", config)


@pytest.fixture(scope="module")
def server(agent_dir):
    # A 50 ms window: concurrent requests from the test's threads surely land in one batch.
    with serve_in_thread(agent_dir, ServeConfig(port=0, max_batch=64, batch_wait_ms=50, device="cpu")) as running:
        yield running


def _turns(n: int) -> list[BuyerTurn]:
    steps = [(trace, i) for trace in TRACES for i in range(len(trace.steps))]
    turns = []
    for k in range(n):
        trace, i = steps[(3 * k) % len(steps)]
        turns.append(BuyerTurn(k, trace.code, trace.steps[i].observation, [s.action for s in trace.steps[:i]], seed=100 + k))
    return turns


def _post(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60)


def test_policy_through_the_endpoint_acts_like_the_agent_in_process(agent_dir, server):
    turns = _turns(12)
    local = LLMPolicy.from_dir(agent_dir, device="cpu", **SAMPLING).decide(turns)
    remote_policy = LLMPolicy.from_endpoint(server.url, agent_dir, **SAMPLING)
    before = server.batcher.snapshot()
    remote = remote_policy.decide(turns)
    remote_policy.backend.close()
    assert [d.action for d in remote] == [d.action for d in local]
    assert [d.retried for d in remote] == [d.retried for d in local]
    assert any(not d.retried for d in local)  # the first pass's sampled answers are compared too
    # One request per buyer went out at once; the server answered them in shared batches.
    after = server.batcher.snapshot()
    assert after["rows"] - before["rows"] == len(turns) + sum(d.retried for d in local)
    assert after["calls"] - before["calls"] < after["rows"] - before["rows"]
    assert after["max_batch_rows"] > 1


def test_seeded_answers_are_the_same_alone_or_batched(agent_dir, server):
    prompts = LLMPolicy.from_dir(agent_dir, device="cpu").prompts(_turns(10))
    bodies = [{"model": server.served_name, "prompt": prompt, "max_tokens": 12, "temperature": 1.0, "seed": 1000 + k}
              for k, prompt in enumerate(prompts)]
    before = server.batcher.snapshot()
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        together = [r.json()["choices"][0]["text"] for r in pool.map(lambda body: _post(server.url, body), bodies)]
    shared = server.batcher.snapshot()
    alone = [_post(server.url, body).json()["choices"][0]["text"] for body in bodies]
    assert together == alone
    assert shared["calls"] - before["calls"] < len(bodies)  # the concurrent ones shared calls
    assert len(set(together)) > 1  # different seeds, different draws: the check above can fail
    stats = httpx.get(f"{server.url}/stats").json()
    assert stats["rows"] == sum(int(size) * count for size, count in stats["batch_sizes"].items())


def test_the_api_answers_like_the_completions_api(agent_dir, server):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"] == str(agent_dir)
    prompt = LLMPolicy.from_dir(agent_dir, device="cpu").prompts(_turns(1))[0]
    listed = _post(server.url, {"model": str(agent_dir), "prompt": [prompt, prompt], "max_tokens": 8, "temperature": 0})
    body = listed.json()
    assert [c["index"] for c in body["choices"]] == [0, 1] and body["choices"][0]["text"] == body["choices"][1]["text"]
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["total_tokens"] > body["usage"]["prompt_tokens"]
    choices = ["click [3]", "scroll down", "stop"]
    chosen = _post(server.url, {"prompt": prompt, "max_tokens": 8, "temperature": 0, "structured_outputs": {"choice": choices}})
    assert chosen.json()["choices"][0]["text"] in choices
    assert _post(server.url, {"model": "another", "prompt": "x"}).status_code == 404
    policy = LLMPolicy.from_dir(agent_dir, device="cpu")
    banned = {str(token): -100 for token in policy.generation.suppressed_ids}
    assert _post(server.url, {"prompt": prompt, "max_tokens": 8, "temperature": 0, "logit_bias": banned}).status_code == 200
    for bad in ({"prompt": []}, {"prompt": "x", "max_tokens": 0}, {"prompt": "x", "temperature": -1},
                {"prompt": "x", "structured_outputs": {"choice": "stop"}}, {"prompt": "x", "logit_bias": {"5": 3}},
                {"prompt": "x", "logit_bias": {"a": -100}}):
        refused = _post(server.url, bad)
        assert refused.status_code == 400 and refused.json()["error"]["message"]


def test_a_simulation_through_the_endpoint_matches_the_one_in_process(agent_dir, server, tmp_path):
    from harness.sim.simulate import SimulationConfig, run_simulation
    from storefronts.server import serve_store

    codebook_dir = write_codebook(tmp_path / "codebook")

    def simulate(policy, store, run_id: str) -> list[list[str]]:
        config = SimulationConfig(store_url=store.url, shop="mixed", codebook_dir=codebook_dir, buyers=6, concurrency=6,
                                  driver="http", max_steps=5, seed=2, out_dir=tmp_path, run_id=run_id, progress=False,
                                  our_store=True, store_db=store.db_path)
        result = asyncio.run(run_simulation(config, policy))
        by_buyer = sorted(result.trajectories, key=lambda record: record["buyer_index"])
        return [[step["action"] for step in record["steps"]] for record in by_buyer]

    # One store for both runs: its URL (and so its port) is part of every observation the agent reads.
    with serve_store(real_catalog(), STORE_SHOP, variant="default") as store:
        endpoint_policy = LLMPolicy.from_endpoint(server.url, agent_dir, **SAMPLING)
        through_endpoint = simulate(endpoint_policy, store, "endpoint")
        endpoint_policy.backend.close()
        in_process = simulate(LLMPolicy.from_dir(agent_dir, device="cpu", **SAMPLING), store, "local")
    assert through_endpoint == in_process and all(in_process)
    assert len({action for actions in in_process for action in actions}) > 1  # not one action repeated


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_serves_the_agent_until_stopped(agent_dir):
    port = _free_port()
    command = [sys.executable, "-c", "from harness.cli import app; app()", "serve-agent", str(agent_dir),
               "--port", str(port), "--backend", "transformers", "--device", "cpu"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read() if process.poll() is not None else "no start"
            time.sleep(0.2)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=30,
                            json={"model": str(agent_dir), "prompt": "hello", "max_tokens": 4, "temperature": 0})
        assert answer.status_code == 200 and answer.json()["choices"][0]["index"] == 0
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode is not None and f"http://127.0.0.1:{port}/v1" in output


def test_cli_refuses_vllm_where_it_is_not_installed(agent_dir):
    from typer.testing import CliRunner

    from harness.cli import app
    from agent.serve import vllm_available

    if vllm_available():
        pytest.skip("vLLM is installed here")
    result = CliRunner().invoke(app, ["serve-agent", str(agent_dir), "--backend", "vllm"])
    assert result.exit_code != 0 and "vLLM is not installed" in " ".join(result.output.replace("│", " ").split())
