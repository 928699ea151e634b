"""Paired A/B statistics (harness/sim/paired.py): bootstrap interval, McNemar, per-type split."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
from scipy import stats

from harness.sim.paired import (
    mcnemar,
    mcnemar_from_counts,
    paired_bootstrap_ci,
    paired_effect,
    per_type_effects,
    wilson_interval,
)


def table_to_outcomes(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired outcomes with the given 2×2 table, shuffled so order carries no information."""
    a = np.array([1] * both + [1] * only_a + [0] * only_b + [0] * neither)
    b = np.array([1] * both + [0] * only_a + [1] * only_b + [0] * neither)
    order = np.random.default_rng(0).permutation(len(a))
    return a[order], b[order]


def paired_sample(rng, n: int, cr_a: float, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Correlated paired outcomes with a true ΔCR: B loses a share of A's converters (like friction)
    and, rarely, wins a buyer A lost."""
    a = (rng.random(n) < cr_a).astype(int)
    gain = 0.02
    lose = (gain * (1 - cr_a) - delta) / cr_a  # so that E[b] - E[a] = delta
    b = np.where(a == 1, rng.random(n) >= lose, rng.random(n) < gain).astype(int)
    return a, b


@pytest.mark.parametrize("table", [(30, 2, 9, 59), (10, 0, 7, 3), (5, 12, 12, 1), (40, 25, 14, 21), (3, 1, 0, 2)])
def test_mcnemar_matches_scipy_binomtest_on_hand_made_tables(table):
    both, only_a, only_b, neither = table
    a, b = table_to_outcomes(*table)
    result = mcnemar(a, b)
    assert (result.only_a, result.only_b) == (only_a, only_b)
    n = only_a + only_b
    assert result.p_exact == pytest.approx(stats.binomtest(only_a, n, 0.5).pvalue, rel=1e-12)
    # Mid-p by hand: 2 · (P(X < k) + ½ P(X = k)) with k = min(b, c), X ~ Bin(b + c, ½), capped at 1.
    k = min(only_a, only_b)
    below = sum(comb(n, i) for i in range(k)) / 2**n
    mid = min(1.0, 2 * (below + 0.5 * comb(n, k) / 2**n))
    assert result.p_mid == pytest.approx(mid, rel=1e-9)
    assert result.p_mid <= result.p_exact


def test_mcnemar_without_discordant_pairs_is_one():
    assert mcnemar_from_counts(0, 0).p_exact == mcnemar_from_counts(0, 0).p_mid == 1.0
    # b = 0, c = 6: exact = 2 / 64, mid-p half of it.
    assert mcnemar_from_counts(0, 6).p_exact == pytest.approx(2 / 64)
    assert mcnemar_from_counts(0, 6).p_mid == pytest.approx(1 / 64)


def test_paired_effect_reports_the_sample_difference_and_table():
    a, b = table_to_outcomes(30, 12, 2, 56)
    effect = paired_effect(a, b, n_bootstrap=2000)
    assert effect.n == 100
    assert effect.conversion_a == pytest.approx(0.42) and effect.conversion_b == pytest.approx(0.32)
    assert effect.delta == pytest.approx(-0.10)
    assert effect.ci_low < -0.10 < effect.ci_high < 0
    assert (effect.mcnemar.only_a, effect.mcnemar.only_b) == (12, 2)
    assert effect.p_value == effect.mcnemar.p_mid < 0.05


def test_bootstrap_interval_covers_a_known_difference_at_about_its_level():
    rng = np.random.default_rng(42)
    true_delta = -0.08
    covered = []
    for replicate in range(200):
        a, b = paired_sample(rng, 300, 0.4, true_delta)
        low, high = paired_bootstrap_ci(a, b, confidence=0.95, n_bootstrap=1000, seed=replicate)
        covered.append(low <= true_delta <= high)
    # 95 % nominal; with 200 replicates the share lies in [0.90, 0.99] unless the interval is off.
    assert 0.90 <= np.mean(covered) <= 0.99, np.mean(covered)


def test_paired_interval_is_narrower_than_ignoring_the_pairing():
    """Resampling buyers keeps each buyer's two outcomes together; correlated arms give a much
    tighter interval than two independent samples would."""
    rng = np.random.default_rng(3)
    a, b = paired_sample(rng, 400, 0.4, -0.08)
    low, high = paired_bootstrap_ci(a, b, 0.95, 2000, seed=1)
    unpaired = stats.bootstrap((a, b), lambda x, y, axis=-1: y.mean(axis=axis) - x.mean(axis=axis),
                               paired=False, vectorized=True, n_resamples=2000, method="percentile",
                               random_state=np.random.default_rng(1)).confidence_interval
    assert (high - low) < 0.7 * (unpaired.high - unpaired.low)


def test_identical_arms_give_a_zero_interval_and_p_one():
    a = np.array([1, 0, 1, 1, 0, 0, 1])
    effect = paired_effect(a, a.copy())
    assert (effect.delta, effect.ci_low, effect.ci_high, effect.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_mid_p_mcnemar_holds_its_level_on_independent_a_a_data():
    """The statistic alone: A and B independent with the same rate -> about 5 % false positives."""
    rng = np.random.default_rng(7)
    p_mid, p_exact = [], []
    for _ in range(3000):
        a = rng.random(60) < 0.35
        b = rng.random(60) < 0.35
        result = mcnemar(a, b)
        p_mid.append(result.p_mid)
        p_exact.append(result.p_exact)
    fpr_mid, fpr_exact = np.mean(np.array(p_mid) < 0.05), np.mean(np.array(p_exact) < 0.05)
    assert 0.035 <= fpr_mid <= 0.065, fpr_mid
    assert fpr_exact <= fpr_mid  # the exact test is the conservative one


def test_per_type_split_matches_each_subset():
    rng = np.random.default_rng(5)
    codes = rng.choice([0, 3, 7], size=240, p=[0.5, 0.3, 0.2])
    a = (rng.random(240) < np.where(codes == 0, 0.7, 0.2)).astype(int)
    b = np.where(codes == 0, a * (rng.random(240) > 0.3), a).astype(int)  # only type 0 is hurt
    effects = per_type_effects(codes, a, b, n_bootstrap=500)
    assert list(effects) == [0, 3, 7]
    for code, effect in effects.items():
        mask = codes == code
        assert effect.n == mask.sum()
        assert effect.delta == pytest.approx(b[mask].mean() - a[mask].mean())
        assert effect.mcnemar.only_a == int(((a == 1) & (b == 0) & mask).sum())
    assert effects[0].delta < 0 and effects[0].p_value < 0.01
    assert effects[3].delta == effects[7].delta == 0.0 and effects[3].p_value == 1.0
    assert sum(e.n for e in effects.values()) == 240


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match=r"arm A: outcomes must be 0/1 or booleans, found \[2\]"):
        mcnemar([1, 2, 0], [1, 0, 0])
    with pytest.raises(ValueError, match="got 3 in A and 2 in B"):
        mcnemar([1, 0, 0], [1, 0])
    with pytest.raises(ValueError, match="codes has 2 entries but there are 3 paired outcomes"):
        per_type_effects([0, 1], [1, 0, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="at least one buyer"):
        paired_effect([], [])


def test_wilson_interval_matches_the_formula():
    k, n, z = 5, 100, stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    low, high = wilson_interval(k, n)
    assert (low, high) == pytest.approx((centre - half, centre + half), rel=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no trials: nothing is known
