"""Serve an agent dir over the OpenAI-compatible completions API, for `simpersona serve-agent`.

Where vLLM is installed, `serve-agent` runs `vllm serve AGENT_DIR` (continuous batching); this
module is the server used everywhere else: transformers in this process, behind the same API that
agent.models.OpenAIEndpoint speaks, so a simulation through an endpoint runs anywhere, CI included.

    POST /v1/completions   prompt (a string or a list of strings), max_tokens, temperature, seed,
                           stop, logit_bias -100 (banned tokens: the persona tokens), and vLLM's
                           `structured_outputs: {"choice": [...]}` (the policy's constrained retry);
                           one choice per prompt, with token usage
    GET  /v1/models        the served model name (the agent dir as given, as vLLM names it)
    GET  /health           200 once the model is loaded
    GET  /stats            how the rows were batched: calls, rows, sizes

Dynamic batching: every prompt is one row on a queue. A worker thread takes the first waiting row,
collects whatever else arrives within `batch_wait_ms` (up to `max_batch` rows) and runs them as one
agent.generate.generate_batch call per group of rows with the same max_tokens and temperature.
A sampled row draws from its own seeded stream (generate_batch's per-row Gumbel noise), so a
seeded request returns the same text alone or batched with others, and the same as the agent run in
process with that seed.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from agent.generate import GenerationSettings, generate_batch
from agent.models import LocalModel, load_local

OPENAI_DEFAULT_MAX_TOKENS = 16  # the completions API's defaults, for requests that leave them out
OPENAI_DEFAULT_TEMPERATURE = 1.0


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64  # rows per generate call
    batch_wait_ms: float = 5.0  # how long the first waiting row waits for others to join its batch
    device: str = "auto"  # agent.models.resolve_device
    backend: str = "auto"  # "auto": vLLM when installed, else "transformers"; or either one by name
    served_model_name: str | None = None  # default: the agent dir as given on the command line


class RequestError(ValueError):
    """A request the server refuses, with the reason for the client."""

    status = 400


class UnknownModel(RequestError):
    """A model name this server does not serve (vLLM answers these with 404 too)."""

    status = 404


@dataclass
class Row:
    """One prompt waiting for its answer."""

    prompt: str
    max_tokens: int
    temperature: float
    seed: int
    choices: list[str] | None
    stop: list[str]
    suppressed_ids: tuple[int, ...] = ()  # logit_bias of -100
    answer: Future = field(default_factory=Future)

    @property
    def group(self) -> tuple[int, float, tuple[int, ...]]:
        """Rows that can share one generate call."""
        return self.max_tokens, self.temperature, self.suppressed_ids


@dataclass
class BatchStats:
    calls: int = 0
    rows: int = 0
    sizes: Counter = field(default_factory=Counter)  # rows per generate call -> how many calls

    def as_dict(self) -> dict:
        return {"calls": self.calls, "rows": self.rows, "max_batch_rows": max(self.sizes, default=0),
                "batch_sizes": {str(size): count for size, count in sorted(self.sizes.items())}}


class Batcher:
    """The queue of rows and the one worker thread that answers them in batches."""

    def __init__(self, local: LocalModel, max_batch: int, batch_wait_ms: float):
        self.local = local
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000
        self.stats = BatchStats()
        self._rows: queue.Queue[Row | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="serve-agent-batcher", daemon=True)
        self._thread.start()

    def submit(self, row: Row) -> Future:
        self._rows.put(row)
        return row.answer

    def close(self) -> None:
        self._rows.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            first = self._rows.get()
            if first is None:
                return
            rows = [first]
            closing = False
            deadline = time.perf_counter() + self.batch_wait_s
            while len(rows) < self.max_batch:
                try:
                    row = self._rows.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if row is None:
                    closing = True
                    break
                rows.append(row)
            groups: dict[tuple, list[Row]] = {}
            for row in rows:
                groups.setdefault(row.group, []).append(row)
            for group in groups.values():
                self._answer(group)
            if closing:
                return

    def _answer(self, rows: list[Row]) -> None:
        max_tokens, temperature, suppressed_ids = rows[0].group
        settings = GenerationSettings(max_new_tokens=max_tokens, temperature=temperature, seed=0, suppressed_ids=suppressed_ids)
        # seed=0 in the settings: generate_batch then seeds each row with the request's seed as
        # is, which is the mixed seed the client computed as generate_batch does in process.
        choices = [row.choices for row in rows]
        try:
            result = generate_batch(self.local.model, self.local.tokenizer, [row.prompt for row in rows], settings,
                                    [row.seed for row in rows], choices if any(choices) else None,
                                    prefix_cache=self.local.prefix_cache)
        except Exception as error:  # the requests of this batch fail; the server keeps serving
            for row in rows:
                row.answer.set_exception(error)
            return
        with self._lock:
            self.stats.calls += 1
            self.stats.rows += len(rows)
            self.stats.sizes[len(rows)] += 1
        for index, row in enumerate(rows):
            text, finish = _apply_stop(result.texts[index], row.stop)
            if finish == "length" and result.completion_tokens[index] < max_tokens:
                finish = "stop"  # ended at the end-of-turn token before the limit
            row.answer.set_result((text, finish, result.prompt_tokens[index], result.completion_tokens[index]))

    def snapshot(self) -> dict:
        with self._lock:
            return self.stats.as_dict()


def _apply_stop(text: str, stops: list[str]) -> tuple[str, str]:
    """The text up to the first stop string (excluded, as the API does) and the finish reason."""
    cut = min((text.find(stop) for stop in stops if stop and stop in text), default=-1)
    return (text[:cut], "stop") if cut >= 0 else (text, "length")


# --- requests ---------------------------------------------------------------------------------------


def parse_completion_request(body: dict, served_name: str) -> list[Row]:
    """The request's rows, or RequestError saying what is wrong with it."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    if body.get("model") not in (None, served_name):
        raise UnknownModel(f"model {body.get('model')!r} is not served here; this server serves {served_name!r}")
    prompts = body.get("prompt")
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise RequestError("prompt must be a string or a non-empty list of strings")
    max_tokens = body.get("max_tokens", OPENAI_DEFAULT_MAX_TOKENS)
    temperature = body.get("temperature", OPENAI_DEFAULT_TEMPERATURE)
    seed = body.get("seed") or 0
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError("max_tokens must be a positive integer")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise RequestError("temperature must be a number >= 0")
    if not isinstance(seed, int):
        raise RequestError("seed must be an integer")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise RequestError("stop must be a string or a list of strings")
    structured = body.get("structured_outputs") or {}
    choices = structured.get("choice") if isinstance(structured, dict) else None
    choices = choices if choices is not None else body.get("guided_choice")  # vLLM's older name
    if choices is not None and (not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices)):
        raise RequestError("structured_outputs.choice must be a non-empty list of strings")
    suppressed = banned_tokens(body.get("logit_bias"))
    # Every prompt of a list shares the request's seed, as vLLM does.
    return [Row(prompt, max_tokens, float(temperature), seed, choices, stop, suppressed) for prompt in prompts]


