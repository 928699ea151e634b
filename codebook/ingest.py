"""`simpersona ingest`: raw clickstream logs -> events.parquet + catalog.parquet.

(Over 500 lines on purpose: one pipeline of DuckDB SQL stages that share the source list and the
runner; read top to bottom, it is the order the data flows in.)

Reads one or more log files of one format (codebook/formats.py lists them; the format is
detected from the header, or from the first row of headerless files), validates every row and
writes, into an output directory:

- events.parquet   (codebook.schema.EVENTS_SCHEMA), one row per valid event;
- catalog.parquet  (CATALOG_SCHEMA), one row per shop x product seen in the events;
- rejected.parquet (REJECTED_SCHEMA), every row that failed, with its file, row and reason;
- ingest.json      what was read and how (format, shop field, timestamp resolution, title
  source, counts by reason, shops, buyers, sessions, conversion rate, events by type).

Nothing is dropped silently: rows_read == rows_kept + rows_rejected. Empty lines carry no event
and are not rows; they are counted apart (`blank_lines`).

`source_row` is the row's line number in its file counted from the first line after the header
(blank and rejected lines count too, so it points at the line an editor shows, minus the
header); for Parquet input it is the row index + 1. Events are written in no particular order:
sort by (shop_id, buyer_id, ts, source_row). Day-level logs keep ts at midnight UTC and
source_row is then the only order within a day.

Generic schema (CSV with a header row, or Parquet), columns by name, in any order:

    required  shop_id     the store the event happened in
              buyer_id    the (pseudonymous) buyer
              ts          ISO 8601 timestamp ("2024-05-01 13:45:10", "2024-05-01T13:45:10+02:00";
                          no offset means UTC) or Unix seconds
              event_type  one of codebook.schema.EVENT_TYPES, or an alias such as view, click,
                          pv, cart, fav, buy, order (case-insensitive; see formats.py)
    optional  session_id  the visit; when absent, sessions are cut at a 30-minute inactivity gap
                          per shop x buyer
              product_id  required per row when the column exists
              category    category name or id
              price       non-negative number
              query       search text of `search` events
              title       product name (then title_source is "text")
              brand       brand name

Memory stays bounded on logs far larger than RAM: DuckDB does the work (CSV read with every
column as VARCHAR and `store_rejects` for broken lines, SQL validation, window functions for
sessions, COPY ... TO parquet) in a scratch database with a memory limit and a spill directory.
Python only looks at the first line of each file and scans the bytes for empty lines (one
regex search; line numbers are only counted when there is one).
"""

from __future__ import annotations

import csv
import io
import json
import mmap
import re
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from codebook.formats import (
    SINGLE_SHOP,
    SINGLE_SHOP_ID,
    LogFormat,
    UnknownFormatError,
    detect_format,
)
from codebook.schema import (
    CATALOG_FILE,
    CATALOG_SCHEMA,
    EVENTS_FILE,
    EVENTS_SCHEMA,
    INGEST_META_FILE,
    REJECTED_FILE,
    REJECTED_SCHEMA,
)

# Reasons written to rejected.parquet; fixed strings so that counts by reason can be compared.
BAD_TIMESTAMP = "bad timestamp"
UNKNOWN_EVENT = "unknown event code"
MISSING_BUYER = "missing buyer id"
MISSING_SHOP = "missing shop id"
MISSING_PRODUCT = "missing product id"
MISSING_SESSION = "missing session id"
NEGATIVE_PRICE = "negative price"
BAD_PRICE = "bad price"
NON_UTF8 = "non-UTF-8 bytes"
WRONG_COLUMN_COUNT = "wrong column count"
BAD_QUOTING = "bad quoting"
LINE_TOO_LONG = "line too long"
NUL_IN_ID = "NUL byte in an id"

# DuckDB's CSV error types (rejects_errors.error_type) -> our reasons.
_CSV_ERROR_REASONS = {
    "MISSING COLUMNS": WRONG_COLUMN_COUNT,
    "TOO MANY COLUMNS": WRONG_COLUMN_COUNT,
    "INVALID ENCODING": NON_UTF8,
    "INVALID UNICODE": NON_UTF8,
    "UNQUOTED VALUE": BAD_QUOTING,
    "LINE SIZE OVER MAXIMUM": LINE_TOO_LONG,
}

