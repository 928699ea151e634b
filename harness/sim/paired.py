"""Paired statistics for A/B runs: the same buyers, once in each arm, each converting or not.

Every synthetic buyer i has an outcome in arm A (a_i ∈ {0, 1}) and in arm B (b_i), so the two
conversion rates are compared on paired data:

- ΔCR = CR_B − CR_A with a bootstrap confidence interval that resamples BUYERS (both outcomes of
  a buyer travel together), scipy.stats.bootstrap(paired=True, method="percentile"). Percentile,
  not BCa: with binary outcomes and few discordant buyers the bootstrap distribution is often
  degenerate (all zero in an A/A run with shared seeds), where BCa is undefined.
- McNemar's test on the discordant pairs: b = buyers who converted only in A, c = only in B.
  Under "no effect" each discordant buyer is equally likely to fall either way, so b ~ Bin(b + c, ½).
  We report both the exact p-value (scipy.stats.binomtest, two-sided) and the mid-p value (the
  exact p minus the probability of the observed table itself, Fagerland, Lydersen & Laake 2013).
  The mid-p is the one used for decisions (`p_value`): the exact test is conservative when b + c
  is small, the mid-p holds the nominal level closely, which the A/A calibration checks.
- Per-type effects: the same figures for the buyers of each code.

Nothing here knows about stores or runs: inputs are arrays of 0/1 outcomes (and codes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

DEFAULT_ALPHA = 0.05
DEFAULT_BOOTSTRAP = 5000


@dataclass(frozen=True)
class McNemarResult:
    only_a: int  # b: converted in A, not in B
    only_b: int  # c: converted in B, not in A
    p_exact: float  # two-sided exact binomial p on the discordant pairs
    p_mid: float  # two-sided mid-p (the decision p-value)


@dataclass(frozen=True)
class PairedEffect:
    """ΔCR of B against A on paired 0/1 outcomes, with interval and test."""

    n: int
    conversion_a: float
    conversion_b: float
    delta: float  # CR_B − CR_A
    ci_low: float
    ci_high: float
    confidence: float
    mcnemar: McNemarResult

    @property
    def p_value(self) -> float:
        return self.mcnemar.p_mid

    def as_dict(self) -> dict:
        out = asdict(self)
        out["p_value"] = self.p_value
        return out


def as_outcomes(values, name: str) -> np.ndarray:
    """A 1-d array of 0/1 outcomes; a clear error for anything else."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d sequence of 0/1 outcomes, got shape {array.shape}")
    if array.size and not np.isin(array, (0, 1)).all():
        bad = array[~np.isin(array, (0, 1))][:5]
        raise ValueError(f"{name}: outcomes must be 0/1 or booleans, found {bad.tolist()}")
    return array.astype(np.int8)


def mcnemar(a, b) -> McNemarResult:
    """McNemar's test on paired 0/1 outcomes (exact binomial and mid-p, two-sided)."""
    a, b = _paired(a, b)
    only_a = int(np.sum((a == 1) & (b == 0)))
    only_b = int(np.sum((a == 0) & (b == 1)))
    return mcnemar_from_counts(only_a, only_b)


def mcnemar_from_counts(only_a: int, only_b: int) -> McNemarResult:
    discordant = only_a + only_b
    if discordant == 0:
        return McNemarResult(only_a, only_b, 1.0, 1.0)
    p_exact = stats.binomtest(only_a, discordant, 0.5, alternative="two-sided").pvalue
    # Two-sided mid-p: the exact p minus the probability of the observed table (counted twice by
    # symmetry when b != c; when b == c the exact p is 1 and so is the mid-p).
    smaller = min(only_a, only_b)
    point = stats.binom.pmf(smaller, discordant, 0.5)
    p_mid = 1.0 if only_a == only_b else min(1.0, p_exact - point)
    return McNemarResult(only_a, only_b, float(p_exact), float(p_mid))


def paired_effect(
    a, b, confidence: float = 1 - DEFAULT_ALPHA, n_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> PairedEffect:
    """ΔCR = mean(b) − mean(a) with a paired bootstrap interval, plus McNemar's test."""
    a, b = _paired(a, b)
    if a.size == 0:
        raise ValueError("paired_effect needs at least one buyer")
    delta = float(b.mean() - a.mean())
    low, high = paired_bootstrap_ci(a, b, confidence, n_bootstrap, seed)
    return PairedEffect(
        n=int(a.size),
        conversion_a=float(a.mean()),
        conversion_b=float(b.mean()),
        delta=delta,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        mcnemar=mcnemar(a, b),
    )


def paired_bootstrap_ci(a, b, confidence: float, n_bootstrap: int, seed: int) -> tuple[float, float]:
    """Percentile interval of mean(b) − mean(a), resampling buyers (pairs) with replacement."""
    a, b = _paired(a, b)
    differences = (b - a).astype(float)
    if np.all(differences == differences[0]):  # every resample gives the same ΔCR
        return float(differences[0]), float(differences[0])
    if a.size == 1:
        return float(differences[0]), float(differences[0])
    result = stats.bootstrap(
        (a.astype(float), b.astype(float)),
        lambda x, y, axis=-1: np.mean(y, axis=axis) - np.mean(x, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=n_bootstrap,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def per_type_effects(
    codes, a, b, confidence: float = 1 - DEFAULT_ALPHA, n_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> dict[int, PairedEffect]:
    """paired_effect for the buyers of each code, keyed by code in ascending order."""
    a, b = _paired(a, b)
    codes = np.asarray(codes)
    if codes.shape != a.shape:
        raise ValueError(f"codes has {codes.size} entries but there are {a.size} paired outcomes")
    return {
        int(code): paired_effect(a[codes == code], b[codes == code], confidence, n_bootstrap, seed + int(code))
        for code in np.unique(codes)
    }


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; with no trials it is the whole [0, 1] (nothing known)."""
    if trials == 0:
        return (0.0, 1.0)
    ci = stats.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_outcomes(a, "arm A"), as_outcomes(b, "arm B")
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need one entry per buyer in each arm; got {a.size} in A and {b.size} in B")
    return a, b
