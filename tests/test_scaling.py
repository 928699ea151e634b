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
