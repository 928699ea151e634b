"""The raw clickstream formats that `simpersona ingest` understands, written down as data.

One `LogFormat` per public schema in /work/shared/data plus the documented generic schema
(see codebook/ingest.py). A format says how to recognise a file (its header, or for headerless
files the shape of the first row), which source column feeds which canonical field, how event
codes map onto codebook.schema.EVENT_TYPES, which column stands in for a shop and which others
may, how timestamps are parsed and at what resolution, and how catalog titles are composed.

Timestamps, ids and titles are turned into SQL by codebook/ingest.py; here they are only named
(`ts_parser`, `title_recipe`) so that a new format is a new entry in FORMATS, not new code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

# A shop_field value that puts every event into one shop named SINGLE_SHOP_ID, for logs of a
# single store (REES46 is one store) when no column should split it.
SINGLE_SHOP = "single"
SINGLE_SHOP_ID = "all"

# Event-code spellings accepted by the generic schema (case-insensitive), beside the canonical
# names in codebook.schema.EVENT_TYPES themselves.
GENERIC_EVENT_ALIASES: dict[str, str] = {
    "view": "product_view",
    "click": "product_view",
    "pv": "product_view",
    "detail": "product_view",
    "page": "page_view",
    "pageview": "page_view",
    "cart": "add_to_cart",
    "add": "add_to_cart",
    "remove": "remove_from_cart",
    "fav": "add_to_wishlist",
    "favorite": "add_to_wishlist",
    "favourite": "add_to_wishlist",
    "wishlist": "add_to_wishlist",
    "buy": "purchase",
    "order": "purchase",
    "transaction": "purchase",
}


@dataclass(frozen=True)
class LogFormat:
    """How one raw log schema maps onto events.parquet and catalog.parquet.

    columns: the file's columns in order (the header, or the names given to a headerless file).
        Empty for the generic format, whose columns are read by name from the header.
    has_header: False for files whose first line is already data; those are recognised by
        `first_row_patterns` (one regular expression per column, matched in full).
    fields: canonical field -> source column, for buyer, product, category, category_text,
        brand, price, session, query and title. A missing key means the log lacks that field.
    event_column / event_codes: the column holding the action and its raw code -> EVENT_TYPES.
    ts_columns / ts_parser: source columns of the timestamp and the name of the parser in
        codebook.ingest.TS_PARSERS that turns them into a UTC timestamp.
    ts_resolution: "second" or "day"; day-level logs store midnight UTC, sessions are buyer-days.
    year: the year of day-level dates written without one (month and day only).
    shop_field / shop_fields: the default stand-in for a shop and every allowed alternative
        (SINGLE_SHOP is always allowed); shop_note says how good a stand-in the default is.
    title_recipe: how catalog titles are composed ("text", "ids", "brand_only", "given").
    float_id_columns: id columns written as floats ("2661.0") whose ".0" is dropped.
    product_template: for logs without item ids, how a product id is composed from fields.
    session_scope: "buyer" when shops are parts of one site (a visit spans them),
        "shop_buyer" when each shop is its own store.
    """

    name: str
    description: str
    columns: tuple[str, ...]
    has_header: bool
    fields: dict[str, str]
    event_column: str
    event_codes: dict[str, str]
    ts_columns: tuple[str, ...]
    ts_parser: str
    ts_resolution: str
    shop_field: str
    shop_fields: tuple[str, ...]
    shop_note: str
    title_recipe: str
    year: int | None = None
    first_row_patterns: tuple[str, ...] = ()
    float_id_columns: tuple[str, ...] = ()
    product_template: str | None = None
    catalog_note: str = ""
    session_scope: str = "buyer"
    required_columns: tuple[str, ...] = ()
    optional_columns: tuple[str, ...] = ()
    case_insensitive_events: bool = False

    def allowed_shop_fields(self) -> tuple[str, ...]:
        return (*self.shop_fields, SINGLE_SHOP)

    def matches_header(self, header: list[str]) -> bool:
        if self.required_columns:  # generic: named columns in any order
            names = set(header)
            known = set(self.required_columns) | set(self.optional_columns)
            return set(self.required_columns) <= names and names <= known
        return self.has_header and tuple(header) == self.columns

    def matches_first_row(self, row: list[str]) -> bool:
        if self.has_header or len(row) != len(self.first_row_patterns):
            return False
        return all(re.fullmatch(p, v) for p, v in zip(self.first_row_patterns, row))

    def expected_columns_text(self) -> str:
        if self.required_columns:
            return (
                f"required {', '.join(self.required_columns)}; "
                f"optional {', '.join(self.optional_columns)}"
            )
        prefix = "" if self.has_header else "no header: "
        return prefix + ",".join(self.columns)


_TMALL_ACTIONS = {"0": "product_view", "1": "purchase", "2": "add_to_wishlist", "3": "add_to_cart"}
_IJCAI_ACTIONS = {"0": "product_view", "1": "add_to_cart", "2": "purchase", "3": "add_to_wishlist"}
_IJCAI_FIELDS = {
    "buyer": "user_id", "product": "item_id", "category": "cat_id", "brand": "brand_id",
}
_IJCAI_SHOP_NOTE = "seller_id is the real IJCAI-15 merchant id"
_IJCAI_COLUMNS = (
    "user_id", "item_id", "cat_id", "seller_id", "brand_id", "time_stamp", "action_type",
)
_INT = r"\d+"

TMALL_BRAND_2014 = LogFormat(
    name="tmall_brand_2014",
    description="Tmall 2014 recommendation contest t_alibaba_data.csv (brand level, m-d dates)",
    columns=("user_id", "brand_id", "type", "visit_datetime"),
    has_header=True,
    fields={"buyer": "user_id", "brand": "brand_id"},
    event_column="type",
    event_codes=_TMALL_ACTIONS,
    ts_columns=("visit_datetime",),
    ts_parser="month_dash_day",
    ts_resolution="day",
    year=2013,
    shop_field="brand_id",
    shop_fields=("brand_id",),
    shop_note="brand_id stands in for a storefront (a Tmall brand usually sells through its own "
    "flagship store); it is not a literal shop id",
    title_recipe="brand_only",
    product_template="brand",
    catalog_note="the log has no item ids, categories or prices: the catalog holds one "
    "pseudo-product per brand (product_id 'brand:<brand_id>') and events point at it",
)

IJCAI15_USER_LOG = LogFormat(
    name="ijcai15_user_log",
    description="IJCAI-15 repeat buyers user_log_format1.csv (mmdd dates)",
    columns=_IJCAI_COLUMNS,
    has_header=True,
    fields=_IJCAI_FIELDS,
    event_column="action_type",
    event_codes=_IJCAI_ACTIONS,
    ts_columns=("time_stamp",),
    ts_parser="mmdd",
    ts_resolution="day",
    year=2013,
    shop_field="seller_id",
    shop_fields=("seller_id", "brand_id", "cat_id"),
    shop_note=_IJCAI_SHOP_NOTE,
    title_recipe="ids",
    catalog_note="no item names or prices: titles are composed from item, category and brand ids",
)

# The Carmelo1997 copy as saved by pandas: an unnamed index column, brand_id as a float and
# time_stamp without its leading zero ("829").
IJCAI15_USER_LOG_PANDAS = replace(
    IJCAI15_USER_LOG,
    name="ijcai15_user_log_pandas",
    description="IJCAI-15 user_log_format1 saved by pandas (index column, float brand_id)",
    columns=("", *_IJCAI_COLUMNS),
    float_id_columns=("brand_id",),
)

# The Xiamen University dblab teaching copy: no header, month and day split, plus three
# columns that dblab randomised per row (age_range, gender, province) and that are ignored.
IJCAI15_DBLAB = replace(
    IJCAI15_USER_LOG,
    name="ijcai15_dblab",
    description="IJCAI-15 user_log in XMU dblab format (no header, month,day columns)",
    columns=(
        "user_id", "item_id", "cat_id", "seller_id", "brand_id", "month", "day",
        "action_type", "age_range", "gender", "province",
    ),
    has_header=False,
    first_row_patterns=(
        _INT, _INT, _INT, _INT, r"\d*", r"\d{1,2}", r"\d{1,2}", r"[0-3]", r"\d*", r"\d*", r".*",
    ),
    ts_columns=("month", "day"),
    ts_parser="month_day_columns",
)

REES46 = LogFormat(
    name="rees46",
    description="REES46 / Open CDP multi-category store events (2019-Oct.csv and siblings)",
    columns=(
        "event_time", "event_type", "product_id", "category_id", "category_code", "brand",
        "price", "user_id", "user_session",
    ),
    has_header=True,
    fields={
        "buyer": "user_id",
        "product": "product_id",
        "category": "category_id",
        "category_text": "category_code",
        "brand": "brand",
        "price": "price",
        "session": "user_session",
    },
    event_column="event_type",
    event_codes={
        "view": "product_view",
        "cart": "add_to_cart",
        "remove_from_cart": "remove_from_cart",
        "purchase": "purchase",
    },
    ts_columns=("event_time",),
    ts_parser="timestamp_text",
    ts_resolution="second",
    shop_field="brand",
    shop_fields=("brand", "category_code", "category_id"),
    shop_note="REES46 is one store; brand stands in for a storefront, so rows without a brand "
    "have no shop and are rejected (choose shop_field='single' to keep them)",
    title_recipe="text",
    catalog_note="titles are composed from brand and category_code words; price is the latest "
    "seen",
)

TAOBAO_USER_BEHAVIOR = LogFormat(
    name="taobao_user_behavior",
    description="Taobao UserBehavior.csv (Tianchi 649; no header, Unix seconds)",
    columns=("user_id", "item_id", "category_id", "behavior_type", "timestamp"),
    has_header=False,
    first_row_patterns=(_INT, _INT, _INT, r"pv|buy|cart|fav", r"\d{9,11}"),
    fields={"buyer": "user_id", "product": "item_id", "category": "category_id"},
    event_column="behavior_type",
    event_codes={
        "pv": "product_view",
        "cart": "add_to_cart",
        "fav": "add_to_wishlist",
        "buy": "purchase",
    },
    ts_columns=("timestamp",),
    ts_parser="unix_seconds",
    ts_resolution="second",
    shop_field="category_id",
    shop_fields=("category_id",),
    shop_note="Taobao UserBehavior has no merchant field: category_id is a WEAK shop proxy",
    title_recipe="ids",
    catalog_note="no item names, brands or prices: titles are composed from item and category ids",
)

GENERIC_REQUIRED = ("shop_id", "buyer_id", "ts", "event_type")
GENERIC_OPTIONAL = ("session_id", "product_id", "category", "price", "query", "title", "brand")

GENERIC = LogFormat(
    name="generic",
    description="SimPersona generic event log (CSV with header, or Parquet); see ingest.py",
    columns=(),
    has_header=True,
    required_columns=GENERIC_REQUIRED,
    optional_columns=GENERIC_OPTIONAL,
    fields={
        "buyer": "buyer_id",
        "product": "product_id",
        "category": "category",
        "category_text": "category",
        "brand": "brand",
        "price": "price",
        "session": "session_id",
        "query": "query",
        "title": "title",
    },
    event_column="event_type",
    event_codes={
        **{name: name for name in (
            "page_view", "product_view", "search", "add_to_wishlist", "add_to_cart",
            "remove_from_cart", "checkout", "purchase",
        )},
        **GENERIC_EVENT_ALIASES,
    },
    case_insensitive_events=True,
    ts_columns=("ts",),
    ts_parser="timestamp_or_unix",
    ts_resolution="second",
    shop_field="shop_id",
    shop_fields=("shop_id",),
    shop_note="shop_id is given by the log",
    title_recipe="given",
    session_scope="shop_buyer",
)

FORMATS: dict[str, LogFormat] = {
    f.name: f
    for f in (
        TMALL_BRAND_2014,
        IJCAI15_USER_LOG,
        IJCAI15_USER_LOG_PANDAS,
        IJCAI15_DBLAB,
        REES46,
        TAOBAO_USER_BEHAVIOR,
        GENERIC,
    )
}


@dataclass
class UnknownFormatError(ValueError):
    """The first line of a file matches no known format; the message lists them all."""

    path: str
    seen: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        known = "\n".join(
            f"  - {f.name}: {f.expected_columns_text()}" for f in FORMATS.values()
        )
        return (
            f"{self.path}: unknown log format. Its first line has the columns "
            f"{self.seen!r}, which match no known format. Known formats and their columns:\n"
            f"{known}"
        )


def detect_format(first_row: list[str], path: str, is_parquet: bool = False) -> LogFormat:
    """Pick the format whose header equals `first_row`, else a headerless one it fits.

    Header names are compared after trimming spaces and a UTF-8 byte-order mark; the generic
    format is tried last so that a public schema always wins.
    """
    header = [c.strip().lstrip("\ufeff") for c in first_row]
    for fmt in FORMATS.values():
        if fmt.matches_header(header):
            return fmt
    if not is_parquet:
        for fmt in FORMATS.values():
            if fmt.matches_first_row(header):
                return fmt
    raise UnknownFormatError(path, header)