# Timestamp parsers: SQL producing TIMESTAMPTZ (NULL when unparsable) from the format's
# ts_columns ({0}, {1}, ...) and, for day-level dates written without a year, {year}.
# The session time zone is UTC, so a timestamp without an offset is read as UTC.
TS_PARSERS: dict[str, str] = {
    "unix_seconds": "CASE WHEN regexp_full_match({0}, '\\d{{1,11}}') "
    "THEN to_timestamp(CAST({0} AS BIGINT)) END",
    "timestamp_text": "try_cast({0} AS TIMESTAMPTZ)",
    "timestamp_or_unix": "coalesce(try_cast({0} AS TIMESTAMPTZ), CASE WHEN "
    "regexp_full_match({0}, '\\d{{1,11}}') THEN to_timestamp(CAST({0} AS BIGINT)) END)",
    "month_dash_day": "CASE WHEN regexp_full_match({0}, '\\d{{1,2}}-\\d{{1,2}}') THEN "
    "CAST(try_strptime('{year}-' || {0}, '%Y-%m-%d') AS TIMESTAMPTZ) END",
    "mmdd": "CASE WHEN regexp_full_match({0}, '\\d{{3,4}}') THEN "
    "CAST(try_strptime('{year}' || lpad({0}, 4, '0'), '%Y%m%d') AS TIMESTAMPTZ) END",
    "month_day_columns": "CASE WHEN regexp_full_match({0}, '\\d{{1,2}}') AND "
    "regexp_full_match({1}, '\\d{{1,2}}') THEN "
    "CAST(try_strptime('{year}-' || {0} || '-' || {1}, '%Y-%m-%d') AS TIMESTAMPTZ) END",
}

# Catalog title recipes over the row's cleaned fields (SQL expressions named below).
_TEXT_TITLE = (
    "coalesce(nullif(trim(concat_ws(' ', upper(brand[1]) || brand[2:], "
    "replace(regexp_extract(category_text, '[^.]+$'), '_', ' '))), ''), 'Item ' || product)"
)
TITLE_RECIPES: dict[str, str] = {
    "text": _TEXT_TITLE,
    "ids": "'Item ' || product || coalesce(' · category ' || category, '') "
    "|| coalesce(' · brand ' || brand, '')",
    "brand_only": "'Brand ' || brand || ' (all items)'",
    "given": f"coalesce(title, {_TEXT_TITLE})",
}

# zstd at level 1 writes about as fast as snappy but files half the size; the default level 3
# made writing events.parquet the slowest step of ingest.
PARQUET_OPTIONS = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1"

# Events about one product; page views, searches and checkouts may name none.
PRODUCT_EVENT_TYPES = ("product_view", "add_to_wishlist", "add_to_cart", "remove_from_cart",
                       "purchase")

_CANONICAL_FIELDS = (
    "buyer", "shop", "product", "category", "category_text", "brand", "price", "session",
    "query", "title", "event",
)


@dataclass
class IngestConfig:
    """Options of one ingest run; every one has a default that suits a laptop.

    shop_field: the column that stands in for a shop (None = the format's default; "single"
        puts everything in one shop called "all").
    session_gap_minutes: inactivity gap that ends a session in second-level logs without ids.
    memory_limit / threads / temp_dir: DuckDB settings; temp_dir holds the scratch database and
        the spill files (default: a fresh folder inside the output directory, removed after).
    show_progress: draw a rich progress bar for each long step.
    """

    shop_field: str | None = None
    session_gap_minutes: float = 30.0
    memory_limit: str = "2GB"
    threads: int | None = None
    temp_dir: Path | None = None
    show_progress: bool = False


@dataclass
class IngestResult:
    """What one ingest run read and wrote; also written to ingest.json."""

    out_dir: str
    format: str
    format_description: str
    source_files: list[str]
    shop_field: str
    shop_note: str
    ts_resolution: str
    session_rule: str
    title_source: str
    catalog_note: str
    rows_read: int
    rows_kept: int
    rows_rejected: int
    rejected_by_reason: dict[str, int]
    blank_lines: int
    shops: int
    buyers: int
    buyer_shop_pairs: int
    sessions: int
    products: int
    conversion_rate: float
    events_by_type: dict[str, int]
    seconds: float
    files: dict[str, str] = field(default_factory=dict)

    @property
    def events_path(self) -> Path:
        return Path(self.out_dir) / EVENTS_FILE

    @property
    def catalog_path(self) -> Path:
        return Path(self.out_dir) / CATALOG_FILE

    @property
    def rejected_path(self) -> Path:
        return Path(self.out_dir) / REJECTED_FILE

    @property
    def meta_path(self) -> Path:
        return Path(self.out_dir) / INGEST_META_FILE


class IngestError(ValueError):
    """Input that cannot be ingested at all (as opposed to single bad rows, which are rejected)."""


# ----------------------------------------------------------------------------- public API


