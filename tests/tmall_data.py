"""The real Tmall 2014 log beside the checkout (../shared/data), cut to a few brands for tests."""

from pathlib import Path

import pandas as pd
import pytest

TMALL_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tmall_brand_2014" / "t_alibaba_data.csv"


def ingested_tmall_brands(out: Path, pick_brands) -> Path:
    """Ingest the brands `pick_brands(visitors)` chooses (visitors: distinct users per brand, most
    first) into out/ingested; skips the test where the real data is absent."""
    if not TMALL_CSV.is_file():
        pytest.skip(f"real data not present: {TMALL_CSV}")
    from codebook.ingest import IngestConfig, ingest

    raw = pd.read_csv(TMALL_CSV)
    visitors = raw.groupby("brand_id")["user_id"].nunique().sort_values(ascending=False)
    raw[raw["brand_id"].isin(pick_brands(visitors))].to_csv(out / "t_alibaba_data.csv", index=False)
    ingest([out / "t_alibaba_data.csv"], out / "ingested", IngestConfig())
    return out / "ingested"
