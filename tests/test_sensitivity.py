"""harness.eval.sensitivity and `simpersona sensitivity` on a small ingested Tmall subset (real data)."""

import json
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from harness.cli import app
from tmall_data import ingested_tmall_brands
from harness.eval.sensitivity import (
    CELL_FILE,
    SensitivityConfig,
    SensitivityError,
    cell_dir,
    code_purity,
    run_sensitivity,
)

SIZES, WEIGHTS, FOLDS, MIN_BUYERS = (4,), (0.25, 1.0), 2, 40


def test_code_purity_is_the_share_of_buyers_at_their_codes_majority_outcome():
    codes = np.array([0, 0, 0, 0, 1, 1])
    converted = np.array([1, 0, 0, 0, 1, 1])
    assert code_purity(codes, converted) == pytest.approx((3 + 2) / 6)
    assert code_purity(np.zeros(4, dtype=int), np.array([1, 0, 0, 0])) == pytest.approx(0.75)


@pytest.fixture(scope="module")
def tmall_subset(tmp_path_factory):
    """A few large brands (eligible with >= MIN_BUYERS buyers) and a few dozen small ones (training only)."""
    return ingested_tmall_brands(
        tmp_path_factory.mktemp("tmall_sensitivity"),
        lambda visitors: list(visitors[visitors >= 60].index[10:14]) + list(visitors[(visitors >= 8) & (visitors < 30)].index[:30]),
    )


@pytest.mark.slow
def test_sensitivity_on_a_tmall_subset(tmall_subset, tmp_path, monkeypatch):
    out = tmp_path / "sensitivity"
    config = SensitivityConfig(out_dir=out, input_dir=tmall_subset, sizes=SIZES, commitment_weights=WEIGHTS,
                               folds=FOLDS, min_buyers=MIN_BUYERS, codebook_epochs=2, progress=False)
    result = run_sensitivity(config)

    eligible = result["eligible_shops"]
    assert eligible >= FOLDS
    # One row per (K, weight), each over every eligible shop, each shop scored exactly once.
    assert [(s["size"], s["commitment_weight"]) for s in result["settings"]] == [(k, w) for k in SIZES for w in WEIGHTS]
    for setting in result["settings"]:
        assert setting["shops"] == eligible and 0.0 <= setting["alignment"] <= 1.0
        cells = [json.loads((cell_dir(config, setting["size"], setting["commitment_weight"], k) / CELL_FILE).read_text())
                 for k in range(FOLDS)]
        scored = Counter(row["shop"] for cell in cells for row in cell["rows"])
        assert len(scored) == eligible and set(scored.values()) == {1}
        for k, cell in enumerate(cells):
            # The fold's codebook never saw its held-out shops: none is in its shop mix.
            mix = json.loads((cell_dir(config, setting["size"], setting["commitment_weight"], k) / "codebook" / "shop_mix.json").read_text())
            assert mix["shops"] and not set(mix["shops"]) & set(cell["held_out"])
            assert 1 <= cell["codes_used"] <= setting["size"] and 0.5 <= cell["purity"] <= 1.0
    assert result["global_rate"]["shops"] == eligible
    table = (out / "sensitivity.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + len(SIZES) * len(WEIGHTS) + 1  # header, settings, global

    # A rerun (through the command) reuses every saved cell: no codebook is trained again.
    def no_training(*args, **kwargs):
        raise AssertionError("a saved cell was recomputed")

    monkeypatch.setattr("codebook.train.train_codebook", no_training)
    cli = CliRunner().invoke(app, ["sensitivity", "--input", str(tmall_subset), "--out", str(out),
                                   "--folds", str(FOLDS), "--sizes", ",".join(map(str, SIZES)),
                                   "--commitment", ",".join(f"{w:g}" for w in WEIGHTS),
                                   "--min-buyers", str(MIN_BUYERS), "--epochs", "2"])
    assert cli.exit_code == 0, cli.output
    again = json.loads((out / "sensitivity.json").read_text())
    assert [s["alignment"] for s in again["settings"]] == [s["alignment"] for s in result["settings"]]

    # A saved cell from other settings is an error, never silently reused.
    with pytest.raises(SensitivityError):
        run_sensitivity(SensitivityConfig(out_dir=out, input_dir=tmall_subset, sizes=SIZES, commitment_weights=WEIGHTS,
                                          folds=FOLDS, min_buyers=MIN_BUYERS, codebook_epochs=3, progress=False))
