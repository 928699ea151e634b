"""Log transforms and robust scaling of buyer features, fitted on training buyers and saved with
the codebook artifact so that `assign` transforms new buyers exactly as training did.

Every column is robust-scaled to unit spread, so in Euclidean distances every column counts
alike. That is right for behavioural features, each a separate signal, but wrong for a block of
columns that together encode ONE signal: the 16 columns of the product-embedding block would
outweigh the ~30 behavioural columns together although they only say "what the buyer looked
at". Columns of a *balanced group* (`balanced_groups`, default the "embedding" block) are
therefore multiplied by 1/sqrt(group size) after scaling, so that the whole block carries the
variance of one feature. The per-column weights are saved with the scaler.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from codebook.schema import FeatureColumn

# Scaled values are clipped: a handful of extreme buyers (bots, resellers) must not stretch the
# space every other buyer lives in.
CLIP = 8.0

# Feature groups whose columns jointly encode one signal and together weigh like one feature.
BALANCED_GROUPS: tuple[str, ...] = ("embedding",)


@dataclass
class FeatureScaler:
    columns: list[FeatureColumn]
    center: list[float]
    scale: list[float]
    # Multiplier applied after scaling and clipping: 1/sqrt(group size) in balanced groups, else 1.
    weight: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.weight:  # artifacts written before group balancing: every column weighs 1
            self.weight = [1.0] * len(self.columns)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, columns: list[FeatureColumn], *, balanced_groups: tuple[str, ...] = BALANCED_GROUPS
    ) -> "FeatureScaler":
        """Fit centre and spread per column. `balanced_groups`: groups whose columns are scaled
        by 1/sqrt(number of columns in the group), so the group weighs like one feature
        (pass () to weigh every column alike)."""
        values = _transformed(frame, columns)
        center = np.nanmedian(values, axis=0)
        q75, q25 = np.nanpercentile(values, [75, 25], axis=0)
        spread = q75 - q25
        # Columns whose middle half is constant (sparse counts) fall back to the std, then to 1.
        fallback = np.nanstd(values, axis=0)
        spread = np.where(spread > 1e-9, spread, np.where(fallback > 1e-9, fallback, 1.0))
        center = np.nan_to_num(center)
        return cls(list(columns), center.tolist(), spread.tolist(), group_weights(columns, balanced_groups))

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return a float32 matrix, one row per buyer, one column per feature, missing values 0."""
        missing = [c.name for c in self.columns if c.name not in frame.columns]
        if missing:
            raise ValueError(f"buyer features lack columns the codebook was trained on: {missing}")
        values = _transformed(frame, self.columns)
        scaled = (values - np.asarray(self.center)) / np.asarray(self.scale)
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=CLIP, neginf=-CLIP)
        return (np.clip(scaled, -CLIP, CLIP) * np.asarray(self.weight)).astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "columns": [asdict(c) for c in self.columns],
            "center": self.center,
            "scale": self.scale,
            "weight": self.weight,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureScaler":
        return cls([FeatureColumn(**c) for c in data["columns"]], data["center"], data["scale"], data.get("weight", []))


def group_weights(columns: list[FeatureColumn], balanced_groups: tuple[str, ...]) -> list[float]:
    """1/sqrt(group size) for columns of a balanced group, 1 for every other column."""
    sizes = {g: sum(c.group == g for c in columns) for g in balanced_groups}
    return [1.0 / math.sqrt(sizes[c.group]) if c.group in sizes else 1.0 for c in columns]


def _transformed(frame: pd.DataFrame, columns: list[FeatureColumn]) -> np.ndarray:
    values = frame[[c.name for c in columns]].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    for j, column in enumerate(columns):
        if column.transform == "log1p":
            values[:, j] = np.log1p(np.clip(values[:, j], 0, None))
        elif column.transform != "none":
            raise ValueError(f"unknown transform {column.transform!r} for feature {column.name!r}")
    return values