def banned_tokens(logit_bias) -> tuple[int, ...]:
    """The token ids a logit_bias bans (bias -100, OpenAI's "never"); other biases are refused,
    not silently ignored."""
    if not logit_bias:
        return ()
    if not isinstance(logit_bias, dict):
        raise RequestError("logit_bias must be an object of token id -> bias")
    try:
        biases = {int(token): float(bias) for token, bias in logit_bias.items()}
    except (TypeError, ValueError):
        raise RequestError("logit_bias keys must be token ids and values numbers") from None
    if any(bias > -100 for bias in biases.values()):
        raise RequestError("this server supports logit_bias -100 only (ban a token)")
    return tuple(sorted(biases))


def completion_response(rows: list[Row], answers: list[tuple], served_name: str) -> dict:
    choices = [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}
               for index, (text, finish, _, _) in enumerate(answers)]
    prompt_tokens = sum(answer[2] for answer in answers)
    completion_tokens = sum(answer[3] for answer in answers)
    return {"id": f"cmpl-{time.time_ns():x}", "object": "text_completion", "created": int(time.time()),
            "model": served_name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


# --- the app --------------------------------------------------------------------------------------


def create_app(batcher: Batcher, served_name: str):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": status}}, status)

    async def completions(request: Request) -> JSONResponse:
        try:
            rows = parse_completion_request(await request.json(), served_name)
        except RequestError as problem:
            return error(problem.status, str(problem))
        except ValueError as problem:  # the body is not JSON
            return error(400, f"the body is not JSON: {problem}")
        futures = [batcher.submit(row) for row in rows]
        try:
            answers = [await asyncio.wrap_future(future) for future in futures]
        except Exception as problem:
            return error(500, f"generation failed: {type(problem).__name__}: {problem}")
        return JSONResponse(completion_response(rows, answers, served_name))

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": served_name, "object": "model", "owned_by": "simpersona"}]})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(batcher.snapshot())

    return Starlette(routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models),
        Route("/health", health),
        Route("/stats", stats),
    ])


@dataclass
class RunningServer:
    url: str  # e.g. http://127.0.0.1:8000 (OpenAIEndpoint's base_url)
    served_name: str
    batcher: Batcher


@contextmanager
def serve_in_thread(agent_dir: str | Path, config: ServeConfig = ServeConfig(), local: LocalModel | None = None
                    ) -> Iterator[RunningServer]:
    """The transformers server on a background thread until the block exits (port 0: a free one)."""
    from storefronts.server import serve_app

    local = local or load_local(agent_dir, device=config.device)
    served_name = config.served_model_name or str(agent_dir)
    batcher = Batcher(local, config.max_batch, config.batch_wait_ms)
    try:
        with serve_app(create_app(batcher, served_name), config.host, config.port, "serve-agent") as port:
            yield RunningServer(f"http://{config.host}:{port}", served_name, batcher)
    finally:
        batcher.close()


def serve(agent_dir: str | Path, config: ServeConfig = ServeConfig()) -> None:
    """The transformers server in the foreground until Ctrl-C."""
    import uvicorn

    local = load_local(agent_dir, device=config.device)
    served_name = config.served_model_name or str(agent_dir)
    batcher = Batcher(local, config.max_batch, config.batch_wait_ms)
    try:
        uvicorn.run(create_app(batcher, served_name), host=config.host, port=config.port, log_level="info",
                    timeout_keep_alive=60)
    finally:
        batcher.close()


def vllm_command(agent_dir: str | Path, config: ServeConfig) -> list[str]:
    """`vllm serve AGENT_DIR` with the same address and batch limit."""
    command = ["vllm", "serve", str(agent_dir), "--host", config.host, "--port", str(config.port),
               "--max-num-seqs", str(config.max_batch)]
    if config.served_model_name:
        command += ["--served-model-name", config.served_model_name]
    return command


def vllm_available() -> bool:
    import importlib.util
    import shutil

    return importlib.util.find_spec("vllm") is not None and shutil.which("vllm") is not None
