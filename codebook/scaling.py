"""Log transforms and robust scaling of buyer features, fitted on training buyers and saved with
the codebook artifact so that `assign` transforms new buyers exactly as training did."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from codebook.schema import FeatureColumn

# Scaled values are clipped: a handful of extreme buyers (bots, resellers) must not stretch the
# space every other buyer lives in.
CLIP = 8.0


@dataclass
class FeatureScaler:
    columns: list[FeatureColumn]
    center: list[float]
    scale: list[float]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: list[FeatureColumn]) -> "FeatureScaler":
        values = _transformed(frame, columns)
        center = np.nanmedian(values, axis=0)
        q75, q25 = np.nanpercentile(values, [75, 25], axis=0)
        spread = q75 - q25
        # Columns whose middle half is constant (sparse counts) fall back to the std, then to 1.
        fallback = np.nanstd(values, axis=0)
        spread = np.where(spread > 1e-9, spread, np.where(fallback > 1e-9, fallback, 1.0))
        center = np.nan_to_num(center)
        return cls(list(columns), center.tolist(), spread.tolist())

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return a float32 matrix, one row per buyer, one column per feature, missing values 0."""
        missing = [c.name for c in self.columns if c.name not in frame.columns]
        if missing:
            raise ValueError(f"buyer features lack columns the codebook was trained on: {missing}")
        values = _transformed(frame, self.columns)
        scaled = (values - np.asarray(self.center)) / np.asarray(self.scale)
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=CLIP, neginf=-CLIP)
        return np.clip(scaled, -CLIP, CLIP).astype(np.float32)

    def to_dict(self) -> dict:
        return {"columns": [asdict(c) for c in self.columns], "center": self.center, "scale": self.scale}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureScaler":
        return cls([FeatureColumn(**c) for c in data["columns"]], data["center"], data["scale"])


def _transformed(frame: pd.DataFrame, columns: list[FeatureColumn]) -> np.ndarray:
    values = frame[[c.name for c in columns]].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    for j, column in enumerate(columns):
        if column.transform == "log1p":
            values[:, j] = np.log1p(np.clip(values[:, j], 0, None))
        elif column.transform != "none":
            raise ValueError(f"unknown transform {column.transform!r} for feature {column.name!r}")
    return values
