"""Per shop×buyer behavioural features: events.parquet -> buyer_features.parquet.

Every behavioural feature is computed by DuckDB straight over the Parquet file in one SQL query:
one grouped pass per grain (buyer, with a window for inter-event gaps; visit; buyer×product;
buyer×category), joined per buyer. The list of features is data: `FEATURES` below names each column, its
group, transform and flags together with the SQL that computes it from the per-buyer aggregates,
so adding a feature is one line and the metadata can never drift from the values. The rows come
out in (shop_id, buyer_id) order from the query's own ORDER BY.

Features that a log cannot support are left out, not filled with zeros: time-of-day, gaps and
session durations need second-level timestamps, price statistics need prices, diversity needs
product ids or categories. The browse-only protocol (`browse_only=True`) removes every feature
derived from checkout/purchase events *and* drops those events before any other feature is
computed, so nothing a buyer did at or after the till can leak into the inputs; a shop×buyer
with nothing but checkout/purchase events gets no row at all (its mere presence would say
"bought"). The info columns (converted, n_events, n_purchases, top_category) always count every
event: they are labels, not inputs.

After the behavioural block comes the product-embedding block (codebook.embeddings).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console

from codebook import embeddings
from codebook.schema import (
    EVENT_TYPES,
    EVENTS_SCHEMA,
    INFO_COLUMNS,
    INGEST_META_FILE,
    PURCHASE_EVENT_TYPES,
    TS_RESOLUTIONS,
    FeatureColumn,
    write_features,
)

# What a log must provide for a feature to exist (see `_capabilities`).
CLOCK = "clock"  # second-level timestamps: time of day, gaps, session durations
PRICES = "prices"
PRODUCTS = "products"
CATEGORIES = "categories"

# Time-of-day buckets by UTC hour; the logs carry no shop time zone.
DAY_PARTS = {"night": (0, 6), "morning": (6, 12), "afternoon": (12, 18), "evening": (18, 24)}


@dataclass(frozen=True)
class FeatureSpec:
    """A model-input column and the SQL expression over the per-buyer aggregates that yields it."""

    column: FeatureColumn
    sql: str
    needs: frozenset[str] = frozenset()


def _spec(name, group, sql, *, log=False, purchase=False, decisive=False, needs=()) -> FeatureSpec:
    column = FeatureColumn(name, group, "log1p" if log else "none", purchase, decisive)
    return FeatureSpec(column, sql, frozenset(needs))


def _event_type_specs() -> list[FeatureSpec]:
    specs = []
    for kind in EVENT_TYPES:
        bought = kind in PURCHASE_EVENT_TYPES
        specs.append(_spec(f"count_{kind}", "behavior", f"b.n_{kind}", log=True, purchase=bought, decisive=bought))
        specs.append(
            _spec(f"share_{kind}", "behavior", f"b.n_{kind} / nullif(b.n, 0)", purchase=bought, decisive=bought)
        )
    return specs


# The full catalogue, in output order. Aggregates come from `_behaviour_sql`: `b` per buyer,
# `w` the buyer's timeline (gaps, days), `s` visits, `p` products, `c` categories.
FEATURES: tuple[FeatureSpec, ...] = (
    _spec("event_count", "behavior", "b.n", log=True),
    *_event_type_specs(),
    _spec("session_count", "behavior", "s.sessions", log=True),
    _spec("events_per_session_mean", "behavior", "s.events_mean", log=True),
    _spec("events_per_session_max", "behavior", "s.events_max", log=True),
    _spec("active_days", "behavior", "w.active_days", log=True),
    # Funnel ratios: see FUNNEL_RATIO_MACRO for zero denominators.
    _spec("view_to_cart", "funnel", "funnel_ratio(b.n_add_to_cart, b.n_product_view)", decisive=True),
    _spec("cart_to_purchase", "funnel", "funnel_ratio(b.n_purchase, b.n_add_to_cart)", purchase=True, decisive=True),
    _spec("view_to_purchase", "funnel", "funnel_ratio(b.n_purchase, b.n_product_view)", purchase=True, decisive=True),
    _spec("purchase_session_share", "funnel", "s.purchase_session_share", purchase=True, decisive=True),
    _spec("viewed_price_mean", "price", "b.viewed_price_mean", log=True, needs=[PRICES]),
    _spec("viewed_price_median", "price", "b.viewed_price_median", log=True, needs=[PRICES]),
    _spec("viewed_price_max", "price", "b.viewed_price_max", log=True, needs=[PRICES]),
    _spec("carted_price_mean", "price", "b.carted_price_mean", log=True, needs=[PRICES]),
    _spec("carted_price_median", "price", "b.carted_price_median", log=True, needs=[PRICES]),
    _spec("carted_price_max", "price", "b.carted_price_max", log=True, needs=[PRICES]),
    _spec("distinct_products", "diversity", "coalesce(p.distinct_products, 0)", log=True, needs=[PRODUCTS]),
    _spec("product_entropy", "diversity", "p.entropy", needs=[PRODUCTS]),
    _spec("repeat_view_share", "diversity", "p.repeat_share", needs=[PRODUCTS]),
    _spec("distinct_categories", "diversity", "coalesce(c.distinct_categories, 0)", log=True, needs=[CATEGORIES]),
    _spec("category_entropy", "diversity", "c.entropy", needs=[CATEGORIES]),
    _spec("gap_median_s", "time", "w.gap_median", log=True, needs=[CLOCK]),
    _spec("gap_mean_s", "time", "w.gap_mean", log=True, needs=[CLOCK]),
    _spec("session_duration_mean_s", "time", "s.duration_mean", log=True, needs=[CLOCK]),
    *(_spec(f"share_{part}", "time", f"b.share_{part}", needs=[CLOCK]) for part in DAY_PARTS),
    _spec("weekend_share", "time", "b.weekend_share"),
    _spec("tenure_days", "time", "b.tenure_days", log=True),
    _spec("recency_days", "time", "((SELECT t FROM latest) - b.last_seen) / 86400", log=True),
)


@dataclass
class FeatureBuildResult:
    """What build_features wrote and how long it took (seconds include the embedding block)."""

    path: Path
    rows: int
    feature_names: list[str]
    seconds: float
    behaviour_seconds: float
    embedding_seconds: float
    embedding_kind: str
    ts_resolution: str
    embedding_stats: dict = field(default_factory=dict)
    # browse-only: shop×buyer pairs left out because all their events were checkout/purchase
    rows_without_browsing: int = 0


def select_features(
    *, browse_only: bool, capabilities: set[str] | frozenset[str]
) -> list[FeatureSpec]:
    """The feature specs a log with these capabilities supports, minus purchase-derived ones
    under the browse-only protocol."""
    return [
        spec
        for spec in FEATURES
        if spec.needs <= set(capabilities) and not (browse_only and spec.column.purchase_derived)
    ]


def build_features(
    events_path: Path,
    catalog_path: Path,
    out_path: Path,
    *,
    browse_only: bool = False,
    embedding: str = "auto",
    embedding_dim: int = 16,
    cache_dir: Path | None = None,
    ts_resolution: str | None = None,
    progress: bool = True,
) -> FeatureBuildResult:
    """Compute buyer_features.parquet: one row per shop×buyer of events.parquet (browse-only:
    per shop×buyer with at least one event other than checkout/purchase).

    ts_resolution: "second" or "day"; None reads it from ingest.json beside the events file.
    embedding: "auto", "text", "hashed" or "none" (see codebook.embeddings.resolve_kind).
    """
    events_path, catalog_path, out_path = Path(events_path), Path(catalog_path), Path(out_path)
    started = time.perf_counter()
    console = Console(stderr=True, quiet=not progress)
    ingest_meta = _read_ingest_meta(events_path)
    resolution = ts_resolution or ingest_meta.get("ts_resolution")

    with duckdb.connect() as con:
        con.execute("SET enable_progress_bar = false")
        _register_events(con, events_path)
        con.execute(_compact_events_sql(browse_only))  # the one read of events.parquet
        survey = _survey(con, events_path)
        resolution = _check_resolution(resolution, survey, events_path)
        capabilities = _capabilities(survey, resolution)
        specs = select_features(browse_only=browse_only, capabilities=capabilities)

        with _step(console, f"behavioural features ({len(specs)}) with DuckDB"):
            con.execute(FUNNEL_RATIO_MACRO)
            table = con.sql(_behaviour_sql(specs, capabilities, browse_only)).to_arrow_table()
            table = _without_key_collisions(table, events_path)
            rows_without_browsing = 0
            if browse_only:
                # A row whose buyer did nothing but check out would itself say "converted".
                browsed = pc.greater(table.column("event_count"), 0)
                rows_without_browsing = table.num_rows - pc.sum(browsed).as_py()
                table = table.filter(browsed)
        behaviour_seconds = time.perf_counter() - started

        kind = embeddings.resolve_kind(embedding, ingest_meta, has_categories=CATEGORIES in capabilities)
        with _step(console, f"product embeddings ({kind}, dim {embedding_dim})"):
            block = embeddings.buyer_embeddings(
                con,
                table.select(["shop_id", "buyer_id"]),
                catalog_path,
                kind=kind,
                dim=embedding_dim,
                cache_dir=cache_dir,
                progress=progress,
            )
    for name, values in zip(block.names, block.matrix.T):
        table = table.append_column(name, pa.array(values))
    columns = [spec.column for spec in specs] + block.columns

    meta = {
        "browse_only": browse_only,
        "embedding": {"kind": kind, "dim": len(block.names), "requested": embedding},
        "ts_resolution": resolution,
        "events_path": str(events_path.resolve()),
        "catalog_path": str(catalog_path.resolve()),
        "info_columns": list(INFO_COLUMNS),
        "rows_without_browsing": rows_without_browsing,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_features(table, out_path, columns, meta)
    seconds = time.perf_counter() - started
    console.print(f"[green]wrote[/] {out_path} ({table.num_rows:,} buyers × {len(columns)} features, {seconds:.1f}s)")
    return FeatureBuildResult(
        path=out_path,
        rows=table.num_rows,
        feature_names=[c.name for c in columns],
        seconds=seconds,
        behaviour_seconds=behaviour_seconds,
        embedding_seconds=block.seconds,
        embedding_kind=kind,
        ts_resolution=resolution,
        embedding_stats=block.stats,
        rows_without_browsing=rows_without_browsing,
    )


@contextmanager
def _step(console: Console, what: str):
    with console.status(what):
        started = time.perf_counter()
        yield
    console.print(f"{what}: {time.perf_counter() - started:.2f}s")


def _read_ingest_meta(events_path: Path) -> dict:
    meta_path = events_path.parent / INGEST_META_FILE
    if not meta_path.exists():
        return {}
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{meta_path}: not valid JSON ({error})") from error


def _register_events(con: duckdb.DuckDBPyConnection, events_path: Path) -> None:
    if not events_path.exists():
        raise FileNotFoundError(f"events file not found: {events_path}")
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{_sql_path(events_path)}')")
    present = {row[0] for row in con.execute("DESCRIBE events").fetchall()}
    missing = [name for name in EVENTS_SCHEMA.names if name not in present]
    if missing:
        raise ValueError(f"{events_path}: not an events.parquet file, missing columns {missing}")


def _survey(con: duckdb.DuckDBPyConnection, events_path: Path) -> dict:
    """What the log has (prices, products, categories, a clock), from one scan of the compact
    table `ev`; rows that ingest would never write are refused, named by `_refuse_bad_rows`."""
    names = ["bad_rows", "prices", "products", "categories", "clock"]
    row = con.execute(
        """
        SELECT count(*) FILTER (WHERE shop_id IS NULL OR buyer_id IS NULL OR t IS NULL OR et IS NULL),
               count(price) > 0, coalesce(bool_or(has_product), FALSE), count(category) > 0,
               coalesce(bool_or(t % 86400 <> 0), FALSE)
        FROM ev
        """
    ).fetchone()
    survey = dict(zip(names, row))
    if survey["bad_rows"]:
        _refuse_bad_rows(con, events_path)
    return survey


def _refuse_bad_rows(con: duckdb.DuckDBPyConnection, events_path: Path) -> None:
    """A second scan, of the file itself, only when it holds bad rows: say which and how many."""
    incomplete = "shop_id IS NULL OR buyer_id IS NULL OR ts IS NULL OR event_type IS NULL"
    unknown = f"event_type NOT IN ({_sql_list(EVENT_TYPES)})"
    names = ["incomplete", "first_incomplete", "unknown", "first_unknown", "unknown_values"]
    row = con.execute(
        f"""
        SELECT count(*) FILTER (WHERE {incomplete}), min(source_row) FILTER (WHERE {incomplete}),
               count(*) FILTER (WHERE {unknown}), min(source_row) FILTER (WHERE {unknown}),
               list_slice(list(DISTINCT event_type) FILTER (WHERE {unknown}), 1, 5)
        FROM events
        """
    ).fetchall()[0]
    survey = dict(zip(names, row))
    if survey["incomplete"]:
        raise ValueError(
            f"{events_path}: {survey['incomplete']} events lack shop_id, buyer_id, ts or event_type "
            f"(first at source_row {survey['first_incomplete']}); re-run ingest, which rejects such rows"
        )
    if survey["unknown"]:
        raise ValueError(
            f"{events_path}: {survey['unknown']} events have an unknown event_type "
            f"(first at source_row {survey['first_unknown']}; values {survey['unknown_values']}); "
            f"expected one of {list(EVENT_TYPES)}"
        )
    raise AssertionError(f"{events_path}: the compact table found bad rows that the file does not hold")


def _check_resolution(resolution: str | None, survey: dict, events_path: Path) -> str:
    if resolution is None:
        # No ingest.json: a log whose every timestamp is midnight UTC is day-level.
        return "second" if survey["clock"] else "day"
    if resolution not in TS_RESOLUTIONS:
        raise ValueError(
            f"ts_resolution for {events_path} is {resolution!r}, expected one of {list(TS_RESOLUTIONS)}"
        )
    return resolution


def _capabilities(survey: dict, resolution: str) -> set[str]:
    found = {CLOCK} if resolution == "second" else set()
    return found | {name for name in (PRICES, PRODUCTS, CATEGORIES) if survey[name]}


# Funnel ratios are clipped to [0, 1]. A zero denominator gives 0 when nothing moved on and 1 when
# the later step was logged without the earlier one (logs that start mid-visit).
FUNNEL_RATIO_MACRO = """
CREATE OR REPLACE TEMP MACRO funnel_ratio(num, den) AS
    CASE WHEN den > 0 THEN least(num / den, 1.0) WHEN num > 0 THEN 1.0 ELSE 0.0 END
