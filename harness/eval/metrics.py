"""The numbers of a held-out evaluation: plain functions on rates and counts, tested on hand-made values.

Conversion alignment (the paper's headline) = mean over shops of 1 - min(1, |CR_sim - CR_real| / CR_real).
Next to it: an interval over shops (bootstrap), correlations across shops, the type-mix distance,
and the sampling ceiling: the alignment that even a perfect simulation reaches in expectation when
it draws only N buyers per shop, so a score can be read against what N allows.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

BOOTSTRAP_RESAMPLES = 2000


def alignment_term(simulated: float, real: float) -> float:
    """1 - min(1, |CR_sim - CR_real| / CR_real); a shop with no real purchases scores 1 only when
    the simulation has none either (the relative error is undefined there)."""
    if real == 0:
        return 1.0 if simulated == 0 else 0.0
    return 1.0 - min(1.0, abs(simulated - real) / real)


def conversion_alignment(simulated: list[float], real: list[float]) -> float | None:
    """Mean over shops of alignment_term."""
    if not simulated:
        return None
    return float(np.mean([alignment_term(s, r) for s, r in zip(simulated, real)]))


def correlations(simulated: list[float], real: list[float]) -> dict:
    """Pearson and Spearman across shops (None with fewer than 3 shops or a constant side)."""
    from scipy.stats import pearsonr, spearmanr

    result = {"pearson": None, "pearson_p": None, "spearman": None, "spearman_p": None, "n_shops": len(simulated)}
    if len(simulated) < 3 or np.ptp(simulated) == 0 or np.ptp(real) == 0:
        return result
    pearson, spearman = pearsonr(simulated, real), spearmanr(simulated, real)
    result.update(pearson=float(pearson.statistic), pearson_p=float(pearson.pvalue),
                  spearman=float(spearman.statistic), spearman_p=float(spearman.pvalue))
    return result


def mix_jsd(p: dict[int, float] | np.ndarray, q: dict[int, float] | np.ndarray, size: int | None = None) -> float:
    """Squared Jensen–Shannon distance in bits (= the JS divergence, base 2) between two type mixes."""
    from scipy.spatial.distance import jensenshannon

    def dense(mix):
        if isinstance(mix, dict):
            vector = np.zeros(size if size is not None else max(mix) + 1)
            for code, share in mix.items():
                vector[code] = share
            return vector
        return np.asarray(mix, dtype=float)

    if isinstance(p, dict) or isinstance(q, dict):
        size = size or 1 + max([*(p if isinstance(p, dict) else range(len(p))), *(q if isinstance(q, dict) else range(len(q)))])
    return float(jensenshannon(dense(p), dense(q), base=2) ** 2)


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def buyers_needed(real_rate: float, cap: int, floor: int = 1) -> int:
    """N >= 100 (1 - p) / p: the simulated rate's standard error sqrt(p (1-p) / N) is then at most
    p / 10. Capped at `cap`; a shop without real purchases gets the cap."""
    if real_rate <= 0:
        return cap
    return int(min(cap, max(floor, math.ceil(100 * (1 - real_rate) / real_rate))))



def type_oracle_rate(mix: dict[int, float], code_rates: dict[int, float], fallback: float) -> float:
    """The shop's rate if every buyer converted at its type's training rate (a code no training
    buyer has, at the fallback)."""
    return float(sum(share * code_rates.get(code, fallback) for code, share in mix.items()))


def bootstrap_interval(values: list[float], seed: int = 0, confidence: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of the mean over shops (scipy.stats.bootstrap, resampling shops)."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return None
    if values.size == 1 or np.ptp(values) == 0:
        return [float(values[0]), float(values[0])]
    result = bootstrap((values,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=confidence,
                       method="percentile", rng=np.random.default_rng(seed))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def expected_alignment_at(real: float, buyers: int) -> float:
    """E[alignment_term(K / N, p)] for K ~ Binomial(N, p): what a simulation whose every buyer
    converts with the shop's real probability scores in expectation with N buyers."""
    from scipy.stats import binom

    if buyers < 1:
        return float("nan")
    k = np.arange(buyers + 1)
    terms = np.array([alignment_term(x / buyers, real) for x in k])
    return float(np.sum(binom.pmf(k, buyers, real) * terms))