def ingest(
    inputs: Sequence[Path | str] | Path | str,
    out_dir: Path | str,
    config: IngestConfig | None = None,
    console: Console | None = None,
) -> IngestResult:
    """Read raw logs of one format and write events, catalog, rejected rows and ingest.json."""
    config = config or IngestConfig()
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    if not paths:
        raise IngestError("no input files given")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    sources = [_inspect(p) for p in paths]
    fmt = sources[0].fmt
    for src in sources[1:]:
        if src.fmt.name != fmt.name:
            raise IngestError(
                f"all inputs must have one format: {paths[0]} is {fmt.name} but {src.path} is "
                f"{src.fmt.name}"
            )
    shop_field = _choose_shop_field(fmt, config.shop_field)

    scratch = Path(tempfile.mkdtemp(prefix="ingest-", dir=config.temp_dir or out))
    try:
        con = _connect(scratch, config)
        runner = _Runner(con, config.show_progress, console)
        con.execute("CREATE TABLE source_files (file_index INTEGER, source_file VARCHAR)")
        con.executemany("INSERT INTO source_files VALUES (?, ?)",
                        [(i, str(src.path)) for i, src in enumerate(sources)])
        blank_lines = 0
        for index, src in enumerate(sources):
            blank_lines += _read_and_check(runner, index, src, shop_field)
        _create_checked_view(con, sources)
        runner.run(_events_sql(fmt, sources, out / EVENTS_FILE, config.session_gap_minutes),
                   "writing events")
        runner.run(_catalog_sql(fmt, out / CATALOG_FILE), "writing catalog")
        runner.run(_rejected_sql(sources, out / REJECTED_FILE), "writing rejected rows")
        for name, schema in ((EVENTS_FILE, EVENTS_SCHEMA), (CATALOG_FILE, CATALOG_SCHEMA),
                             (REJECTED_FILE, REJECTED_SCHEMA)):
            _conform_schema(out / name, schema)
        counts = _counts(con, sources, out / EVENTS_FILE, out / REJECTED_FILE)
        stats = _event_stats(con, out / EVENTS_FILE, out / CATALOG_FILE)
        con.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    if counts["read"] != counts["kept"] + counts["rejected"]:  # a bug, never bad input
        raise AssertionError(f"row accounting broke: {counts}")
    result = IngestResult(
        out_dir=str(out),
        format=fmt.name,
        format_description=fmt.description,
        source_files=[str(p) for p in paths],
        shop_field=shop_field,
        shop_note=_shop_note(fmt, shop_field),
        ts_resolution=fmt.ts_resolution,
        session_rule=_session_rule(fmt, sources, config.session_gap_minutes),
        title_source=_title_source(fmt, sources),
        catalog_note=fmt.catalog_note,
        rows_read=counts["read"],
        rows_kept=counts["kept"],
        rows_rejected=counts["rejected"],
        rejected_by_reason=counts["by_reason"],
        blank_lines=blank_lines,
        seconds=round(time.perf_counter() - started, 3),
        files={"events": EVENTS_FILE, "catalog": CATALOG_FILE, "rejected": REJECTED_FILE},
        **stats,
    )
    (out / INGEST_META_FILE).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def read_ingest_result(out_dir: Path | str) -> IngestResult:
    """Load the IngestResult that an earlier run wrote to out_dir/ingest.json."""
    return IngestResult(**json.loads((Path(out_dir) / INGEST_META_FILE).read_text()))


def summary_table(result: IngestResult) -> Table:
    """The ingest summary as a rich table (the CLI prints it)."""
    table = Table(title=f"ingest: {result.format}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = [
        ("source files", "\n".join(result.source_files)),
        ("shop field", f"{result.shop_field} — {result.shop_note}"),
        ("timestamps", result.ts_resolution),
        ("sessions by", result.session_rule),
        ("titles from", result.title_source),
        ("rows read", f"{result.rows_read:,}"),
        ("rows kept", f"{result.rows_kept:,}"),
        ("rows rejected", f"{result.rows_rejected:,}"),
    ]
    rows += [(f"  {reason}", f"{n:,}") for reason, n in result.rejected_by_reason.items()]
    if result.blank_lines:
        rows.append(("blank lines skipped", f"{result.blank_lines:,}"))
    rows += [
        ("shops", f"{result.shops:,}"),
        ("buyers", f"{result.buyers:,}"),
        ("buyer × shop pairs", f"{result.buyer_shop_pairs:,}"),
        ("sessions", f"{result.sessions:,}"),
        ("products", f"{result.products:,}"),
        ("conversion (pairs with a purchase)", f"{result.conversion_rate:.2%}"),
    ]
    rows += [(f"  {kind}", f"{n:,}") for kind, n in result.events_by_type.items()]
    if result.catalog_note:
        rows.append(("catalog", result.catalog_note))
    rows.append(("time", f"{result.seconds:.1f} s"))
    for what, value in rows:
        table.add_row(what, value)
    return table


# ------------------------------------------------------------------------ reading inputs


@dataclass
class _Source:
    """One input file: its format, the columns it is read with and how rows are numbered."""

    path: Path
    fmt: LogFormat
    columns: list[str]  # source column names in file order
    is_parquet: bool
    header_lines: int

    def column_sql(self, name: str) -> str:
        """The SQL column holding source column `name` (columns are read as c0, c1, ...)."""
        return f"c{self.columns.index(name)}"

    def has(self, name: str | None) -> bool:
        return name is not None and name in self.columns


def _inspect(path: Path) -> _Source:
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".parquet":
            names = pq.read_schema(path).names
            fmt = detect_format(names, str(path), is_parquet=True)
            return _Source(path, fmt, list(names), True, 0)
        first_row = _first_csv_row(path)
        fmt = detect_format(first_row, str(path))
    except UnknownFormatError as error:  # one error type for the CLI to report
        raise IngestError(str(error)) from error
    except (csv.Error, pa.ArrowException) as error:  # a broken Parquet footer, a huge or CR-only first line
        raise IngestError(
            f"{path}: cannot read its header ({error}); expected a CSV file with LF or CRLF line "
            f"ends, or a Parquet file"
        ) from error
    if fmt.required_columns:
        columns = [c.strip().lstrip("\ufeff") for c in first_row]
    else:
        columns = list(fmt.columns)
    return _Source(path, fmt, columns, False, 1 if fmt.has_header else 0)