"""


def _compact_events_sql(browse_only: bool) -> str:
    """Read events.parquet once into a narrow in-memory table that every pass then scans.

    Strings become 64-bit hashes where only equality matters: `k` for (shop_id, buyer_id) (the
    key strings ride along so that the per-buyer pass names each buyer and checks that no two
    share a hash), `sess` for the visit, `product`. Event types become an ENUM; hour and day
    come from integer arithmetic on epoch seconds rather than from calendar functions. `kept`
    marks the events features may see: under browse-only, none of checkout/purchase.
    """
    kept = f"event_type NOT IN ({_sql_list(PURCHASE_EVENT_TYPES)})" if browse_only else "TRUE"
    return f"""
    CREATE OR REPLACE TEMP TABLE ev AS
    SELECT hash(shop_id, buyer_id) AS k, shop_id, buyer_id,
           -- Logs without visits: a buyer's day in a shop is the session.
           CASE WHEN session_id IS NULL THEN hash(floor(epoch(ts) / 86400)) ELSE hash(session_id) END AS sess,
           epoch(ts) AS t,
           floor(epoch(ts) / 86400)::INTEGER AS day,
           floor((epoch(ts) % 86400 + 86400) % 86400 / 3600)::TINYINT AS hour,
           -- NULL for an unknown type, which _survey then refuses with the values it found
           TRY_CAST(event_type AS ENUM({_sql_list(EVENT_TYPES, keep_order=True)})) AS et,
           hash(product_id) AS product, product_id IS NOT NULL AS has_product,
           category, price,
           {kept} AS kept
    FROM events
    """


# The buyer's timeline: each kept event with the one before it, in the buyer's own time order.
# Gaps count only within a visit; a new day starts whenever the day changes.
_TIMELINE_SQL = """timeline AS (
        SELECT k, t, day, sess, lag(t) OVER w AS t_before, lag(day) OVER w AS day_before,
               lag(sess) OVER w AS sess_before
        FROM ev {where_kept}
        WINDOW w AS (PARTITION BY k ORDER BY t, sess)
    ),
    w AS (
        SELECT k, count(*) FILTER (WHERE day_before IS DISTINCT FROM day) AS active_days,
               median(t - t_before) FILTER (WHERE sess = sess_before) AS gap_median,
               avg(t - t_before) FILTER (WHERE sess = sess_before) AS gap_mean
        FROM timeline GROUP BY k
    ),"""

# Without a clock there are no gaps, and the days a buyer was active need no time order: the
# day changes along the timeline exactly once per distinct day, so a count skips the sort.
_ACTIVE_DAYS_SQL = """w AS (
        SELECT k, count(DISTINCT day) AS active_days FROM ev {where_kept} GROUP BY k
    ),"""


def _behaviour_sql(specs: list[FeatureSpec], capabilities: set[str], browse_only: bool = False) -> str:
    """One SELECT over the compact table `ev`: a grouped pass per grain, joined on `k`.

    Only browse-only runs have events to leave out (`kept`); otherwise every event counts and
    the filters are left out of the SQL altogether, as a FILTER on each of some 30 aggregates
    costs real time even when it is always true.
    """
    kept_and = "kept AND " if browse_only else ""
    only_kept = " FILTER (WHERE kept)" if browse_only else ""
    where_kept = "WHERE kept" if browse_only else ""
    counts = ",\n               ".join(
        f"count(*) FILTER (WHERE {kept_and}et = '{kind}')::DOUBLE AS n_{kind}" for kind in EVENT_TYPES
    )
    day_parts = "".join(
        f",\n               avg((hour >= {lo} AND hour < {hi})::DOUBLE){only_kept} AS share_{name}"
        for name, (lo, hi) in DAY_PARTS.items()
    ) if CLOCK in capabilities else ""
    price_stats = "".join(
        f",\n               {agg}(price) FILTER (WHERE et = '{kind}') AS {who}_price_{stat}"
        for who, kind in [("viewed", "product_view"), ("carted", "add_to_cart")]
        for stat, agg in [("mean", "avg"), ("median", "median"), ("max", "max")]
    ) if PRICES in capabilities else ""
    timeline = (_TIMELINE_SQL if CLOCK in capabilities else _ACTIVE_DAYS_SQL).format(where_kept=where_kept)
    selected = ",\n           ".join(f"({spec.sql})::DOUBLE AS {spec.column.name}" for spec in specs)
    return f"""
    WITH b AS (  -- one pass per buyer for everything that needs no finer grain
        SELECT k, min(shop_id) AS shop_id, min(buyer_id) AS buyer_id,
               min(shop_id) <> max(shop_id) OR min(buyer_id) <> max(buyer_id) AS key_collision,
               count(*){only_kept}::DOUBLE AS n,
               {counts},
               -- 1970-01-01 was a Thursday: (day + 4) mod 7 is 0 on Sundays and 6 on Saturdays.
               avg(((day % 7 + 11) % 7 IN (0, 6))::DOUBLE){only_kept} AS weekend_share{day_parts},
               (max(t){only_kept} - min(t){only_kept}) / 86400 AS tenure_days,
               max(t){only_kept} AS last_seen,
               -- info columns: labels over every event, whatever the protocol
               max((et IN ({_sql_list(PURCHASE_EVENT_TYPES)}))::TINYINT) AS converted,
               count(*) AS n_events,
               count(*) FILTER (WHERE et = 'purchase') AS n_purchases{price_stats}
        FROM ev GROUP BY k
    ),
    latest AS (  -- the log's last event, for recency (a window over all buyers cost more)
        SELECT max(t) AS t FROM ev {where_kept}
    ),
    {timeline}
    visits AS (
        SELECT k, count(*) AS events, max(t) - min(t) AS duration,
               bool_or(et = 'purchase')::DOUBLE AS bought
        FROM ev {where_kept} GROUP BY k, sess
    ),
    s AS (
        SELECT k, count(*) AS sessions, avg(events) AS events_mean, max(events) AS events_max,
               avg(duration) AS duration_mean, avg(bought) AS purchase_session_share
        FROM visits GROUP BY k
    ),
    product_views AS (
        SELECT k, count(*)::DOUBLE AS views
        FROM ev WHERE et = 'product_view' AND has_product GROUP BY k, product
    ),
    p AS (
        SELECT k, count(*) AS distinct_products,
               -- H = ln N - sum(c ln c) / N; clamped because rounding can leave -1e-16
               greatest(ln(sum(views)) - sum(views * ln(views)) / sum(views), 0) AS entropy,
               1 - count(*) / sum(views) AS repeat_share
        FROM product_views GROUP BY k
    ),
    category_events AS (  -- by hash: names are looked up once per category, not per buyer
        SELECT k, hash(category) AS category_hash,
               count(*) AS events, count(*) FILTER (WHERE et = 'product_view')::DOUBLE AS views
        FROM ev WHERE category IS NOT NULL GROUP BY k, hash(category)
    ),
    category_names AS (
        SELECT hash(category) AS category_hash, any_value(category) AS category
        FROM ev WHERE category IS NOT NULL GROUP BY hash(category)
    ),
    c AS (
        SELECT k, count(*) FILTER (WHERE views > 0) AS distinct_categories,
               CASE WHEN sum(views) > 0 THEN greatest(
                   ln(sum(views)) - sum(views * ln(views)) FILTER (WHERE views > 0) / sum(views), 0)
               END AS entropy,
               -- ties between equally frequent categories go to a fixed one (by hash)
               arg_max(category_hash, events::UBIGINT * 4294967296 + (category_hash >> 32))
                   AS top_category_hash
        FROM category_events GROUP BY k
    )
    SELECT b.shop_id, b.buyer_id,
           {selected},
           b.converted, b.n_events, b.n_purchases, names.category AS top_category, b.key_collision
    FROM b
    LEFT JOIN w USING (k)
    LEFT JOIN s USING (k)
    LEFT JOIN p USING (k)
    LEFT JOIN c USING (k)
    LEFT JOIN category_names names ON names.category_hash = c.top_category_hash
    -- Sorting here beats sorting the two keys and reordering the Arrow table with take():
    -- take() filled some 50 fresh columns, and zeroing their pages cost more than the sort.
    ORDER BY b.shop_id, b.buyer_id
    """


def _without_key_collisions(table: pa.Table, events_path: Path) -> pa.Table:
    """Drop the collision flag after checking it (a 64-bit hash collision: about 1e-8 at 1M buyers)."""
    flag = table.column("key_collision")
    if pc.any(flag).as_py():
        raise RuntimeError(
            f"{events_path}: two (shop_id, buyer_id) pairs share a 64-bit hash key; "
            "please report this, it should happen about once in 10^8 runs"
        )
    return table.drop_columns(["key_collision"])


def _sql_list(values, keep_order: bool = False) -> str:
    return ", ".join(f"'{v}'" for v in (values if keep_order else sorted(values)))


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
