"""The one reader of a codebook artifact dir (torch-free): load it once, pass the object down.

A codebook artifact (DESIGN.md) holds, written by codebook/train.py:

    model.safetensors   the VQ-VAE weights
    config.json         {"train": {...}, "model": {"codebook_size": K, ...}}
    features.json       the feature list and its normalisation
    shop_mix.json       shop -> probability over the K codes, with buyer counts
    types.json          per code: share, real conversion rate, funnel statistics, summary
    metrics.json        reconstruction, perplexity, JS divergences

`CodebookArtifact.load(dir)` reads what a simulation needs (K, the shop mixes, the type profiles)
and a content hash that identifies the artifact: sha256 over config.json, features.json and the
weights, the files that define what a code means. An agent dir records that hash (agent/persona.py),
so an agent is never run against a codebook it was not trained for. A hand-written artifact
without a model (tests, illustrations) is identified by its shop_mix.json and types.json instead.

shop_mix.json shapes accepted (the codebook writes the first; the others are tolerated so that a
hand-written artifact works too):

    {"<shop>": {"probs": [p_0, ..., p_K-1], "n_buyers": 1234}, ...}
    {"<shop>": {"distribution": {"<code>": p, ...}}, ...}       (also "probabilities", "mix", "p")
    {"<shop>": [p_0, ..., p_K-1]}   or   {"<shop>": {"<code>": p, ...}}
    any of these wrapped as {"codebook_size": K, "shops": {...}}

types.json: {"codebook_size": K, "types": [{"code": c, ...}, ...]} (codebook/profiles.py), or the
list alone, or an object code -> entry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FEATURES_FILE = "features.json"
SHOP_MIX_FILE = "shop_mix.json"
TYPES_FILE = "types.json"
METRICS_FILE = "metrics.json"

# The files whose bytes define what a code means; their hash identifies the artifact.
DEFINING_FILES = (CONFIG_FILE, FEATURES_FILE, MODEL_FILE)
# What identifies a hand-written artifact that has none of the defining files.
DESCRIBING_FILES = (SHOP_MIX_FILE, TYPES_FILE)
_MIX_KEYS = ("probs", "probabilities", "distribution", "mix", "p")


class ArtifactError(ValueError):
    """A codebook artifact file is missing or malformed; the message names the file."""


class ShopMixError(ArtifactError):
    """shop_mix.json is missing, malformed, or has no entry for the shop asked for."""


class TypesError(ArtifactError):
    """types.json is missing or malformed."""


@dataclass(frozen=True)
class CodebookIdentity:
    """What an agent dir records about the codebook it was trained for."""

    k: int
    content_hash: str
    path: str  # where the artifact was when the agent was trained (for the error message only)

    def describe(self) -> str:
        return f"{self.path} (K={self.k}, sha256 {self.content_hash})"


@dataclass(frozen=True)
class CodebookArtifact:
    """A loaded codebook artifact: K, per-shop type mixes, per-type profiles and its identity."""

    path: Path
    k: int
    content_hash: str
    types: dict[int, dict] = field(repr=False)  # code -> its types.json entry ({} without types.json)
    shop_entries: dict[str, object] = field(repr=False)  # shop -> its shop_mix.json entry, read on use

    @classmethod
    def load(cls, directory: str | Path) -> CodebookArtifact:
        path = Path(directory).resolve()  # absolute: Ray workers may run in another directory
        if not path.is_dir():
            raise ArtifactError(f"{path}: not a codebook artifact directory (it does not exist)")
        config = _read_json(path / CONFIG_FILE, ArtifactError) if (path / CONFIG_FILE).is_file() else None
        mix_file = _read_json(path / SHOP_MIX_FILE, ShopMixError) if (path / SHOP_MIX_FILE).is_file() else None
        types_file = _read_json(path / TYPES_FILE, TypesError) if (path / TYPES_FILE).is_file() else None
        if config is None and mix_file is None and types_file is None:
            raise ArtifactError(f"{path}: not a codebook artifact (none of {CONFIG_FILE}, {SHOP_MIX_FILE}, "
                                f"{TYPES_FILE} is there)")
        shops = _shop_entries(path / SHOP_MIX_FILE, mix_file) if mix_file is not None else {}
        types = _type_entries(path / TYPES_FILE, types_file) if types_file is not None else {}
        k = _codebook_size(path, config, mix_file, types_file, shops, types)
        return cls(path, k, content_hash(path), types, shops)

    @property
    def identity(self) -> CodebookIdentity:
        return CodebookIdentity(self.k, self.content_hash, str(self.path))

    @property
    def shops(self) -> list[str]:
        return sorted(self.shop_entries)

    def shop_mix(self, shop: str) -> dict[int, float]:
        """The shop's probability per code (codes with probability 0 left out), summing to 1."""
        where = self.path / SHOP_MIX_FILE
        if not where.is_file():
            raise ShopMixError(f"{where}: not found; expected a codebook artifact directory with {SHOP_MIX_FILE}")
        if shop not in self.shop_entries:
            known = ", ".join(self.shops[:20])
            raise ShopMixError(f"{where}: no shop {shop!r}; shops in this codebook: {known}")
        probabilities = _as_code_probabilities(self.shop_entries[shop], f"{where}: shop {shop!r}")
        outside = [code for code, p in probabilities.items() if p > 0 and not 0 <= code < self.k]
        if outside:
            raise ShopMixError(f"{where}: shop {shop!r} gives probability to codes {outside} outside 0..{self.k - 1}")
        total = sum(probabilities.values())
        if total <= 0:
            raise ShopMixError(f"{where}: shop {shop!r} has no code with positive probability")
        return {code: p / total for code, p in sorted(probabilities.items()) if p > 0}

    def shop_buyers(self, shop: str) -> int:
        """The shop's real buyer count as shop_mix.json records it (0 when it does not)."""
        entry = self.shop_entries.get(shop)
        return int(entry.get("n_buyers", entry.get("buyers", 0))) if isinstance(entry, dict) else 0

    def real_conversion_rates(self) -> dict[int, float]:
        """Real conversion rate per code from types.json (codes without one left out)."""
        rates = {}
        for code, entry in self.types.items():
            rate = entry.get("conversion_rate", entry.get("real_conversion_rate"))
            if rate is not None:
                rates[code] = float(rate)
        return rates


