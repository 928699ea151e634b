"""The learning commands end to end through `simpersona`, on a small synthetic log."""

import json

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from codebook.synthetic import SyntheticConfig, generate_synthetic
from harness.cli import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_ingest_features_train_assign(tmp_path):
    log = generate_synthetic(tmp_path / "log", SyntheticConfig(n_shops=3, buyers_per_shop=80, seed=3))
    run = tmp_path / "run"
    output = invoke("ingest", str(log.events_csv), "--out", str(run)).output
    assert "rows rejected" in output and (run / "events.parquet").is_file()

    invoke("features", str(run), "--embedding", "hashed")
    features = run / "buyer_features.parquet"
    output = invoke("train-codebook", str(features), "--out", str(run / "codebook"), "--k", "8",
                    "--epochs", "3", "--compare").output
    assert "Buyer types" in output and "k-means" in output and "gmm" in output
    for name in ("model.safetensors", "config.json", "features.json", "shop_mix.json", "types.json", "metrics.json"):
        assert (run / "codebook" / name).is_file(), name
    assert set(json.loads((run / "codebook" / "shop_mix.json").read_text())["shops"]) == {
        "synthetic-shop-01", "synthetic-shop-02", "synthetic-shop-03"}

    invoke("assign", "--codebook", str(run / "codebook"), str(features), "--out", str(tmp_path / "codes.parquet"))
    codes = pq.read_table(tmp_path / "codes.parquet").to_pandas()
    assert len(codes) == pq.read_metadata(features).num_rows
    assert codes["code"].between(0, 7).all() and codes["code"].nunique() > 1


def test_unknown_log_format_is_a_clear_error(tmp_path):
    bad = tmp_path / "weird.csv"
    bad.write_text("foo,bar\n1,2\n")
    result = runner.invoke(app, ["ingest", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "foo" in result.output and "tmall_brand_2014" in result.output


def test_demo_runs_on_the_embedded_synthetic_default(tmp_path):
    output = invoke("demo", "--synthetic", "--types-only", "--k", "8", "--out", str(tmp_path / "demo")).output
    assert "SYNTHETIC" in output and "adjusted Rand index" in output
    ari = float(output.split("adjusted Rand index")[1].split()[0])
    assert np.isfinite(ari) and ari >= 0.8
