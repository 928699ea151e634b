"""Persona tokens: one special token per codebook code plus a neutral token (PAPER.md, step 3).

`add_persona_tokens` adds `<persona_0>` … `<persona_{K-1}>` and `<persona_neutral>` to the
tokenizer as special tokens (never split, never merged with neighbours), resizes the model's
embeddings and initialises the new rows:

- "mean" (default): every new row is the mean of the existing input embeddings plus small Gaussian
  noise (std = `noise_scale` × the per-dimension std of the existing rows). The mean keeps the new
  tokens inside the distribution the backbone was trained on; the noise breaks the symmetry so
  stage 1 can move each token its own way.
- "centroid": when the codebook's centroids (K × d) are given, they are projected to the hidden size
  with a fixed seeded random matrix, scaled to the embeddings' spread and added to the mean, so
  codes that are close in the codebook start close in the LLM.

The neutral token always starts at the plain mean (no noise): it stands for "no persona".
With tied input/output embeddings (SmolLM2, the tiny test model) the output rows are the same
tensor; untied output rows get the mean of the existing output rows, since persona tokens are only
ever read, never predicted.

persona.json (in the agent dir) maps code → token and describes what the agent is for, the way a
checkpoint carries its model arguments:

    {"num_codes": K, "neutral": "<persona_neutral>", "code_to_token": {"0": "<persona_0>", …},
     "init": "mean",
     "codebook": {"k": K, "content_hash": "<sha256>", "path": "…"},     the codebook it was trained for
     "traces": {"path": "…", "count": 1234, "content_hash": "<sha256>"}, what it learned from
     "sampling": {"temperature": 0.7, "chosen_by": "…"},                 how its actions are drawn
     "prompt_tokens": 500}                                               its longest prompt (longer pages are cut)

Every command samples the agent at `sampling.temperature` unless told otherwise (evaluate writes the
temperature its calibration on training shops chose), and `check_codebook` refuses a codebook
other than the recorded one before any buyer runs. A persona.json without these fields still
loads; nothing can then be checked, which `check_codebook` says in a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from codebook.artifact import CodebookArtifact, CodebookIdentity

log = logging.getLogger(__name__)

PERSONA_JSON = "persona.json"
NEUTRAL_TOKEN = "<persona_neutral>"
INIT_METHODS = ("mean", "centroid")


def persona_token(code: int) -> str:
    return f"<persona_{code}>"


class CodebookMismatchError(ValueError):
    """An agent dir is about to run against another codebook than the one it was trained for."""


@dataclass(frozen=True)
class TraceSource:
    """The traces.jsonl an agent learned from."""

    path: str
    count: int  # traces (buyer sessions) in the file
    content_hash: str  # sha256 of the file

    @classmethod
    def of(cls, path: str | Path, count: int) -> TraceSource:
        return cls(str(Path(path).resolve()), count, hashlib.sha256(Path(path).read_bytes()).hexdigest())


@dataclass(frozen=True)
class Sampling:
    """How the agent's actions are drawn. It SAMPLES: a type's rates follow the learned frequencies
    (a greedy agent plays one path per type)."""

    temperature: float = 1.0
    chosen_by: str = "default"  # or how a calibration chose it
    guidance: float = 1.0  # persona guidance (agent.generate.GenerationSettings.guidance); 1: off
    guidance_plausibility: float = 0.0  # which tokens guidance pushes (GenerationSettings); 0: all


@dataclass
class PersonaMap:
    """Which token stands for which code, and what the agent is for; saved as persona.json."""

    num_codes: int
    code_to_token: dict[int, str]
    neutral: str = NEUTRAL_TOKEN
    init: str = "mean"
    codebook: CodebookIdentity | None = None  # None: trained without naming its codebook
    traces: TraceSource | None = None
    sampling: Sampling = field(default_factory=Sampling)
    # The longest prompt the agent was trained on, in tokens: longer pages are cut to fit at
    # inference as in training (agent.prompt.fit_prompt). None: no limit.
    prompt_tokens: int | None = None

    @classmethod
    def for_codes(cls, num_codes: int, init: str = "mean") -> "PersonaMap":
        if num_codes < 1:
            raise ValueError(f"num_codes must be >= 1, got {num_codes}")
        return cls(num_codes, {code: persona_token(code) for code in range(num_codes)}, NEUTRAL_TOKEN, init)

    @property
    def tokens(self) -> list[str]:
        """Every persona token, codes first, neutral last."""
        return [self.code_to_token[code] for code in sorted(self.code_to_token)] + [self.neutral]

    def token_for(self, code: int | None, neutral: bool = False) -> str:
        """The token for `code`; the neutral token when asked for it or when code is None."""
        if neutral or code is None:
            return self.neutral
        if code not in self.code_to_token:
            raise KeyError(f"persona code {code} is not in persona.json (codes 0..{self.num_codes - 1})")
        return self.code_to_token[code]

    def check_codebook(self, codebook: CodebookArtifact, agent_dir: str | Path) -> None:
        """Refuse a codebook other than the one the agent was trained for (K or content hash)."""
        if self.codebook is None:
            log.warning("%s: %s records no codebook (trained before agent dirs described themselves); "
                        "nothing can be checked against %s", agent_dir, PERSONA_JSON, codebook.path)
            return
        if (self.codebook.k, self.codebook.content_hash) != (codebook.k, codebook.content_hash):
            raise CodebookMismatchError(
                f"agent dir {agent_dir} was trained for codebook {self.codebook.describe()}, "
                f"not for {codebook.identity.describe()}: pass the codebook it was trained for, "
                "or train an agent for this one (train-agent --codebook)")

    def trained_for(self, codebook: CodebookIdentity | None, traces: TraceSource) -> PersonaMap:
        """The same map, recording the codebook and the traces the agent was trained on."""
        return replace(self, codebook=codebook, traces=traces)

    def with_sampling(self, temperature: float, chosen_by: str, guidance: float = 1.0,
                      guidance_plausibility: float = 0.0) -> PersonaMap:
        return replace(self, sampling=Sampling(float(temperature), chosen_by, float(guidance), float(guidance_plausibility)))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PERSONA_JSON
        record = asdict(self)
        record["code_to_token"] = {str(code): token for code, token in self.code_to_token.items()}
        path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "PersonaMap":
        path = Path(directory) / PERSONA_JSON
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; an agent dir needs persona.json (code -> token)")
        record = json.loads(path.read_text(encoding="utf-8"))
        try:
            mapping = {int(code): token for code, token in record["code_to_token"].items()}
            return cls(
                int(record["num_codes"]), mapping, record.get("neutral", NEUTRAL_TOKEN), record.get("init", "mean"),
                codebook=CodebookIdentity(**record["codebook"]) if record.get("codebook") else None,
                traces=TraceSource(**record["traces"]) if record.get("traces") else None,
                sampling=Sampling(**record["sampling"]) if record.get("sampling") else Sampling(),
                prompt_tokens=record.get("prompt_tokens"),
            )
        except (KeyError, ValueError, AttributeError, TypeError) as error:
            raise ValueError(f"{path}: expected {{'num_codes': int, 'code_to_token': {{code: token}}, "
                             f"'codebook': {{...}}, 'traces': {{...}}, 'sampling': {{...}}}} ({error})") from None


@dataclass
class PersonaAnchors:
    """Persona rows a base model already reads: the navigation base (harness.eval.nav_base) keeps the
    rows of the types it was trained with, and its neutral row, in `persona_anchors.safetensors`.
    A dataset's persona tokens start from them (agent.sft: each code at the row that explains its
    traces best), so stage 1 begins where the backbone knows a type token, not at a word's mean."""

    names: list[str]
    rows: torch.Tensor  # (types, hidden)
    neutral: torch.Tensor  # (hidden,)

    FILE = "persona_anchors.safetensors"

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(directory) / self.FILE
        save_file({"rows": self.rows.detach().float().cpu().contiguous(), "neutral": self.neutral.detach().float().cpu().contiguous()},
                  str(path), metadata={"names": json.dumps(self.names)})
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PersonaAnchors | None:
        """The anchors a base directory holds, or None (a base without them)."""
        from safetensors import safe_open

        path = Path(directory) / cls.FILE
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as handle:
            names = json.loads(handle.metadata()["names"])
            return cls(names, handle.get_tensor("rows"), handle.get_tensor("neutral"))


