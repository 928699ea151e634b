"""The synthetic generator as an oracle: the whole pipeline recovers the buyer types it planted.

Planted types are propensities (how often a buyer of that type carts, buys, searches, …); whether
one buyer happened to buy in the window is an outcome that splits every type in two. So recovery
is measured with the strict browse-only features — no purchase information — and K equal to the
number of planted types.
"""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from codebook.features import build_features
from codebook.ingest import ingest
from codebook.synthetic import BUYER_TYPES, SyntheticConfig, generate_synthetic, read_truth
from codebook.train import TrainConfig, train_codebook


@pytest.fixture(scope="module")
def synthetic_features(tmp_path_factory):
    work = tmp_path_factory.mktemp("planted")
    log = generate_synthetic(work / "log", SyntheticConfig(n_shops=6, buyers_per_shop=300, seed=11))
    ingest([log.events_csv], work / "run")
    features = work / "run" / "buyer_features.parquet"
    build_features(work / "run" / "events.parquet", work / "run" / "catalog.parquet", features,
                   browse_only=True, embedding="hashed", progress=False)
    truth, _ = read_truth(work / "log")
    return features, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vqvae_recovers_planted_types(synthetic_features, seed):
    """Blind recovery for several training seeds: the ARI must not hinge on a lucky init."""
    features, truth = synthetic_features
    result = train_codebook(features, None, TrainConfig(codebook_size=len(BUYER_TYPES), seed=seed, progress=False))
    import pyarrow.parquet as pq

    keys = pq.read_table(features, columns=["shop_id", "buyer_id"]).to_pandas()
    planted = keys.merge(truth, on=["shop_id", "buyer_id"], how="left")["planted_type"]
    assert planted.notna().all()
    ari = adjusted_rand_score(planted, result.codes)
    assert ari >= 0.8, f"adjusted Rand index {ari:.3f} < 0.8"
    # Every planted type ends up mostly in one code of its own.
    crosstab = np.array([[np.sum((planted == t.name) & (result.codes == c)) for c in range(len(BUYER_TYPES))]
                         for t in BUYER_TYPES])
    assert len(set(crosstab.argmax(axis=1))) >= len(BUYER_TYPES) - 1
