"""codebook.synthetic: deterministic, ingests cleanly, and its planted types really differ."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import cross_val_score
from sklearn.preprocessing import StandardScaler

from codebook.ingest import ingest
from codebook.synthetic import (
    BUYER_TYPES,
    SyntheticConfig,
    generate_synthetic,
    read_truth,
)

SMALL = SyntheticConfig(n_shops=4, buyers_per_shop=150, products_per_shop=60, seed=11)


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    log = generate_synthetic(out, SMALL)
    result = ingest(log.events_csv, out / "ingested")
    return log, result


def per_pair_behaviour(events_path) -> pd.DataFrame:
    return duckdb.sql(f"""
        SELECT shop_id, buyer_id,
               count(*) AS events,
               count(DISTINCT session_id) AS sessions,
               avg((event_type = 'search')::INT) AS search_share,
               avg((event_type = 'add_to_cart')::INT) AS cart_share,
               avg((event_type = 'remove_from_cart')::INT) AS remove_share,
               avg((event_type = 'add_to_wishlist')::INT) AS wishlist_share,
               max((event_type = 'purchase')::INT) AS converted,
               avg(price) AS mean_price,
               avg(cos(hour(ts) / 24 * 2 * pi())) AS hour_cos,
               avg(sin(hour(ts) / 24 * 2 * pi())) AS hour_sin,
               avg((dayofweek(ts) IN (0, 6))::INT) AS weekend_share
        FROM read_parquet('{events_path}') GROUP BY ALL
    """).df()


def test_same_seed_same_bytes_other_seed_other_log(tmp_path):
    config = SyntheticConfig(n_shops=2, buyers_per_shop=40, seed=3)
    first = generate_synthetic(tmp_path / "a", config)
    again = generate_synthetic(tmp_path / "b", config)
    other = generate_synthetic(tmp_path / "c", SyntheticConfig(n_shops=2, buyers_per_shop=40,
                                                               seed=4))
    for name in ("events_csv", "truth_parquet", "truth_json"):
        assert getattr(first, name).read_bytes() == getattr(again, name).read_bytes()
    assert first.events_csv.read_bytes() != other.events_csv.read_bytes()


def test_output_ingests_cleanly_as_the_generic_format(small_log):
    log, result = small_log
    assert result.format == "generic"
    assert result.rows_read == log.n_events == result.rows_kept and result.rows_rejected == 0
    assert result.shops == SMALL.n_shops and result.buyer_shop_pairs == log.n_pairs
    assert result.title_source == "text"
    assert "session ids" in result.session_rule
    truth, meta = read_truth(log.events_csv.parent)
    assert len(truth) == log.n_pairs
    assert truth.shop_id.str.startswith("synthetic-shop-").all()
    assert truth.buyer_id.str.startswith("synthetic-buyer-").all()
    assert meta["synthetic"] is True and len(meta["types"]) == len(BUYER_TYPES) >= 6
    for mix in meta["shop_mix"].values():
        assert abs(sum(mix.values()) - 1) < 1e-4
    catalog = pd.read_parquet(result.catalog_path)
    assert catalog.title.str.fullmatch(r"[A-Z][a-z]+ [\w-]+ [\w -]+").all()
    assert (catalog.price > 0).all()


def test_default_size_is_demo_sized():
    config = SyntheticConfig()
    assert config.n_shops == 12 and config.n_shops * config.buyers_per_shop == 6_000


def test_planted_types_differ_as_described(small_log):
    log, result = small_log
    truth, _ = read_truth(log.events_csv.parent)
    pairs = per_pair_behaviour(result.events_path).merge(truth, on=["shop_id", "buyer_id"])
    assert len(pairs) == len(truth)
    means = pairs.groupby("planted_type").mean(numeric_only=True)
    assert means.search_share.idxmax() == "searcher"
    assert means.sessions.idxmax() == "loyal_repeat_buyer"
    assert means.mean_price.idxmin() == "bargain_hunter"
    assert means.wishlist_share.idxmax() == "comparison_researcher"
    assert means.remove_share.idxmax() == "cart_abandoner"
    assert means.cart_share.idxmin() == "window_shopper"
    assert means.weekend_share.idxmax() in ("bargain_hunter", "window_shopper")
    assert means.converted["decisive_buyer"] > 0.8 > 0.2 > means.converted["cart_abandoner"]
    assert means.events.idxmin() == "decisive_buyer"


def test_planted_types_are_recoverable_from_behaviour(small_log):
    """An oracle check: simple behaviour features tell the types apart, but not perfectly."""
    log, result = small_log
    truth, _ = read_truth(log.events_csv.parent)
    pairs = per_pair_behaviour(result.events_path).merge(truth, on=["shop_id", "buyer_id"])
    features = pairs.drop(columns=["shop_id", "buyer_id", "planted_type"]).fillna(0.0)
    features[["events", "sessions", "mean_price"]] = np.log1p(
        features[["events", "sessions", "mean_price"]]
    )
    x = StandardScaler().fit_transform(features)
    accuracy = cross_val_score(LinearDiscriminantAnalysis(), x, pairs.planted_type, cv=4).mean()
    assert accuracy > 0.9
    # noisy, not identical copies: buyers of one type differ in their counts
    assert pairs.groupby("planted_type").events.std().min() > 1.0