def _first_csv_row(path: Path) -> list[str]:
    with open(path, "rb") as f:
        line = f.readline(1 << 20)
    text = line.decode("utf-8", errors="replace").rstrip("\r\n")
    if not text:
        raise IngestError(f"{path}: the first line is empty; expected a header or a first row")
    return next(csv.reader(io.StringIO(text)))


def _choose_shop_field(fmt: LogFormat, wanted: str | None) -> str:
    shop_field = wanted or fmt.shop_field
    if shop_field not in fmt.allowed_shop_fields():
        raise IngestError(
            f"shop_field {shop_field!r} is not allowed for format {fmt.name}; choose one of "
            f"{', '.join(fmt.allowed_shop_fields())}"
        )
    return shop_field


def _connect(scratch: Path, config: IngestConfig) -> duckdb.DuckDBPyConnection:
    # An in-memory database with a spill directory: the checked rows stay in RAM up to
    # memory_limit and go to disk past it. (An on-disk database compressed and wrote every
    # checked row, which cost ~40% of the read step while buying nothing for one-shot tables.)
    con = duckdb.connect(":memory:")
    spill = scratch / "spill"
    spill.mkdir()
    con.execute(f"SET memory_limit = '{config.memory_limit}'")
    con.execute(f"SET temp_directory = '{spill}'")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET TimeZone = 'UTC'")
    # Progress is drawn by _Runner (rich) when asked for; DuckDB must not print its own bar.
    con.execute("SET enable_progress_bar = true")
    con.execute("SET enable_progress_bar_print = false")
    if config.threads:
        con.execute(f"SET threads = {int(config.threads)}")
    return con


_BLANK_LINE = re.compile(rb"\n\r?\n")  # one regex pass is ~3x faster than two `in` tests


def _has_blank_line(path: Path) -> bool:
    """Whether the file holds an empty line; a quick byte search, as most logs have none.

    The regex runs over a memory map of the file: reading it in chunks copied every byte twice
    (read, then tail + chunk) and took twice as long as the search itself."""
    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        # an empty first line: the virtual newline before the first byte, then one
        return data[:1] == b"\n" or data[:2] == b"\r\n" or _BLANK_LINE.search(data) is not None


def _blank_line_numbers(path: Path) -> list[int]:
    """Physical line numbers (1-based) of empty lines, which DuckDB skips without a word."""
    if not _has_blank_line(path):
        return []
    found: list[int] = []
    newlines_before = -1  # the virtual newline put before the file's first byte
    tail = b""
    with open(path, "rb") as f:
        first = True
        for chunk in iter(lambda: f.read(1 << 24), b""):
            data = (b"\n" if first else tail) + chunk
            first = False
            for pattern in (b"\n\n", b"\n\r\n"):
                pos = data.find(pattern)
                while pos != -1:
                    if pos + len(pattern) > len(tail):  # not already found in the last chunk
                        found.append(newlines_before + data.count(b"\n", 0, pos + 1) + 1)
                    pos = data.find(pattern, pos + 1)
            newlines_before += data.count(b"\n", 0, len(data) - 2)
            tail = data[-2:]
    return sorted(found)


