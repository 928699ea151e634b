"""Two evaluations of the same held-out shops, compared shop by shop.

`simpersona compare BASE OTHER` reads the summary.json of two `simpersona evaluate` directories (or
of two seeds' seed<s>/ directories) and, per protocol and policy that both scored, pairs their
alignment terms shop by shop: the mean difference OTHER − BASE with a 95 % bootstrap interval over
the shops, and how many shops came closer, went further or stayed equal. Pairing removes the spread
between shops that two separate intervals carry, so a change of setting (codebook size, guidance,
temperature) is judged on the shops themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.eval.evaluate import SUMMARY_FILE
from harness.eval.metrics import bootstrap_interval


class CompareError(ValueError):
    pass


def read_evaluation(directory: Path) -> dict:
    """The summary.json of an evaluation directory, with a clear error when it is not one."""
    path = Path(directory) / SUMMARY_FILE
    if not path.is_file():
        raise CompareError(f"{directory}: no {SUMMARY_FILE}; expected the --out directory of `simpersona evaluate` "
                           "(or one of its seed<s>/ directories)")
    summary = json.loads(path.read_text())
    if "protocols" not in summary:
        raise CompareError(f"{path}: not an evaluation summary (no 'protocols'); `compare` reads `simpersona evaluate`'s")
    return summary


def shop_alignments(result: dict, policy: str) -> dict[str, float]:
    """Shop → alignment term of one policy in one protocol's result."""
    return {row["shop"]: row["alignment"] for row in result["shops"] if row["policy"] == policy}


def paired_difference(base: dict[str, float], other: dict[str, float], seed: int = 0) -> dict:
    """OTHER − BASE over the shops both scored: mean, 95 % bootstrap interval, closer/further/equal
    (and how many shops each scored, for a comparison of evaluations that do not hold out the same)."""
    shops = sorted(set(base) & set(other))
    differences = np.array([other[shop] - base[shop] for shop in shops])
    return {
        "shops": len(shops),
        "base_shops": len(base),
        "other_shops": len(other),
        "base": float(np.mean([base[shop] for shop in shops])) if shops else None,
        "other": float(np.mean([other[shop] for shop in shops])) if shops else None,
        "difference": float(differences.mean()) if shops else None,
        "difference_ci": bootstrap_interval(list(differences), seed),
        "closer": int((differences > 0).sum()),
        "further": int((differences < 0).sum()),
        "equal": int((differences == 0).sum()),
    }


def compare_evaluations(base_dir: Path, other_dir: Path) -> dict:
    """Per protocol and policy both evaluations scored, the paired difference over their common shops."""
    base, other = read_evaluation(base_dir), read_evaluation(other_dir)
    comparison: dict = {}
    for protocol in sorted(set(base["protocols"]) & set(other["protocols"])):
        base_result, other_result = base["protocols"][protocol], other["protocols"][protocol]
        for policy in base_result["policies"]:
            if policy not in other_result["policies"]:
                continue
            paired = paired_difference(shop_alignments(base_result, policy), shop_alignments(other_result, policy))
            if paired["shops"]:
                comparison.setdefault(protocol, {})[policy] = paired
    if not comparison:
        raise CompareError(f"{base_dir} and {other_dir}: no held-out shop scored by the same protocol and policy in both; "
                           "compare evaluations of the same shops (the same --folds and first --seed)")
    return comparison


def comparison_line(protocol: str, policy: str, paired: dict) -> str:
    """'paper · persona: 137 shops, 0.918 → 0.896, Δ -0.022 [-0.045, -0.002]; OTHER closer in 22, …'."""
    low, high = paired["difference_ci"]
    scored = ("" if paired["base_shops"] == paired["other_shops"] == paired["shops"]
              else f" (of {paired['base_shops']} in BASE, {paired['other_shops']} in OTHER)")
    return (f"{protocol} · {policy}: {paired['shops']} shops{scored}, {paired['base']:.3f} → {paired['other']:.3f}, "
            f"Δ {paired['difference']:+.3f} [{low:+.3f}, {high:+.3f}]; OTHER closer in {paired['closer']}, "
            f"further in {paired['further']}, equal in {paired['equal']}")
