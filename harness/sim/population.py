"""Sampling a synthetic buyer population from one shop's mix of buyer types.

A codebook artifact's shop_mix.json gives, per shop, a probability over the K codes. A run of N
buyers does not leave the shop's type composition to chance: each code gets its quota, N x share
rounded by largest remainder, so the population has the shop's mix as exactly as N allows. What is
left to chance (which buyer gets which code, each buyer's own seed) draws from the run seed AND the
shop id, so two shops with the same mix get independent buyers. The same (shop, mix, N, seed)
always yields the same population, so an A/B run drives the very same buyers against two layouts.

The mix comes from the loaded codebook artifact (codebook.artifact.CodebookArtifact.shop_mix,
which also lists the shop_mix.json shapes accepted).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from codebook.artifact import CodebookArtifact


@dataclass(frozen=True)
class SyntheticBuyer:
    """One member of the simulated population."""

    buyer_index: int
    code: int
    seed: int
    goal: str = ""  # a task the buyer is given (harness.eval.tasks); "" for a free persona buyer


def buyer_seed(run_seed: int, buyer_index: int, shop: str = "") -> int:
    """The seed of one buyer: a function of the run seed, the shop and the buyer's index only."""
    return int(np.random.SeedSequence([run_seed, shop_entropy(shop), buyer_index]).generate_state(1)[0])


def shop_entropy(shop: str) -> int:
    """A stable integer for a shop id (Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.sha256(str(shop).encode("utf-8")).digest()[:8], "little")


def quota_counts(mix: dict[int, float], buyers: int) -> dict[int, int]:
    """Buyers per code: N x share, rounded by largest remainder (ties to the smaller code)."""
    codes = sorted(code for code, share in mix.items() if share > 0)
    shares = np.array([mix[code] for code in codes], dtype=float)
    exact = buyers * shares / shares.sum()
    counts = np.floor(exact).astype(int)
    by_remainder = sorted(range(len(codes)), key=lambda i: (-(exact[i] - counts[i]), codes[i]))
    for i in by_remainder[: buyers - int(counts.sum())]:
        counts[i] += 1
    return {code: int(count) for code, count in zip(codes, counts) if count > 0}


def population_from_mix(mix: dict[int, float], buyers: int, seed: int, shop: str = "") -> list[SyntheticBuyer]:
    """`buyers` synthetic buyers with the mix's quota of each code, in a seeded order per shop."""
    if buyers < 1:
        raise ValueError(f"buyers must be at least 1, got {buyers}")
    codes = np.array([code for code, count in quota_counts(mix, buyers).items() for _ in range(count)], dtype=np.int64)
    # Interleave the types so that the first buyers to finish are not all of one code.
    np.random.default_rng(np.random.SeedSequence([seed, shop_entropy(shop), 1])).shuffle(codes)
    return [SyntheticBuyer(index, int(code), buyer_seed(seed, index, shop)) for index, code in enumerate(codes)]


def sample_population(codebook: CodebookArtifact, shop: str, buyers: int, seed: int) -> list[SyntheticBuyer]:
    """The population of `buyers` synthetic buyers for `shop` from the codebook's shop mix."""
    return population_from_mix(codebook.shop_mix(shop), buyers, seed, shop)