def persona_token_ids(tokenizer, persona_map: PersonaMap) -> list[int]:
    """Vocabulary ids of every persona token (codes then neutral); each must be a single token."""
    ids = tokenizer.convert_tokens_to_ids(persona_map.tokens)
    missing = [token for token, token_id in zip(persona_map.tokens, ids) if token_id is None or token_id == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"persona tokens not in the tokenizer: {missing[:5]}")
    return list(ids)


def add_persona_tokens(
    model,
    tokenizer,
    num_codes: int,
    init: str = "mean",
    centroids: np.ndarray | None = None,
    noise_scale: float = 0.1,
    seed: int = 0,
) -> PersonaMap:
    """Add the persona tokens to `tokenizer`, resize `model` and initialise the new rows in place."""
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
    if init == "centroid" and (centroids is None or len(centroids) != num_codes):
        got = "none" if centroids is None else f"{len(centroids)} rows"
        raise ValueError(f"init='centroid' needs one centroid per code ({num_codes}), got {got}")
    persona_map = PersonaMap.for_codes(num_codes, init)
    tokenizer.add_special_tokens({"extra_special_tokens": persona_map.tokens}, replace_extra_special_tokens=False)
    new_ids = persona_token_ids(tokenizer, persona_map)

    input_embeddings = model.get_input_embeddings().weight
    old_rows = input_embeddings.shape[0]
    if min(new_ids) < old_rows:
        raise ValueError("persona tokens already in the vocabulary; add them once per model")
    # Keep rows already padded to a multiple (some checkpoints pad the vocab) but never shrink.
    model.resize_token_embeddings(max(len(tokenizer), old_rows), mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        _init_rows(model.get_input_embeddings().weight, old_rows, new_ids, init, centroids, noise_scale, generator)
        output = model.get_output_embeddings()
        if output is not None and output.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            mean = output.weight[:old_rows].float().mean(dim=0)
            output.weight[new_ids] = mean.to(output.weight.dtype)
    return persona_map


def _init_rows(weight, old_rows, new_ids, init, centroids, noise_scale, generator) -> None:
    # Statistics on the CPU, where the seeded generator draws: the rows are the same on any device.
    existing = weight[:old_rows].detach().float().cpu()
    mean, spread = existing.mean(dim=0), existing.std(dim=0)
    code_ids, neutral_id = new_ids[:-1], new_ids[-1]
    if init == "centroid":
        centroids = torch.as_tensor(np.asarray(centroids), dtype=torch.float32)
        projection = torch.randn(centroids.shape[1], weight.shape[1], generator=generator) / centroids.shape[1] ** 0.5
        offsets = (centroids - centroids.mean(dim=0)) @ projection
        offsets = offsets / offsets.std().clamp_min(1e-8) * spread * noise_scale
    else:
        offsets = torch.randn(len(code_ids), weight.shape[1], generator=generator) * spread * noise_scale
    weight[code_ids] = (mean + offsets).to(weight.device, weight.dtype)
    weight[neutral_id] = mean.to(weight.device, weight.dtype)