def _read_and_check(runner: "_Runner", index: int, src: _Source, shop_field: str) -> int:
    """Read file `index`, validate every row and store it in table checked_<index>.

    One pass over the file: parse (all VARCHAR), number the rows, compute the canonical fields
    and the reason a row is rejected (NULL when kept) into table rows_<index>, which the view
    checked_<index> shows with its row numbers. Lines DuckDB cannot parse at all land in
    rejects_<index> with their line numbers. Returns the number of blank lines skipped.
    """
    con = runner.con
    if src.is_parquet:
        casts = ", ".join(
            f'CAST("{name}" AS VARCHAR) AS c{i}' for i, name in enumerate(src.columns)
        )
        rows = f"SELECT {casts} FROM read_parquet({_quote(src.path)})"
    else:
        types = ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(src.columns)))
        rows = (
            f"SELECT * FROM read_csv({_quote(src.path)}, "
            f"header = {str(src.header_lines == 1).lower()}, "
            f"delim = ',', quote = '\"', escape = '\"', columns = {{{types}}}, "
            f"auto_detect = false, strict_mode = true, store_rejects = true, "
            f"rejects_table = 'csv_errors_{index}', rejects_scan = 'csv_scans_{index}')"
        )
    # Row numbers count rows read in file order; they are turned into line numbers below when
    # some lines were rejected or blank. Where DuckDB inserts in parallel batches that keep the
    # file order, rowid + 1 is that count for free. Otherwise (small files, which it reads on one
    # thread) row_number() OVER () numbers them; that window runs on one thread, and on a large
    # file it held the whole read (parse and validation) to one core.
    con.execute("SET preserve_insertion_order = true")
    try:
        create = f"CREATE TABLE rows_{index} AS {_checked_sql(src, shop_field, rows)}"
        by_rowid = _is_batch_insert(con, create)
        if not by_rowid:
            numbered = f"SELECT row_number() OVER () AS source_row, * FROM ({rows})"
            create = f"CREATE TABLE rows_{index} AS {_checked_sql(src, shop_field, numbered, True)}"
        runner.run(create, f"reading {src.path.name}")
    except duckdb.Error as error:  # a file DuckDB cannot read at all, not single bad rows
        raise IngestError(f"{src.path}: cannot be read as {src.fmt.name}: {error}") from error
    finally:
        con.execute("SET preserve_insertion_order = false")
    number = "CAST(rowid + 1 AS BIGINT) AS source_row, " if by_rowid else ""
    con.execute(f"CREATE VIEW checked_{index} AS SELECT {number}* FROM rows_{index}")
    if src.is_parquet:
        con.execute(f"CREATE TABLE rejects_{index} (source_row BIGINT, reason VARCHAR, "
                    f"raw VARCHAR)")
        return 0

    reason_cases = " ".join(
        f"WHEN '{kind}' THEN '{reason}'" for kind, reason in _CSV_ERROR_REASONS.items()
    )
    con.execute(
        f"CREATE TABLE rejects_{index} AS "
        f"SELECT CAST(line AS BIGINT) - {src.header_lines} AS source_row, "
        f"coalesce(CASE first(error_type ORDER BY column_idx) {reason_cases} END, "
        f"'unparsable line: ' || first(error_type ORDER BY column_idx)) AS reason, "
        f"regexp_replace(first(csv_line ORDER BY column_idx), '^[\\r\\n]+|[\\r\\n]+$', '', 'g') "
        f"AS raw FROM csv_errors_{index} GROUP BY line"
    )
    blanks = _blank_line_numbers(src.path)
    n_rejected = con.execute(f"SELECT count(*) FROM rejects_{index}").fetchone()[0]
    if blanks or n_rejected:
        _renumber(runner, index, src, blanks)
    return len(blanks)


def _is_batch_insert(con, create: str) -> bool:
    """Whether DuckDB plans this CREATE TABLE AS as a batch insert, which stores rows in the
    order of the scan (rowid = position in the file) while reading in parallel. An operator
    that cannot carry batch indices (a join, say) or a small file makes it a plain insert."""
    plan = " ".join(str(row[-1]) for row in con.execute(f"EXPLAIN {create}").fetchall())
    return "batch create table as" in plan.lower().replace("_", " ")


def _renumber(runner: "_Runner", index: int, src: _Source, blanks: list[int]) -> None:
    """Turn row counts into data line numbers past rejected and blank lines."""
    con = runner.con
    # Physical lines that hold no kept row: the header, blank lines and rejected lines.
    con.execute(f"CREATE TABLE skipped_{index} (line BIGINT)")
    skipped = list(range(1, src.header_lines + 1)) + blanks
    if skipped:
        con.executemany(f"INSERT INTO skipped_{index} VALUES (?)", [(n,) for n in skipped])
    con.execute(
        f"INSERT INTO skipped_{index} SELECT source_row + {src.header_lines} FROM rejects_{index}"
    )
    # The k-th row read sits on physical line k + (number of skipped lines before it). The
    # j-th skipped line n_j comes before row k exactly when k >= n_j - j + 1.
    con.execute(
        f"CREATE TABLE shifts_{index} AS SELECT line - j + 1 AS first_row, max(j) AS shift "
        f"FROM (SELECT line, row_number() OVER (ORDER BY line) AS j FROM "
        f"(SELECT DISTINCT line FROM skipped_{index})) GROUP BY ALL"
    )
    runner.run(
        f"CREATE TABLE numbered_{index} AS SELECT c.* REPLACE ("
        f"CAST(c.source_row + coalesce(s.shift, 0) - {src.header_lines} AS BIGINT) AS source_row) "
        f"FROM checked_{index} c ASOF LEFT JOIN shifts_{index} s ON c.source_row >= s.first_row",
        f"numbering rows of {src.path.name}",
    )
    con.execute(f"DROP VIEW checked_{index}")
    con.execute(f"DROP TABLE rows_{index}")
    con.execute(f"ALTER TABLE numbered_{index} RENAME TO checked_{index}")


# ---------------------------------------------------------------------- SQL: validation


def _field_sql(src: _Source, fmt: LogFormat, shop_field: str) -> dict[str, str]:
    """SQL expression (VARCHAR, NULL when absent or empty) for each canonical field."""

    def column(name: str | None) -> str:
        if not src.has(name):
            return "CAST(NULL AS VARCHAR)"
        expr = f"nullif({_trim_sql(src.column_sql(name))}, '')"
        if name in fmt.float_id_columns:
            expr = f"regexp_replace({expr}, '\\.0+$', '')"
        return expr

    fields = {name: column(fmt.fields.get(name)) for name in _CANONICAL_FIELDS}
    if shop_field == SINGLE_SHOP:  # a CASE, not a literal: DuckDB would mark it NOT NULL
        fields["shop"] = (
            f"CASE WHEN {fields['buyer']} IS NOT NULL THEN {_quote(SINGLE_SHOP_ID)} END"
        )
    else:
        fields["shop"] = column(shop_field)
    fields["event"] = column(fmt.event_column)
    if fmt.product_template == "brand":  # logs without item ids: one pseudo-product per brand
        fields["product"] = f"'brand:' || {fields['brand']}"
    return fields


