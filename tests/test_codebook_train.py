"""Training the codebook end to end: artifact files, save -> load -> assign, browse-only
protocol, planted-type recovery, metrics on hand-made examples, baselines, real data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.metrics import adjusted_rand_score

from codebook.baselines import compare_baselines, gmm_assign
from codebook.metrics import active_codes, mean_pairwise_jsd, perplexity, shop_divergences, split_half_jsd
from codebook.schema import FeatureColumn, write_features
from codebook.train import TrainConfig, load_codebook, read_features, train_codebook

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

COLUMNS = [
    FeatureColumn("event_count", "behavior", "log1p"),
    FeatureColumn("share_search", "behavior"),
    FeatureColumn("view_to_cart", "funnel", decisive=True),
    FeatureColumn("session_count", "behavior", "log1p"),
    FeatureColumn("count_purchase", "behavior", "log1p", purchase_derived=True, decisive=True),
    FeatureColumn("weekend_share", "time"),
]
BROWSE_COLUMNS = [c for c in COLUMNS if not c.purchase_derived]

# Planted types: (event_count, share_search, view_to_cart, session_count, purchases, weekend, p(buy))
PLANTED = np.array(
    [
        [3, 0.05, 0.05, 1, 0, 0.2, 0.02],  # one quick look
        [60, 0.50, 0.10, 2, 0, 0.3, 0.10],  # heavy searcher
        [20, 0.05, 0.60, 3, 1, 0.5, 0.60],  # carts and buys
        [150, 0.10, 0.30, 12, 3, 0.8, 0.35],  # loyal regular
    ]
)

FAST = TrainConfig(codebook_size=8, latent_dim=4, hidden_dim=32, epochs=4, warmup_steps=60, batch_size=64, progress=False)


def planted_frame(per_type: int = 250, n_shops: int = 8, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    types = np.repeat(np.arange(len(PLANTED)), per_type)
    means = PLANTED[types]
    frame = pd.DataFrame(
        {
            "event_count": rng.poisson(means[:, 0]) + 1,
            "share_search": np.clip(means[:, 1] + rng.normal(0, 0.03, len(types)), 0, 1),
            "view_to_cart": np.clip(means[:, 2] + rng.normal(0, 0.03, len(types)), 0, 1),
            "session_count": rng.poisson(means[:, 3]) + 1,
            "count_purchase": rng.poisson(means[:, 4]),
            "weekend_share": np.clip(means[:, 5] + rng.normal(0, 0.05, len(types)), 0, 1),
        }
    )
    # Shops differ in their type mix: shop s prefers type s % 4.
    shop = np.where(rng.random(len(types)) < 0.5, types * 2 + rng.integers(0, 2, len(types)), rng.integers(0, n_shops, len(types)))
    frame.insert(0, "shop_id", [f"shop{s}" for s in shop])
    frame.insert(1, "buyer_id", [f"b{i}" for i in range(len(types))])
    frame["converted"] = rng.random(len(types)) < means[:, 6]
    frame["n_events"] = frame["event_count"]
    frame["n_purchases"] = frame["count_purchase"]
    frame["top_category"] = np.array(["shoes", "books", "phones", "toys"])[types]
    return frame, types


def write_planted(tmp_path: Path, browse_only: bool = False) -> tuple[Path, np.ndarray]:
    frame, types = planted_frame()
    columns = BROWSE_COLUMNS if browse_only else COLUMNS
    if browse_only:
        frame = frame.drop(columns=["count_purchase"])
    path = tmp_path / "buyer_features.parquet"
    write_features(pa.Table.from_pandas(frame, preserve_index=False), path, columns, {"browse_only": browse_only})
    return path, types


def test_artifact_round_trip_gives_identical_codes(tmp_path):
    features, _ = write_planted(tmp_path)
    out = tmp_path / "codebook"
    result = train_codebook(features, out, replace(FAST, seed=7))
    for name in ("model.safetensors", "config.json", "features.json", "shop_mix.json", "types.json", "metrics.json"):
        assert (out / name).is_file(), name

    config = json.loads((out / "config.json").read_text())
    assert config["train"]["seed"] == 7 and config["train"]["codebook_size"] == 8

    frame, _, _ = read_features(features)
    codebook = load_codebook(out)
    np.testing.assert_array_equal(codebook.assign(frame), result.codes)
    # Row order and batching do not change a buyer's code.
    shuffled = frame.sample(frac=1.0, random_state=1)
    np.testing.assert_array_equal(codebook.assign(shuffled, batch_size=37), result.codes[shuffled.index.to_numpy()])

    shop_mix = json.loads((out / "shop_mix.json").read_text())
    assert sum(s["n_buyers"] for s in shop_mix["shops"].values()) == len(frame)
    for shop in shop_mix["shops"].values():
        assert len(shop["probs"]) == 8 and abs(sum(shop["probs"]) - 1) < 1e-5  # stored to 6 decimals

    types = json.loads((out / "types.json").read_text())["types"]
    assert len(types) == 8 and abs(sum(t["share"] for t in types) - 1) < 1e-9
    used = [t for t in types if t["n_buyers"] > 0]
    assert all(t["summary"] and t["summary"] != "unused" for t in used)
    assert all(0 <= t["conversion_rate"] <= 1 and t["top_categories"] for t in used)
    assert json.loads((out / "shop_mix.json").read_text()) == json.loads(json.dumps(result.shop_mix))

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("reconstruction_mse", "perplexity", "active_codes", "calinski_harabasz", "kruskal_per_feature", "conversion", "shops"):
        assert key in metrics, key


def test_training_is_reproducible_with_the_same_seed():
    frame, _ = planted_frame(per_type=80)
    a = train_codebook(frame, None, FAST, columns=COLUMNS)
    b = train_codebook(frame, None, FAST, columns=COLUMNS)
    np.testing.assert_array_equal(a.codes, b.codes)


def test_planted_types_are_recovered():
    frame, types = planted_frame()
    # A well-trained autoencoder warm-up makes the k-means++ init land on the planted types.
    config = replace(FAST, codebook_size=len(PLANTED), warmup_steps=300, epochs=8)
    result = train_codebook(frame, None, config, columns=COLUMNS)
    assert adjusted_rand_score(types, result.codes) >= 0.8
    summaries = {t["summary"] for t in result.types["types"]}
    assert len(summaries) == len(PLANTED), f"planted types should read differently: {summaries}"


def test_browse_only_features_turn_the_conversion_head_off(tmp_path):
    features, _ = write_planted(tmp_path, browse_only=True)
    result = train_codebook(features, None, replace(FAST, epochs=1))
    assert result.codebook.model.conversion_head is None
    assert result.metrics["conversion_head"] is False and result.metrics["browse_only"] is True
    # Conversion is still measured (it is a label, not an input).
    assert "conversion" in result.metrics

    full, _ = planted_frame(per_type=50)
    with_head = train_codebook(full, None, replace(FAST, epochs=1), columns=COLUMNS, meta={"browse_only": False})
    assert with_head.codebook.model.conversion_head is not None


def test_clear_errors_for_bad_input():
    frame, _ = planted_frame(per_type=20)
    with pytest.raises(ValueError, match="view_to_cart"):
        train_codebook(frame.drop(columns=["view_to_cart"]), None, FAST, columns=COLUMNS)
    with pytest.raises(ValueError, match="converted"):
        train_codebook(frame.drop(columns=["converted"]), None, replace(FAST, conversion_head=True), columns=COLUMNS)
    with pytest.raises(FileNotFoundError, match="not a codebook artifact"):
        load_codebook(Path("/nonexistent/codebook"))


def test_metrics_on_hand_made_examples():
    uniform = np.array([0, 1, 2, 3] * 5)
    assert perplexity(uniform, 4) == pytest.approx(4.0)
    assert perplexity(np.zeros(10, dtype=int), 8) == pytest.approx(1.0)
    assert active_codes(uniform, 8) == {"count": 4, "share": 0.5}

    mix = np.array([0.5, 0.25, 0.25, 0.0])
    assert mean_pairwise_jsd(np.stack([mix, mix, mix])) == pytest.approx(0.0, abs=1e-12)
    # Disjoint supports are 1 bit apart.
    assert mean_pairwise_jsd(np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(1.0)

    # Two shops with the same buyers in the same order of codes: halves identical -> 0.
    shops = np.array(["a"] * 4 + ["b"] * 4)
    codes = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    assert split_half_jsd(shops, codes, 4, np.array(["a", "b"])) == pytest.approx(0.0)
    divergences = shop_divergences(shops, codes, 4, min_shop_buyers=4)
    assert divergences["eligible_shops"] == 2
    assert divergences["between_shops_jsd_bits"] == pytest.approx(1.0)


def test_compare_baselines_measures_all_three_methods():
    frame, types = planted_frame(per_type=100)
    config = replace(FAST, codebook_size=4)
    comparison = compare_baselines(frame, config, columns=COLUMNS)
    assert set(comparison.metrics) == {"vq-vae", "k-means", "gmm"}
    assert len(comparison.table.columns) == 4
    for metrics in comparison.metrics.values():
        assert metrics["active_codes"]["count"] >= 2 and metrics["reconstruction_mse"] is not None


def test_the_gmm_baseline_fits_float32_features_whose_variance_float32_would_cancel():
    rng = np.random.default_rng(0)
    scaled = rng.normal(size=(2000, 3)).astype(np.float32)
    scaled[:, 2] = 300.0 + (rng.random(2000) < 0.5) * 1e-3  # far out, with a spread float32 cannot hold
    codes, reconstruction = gmm_assign(scaled, 4)
    assert codes.shape == (2000,) and reconstruction.shape == (2000, 3)


@pytest.mark.slow
def test_real_tmall_pipeline_trains_a_codebook(tmp_path):
    source = DATA / "tmall_brand_2014" / "t_alibaba_data.csv"
    if not source.exists():
        pytest.skip(f"real data not present at {source}")
    ingest = pytest.importorskip("codebook.ingest")
    features_module = pytest.importorskip("codebook.features")
    events_dir = tmp_path / "ingested"
    ingest.ingest(source, events_dir)
    features = tmp_path / "buyer_features.parquet"
    features_module.build_features(events_dir / "events.parquet", events_dir / "catalog.parquet", features, progress=False)
    # The default training (K=32): the figures below are the bar for real data.
    result = train_codebook(features, tmp_path / "codebook", TrainConfig(progress=False))
    metrics = result.metrics
    assert metrics["n_buyers"] > 50_000
    assert metrics["active_codes"]["share"] >= 0.9
    assert metrics["perplexity"] >= 8
    assert metrics["conversion"]["kruskal"]["p"] < 1e-3
    np.testing.assert_array_equal(load_codebook(tmp_path / "codebook").assign(read_features(features)[0]), result.codes)