def content_hash(directory: Path) -> str:
    """sha256 over the defining files present (name and bytes), else over the describing ones."""
    present = [name for name in DEFINING_FILES if (directory / name).is_file()]
    if not present:
        present = [name for name in DESCRIBING_FILES if (directory / name).is_file()]
    digest = hashlib.sha256()
    for name in present:
        digest.update(name.encode() + b"\0")
        with open(directory / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def _read_json(path: Path, error: type[ArtifactError]):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None


def _shop_entries(path: Path, raw) -> dict[str, object]:
    if isinstance(raw, dict) and isinstance(raw.get("shops"), dict):
        raw = raw["shops"]
    if not isinstance(raw, dict):
        raise ShopMixError(f"{path}: expected an object mapping shop id to its code distribution")
    return {str(shop): entry for shop, entry in raw.items()}


def _type_entries(path: Path, raw) -> dict[int, dict]:
    if isinstance(raw, dict) and isinstance(raw.get("types"), (dict, list)):
        raw = raw["types"]
    if isinstance(raw, dict):
        pairs = list(raw.items())
    elif isinstance(raw, list):
        pairs = [(entry.get("code") if isinstance(entry, dict) else None, entry) for entry in raw]
    else:
        raise TypesError(f"{path}: expected {{'types': [...]}}, a list of types or an object code -> type")
    types = {}
    for code, entry in pairs:
        if not isinstance(entry, dict):
            raise TypesError(f"{path}: code {code!r}: expected an object, got {type(entry).__name__}")
        try:
            types[int(code)] = entry
        except (TypeError, ValueError):
            raise TypesError(f"{path}: code {code!r}: the code must be an integer") from None
    return types


def _codebook_size(path: Path, config, mix_file, types_file, shops: dict, types: dict) -> int:
    """K as the artifact states it; every file that states it must agree."""
    stated = {}
    if isinstance(config, dict):
        model = config.get("model")
        if not isinstance(model, dict) or not isinstance(model.get("codebook_size"), int):
            raise ArtifactError(f"{path / CONFIG_FILE}: expected {{'model': {{'codebook_size': K, ...}}}}")
        stated[CONFIG_FILE] = model["codebook_size"]
    for name, raw in ((SHOP_MIX_FILE, mix_file), (TYPES_FILE, types_file)):
        if isinstance(raw, dict) and raw.get("codebook_size") is not None:
            stated[name] = raw["codebook_size"]
    if len(set(stated.values())) > 1:
        raise ArtifactError(f"{path}: the files disagree on the codebook size K: "
                            + ", ".join(f"{name} says {k}" for name, k in stated.items()))
    if stated:
        return int(next(iter(stated.values())))
    # A hand-written artifact that states no K: the codes it mentions.
    sizes = [code + 1 for code in types]
    for entry in shops.values():
        probabilities = entry.get("probs") if isinstance(entry, dict) else entry
        if isinstance(probabilities, list):
            sizes.append(len(probabilities))
    if not sizes:
        raise ArtifactError(f"{path}: cannot tell the codebook size K (no {CONFIG_FILE}, and neither "
                            f"{SHOP_MIX_FILE} nor {TYPES_FILE} states codebook_size or lists a code)")
    return max(sizes)


def _as_code_probabilities(entry, where: str) -> dict[int, float]:
    if isinstance(entry, dict):
        for key in _MIX_KEYS:
            if key in entry:
                return _as_code_probabilities(entry[key], where)
        try:
            return {int(code): float(p) for code, p in entry.items()}
        except (TypeError, ValueError) as exc:
            raise ShopMixError(
                f"{where}: expected {{'probs': [...]}} or a mapping code -> probability, got keys {sorted(entry)[:10]}"
            ) from exc
    if isinstance(entry, list):
        try:
            values = [float(p) for p in entry]
        except (TypeError, ValueError) as exc:
            raise ShopMixError(f"{where}: probabilities must be numbers") from exc
        return dict(enumerate(values))
    raise ShopMixError(f"{where}: expected a list or object of probabilities, got {type(entry).__name__}")