def _trim_sql(column: str) -> str:
    """trim(column), called only on values that may have something to trim.

    trim copies every value it is given, which made it a third of the read step. It strips
    spaces and Unicode white space only (not tabs or newlines), so a value that starts above
    ' ', does not end in ' ' and is pure ASCII (as many bytes as characters) is already trimmed.
    """
    return (f"CASE WHEN {column} < '!' OR ends_with({column}, ' ') "
            f"OR strlen({column}) <> length({column}) THEN trim({column}) ELSE {column} END")


def _ts_sql(src: _Source, fmt: LogFormat) -> str:
    args = [_trim_sql(src.column_sql(c)) for c in fmt.ts_columns]
    return TS_PARSERS[fmt.ts_parser].format(*args, year=fmt.year)


def _event_sql(fmt: LogFormat, raw_event: str) -> str:
    code = f"lower({raw_event})" if fmt.case_insensitive_events else raw_event
    cases = " ".join(f"WHEN {_quote(k)} THEN {_quote(v)}" for k, v in fmt.event_codes.items())
    return f"CASE {code} {cases} END"


def _raw_line_sql(fields: list[str]) -> str:
    """The row's fields (SQL expressions) written back as one CSV line, for rejected.parquet.

    A field is quoted when it holds a comma, a quote or a newline (three `contains`, cheaper
    than a regular expression per field)."""
    parts = []
    for field in fields:
        c = f"coalesce({field}, '')"
        parts.append(
            f"CASE WHEN contains({c}, ',') OR contains({c}, '\"') OR contains({c}, chr(10)) "
            f"THEN '\"' || replace({c}, '\"', '\"\"') || '\"' ELSE {c} END"
        )
    return " || ',' || ".join(parts)


def _checked_sql(src: _Source, shop_field: str, rows: str, numbered: bool = False) -> str:
    """Canonical fields plus the reason each row is rejected (NULL when kept).

    `rows` yields c0, c1, ... (the raw VARCHAR columns), after source_row when `numbered`.
    Rejected rows keep their raw fields as a list, from which _rejected_sql rebuilds the line:
    the line's expression, even behind a CASE that no kept row enters, cost ~15% of this step.
    """
    fmt = src.fmt
    f = _field_sql(src, fmt, shop_field)
    needs_product = src.has(fmt.fields.get("product")) or fmt.product_template is not None
    needs_session = src.has(fmt.fields.get("session"))
    # An OR chain, not IN (...): DuckDB plans an IN list of five or more as a join, which
    # would lose the file order that numbers the rows (see _read_and_check).
    product_event = " OR ".join(f"event_type = {_quote(e)}" for e in PRODUCT_EVENT_TYPES)
    checks = [
        # A NUL byte is corruption, not part of a name; ids carrying one would reach every output.
        ("contains(concat(buyer, shop, product, session), chr(0))", NUL_IN_ID),
        ("buyer IS NULL", MISSING_BUYER),
        ("shop IS NULL", MISSING_SHOP),
        (f"product IS NULL AND ({product_event})" if needs_product else "false",
         MISSING_PRODUCT),
        ("session IS NULL" if needs_session else "false", MISSING_SESSION),
        ("ts IS NULL OR NOT isfinite(ts)", BAD_TIMESTAMP),
        ("event_type IS NULL", UNKNOWN_EVENT),
        ("price_text IS NOT NULL AND (price IS NULL OR NOT isfinite(price))", BAD_PRICE),
        ("price < 0", NEGATIVE_PRICE),
    ]
    reason = "CASE " + " ".join(f"WHEN {cond} THEN '{why}'" for cond, why in checks) + " END"
    raw_cols = ", ".join(f"c{i}" for i in range(len(src.columns)))
    row = "source_row, " if numbered else ""
    return f"""
        SELECT {row}reason,
               CASE WHEN reason IS NOT NULL THEN [{raw_cols}] END AS raw_fields,
               shop, buyer, session, ts, event_type, product,
               coalesce(category_text, category) AS category, category_text, brand, price,
               query, title
        FROM (
            SELECT *, {reason} AS reason
            FROM (
                SELECT {row}{raw_cols},
                       {f['shop']} AS shop, {f['buyer']} AS buyer, {f['session']} AS session,
                       {_ts_sql(src, fmt)} AS ts, {_event_sql(fmt, f['event'])} AS event_type,
                       {f['product']} AS product, {f['category']} AS category,
                       {f['category_text']} AS category_text, {f['brand']} AS brand,
                       {f['price']} AS price_text, try_cast({f['price']} AS DOUBLE) AS price,
                       {f['query']} AS query, {f['title']} AS title
                FROM ({rows})
            )
        )"""


