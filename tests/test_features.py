"""codebook.features and codebook.embeddings: hand-computed values on a tiny hand-made log, the
browse-only protocol, day-level logs, the embedding kinds, and one real dataset."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codebook import embeddings
from codebook.features import FEATURES, build_features
from codebook.scaling import FeatureScaler
from codebook.schema import (
    CATALOG_FILE,
    CATALOG_SCHEMA,
    EVENTS_FILE,
    EVENTS_SCHEMA,
    FEATURES_FILE,
    INFO_COLUMNS,
    INGEST_META_FILE,
    read_feature_meta,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def at(day: int, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(2024, 1, day, hh, mm, ss, tzinfo=timezone.utc)


# 2024-01-06 is a Saturday, 2024-01-08 a Monday.
# (shop, buyer, session, ts, event_type, product, category, price)
EVENTS = [
    ("s1", "a", "a1", at(6, 10, 0, 0), "product_view", "p1", "c1", 10.0),
    ("s1", "a", "a1", at(6, 10, 0, 30), "product_view", "p2", "c1", 20.0),
    ("s1", "a", "a1", at(6, 10, 1, 30), "product_view", "p1", "c1", 10.0),
    ("s1", "a", "a1", at(6, 10, 2, 0), "add_to_cart", "p1", "c1", 10.0),
    ("s1", "a", "a1", at(6, 10, 3, 0), "purchase", "p1", "c1", 10.0),
    ("s1", "a", "a2", at(8, 20, 0, 0), "product_view", "p3", "c2", 30.0),
    ("s1", "a", "a2", at(8, 20, 0, 10), "search", None, None, None),
    ("s1", "b", "b1", at(8, 3, 0, 0), "product_view", "p1", "c1", 10.0),
    ("s1", "b", "b1", at(8, 3, 0, 20), "product_view", "p1", "c1", 10.0),
    # no session id: the buyer's day becomes the session; a cart with no logged view
    ("s1", "c", None, at(7, 15, 0, 0), "add_to_cart", "p2", "c1", 20.0),
    ("s1", "c", None, at(7, 15, 5, 0), "remove_from_cart", "p2", "c1", 20.0),
    # the same buyer id in another shop is another row
    ("s2", "a", "a9", at(8, 12, 0, 0), "page_view", None, None, None),
]

CATALOG = [
    ("s1", "p1", "red running shoes for men", "c1", "acme", 10.0),
    ("s1", "p2", "blue running shoes for women", "c1", "acme", 20.0),
    ("s1", "p3", "stainless steel kitchen knife set", "c2", "chef", 30.0),
]


def write_log(folder: Path, events, *, ts_resolution="second", title_source="text", catalog=CATALOG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        dict(zip(["shop_id", "buyer_id", "session_id", "ts", "event_type", "product_id", "category", "price"], e))
        | {"query": None, "source_row": i + 1}
        for i, e in enumerate(events)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA), folder / EVENTS_FILE)
    pq.write_table(
        pa.Table.from_pylist([dict(zip(CATALOG_SCHEMA.names, c)) for c in catalog], schema=CATALOG_SCHEMA),
        folder / CATALOG_FILE,
    )
    meta = {"ts_resolution": ts_resolution, "title_source": title_source, "format": "test", "shop_field": None}
    (folder / INGEST_META_FILE).write_text(json.dumps(meta))
    return folder


def build(folder: Path, **options) -> tuple[pd.DataFrame, list, dict]:
    out = folder / FEATURES_FILE
    options = {"embedding": "none", "progress": False, **options}
    build_features(folder / EVENTS_FILE, folder / CATALOG_FILE, out, **options)
    frame = pd.read_parquet(out).set_index(["shop_id", "buyer_id"])
    columns, meta = read_feature_meta(out)
    return frame, columns, meta


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    folder = write_log(tmp_path_factory.mktemp("hand"), EVENTS)
    return build(folder)


def test_one_row_per_shop_and_buyer(hand_made):
    frame, _, _ = hand_made
    assert sorted(frame.index) == [("s1", "a"), ("s1", "b"), ("s1", "c"), ("s2", "a")]


def test_counts_shares_and_sessions(hand_made):
    frame, _, _ = hand_made
    a = frame.loc[("s1", "a")]
    assert a["event_count"] == 7
    assert a["count_product_view"] == 4 and a["count_purchase"] == 1 and a["count_search"] == 1
    assert a["share_product_view"] == pytest.approx(4 / 7)
    assert a["share_add_to_cart"] == pytest.approx(1 / 7)
    assert a["session_count"] == 2
    assert a["events_per_session_mean"] == pytest.approx(3.5)
    assert a["events_per_session_max"] == 5
    assert a["active_days"] == 2
    # buyer c has no session ids: one day, one session
    assert frame.loc[("s1", "c"), "session_count"] == 1


def test_gaps_durations_and_time_of_day(hand_made):
    frame, _, _ = hand_made
    a = frame.loc[("s1", "a")]
    # gaps within visits: a1 30, 60, 30, 60 s; a2 10 s (the 2-day pause between visits is no gap)
    assert a["gap_median_s"] == pytest.approx(30)
    assert a["gap_mean_s"] == pytest.approx(38)
    assert a["session_duration_mean_s"] == pytest.approx((180 + 10) / 2)
    assert a["share_morning"] == pytest.approx(5 / 7)
    assert a["share_evening"] == pytest.approx(2 / 7)
    assert a["share_night"] == 0
    assert a["weekend_share"] == pytest.approx(5 / 7)
    assert a["tenure_days"] == pytest.approx(2 + (10 * 3600 + 10) / 86400)
    assert a["recency_days"] == pytest.approx(0)
    assert frame.loc[("s1", "b"), "recency_days"] == pytest.approx((16 * 3600 + 59 * 60 + 50) / 86400)
    assert frame.loc[("s1", "b"), "share_night"] == 1
    # a single-event buyer has no gaps: missing, not zero
    assert math.isnan(frame.loc[("s2", "a"), "gap_median_s"])


def test_funnel_with_zero_denominators(hand_made):
    frame, columns, _ = hand_made
    a, b, c = (frame.loc[("s1", x)] for x in "abc")
    assert a["view_to_cart"] == pytest.approx(0.25)
    assert a["cart_to_purchase"] == 1
    assert a["view_to_purchase"] == pytest.approx(0.25)
    assert a["purchase_session_share"] == pytest.approx(0.5)
    assert b["view_to_cart"] == 0 and b["cart_to_purchase"] == 0  # 0/2 and 0/0
    assert c["view_to_cart"] == 1  # carted with no logged view
    decisive = {col.name for col in columns if col.decisive}
    assert {"view_to_cart", "cart_to_purchase", "view_to_purchase", "purchase_session_share"} <= decisive


def test_prices_and_diversity(hand_made):
    frame, _, _ = hand_made
    a = frame.loc[("s1", "a")]
    assert (a["viewed_price_mean"], a["viewed_price_median"], a["viewed_price_max"]) == (17.5, 15.0, 30.0)
    assert a["carted_price_mean"] == 10 and a["carted_price_max"] == 10
    assert a["distinct_products"] == 3 and a["distinct_categories"] == 2
    assert a["product_entropy"] == pytest.approx(1.5 * math.log(2))  # views p1 p1 p2 p3
    assert a["category_entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert a["repeat_view_share"] == pytest.approx(0.25)
    b = frame.loc[("s1", "b")]
    assert b["product_entropy"] == 0 and b["repeat_view_share"] == pytest.approx(0.5)
    assert math.isnan(b["carted_price_mean"])


def test_info_columns(hand_made):
    frame, columns, meta = hand_made
    a = frame.loc[("s1", "a")]
    assert (a["converted"], a["n_events"], a["n_purchases"], a["top_category"]) == (1, 7, 1, "c1")
    assert frame.loc[("s1", "b"), "converted"] == 0
    names = {col.name for col in columns}
    assert not names & set(INFO_COLUMNS)
    assert meta["ts_resolution"] == "second" and meta["browse_only"] is False


def test_purchase_flags(hand_made):
    _, columns, _ = hand_made
    flagged = {col.name for col in columns if col.purchase_derived}
    assert flagged == {
        "count_checkout", "share_checkout", "count_purchase", "share_purchase",
        "cart_to_purchase", "view_to_purchase", "purchase_session_share",
    }


def test_browse_only_has_no_purchase_information(tmp_path):
    more_purchases = EVENTS + [
        ("s1", "a", "a2", at(8, 20, 1, 0), "checkout", "p3", "c2", 30.0),
        ("s1", "a", "a2", at(8, 20, 2, 0), "purchase", "p3", "c2", 30.0),
        ("s1", "b", "b2", at(9, 23, 0, 0), "purchase", "p1", "c1", 10.0),  # new visit, new day, later horizon
        ("s1", "d", "d1", at(9, 23, 30, 0), "purchase", "p1", "c1", 10.0),  # a buyer who only bought
    ]
    base, columns, meta = build(write_log(tmp_path / "base", EVENTS), browse_only=True, embedding="hashed")
    more, _, more_meta = build(write_log(tmp_path / "more", more_purchases), browse_only=True, embedding="hashed")

    assert meta["browse_only"] is True
    assert not [col.name for col in columns if col.purchase_derived]
    assert not {"count_purchase", "share_purchase", "cart_to_purchase", "purchase_session_share"} & set(base.columns)
    features = [col.name for col in columns]
    pd.testing.assert_frame_equal(base[features], more[features])  # same rows, same values
    assert more_meta["rows_without_browsing"] == 1 and ("s1", "d") not in more.index
    # purchases are still labels
    assert more.loc[("s1", "b"), "converted"] == 1 and base.loc[("s1", "b"), "converted"] == 0
    # and, shares are over browsing events only: a's 6 non-purchase events
    assert base.loc[("s1", "a"), "share_product_view"] == pytest.approx(4 / 6)


def test_full_feature_set_does_see_added_purchases(tmp_path):
    """Counterpart of the leakage test: without browse-only the same change does move features."""
    more = EVENTS + [("s1", "b", "b2", at(9, 23, 0, 0), "purchase", "p1", "c1", 10.0)]
    base, _, _ = build(write_log(tmp_path / "base", EVENTS))
    changed, _, _ = build(write_log(tmp_path / "more", more))
    assert changed.loc[("s1", "b"), "session_count"] == 2 != base.loc[("s1", "b"), "session_count"]
    assert changed.loc[("s1", "b"), "view_to_purchase"] == pytest.approx(0.5)


def test_day_level_log_has_no_clock_features(tmp_path):
    midnight = [e[:3] + (e[3].replace(hour=0, minute=0, second=0),) + e[4:] for e in EVENTS]
    frame, columns, meta = build(write_log(tmp_path, midnight, ts_resolution="day"))
    names = {col.name for col in columns}
    for absent in ["gap_median_s", "gap_mean_s", "session_duration_mean_s", "share_night", "share_morning",
                   "share_afternoon", "share_evening"]:
        assert absent not in names and absent not in frame.columns
    assert {"weekend_share", "active_days", "tenure_days"} <= names
    assert frame.loc[("s1", "a"), "tenure_days"] == 2
    assert meta["ts_resolution"] == "day"


def test_log_without_prices_or_categories(tmp_path):
    bare = [e[:6] + (None, None) for e in EVENTS]
    frame, columns, meta = build(write_log(tmp_path, bare, title_source="ids"), embedding="auto")
    names = {col.name for col in columns}
    assert not {n for n in names if "price" in n}
    assert "category_entropy" not in names and "distinct_products" in names
    assert meta["embedding"]["kind"] == "none"  # auto: no text, no categories


def test_bad_event_type_is_reported(tmp_path):
    folder = write_log(tmp_path, EVENTS[:1] + [("s1", "a", "a1", at(6, 11), "wishlist", "p1", "c1", 1.0)])
    with pytest.raises(ValueError, match=r"events\.parquet: 1 events have an unknown event_type \(first at source_row 2"):
        build(folder)


def test_event_without_buyer_is_reported(tmp_path):
    folder = write_log(tmp_path, EVENTS[:2] + [("s1", None, "a1", at(6, 11), "search", None, None, None)])
    with pytest.raises(ValueError, match=r"1 events lack shop_id, buyer_id, ts or event_type \(first at source_row 3\)"):
        build(folder)


def test_text_embeddings_similarity_and_cache(tmp_path, monkeypatch):
    views = [
        ("s1", "men", "m1", at(6, 10), "product_view", "p1", "c1", 10.0),
        ("s1", "women", "w1", at(6, 11), "product_view", "p2", "c1", 20.0),
        ("s1", "cook", "k1", at(6, 12), "product_view", "p3", "c2", 30.0),
    ]
    folder = write_log(tmp_path / "log", views)
    cache = tmp_path / "cache"
    frame, columns, meta = build(folder, embedding="auto", cache_dir=cache)
    assert meta["embedding"] == {"kind": "text", "dim": 16, "requested": "auto"}
    emb = [c.name for c in columns if c.group == "embedding"]
    assert emb == [f"emb_{j:02d}" for j in range(16)]
    vec = {buyer: frame.loc[("s1", buyer), emb].to_numpy(float) for buyer in ["men", "women", "cook"]}
    assert np.linalg.norm(vec["men"] - vec["women"]) < np.linalg.norm(vec["men"] - vec["cook"])
    assert np.linalg.norm(vec["men"] - vec["women"]) < np.linalg.norm(vec["women"] - vec["cook"])

    def no_model():
        raise AssertionError("the model was loaded although every title is cached")

    monkeypatch.setattr(embeddings, "load_text_model", no_model)
    result = build_features(folder / EVENTS_FILE, folder / CATALOG_FILE, tmp_path / "again.parquet",
                            embedding="text", cache_dir=cache, progress=False)
    assert result.embedding_stats["cache_hits"] == 3 and result.embedding_stats["encoded"] == 0
    again = pd.read_parquet(tmp_path / "again.parquet").set_index(["shop_id", "buyer_id"])
    np.testing.assert_allclose(again[emb].to_numpy(), frame[emb].to_numpy(), rtol=1e-6)


def test_hashed_embeddings_are_deterministic(tmp_path):
    frame, columns, meta = build(write_log(tmp_path, EVENTS, title_source="ids"), embedding="auto", embedding_dim=8)
    assert meta["embedding"]["kind"] == "hashed"
    emb = [c.name for c in columns if c.group == "embedding"]
    # b viewed only category c1 (twice): its mean is exactly c1's vector
    c1 = embeddings.hashed_vectors(["category:c1"], 8)[0]
    np.testing.assert_allclose(frame.loc[("s1", "b"), emb].to_numpy(float), c1, rtol=1e-6)
    assert not np.allclose(c1, embeddings.hashed_vectors(["category:c2"], 8)[0])
    # buyers with no product views get a zero vector
    assert not frame.loc[("s1", "c"), emb].any()
    # the same vector in a fresh interpreter (no salted hash, no global RNG state)
    code = "from codebook.embeddings import hashed_vectors; print(hashed_vectors(['category:c1'], 8)[0].tolist())"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    np.testing.assert_allclose(json.loads(fresh), c1)


def test_random_projection_is_fixed_and_keeps_norms():
    projection = embeddings.random_projection(384, 16)
    np.testing.assert_array_equal(projection, embeddings.random_projection(384, 16))
    unit = np.eye(384)[:50]
    norms = np.linalg.norm(unit @ embeddings.random_projection(384, 256), axis=1)
    assert abs(norms.mean() - 1) < 0.05


def test_scaler_round_trip(tmp_path):
    folder = write_log(tmp_path, EVENTS, title_source="ids")
    frame, columns, _ = build(folder, embedding="hashed")
    scaler = FeatureScaler.fit(frame, columns)
    restored = FeatureScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    matrix = restored.transform(frame)
    assert matrix.shape == (len(frame), len(columns))
    assert np.isfinite(matrix).all()
    np.testing.assert_array_equal(matrix, scaler.transform(frame))


def test_every_spec_column_has_a_known_group_and_transform():
    for spec in FEATURES:
        assert spec.column.group in {"behavior", "funnel", "price", "diversity", "time"}
        assert spec.column.transform in {"log1p", "none"}


def test_real_rees46_head(tmp_path):
    source = DATA / "rees46_multicategory_2019oct" / "2019-Oct_head17k.csv"
    if not source.exists():
        pytest.skip(f"real data not present at {source}")
    ingest = pytest.importorskip("codebook.ingest", reason="codebook.ingest not written yet").ingest
    out = tmp_path / "rees46"
    ingest([source], out)
    result = build_features(out / EVENTS_FILE, out / CATALOG_FILE, out / FEATURES_FILE,
                            embedding="hashed", progress=False)
    import duckdb

    pairs = duckdb.sql(
        f"SELECT count(*) FROM (SELECT DISTINCT shop_id, buyer_id FROM read_parquet('{out / EVENTS_FILE}'))"
    ).fetchall()[0][0]
    frame = pd.read_parquet(out / FEATURES_FILE)
    assert result.rows == len(frame) == pairs > 1000
    assert not frame.duplicated(["shop_id", "buyer_id"]).any()
    assert frame["n_events"].sum() == pq.read_metadata(out / EVENTS_FILE).num_rows
    assert 0 < frame["converted"].mean() < 0.2
    assert {"gap_median_s", "viewed_price_mean", "category_entropy"} <= set(result.feature_names)
