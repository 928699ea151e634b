"""`simpersona compare`: two evaluations of the same held-out shops, paired shop by shop."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.eval.compare import CompareError, compare_evaluations, comparison_line, paired_difference
from harness.eval.metrics import alignment_term, conversion_alignment


def write_evaluation(directory, rates: dict[str, dict[str, float]], real: dict[str, float]):
    """A summary.json of the shape `simpersona evaluate` writes: shop rows per policy (rates: policy → shop → CR)."""
    rows = [{"policy": policy, "shop": shop, "cr_sim": rate, "cr_real": real[shop], "alignment": alignment_term(rate, real[shop])}
            for policy, shops in rates.items() for shop, rate in shops.items()]
    policies = {policy: {"alignment": conversion_alignment(list(shops.values()), [real[s] for s in shops])}
                for policy, shops in rates.items()}
    directory.mkdir(parents=True)
    (directory / "summary.json").write_text(json.dumps({"protocols": {"paper": {"policies": policies, "shops": rows}}}))
    return directory


REAL = {"a": 0.10, "b": 0.05, "c": 0.20, "d": 0.0}


def test_the_paired_difference_is_the_difference_of_the_two_alignments_on_the_same_shops(tmp_path):
    base = write_evaluation(tmp_path / "k16", {"persona": {"a": 0.10, "b": 0.08, "c": 0.15, "d": 0.0},
                                               "global_rate": {s: 0.08 for s in REAL}}, REAL)
    other = write_evaluation(tmp_path / "k32", {"persona": {"a": 0.09, "b": 0.05, "c": 0.30, "d": 0.0},
                                                "global_rate": {s: 0.08 for s in REAL}, "neutral": {"a": 0.1}}, REAL)
    comparison = compare_evaluations(base, other)
    assert set(comparison["paper"]) == {"persona", "global_rate"}  # only the policies both scored
    persona = comparison["paper"]["persona"]
    base_summary = json.loads((base / "summary.json").read_text())["protocols"]["paper"]["policies"]
    other_summary = json.loads((other / "summary.json").read_text())["protocols"]["paper"]["policies"]
    assert persona["difference"] == pytest.approx(other_summary["persona"]["alignment"] - base_summary["persona"]["alignment"])
    assert (persona["closer"], persona["further"], persona["equal"]) == (1, 2, 1)  # b closer; a, c further; d equal
    assert persona["difference_ci"][0] <= persona["difference"] <= persona["difference_ci"][1]
    assert comparison["paper"]["global_rate"]["difference"] == 0.0 and comparison["paper"]["global_rate"]["equal"] == 4


def test_only_shops_both_scored_are_paired_and_the_counts_say_so():
    paired = paired_difference({"a": 0.5, "b": 0.9, "c": 1.0}, {"b": 0.7, "c": 1.0, "e": 0.2})
    assert (paired["shops"], paired["base_shops"], paired["other_shops"]) == (2, 3, 3)
    assert paired["difference"] == pytest.approx(np.mean([-0.2, 0.0]))
    line = comparison_line("paper", "persona", paired)
    assert "paper · persona: 2 shops (of 3 in BASE, 3 in OTHER), 0.950 → 0.850, Δ -0.100" in line


def test_compare_refuses_what_is_not_two_evaluations_of_the_same_shops(tmp_path):
    base = write_evaluation(tmp_path / "one", {"persona": {"a": 0.1}}, REAL)
    other = write_evaluation(tmp_path / "two", {"persona": {"b": 0.1}}, REAL)
    with pytest.raises(CompareError, match="no held-out shop scored by the same protocol and policy in both"):
        compare_evaluations(base, other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match=r"empty: no summary.json; expected the --out directory of `simpersona evaluate`"):
        compare_evaluations(base, tmp_path / "empty")
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"buyers": 10, "per_type": {}}))  # a simulation's summary
    with pytest.raises(CompareError, match="not an evaluation summary"):
        compare_evaluations(base, run)


def test_the_compare_command_prints_each_policys_paired_difference(tmp_path):
    base = write_evaluation(tmp_path / "k16", {"persona": {"a": 0.10, "b": 0.08, "c": 0.15, "d": 0.0}}, REAL)
    other = write_evaluation(tmp_path / "k32", {"persona": {"a": 0.09, "b": 0.05, "c": 0.30, "d": 0.0}}, REAL)
    result = CliRunner().invoke(app, ["compare", str(base), str(other)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    difference = compare_evaluations(base, other)["paper"]["persona"]["difference"]
    assert re.search(rf"paper · persona: 4 shops, \S+ → \S+, Δ {re.escape(f'{difference:+.3f}')} \[\S+, \S+\]; "
                     r"OTHER closer in 1, further in 2, equal in 1", text)
    result = CliRunner().invoke(app, ["compare", str(base), str(tmp_path)])
    assert result.exit_code != 0 and "no summary.json" in " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