def _create_checked_view(con, sources: list[_Source]) -> None:
    union = " UNION ALL ".join(
        f"SELECT {i} AS file_index, * FROM checked_{i}" for i in range(len(sources))
    )
    con.execute(f"CREATE VIEW checked AS {union}")
    con.execute("CREATE VIEW kept AS SELECT * FROM checked WHERE reason IS NULL")


# ------------------------------------------------------------------------- SQL: outputs


def _events_sql(fmt: LogFormat, sources: list[_Source], path: Path, gap_minutes: float) -> str:
    source = "kept"
    if fmt.ts_resolution == "day":
        # A day-level log knows no time of day: the session is the buyer's day.
        # (a DATE cast prints YYYY-MM-DD like strftime, at a fraction of the cost)
        session = "buyer || '@' || CAST(CAST(ts AS DATE) AS VARCHAR)"
    elif _has_session_ids(fmt, sources):
        session = "session"
    else:
        prefix = "shop || '|' || buyer" if fmt.session_scope == "shop_buyer" else "buyer"
        session = f"{prefix} || '#' || session_number"
        source = f"kept JOIN ({_session_numbers_sql(fmt, gap_minutes)}) USING (file_index, source_row)"
    return f"""
        COPY (
            -- nullif with a value that cannot occur keeps each column nullable, as
            -- EVENTS_SCHEMA says; DuckDB marks columns it proves NULL-free as REQUIRED.
            SELECT nullif(shop, '') AS shop_id, nullif(buyer, '') AS buyer_id,
                   nullif({session}, '') AS session_id,
                   nullif(ts, TIMESTAMPTZ '-infinity') AS ts, nullif(event_type, '') AS event_type,
                   nullif(product, '') AS product_id, nullif(category, '') AS category,
                   nullif(price, -1) AS price, nullif(query, '') AS query,
                   nullif(source_row, 0) AS source_row
            FROM {source}
        ) TO {_quote(path)} ({PARQUET_OPTIONS})"""


def _session_numbers_sql(fmt: LogFormat, gap_minutes: float) -> str:
    """Each kept row's session number within its buyer (or shop x buyer), cut at the gap.

    The two windows see only the columns they need, and the numbers are joined back to the
    rows by (file_index, source_row): a window sorts every column it carries, and carrying
    the whole row through two of them cost more than the join.
    """
    scope = "shop, buyer" if fmt.session_scope == "shop_buyer" else "buyer"
    order = "ts, file_index, source_row"
    gap_us = round(float(gap_minutes) * 60 * 1_000_000)
    return f"""
        SELECT file_index, source_row,
               sum(starts_session) OVER (PARTITION BY {scope} ORDER BY {order}
                                         ROWS UNBOUNDED PRECEDING) AS session_number
        FROM (
            -- integer microseconds: comparing INTERVALs costs more than the window itself
            SELECT {scope}, {order}, CASE WHEN epoch_us(ts) - epoch_us(lag(ts) OVER w) <= {gap_us}
                                     THEN 0 ELSE 1 END AS starts_session
            FROM kept WINDOW w AS (PARTITION BY {scope} ORDER BY {order})
        )"""


def _catalog_sql(fmt: LogFormat, path: Path) -> str:
    # The title is composed once per product, from the fields of one of its rows, rather than
    # for every event and then thrown away by any_value (regexp_extract per event was most of
    # this step). category and brand are still any non-NULL value, each on its own.
    title = TITLE_RECIPES[fmt.title_recipe]
    return f"""
        COPY (
            SELECT nullif(shop, '') AS shop_id, nullif(product, '') AS product_id,
                   {title} AS title, any_category AS category, any_brand AS brand, price
            FROM (
                SELECT shop, product, one.brand AS brand, one.category_text AS category_text,
                       one.category AS category, one.title AS title,
                       any_category, any_brand, price
                FROM (
                    SELECT shop, product,
                           any_value({{'brand': brand, 'category_text': category_text,
                                      'category': category, 'title': title}}) AS one,
                           any_value(category) AS any_category, any_value(brand) AS any_brand,
                           arg_max(price, ts) FILTER (WHERE price IS NOT NULL) AS price
                    FROM kept WHERE product IS NOT NULL GROUP BY shop, product
                )
            )
        ) TO {_quote(path)} ({PARQUET_OPTIONS})"""


def _rejected_sql(sources: list[_Source], path: Path) -> str:
    parts = []
    for i, src in enumerate(sources):
        parts.append(f"SELECT {i} AS file_index, source_row, reason, raw FROM rejects_{i}")
        line = _raw_line_sql([f"raw_fields[{j + 1}]" for j in range(len(src.columns))])
        parts.append(
            f"SELECT {i}, source_row, reason, {line} FROM checked "
            f"WHERE reason IS NOT NULL AND file_index = {i}"
        )
    return f"""
        COPY (
            -- nullif keeps the columns nullable, as REJECTED_SCHEMA says
            SELECT nullif(f.source_file, '') AS source_file, nullif(r.source_row, 0) AS source_row,
                   nullif(r.reason, '') AS reason, r.raw
            FROM ({' UNION ALL '.join(parts)}) r JOIN source_files f USING (file_index)
        ) TO {_quote(path)} ({PARQUET_OPTIONS})"""


