"""Sampling a synthetic buyer population from one shop's mix of buyer types.

A codebook artifact's shop_mix.json gives, per shop, a probability over the K codes. A run of N
buyers draws N codes from it with the run's seed and gives every buyer a seed of its own, derived
from the run seed and the buyer's index only. So the same (shop mix, N, seed) always yields the same
population, buyer i keeps its code and seed whatever N is, and an A/B run can drive the very same
buyers against two layouts.

shop_mix.json shapes accepted (the codebook writes the first; the others are tolerated so that a
hand-written artifact works too):

    {"<shop>": {"probs": [p_0, ..., p_K-1], "buyers": 1234}, ...}
    {"<shop>": {"distribution": {"<code>": p, ...}}, ...}       (also "probabilities", "mix")
    {"<shop>": [p_0, ..., p_K-1]}   or   {"<shop>": {"<code>": p, ...}}
    any of these wrapped as {"shops": {...}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHOP_MIX_FILE = "shop_mix.json"
_MIX_KEYS = ("probs", "probabilities", "distribution", "mix", "p")


@dataclass(frozen=True)
class SyntheticBuyer:
    """One member of the simulated population."""

    buyer_index: int
    code: int
    seed: int


class ShopMixError(ValueError):
    """shop_mix.json is missing, malformed, or has no entry for the shop asked for."""


def load_shop_mix(codebook_dir: str | Path, shop: str) -> dict[int, float]:
    """Return shop's probability per code (codes with probability 0 left out), summing to 1."""
    path = Path(codebook_dir) / SHOP_MIX_FILE
    if not path.is_file():
        raise ShopMixError(f"{path}: not found; expected a codebook artifact directory with {SHOP_MIX_FILE}")
    try:
        mixes = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShopMixError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(mixes, dict) and isinstance(mixes.get("shops"), dict):
        mixes = mixes["shops"]
    if not isinstance(mixes, dict):
        raise ShopMixError(f"{path}: expected an object mapping shop id to its code distribution")
    if shop not in mixes:
        known = ", ".join(sorted(map(str, mixes))[:20])
        raise ShopMixError(f"{path}: no shop {shop!r}; shops in this codebook: {known}")
    probabilities = _as_code_probabilities(mixes[shop], f"{path}: shop {shop!r}")
    total = sum(probabilities.values())
    if total <= 0:
        raise ShopMixError(f"{path}: shop {shop!r} has no code with positive probability")
    return {code: p / total for code, p in sorted(probabilities.items()) if p > 0}


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


def buyer_seed(run_seed: int, buyer_index: int) -> int:
    """The seed of one buyer: a function of the run seed and the buyer's index only."""
    return int(np.random.SeedSequence([run_seed, buyer_index]).generate_state(1)[0])


def sample_population(codebook_dir: str | Path, shop: str, buyers: int, seed: int) -> list[SyntheticBuyer]:
    """Draw `buyers` synthetic buyers from shop's code mix; reproducible given seed."""
    if buyers < 1:
        raise ValueError(f"buyers must be at least 1, got {buyers}")
    mix = load_shop_mix(codebook_dir, shop)
    codes = np.array(list(mix), dtype=np.int64)
    probabilities = np.array(list(mix.values()))
    population = []
    for index in range(buyers):
        # One generator per buyer (not one for the run) so buyer i's code does not depend on N.
        rng = np.random.default_rng(np.random.SeedSequence([seed, index, 1]))
        code = int(rng.choice(codes, p=probabilities))
        population.append(SyntheticBuyer(buyer_index=index, code=code, seed=buyer_seed(seed, index)))
    return population
