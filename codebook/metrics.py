"""Statistics of a buyer-type assignment, written to metrics.json and shared by the VQ-VAE and
the baselines so that every method is measured the same way.

* reconstruction MSE on the scaled features;
* code usage: perplexity exp(H(usage)) and active codes (count and share of K);
* Calinski–Harabasz of the scaled features labelled by code;
* Kruskal–Wallis H and p per feature across types, and for conversion;
* conversion separation: between-type spread of conversion rates and the AUC of predicting a
  buyer's conversion from their type's conversion rate;
* Jensen–Shannon divergence (bits, i.e. the squared JS distance with base 2) between shop mixes,
  averaged over pairs of shops with at least `min_shop_buyers` buyers, and the same between two
  random halves of one shop, averaged over those shops — the noise floor of the first.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import kruskal
from sklearn.metrics import calinski_harabasz_score, roc_auc_score


def code_usage(codes: np.ndarray, codebook_size: int) -> np.ndarray:
    """Share of rows per code, length K."""
    counts = np.bincount(np.asarray(codes), minlength=codebook_size).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def perplexity(codes: np.ndarray, codebook_size: int) -> float:
    """exp of the entropy (nats) of code usage: K for uniform usage, 1 for one code."""
    usage = code_usage(codes, codebook_size)
    used = usage[usage > 0]
    return float(np.exp(-(used * np.log(used)).sum()))


def active_codes(codes: np.ndarray, codebook_size: int) -> dict:
    count = int((np.bincount(np.asarray(codes), minlength=codebook_size) > 0).sum())
    return {"count": count, "share": count / codebook_size}


def reconstruction_mse(scaled: np.ndarray, reconstruction: np.ndarray) -> float:
    return float(np.mean((np.asarray(scaled, dtype=np.float64) - reconstruction) ** 2))


def calinski_harabasz(scaled: np.ndarray, codes: np.ndarray) -> float | None:
    """None when fewer than two codes are used (the score is undefined)."""
    if len(np.unique(codes)) < 2:
        return None
    return float(calinski_harabasz_score(scaled, codes))


def kruskal_across_types(values: np.ndarray, codes: np.ndarray) -> dict:
    """Kruskal–Wallis H and p of one variable across the used codes (NaN-free rows only).
    A constant variable or a single group gives H = 0, p = 1 (no evidence of a difference)."""
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    values, codes = values[keep], np.asarray(codes)[keep]
    groups = [values[codes == c] for c in np.unique(codes)]
    if len(groups) < 2 or np.ptp(values) == 0:
        return {"H": 0.0, "p": 1.0}
    result = kruskal(*groups)
    return {"H": float(result.statistic), "p": float(result.pvalue)}


def conversion_separation(converted: np.ndarray, codes: np.ndarray, codebook_size: int) -> dict:
    """How differently types convert: per-type rates, their share-weighted standard deviation
    and range, and the AUC of scoring each buyer with their type's conversion rate (in-sample)."""
    converted = np.asarray(converted, dtype=np.float64)
    counts = np.bincount(codes, minlength=codebook_size)
    sums = np.bincount(codes, weights=converted, minlength=codebook_size)
    used = counts > 0
    rates = np.divide(sums, counts, out=np.full(codebook_size, np.nan), where=used)
    overall = converted.mean()
    weighted_std = float(np.sqrt(np.sum(counts[used] * (rates[used] - overall) ** 2) / counts.sum()))
    auc = None
    if 0 < overall < 1:
        auc = float(roc_auc_score(converted, rates[codes]))
    return {
        "overall_rate": float(overall),
        "rate_std_between_types": weighted_std,
        "rate_min": float(np.nanmin(rates)),
        "rate_max": float(np.nanmax(rates)),
        "auc_from_type_rate": auc,
        "kruskal": kruskal_across_types(converted, codes),
    }