def _conform_schema(path: Path, schema: pa.Schema) -> None:
    """Make the file's Arrow schema exactly `schema`.

    DuckDB marks a column REQUIRED when it can prove it has no NULLs (a constant shop id, a row
    number), which the shared schemas do not say; such files are rewritten batch by batch.
    """
    if pq.read_schema(path).remove_metadata().equals(schema):
        return
    fixed = path.with_suffix(".conform.parquet")
    source = pq.ParquetFile(path)
    with pq.ParquetWriter(fixed, schema, compression="zstd") as writer:
        for batch in source.iter_batches(batch_size=65_536):
            writer.write_table(pa.Table.from_batches([batch]).cast(schema))
    fixed.replace(path)


def _counts(con, sources: list[_Source], events: Path, rejected: Path) -> dict:
    """Rows read (every row checked plus every unparsable line), kept and rejected by reason."""
    checked = " + ".join(f"(SELECT count(*) FROM checked_{i})" for i in range(len(sources)))
    unparsable = " + ".join(f"(SELECT count(*) FROM rejects_{i})" for i in range(len(sources)))
    n_checked, n_unparsable = con.execute(f"SELECT {checked}, {unparsable}").fetchone()
    by_reason = dict(con.execute(
        f"SELECT reason, count(*) FROM read_parquet({_quote(rejected)}) "
        f"GROUP BY reason ORDER BY count(*) DESC, reason"
    ).fetchall())
    return {
        "read": n_checked + n_unparsable,
        "kept": pq.ParquetFile(events).metadata.num_rows,
        "rejected": pq.ParquetFile(rejected).metadata.num_rows,
        "by_reason": by_reason,
    }


def _event_stats(con, events: Path, catalog: Path) -> dict:
    e = f"read_parquet({_quote(events)})"
    # one scan for the distinct counts and the events by type (histogram), one for the pairs
    shops, buyers, sessions, histogram = con.execute(
        f"SELECT count(DISTINCT shop_id), count(DISTINCT buyer_id), count(DISTINCT session_id), "
        f"histogram(event_type) FROM {e}"
    ).fetchone()
    pairs, converted = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE bought) FROM (SELECT shop_id, buyer_id, "
        f"bool_or(event_type = 'purchase') AS bought FROM {e} GROUP BY ALL)"
    ).fetchone()
    by_type = dict(sorted((histogram or {}).items(), key=lambda kv: (-kv[1], kv[0])))
    products = con.execute(f"SELECT count(*) FROM read_parquet({_quote(catalog)})").fetchone()[0]
    return {
        "shops": shops,
        "buyers": buyers,
        "buyer_shop_pairs": pairs,
        "sessions": sessions,
        "products": products,
        "conversion_rate": round(converted / pairs, 6) if pairs else 0.0,
        "events_by_type": by_type,
    }


def _shop_note(fmt: LogFormat, shop_field: str) -> str:
    if shop_field == SINGLE_SHOP:
        return f"every event is in one shop, {SINGLE_SHOP_ID!r}"
    if shop_field == fmt.shop_field:
        return fmt.shop_note
    return f"{shop_field} chosen as the shop stand-in instead of the default {fmt.shop_field}"


def _session_rule(fmt: LogFormat, sources: list[_Source], gap_minutes: float) -> str:
    if fmt.ts_resolution == "day":
        return ("buyer-day (day-level timestamps; ts is midnight UTC, order within a day is "
                "source_row)")
    if _has_session_ids(fmt, sources):
        return f"session ids from column {fmt.fields['session']}"
    scope = "shop x buyer" if fmt.session_scope == "shop_buyer" else "buyer"
    return f"{gap_minutes:g}-minute inactivity gap per {scope}"


def _has_session_ids(fmt: LogFormat, sources: list[_Source]) -> bool:
    """True when every input names its sessions; otherwise sessions are cut at a gap."""
    return "session" in fmt.fields and all(s.has(fmt.fields["session"]) for s in sources)


def _title_source(fmt: LogFormat, sources: list[_Source]) -> str:
    if fmt.title_recipe == "text":
        return "text"
    if fmt.title_recipe == "given" and all(s.has(fmt.fields["title"]) for s in sources):
        return "text"
    return "ids"


def _quote(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


# ------------------------------------------------------------------------------ progress


class _Runner:
    """Runs SQL statements, drawing DuckDB's own progress estimate as a rich bar."""

    def __init__(self, con, show_progress: bool, console: Console | None):
        self.con = con
        self.show_progress = show_progress
        self.console = console

    def run(self, sql: str, description: str) -> None:
        if not self.show_progress:
            self.con.execute(sql)
            return
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self.con.execute(sql)
            except BaseException as exc:  # re-raised in the caller's thread below
                failure.append(exc)

        thread = threading.Thread(target=work, daemon=True)
        columns = (TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(description, total=100)
            thread.start()
            while thread.is_alive():
                thread.join(0.2)
                done = self.con.query_progress()
                if done >= 0:
                    progress.update(task, completed=done)
            progress.update(task, completed=100)
        if failure:
            raise failure[0]
