"""FeatureScaler: log transform + robust scaling, fitted once and reused identically."""

import numpy as np
import pandas as pd
import pytest

from codebook.scaling import CLIP, FeatureScaler
from codebook.schema import FeatureColumn

COLUMNS = [FeatureColumn("views", "behavior", "log1p"), FeatureColumn("cart_share", "funnel", "none")]


def test_robust_scaling_centres_on_median():
    frame = pd.DataFrame({"views": [0, 1, 3, 7, 1000], "cart_share": [0.0, 0.1, 0.2, 0.3, 0.4]})
    scaled = FeatureScaler.fit(frame, COLUMNS).transform(frame)
    assert scaled.dtype == np.float32
    assert scaled[2, 0] == pytest.approx(0.0)   # the median row maps to 0
    assert scaled[2, 1] == pytest.approx(0.0)
    assert scaled[4, 0] <= CLIP                  # the outlier is clipped, not stretching the space


def test_round_trip_and_missing_values():
    frame = pd.DataFrame({"views": [1, 2, np.nan, 8], "cart_share": [0.5, 0.5, 0.5, np.nan]})
    scaler = FeatureScaler.fit(frame, COLUMNS)
    again = FeatureScaler.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(scaler.transform(frame), again.transform(frame))
    assert np.isfinite(again.transform(frame)).all()


def test_missing_column_is_a_clear_error():
    scaler = FeatureScaler.fit(pd.DataFrame({"views": [1, 2], "cart_share": [0, 1]}), COLUMNS)
    with pytest.raises(ValueError, match="cart_share"):
        scaler.transform(pd.DataFrame({"views": [1]}))


EMBEDDING = [FeatureColumn(f"emb_{i:02d}", "embedding", "none") for i in range(16)]


def frame_with_embedding(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {"views": rng.poisson(5, n), "cart_share": rng.uniform(0, 1, n)}
    data.update({c.name: rng.normal(0, 3, n) for c in EMBEDDING})
    return pd.DataFrame(data)


def test_embedding_block_weighs_like_one_feature():
    """16 embedding columns, each scaled to unit spread, would count 16 times in distances; the
    balanced block carries the squared spread of ONE behavioural column in total."""
    frame = frame_with_embedding()
    scaled = FeatureScaler.fit(frame, COLUMNS + EMBEDDING).transform(frame)
    unbalanced = FeatureScaler.fit(frame, COLUMNS + EMBEDDING, balanced_groups=()).transform(frame)

    def iqr(x):
        q75, q25 = np.percentile(x, [75, 25], axis=0)
        return q75 - q25

    block_spread = np.sqrt((iqr(scaled[:, 2:]) ** 2).sum())
    assert block_spread == pytest.approx(iqr(scaled[:, 1]), rel=1e-3)  # cart_share: plain uniform
    np.testing.assert_allclose(scaled[:, 2:], unbalanced[:, 2:] / 4.0, rtol=1e-5)  # 1/sqrt(16)
    np.testing.assert_array_equal(scaled[:, :2], unbalanced[:, :2])  # behavioural columns untouched


def test_group_weights_are_saved_with_the_scaler():
    frame = frame_with_embedding()
    scaler = FeatureScaler.fit(frame, COLUMNS + EMBEDDING)
    assert scaler.weight == [1.0, 1.0] + [0.25] * 16
    again = FeatureScaler.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(scaler.transform(frame), again.transform(frame))


def test_scaler_saved_before_group_weights_loads_with_unit_weights():
    frame = frame_with_embedding()
    saved = FeatureScaler.fit(frame, COLUMNS + EMBEDDING, balanced_groups=()).to_dict()
    saved.pop("weight")  # as written by the earlier version
    old = FeatureScaler.from_dict(saved)
    assert old.weight == [1.0] * 18
    np.testing.assert_array_equal(
        old.transform(frame), FeatureScaler.fit(frame, COLUMNS + EMBEDDING, balanced_groups=()).transform(frame)
    )
