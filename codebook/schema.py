"""The canonical file formats that flow between modules (see DESIGN.md, "File formats").

Every module that reads or writes events, catalogs, rejected rows or buyer features takes the
column names and Arrow types from here, so a format change happens in one place.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# The buyer's funnel, in the order a buyer normally moves through it. `add_to_wishlist`
# extends DESIGN.md's list: Tmall and Taobao logs record favourites, a real signal of intent,
# and mapping them to views would lose it.
EVENT_TYPES: tuple[str, ...] = (
    "page_view",
    "product_view",
    "search",
    "add_to_wishlist",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "purchase",
)

# Event types whose presence reveals that the buyer bought; the browse-only protocol removes
# every feature derived from them.
PURCHASE_EVENT_TYPES: frozenset[str] = frozenset({"checkout", "purchase"})

EVENTS_SCHEMA = pa.schema(
    [
        ("shop_id", pa.string()),
        ("buyer_id", pa.string()),
        ("session_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("event_type", pa.string()),
        ("product_id", pa.string()),
        ("category", pa.string()),
        ("price", pa.float64()),
        ("query", pa.string()),
        # Line number in the source file (1 = first data row), so every event can be traced
        # back to its raw row and same-day events keep their recorded order.
        ("source_row", pa.int64()),
    ]
)

CATALOG_SCHEMA = pa.schema(
    [
        ("shop_id", pa.string()),
        ("product_id", pa.string()),
        ("title", pa.string()),
        ("category", pa.string()),
        ("brand", pa.string()),
        ("price", pa.float64()),
    ]
)

# Rejected rows keep the raw line as text so nothing is lost, plus where and why.
REJECTED_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("reason", pa.string()),
        ("raw", pa.string()),
    ]
)

# Timestamp resolution of a log. Day-level logs store midnight UTC and say so here; nothing
# downstream may read a time of day from them.
TS_RESOLUTIONS = ("second", "day")

EVENTS_FILE = "events.parquet"
CATALOG_FILE = "catalog.parquet"
REJECTED_FILE = "rejected.parquet"
INGEST_META_FILE = "ingest.json"
FEATURES_FILE = "buyer_features.parquet"

# Key columns of buyer_features.parquet; every other column is a FeatureColumn or an info column.
BUYER_KEY = ("shop_id", "buyer_id")

# Columns of buyer_features.parquet that describe the buyer but are never model inputs:
# labels for types.json and for evaluation.
INFO_COLUMNS = ("converted", "n_events", "n_purchases", "top_category")


@dataclass(frozen=True)
class FeatureColumn:
    """One model-input column of buyer_features.parquet and how to treat it.

    transform: "log1p" for heavy-tailed counts and durations, "none" for shares and ratios.
    group: "behavior", "funnel", "price", "diversity", "time" or "embedding".
    purchase_derived: True when the value depends on checkout/purchase events; the browse-only
        feature set leaves these out.
    decisive: True for the behaviourally decisive features (funnel and conversion) that the
        behaviour-aware loss weights up.
    """

    name: str
    group: str
    transform: str = "none"
    purchase_derived: bool = False
    decisive: bool = False


_FEATURE_META_KEY = b"simpersona.features"


def write_features(table: pa.Table, path: Path, columns: list[FeatureColumn], meta: dict) -> None:
    """Write buyer_features.parquet with the column descriptions stored in the file's metadata."""
    payload = {"columns": [asdict(c) for c in columns], **meta}
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[_FEATURE_META_KEY] = json.dumps(payload).encode()
    pq.write_table(table.replace_schema_metadata(schema_meta), path)


def read_feature_meta(path: Path) -> tuple[list[FeatureColumn], dict]:
    """Return (feature columns, other metadata) stored by write_features."""
    raw = pq.read_schema(path).metadata or {}
    if _FEATURE_META_KEY not in raw:
        raise ValueError(f"{path}: not a SimPersona buyer_features file (no feature metadata)")
    payload = json.loads(raw[_FEATURE_META_KEY])
    columns = [FeatureColumn(**c) for c in payload.pop("columns")]
    return columns, payload