def sampling_ceiling(real: list[float], buyers: list[int]) -> float | None:
    """Mean over shops of expected_alignment_at: the score a perfect simulation is expected to reach."""
    if not real:
        return None
    return float(np.mean([expected_alignment_at(r, n) for r, n in zip(real, buyers)]))


def expected_rate_gap(rate: float, buyers: int) -> float:
    """E|K / N - p| for K ~ Binomial(N, p): how far N buyers who each convert with probability p
    land from p by chance alone."""
    from scipy.stats import binom

    k = np.arange(buyers + 1)
    return float(np.sum(binom.pmf(k, buyers, rate) * np.abs(k / buyers - rate))) if buyers else 0.0


def summarize_policy(rows: list[dict], seed: int = 0) -> dict:
    """One policy's figures over the shops of `rows` (results.json lines)."""
    simulated, real = [r["cr_sim"] for r in rows], [r["cr_real"] for r in rows]
    terms = [alignment_term(s, r) for s, r in zip(simulated, real)]
    return {"shops": len(rows), "alignment": conversion_alignment(simulated, real),
            "alignment_ci": bootstrap_interval(terms, seed), **correlations(simulated, real),
            "mean_cr_sim": float(np.mean(simulated)) if rows else None,
            "mean_cr_real": float(np.mean(real)) if rows else None,
            "mean_abs_error": float(np.mean(np.abs(np.array(simulated) - np.array(real)))) if rows else None}


# Funnel strata: the share of a shop's buyers who reached each stage, simulated vs real.
FUNNEL_STRATA = ("viewed", "carted", "checkout", "purchased")


def strata_alignment(rows: list[dict]) -> dict:
    """Per funnel stratum, over the rows (shops) that carry "strata": the mean alignment_term of the
    simulated share against the real share, and both mean shares. A stratum the real log never
    records (real share None, e.g. Tmall has no checkout events) is left out, not scored as 0."""
    result = {}
    for name in FUNNEL_STRATA:
        pairs = [(row["strata"][name]["sim"], row["strata"][name]["real"]) for row in rows
                 if row.get("strata") and row["strata"][name]["real"] is not None]
        if not pairs:
            result[name] = None
            continue
        simulated, real = zip(*pairs)
        result[name] = {"shops": len(pairs), "alignment": conversion_alignment(list(simulated), list(real)),
                        "mean_sim": float(np.mean(simulated)), "mean_real": float(np.mean(real))}
    return result


# Behaviour beyond conversion: per buyer, simulated against real, each against its noise floor.
# product_views, cart_adds, events: Wasserstein-1 between counts per buyer ("events" counts the event
# types both the real log and the store record, so a visit's length is in the same unit on both
# sides); outcome: JS divergence (bits) between the shares of buyers whose visit ended at each stage.
BEHAVIOUR_MEASURES = ("product_views", "cart_adds", "events", "outcome")
OUTCOMES = ("none", "viewed", "carted", "checkout", "purchased")


def behaviour_distance(measure: str, simulated: pd.Series, real: pd.Series) -> float | None:
    """The distance of one measure between two columns of per-buyer values (outcome: stage names)."""
    from scipy.stats import wasserstein_distance

    if simulated.empty or real.empty:
        return None
    if measure != "outcome":
        return float(wasserstein_distance(simulated.astype(float), real.astype(float)))
    shares = lambda values: values.value_counts(normalize=True).reindex(list(OUTCOMES), fill_value=0.0).to_numpy()
    return mix_jsd(shares(simulated), shares(real))