def shop_mixes(shop_ids: np.ndarray, codes: np.ndarray, codebook_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shop ids, buyer counts, K-column matrix of code shares), shops sorted by id."""
    shops, shop_index = np.unique(np.asarray(shop_ids), return_inverse=True)
    counts = np.zeros((len(shops), codebook_size))
    np.add.at(counts, (shop_index, np.asarray(codes)), 1.0)
    n_buyers = counts.sum(1)
    return shops, n_buyers.astype(np.int64), counts / n_buyers[:, None]


def mean_pairwise_jsd(mixes: np.ndarray, chunk: int = 256) -> float | None:
    """Mean JS divergence in bits over all unordered pairs of rows of `mixes` (None if < 2 rows)."""
    n = len(mixes)
    if n < 2:
        return None
    total = 0.0
    for start in range(0, n, chunk):
        block = mixes[start : start + chunk]
        distance = jensenshannon(block[:, None, :], mixes[None, :, :], base=2, axis=-1)
        total += float(np.nansum(distance**2))
    # The sum covers ordered pairs and the zero diagonal.
    return total / (n * (n - 1))


def split_half_jsd(shop_ids: np.ndarray, codes: np.ndarray, codebook_size: int, eligible: np.ndarray, seed: int = 0) -> float | None:
    """Mean over `eligible` shops of the JS divergence (bits) between the code mixes of two random
    halves of the shop's buyers: how far apart mixes drawn from the same shop already are."""
    rng = np.random.default_rng(seed)
    shop_ids, codes = np.asarray(shop_ids), np.asarray(codes)
    order = np.argsort(shop_ids, kind="stable")
    sorted_shops = shop_ids[order]
    divergences = []
    for shop in eligible:
        lo, hi = np.searchsorted(sorted_shops, shop, "left"), np.searchsorted(sorted_shops, shop, "right")
        members = codes[order[lo:hi]][rng.permutation(hi - lo)]
        half = len(members) // 2
        a = code_usage(members[:half], codebook_size)
        b = code_usage(members[half:], codebook_size)
        divergences.append(jensenshannon(a, b, base=2) ** 2)
    return float(np.mean(divergences)) if divergences else None


def shop_divergences(shop_ids: np.ndarray, codes: np.ndarray, codebook_size: int, min_shop_buyers: int = 30, seed: int = 0) -> dict:
    shops, n_buyers, mixes = shop_mixes(shop_ids, codes, codebook_size)
    eligible = n_buyers >= min_shop_buyers
    return {
        "min_shop_buyers": min_shop_buyers,
        "eligible_shops": int(eligible.sum()),
        "between_shops_jsd_bits": mean_pairwise_jsd(mixes[eligible]),
        "split_half_jsd_bits": split_half_jsd(shop_ids, codes, codebook_size, shops[eligible], seed),
    }


def assignment_metrics(
    scaled: np.ndarray,
    codes: np.ndarray,
    codebook_size: int,
    *,
    feature_names: list[str],
    reconstruction: np.ndarray | None = None,
    converted: np.ndarray | None = None,
    shop_ids: np.ndarray | None = None,
    min_shop_buyers: int = 30,
    seed: int = 0,
) -> dict:
    """Every metric above for one assignment of rows to codes, as a JSON-ready dict."""
    codes = np.asarray(codes, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics: dict = {
            "n_buyers": int(len(codes)),
            "codebook_size": codebook_size,
            "reconstruction_mse": None if reconstruction is None else reconstruction_mse(scaled, reconstruction),
            "perplexity": perplexity(codes, codebook_size),
            "active_codes": active_codes(codes, codebook_size),
            "calinski_harabasz": calinski_harabasz(scaled, codes),
            "kruskal_per_feature": {name: kruskal_across_types(scaled[:, j], codes) for j, name in enumerate(feature_names)},
        }
        if converted is not None:
            metrics["conversion"] = conversion_separation(converted, codes, codebook_size)
        if shop_ids is not None:
            metrics["shops"] = shop_divergences(shop_ids, codes, codebook_size, min_shop_buyers, seed)
    return metrics