def behaviour_figures(simulated: pd.DataFrame, real: pd.DataFrame, measures: tuple[str, ...], seed: int = 0,
                      draws: int = 20) -> dict[str, dict]:
    """Per measure: the distance of the simulated buyers to the real ones, and its noise floor: the
    mean distance of as many buyers drawn from the real buyers themselves (with replacement) to the
    real buyers, i.e. what a simulation that reproduced them exactly would reach in expectation."""
    figures = {}
    rng = np.random.default_rng(seed)
    for measure in measures:
        distance = behaviour_distance(measure, simulated[measure], real[measure])
        floor = None
        if distance is not None:
            floor = float(np.mean([behaviour_distance(measure, real[measure].sample(len(simulated), replace=True,
                                                                                    random_state=rng), real[measure])
                                   for _ in range(draws)]))
        figures[measure] = {"distance": distance, "floor": floor, "ratio_to_floor": ratio(distance, floor)}
    return figures


def ratio(distance: float | None, floor: float | None) -> float | None:
    return distance / floor if distance is not None and floor else None


def behaviour_summary(entries: list[dict]) -> dict | None:
    """Mean over shops (or types) of each measure's distance and floor, and their ratio (1 = as
    close as sampling noise allows)."""
    result = {}
    for measure in BEHAVIOUR_MEASURES:
        pairs = [(e[measure]["distance"], e[measure]["floor"]) for e in entries
                 if measure in e and e[measure]["distance"] is not None and e[measure]["floor"] is not None]
        if pairs:
            distance, floor = (float(np.mean(values)) for values in zip(*pairs))
            result[measure] = {"n": len(pairs), "distance": distance, "floor": floor, "ratio_to_floor": ratio(distance, floor)}
    return result or None


def conversion_gap(check: dict) -> float | None:
    """harness.eval.evaluate.agent_code_check's per-type differences weighed by what they do to
    conversion: (Σ buyers · |agent − traces| − the same sum expected from sampling alone) /
    Σ buyers · traces, the share of the traces' conversions the agent loses or puts in other types.
    Unlike the buyer-weighted type gap, the few buyers of a buying type count here as much as the
    many who never buy; no traced conversion: None."""
    rows = [row for row in check["per_code"].values() if row["trace_conversion"] is not None and row["agent_buyers"]]
    traced = sum(row["agent_buyers"] * row["trace_conversion"] for row in rows)
    if not traced:
        return None
    misplaced = sum(row["agent_buyers"] * abs(row["agent_conversion"] - row["trace_conversion"]) for row in rows)
    chance = sum(row["agent_buyers"] * expected_rate_gap(row["trace_conversion"], row["agent_buyers"]) for row in rows)
    return (misplaced - chance) / traced


def buyers_against_type(check: dict) -> dict | None:
    """When every traced type converts at 0 % or 100 % (harness.eval.evaluate.agent_code_check's
    per-type rows), the buyers whose agent acted against its type, by how: `missed` bought nothing
    although their type always buys (`left_a_cart`: of them, those who carted and left before
    paying, None where the rows carry no cart figure), `bought` bought although their type never
    does. A type that converts in between has no buyer against it: None."""
    rows = [row for row in check["per_code"].values() if row["trace_conversion"] is not None and row["agent_buyers"]]
    if not rows or any(row["trace_conversion"] not in (0.0, 1.0) for row in rows):
        return None
    buying = [row for row in rows if row["trace_conversion"] == 1.0]
    never = [row for row in rows if row["trace_conversion"] == 0.0]
    carts_known = all(row.get("agent_abandoned_cart_rate") is not None for row in buying)
    return {"buyers": sum(row["agent_buyers"] for row in rows),
            "missed": round(sum(row["agent_buyers"] * (1 - row["agent_conversion"]) for row in buying)),
            "left_a_cart": round(sum(row["agent_buyers"] * row["agent_abandoned_cart_rate"] for row in buying))
            if carts_known else None,
            "bought": round(sum(row["agent_buyers"] * row["agent_conversion"] for row in never))}


def added_against_type(counts: list[dict | None]) -> dict | None:
    """buyers_against_type of several folds added up; None when any fold has none (a mixed type)."""
    if not counts or None in counts:
        return None
    left = [c["left_a_cart"] for c in counts]
    return {"buyers": sum(c["buyers"] for c in counts), "missed": sum(c["missed"] for c in counts),
            "left_a_cart": None if None in left else sum(left), "bought": sum(c["bought"] for c in counts)}
