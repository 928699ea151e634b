"""Property-based fuzzing of `ingest` (hypothesis): corrupted CSV logs of every known format.

Each generated file holds a few good rows and MALFORMED_PER_FILE corrupted ones (bad timestamps,
unknown event codes, missing ids, negative/NaN/huge prices, non-UTF-8 bytes, wrong column counts,
stray quotes, embedded newlines, NUL bytes, very long fields), under file-level damage (BOM, CRLF,
no final newline, empty file, header only). The property:

- ingest raises IngestError (the project's own, clear error), or
- it succeeds with rows_read == rows_kept + rows_rejected; every rejected row has a reason, a row
  number and its file; every kept row is a valid event; no row we know to be bad was kept; and
  when the damage cannot merge lines (no quotes or newlines inside fields), exactly the bad rows
  were rejected and exactly the good ones kept, each on its own line number.

Every data row carries its line number in its buyer id (BUYER_BASE + line), so a kept event
tells which line it came from.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codebook.ingest import IngestConfig, IngestError, ingest
from codebook.schema import EVENT_TYPES

FILES_PER_FORMAT = 10      # x 5 formats; ingest costs ~0.3-1 s a file (a DuckDB run)
MALFORMED_PER_FILE = 24
MIN_MALFORMED_ROWS = 1000
BUYER_BASE = 100_000
PRODUCT_EVENTS = {"product_view", "add_to_wishlist", "add_to_cart", "remove_from_cart", "purchase"}


@dataclass(frozen=True)
class FuzzFormat:
    """A log format as the fuzzer writes it: column order and which column plays which role."""

    name: str
    columns: tuple[str, ...]
    header: bool
    roles: dict[str, str]           # buyer, event, ts, product, shop, price -> column
    good_values: dict[str, list[str]]
    bad_ts: tuple[str, ...]
    events: tuple[str, ...]


COMMON_BAD_TS = ("", "   ", "yesterday", "2019-13-45 99:99:99", "٣٤٥", "NaN", "0x1F")
FORMATS = {
    "tmall_brand_2014": FuzzFormat(
        "tmall_brand_2014", ("user_id", "brand_id", "type", "visit_datetime"), True,
        {"buyer": "user_id", "event": "type", "ts": "visit_datetime", "shop": "brand_id"},
        {"brand_id": ["1", "2", "35"], "visit_datetime": ["4-15", "7-1", "12-31"]},
        COMMON_BAD_TS + ("13-45", "2-30", "4/15", "0415"), ("0", "1", "2", "3"),
    ),
    "ijcai15_user_log": FuzzFormat(
        "ijcai15_user_log",
        ("user_id", "item_id", "cat_id", "seller_id", "brand_id", "time_stamp", "action_type"), True,
        {"buyer": "user_id", "event": "action_type", "ts": "time_stamp", "product": "item_id", "shop": "seller_id"},
        {"item_id": ["11", "12", "13"], "cat_id": ["7", "8"], "seller_id": ["100", "200"],
         "brand_id": ["5", ""], "time_stamp": ["0829", "829", "1111", "0511"]},
        COMMON_BAD_TS + ("1345", "0230", "12345", "8-29"), ("0", "1", "2", "3"),
    ),
    "rees46": FuzzFormat(
        "rees46",
        ("event_time", "event_type", "product_id", "category_id", "category_code", "brand", "price",
         "user_id", "user_session"), True,
        {"buyer": "user_id", "event": "event_type", "ts": "event_time", "product": "product_id",
         "shop": "brand", "price": "price"},
        {"event_time": ["2019-10-01 00:00:00 UTC", "2019-11-30 23:59:59 UTC"], "product_id": ["1", "2"],
         "category_id": ["10"], "category_code": ["electronics.smartphone", ""], "brand": ["apple", "acme"],
         "price": ["10.5", "0", "1e300", ""], "user_session": ["s1", "s2"]},
        COMMON_BAD_TS + ("2019-10-32 00:00:00 UTC", "2019-10-01 25:00:00 UTC"),
        ("view", "cart", "remove_from_cart", "purchase"),
    ),
    "taobao_user_behavior": FuzzFormat(
        "taobao_user_behavior", ("user_id", "item_id", "category_id", "behavior_type", "timestamp"), False,
        {"buyer": "user_id", "event": "behavior_type", "ts": "timestamp", "product": "item_id", "shop": "category_id"},
        {"item_id": ["5", "6"], "category_id": ["40", "41"], "timestamp": ["1511544070", "1512000000"]},
        COMMON_BAD_TS + ("151154407012345", "1511544070.5", "-1511544070"), ("pv", "buy", "cart", "fav"),
    ),
    "generic": FuzzFormat(
        "generic", ("shop_id", "buyer_id", "ts", "event_type", "product_id", "price", "title"), True,
        {"buyer": "buyer_id", "event": "event_type", "ts": "ts", "product": "product_id", "shop": "shop_id",
         "price": "price"},
        {"shop_id": ["s1", "s2"], "ts": ["2024-05-01 13:45:10", "2024-05-01T13:45:10+02:00", "1714571110"],
         "product_id": ["p1", "p2"], "price": ["3.5", "", "0"], "title": ["Red shoe", ""]},
        COMMON_BAD_TS + ("2024-02-30 10:00:00", "99999999999999", "-5"),
        ("view", "cart", "purchase", "PRODUCT_VIEW", "pv", "page_view"),
    ),
}

# Corruptions of one row. "bad": the row must be rejected. "ok": it must be kept. "either": kept
# or rejected. "merge": the damage may join lines or change how the CSV splits (quotes, newlines),
# so only the general property is checked for that file.
ROW_CORRUPTIONS = {
    "bad_ts": "bad", "unknown_event": "bad", "missing_buyer": "bad", "missing_product": "bad",
    "missing_shop": "bad", "bad_price": "bad", "non_utf8": "bad", "too_few_columns": "bad",
    "too_many_columns": "bad", "nul_byte": "bad",
    "trailing_comma": "either",   # empty extra fields: DuckDB reads them as the end of the line
    "stray_quote": "merge", "embedded_newline": "merge", "quoted_comma": "merge",
    "long_field": "ok", "spaces_around": "ok",
}
BAD_PRICES = ("-3", "-0.01", "NaN", "nan", "inf", "-Infinity", "1e400", "abc", "€5", "0x10")
# Whole-file damage. Empty and header-only files hold no rows: test_files_without_rows covers them.
FILE_DAMAGE = ("none", "bom", "crlf", "no_final_newline", "blank_lines")


@dataclass
class Line:
    data: bytes
    kind: str        # "good", or the ROW_CORRUPTIONS verdict: "bad", "merge", "ok"
    line_no: int     # 1-based number among the data lines
    corruption: str = ""


def csv_field(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n\r') else value


def good_row(fmt: FuzzFormat, line_no: int, choose) -> dict[str, str]:
    """A valid row; `choose(options)` picks one value (hypothesis draws it, or the first)."""
    row = {column: choose(fmt.good_values.get(column, ["1"])) for column in fmt.columns}
    row[fmt.roles["buyer"]] = str(BUYER_BASE + line_no)
    row[fmt.roles["event"]] = choose(fmt.events)
    return row


def corrupt(fmt: FuzzFormat, row: dict[str, str], corruption: str, draw) -> bytes | None:
    """The corrupted line as bytes, or None when the corruption does not apply to this format."""
    roles = fmt.roles
    pick = lambda options: draw(st.sampled_from(options))  # noqa: E731
    if corruption == "bad_ts":
        row[roles["ts"]] = pick(fmt.bad_ts)
    elif corruption == "unknown_event":
        row[roles["event"]] = pick(("teleport", "9", "", "-1", "view;drop table", "\u200bview"))
    elif corruption == "missing_buyer":
        row[roles["buyer"]] = pick(("", "  "))
    elif corruption in ("missing_product", "missing_shop"):
        column = roles.get(corruption.split("_")[1])
        if column is None:
            return None
        row[column] = ""
        if corruption == "missing_product":   # a product-less page_view is a valid event
            row[roles["event"]] = fmt.events[0]
    elif corruption == "bad_price":
        if "price" not in roles:
            return None
        row[roles["price"]] = pick(BAD_PRICES)
    elif corruption == "spaces_around":
        column = pick(list(fmt.columns))
        row[column] = f"  {row[column]} "
    elif corruption == "long_field":
        if "title" in row:
            row["title"] = "x" * draw(st.integers(1000, 60_000))
        elif "category_code" in row:
            row["category_code"] = "a." * draw(st.integers(500, 30_000)) + "b"
        else:
            return None
    elif corruption == "quoted_comma":
        column = pick([c for c in fmt.columns if c != roles["buyer"]])
        row[column] = row[column] + ",x"
    elif corruption == "embedded_newline":
        column = pick([c for c in fmt.columns if c != roles["buyer"]])
        row[column] = row[column] + pick(("\n", "\r\n", "\n\n"))
    values = [row[c] for c in fmt.columns]
    text = ",".join(csv_field(v) for v in values)
    if corruption == "too_few_columns":
        text = ",".join(csv_field(v) for v in values[:-draw(st.integers(1, len(values) - 1))])
    elif corruption == "too_many_columns":
        text += pick((",extra", ',"q"', ",,,x", ",0"))
    elif corruption == "trailing_comma":
        text += pick((",", ",,", ",,,"))
    elif corruption == "stray_quote":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + '"' + text[at:]
    data = text.encode("utf-8")
    if corruption in ("non_utf8", "nul_byte"):
        # inside the buyer id (NUL bytes are rejected in ids, non-UTF-8 bytes anywhere)
        at = data.index(row[roles["buyer"]].encode()) + 1
        bad = pick((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80")) if corruption == "non_utf8" else b"\x00"
        data = data[:at] + bad + data[at:]
    return data


@st.composite
def corrupted_logs(draw, fmt: FuzzFormat) -> tuple[FuzzFormat, str, list[Line]]:
    damage = draw(st.sampled_from(FILE_DAMAGE))
    n_good = draw(st.integers(1, 6))
    # Half the files keep every line on its own (no quotes or newlines inside fields), so that
    # the exact check of row numbers runs on them.
    allowed = sorted(k for k, verdict in ROW_CORRUPTIONS.items() if draw(st.booleans()) or verdict != "merge")
    kinds = ["good"] * n_good + draw(st.lists(st.sampled_from(allowed),
                                              min_size=MALFORMED_PER_FILE, max_size=MALFORMED_PER_FILE))
    order = draw(st.permutations(kinds))
    if not fmt.header:   # a headerless format is recognised by its first row, so keep that one good
        order = ["good"] + [k for k in order if k != "good"] + ["good"] * (n_good - 1)
    lines: list[Line] = []
    for kind in order:
        line_no = len(lines) + 1
        row = good_row(fmt, line_no, lambda options: draw(st.sampled_from(options)))
        if kind == "good":
            lines.append(Line(",".join(csv_field(row[c]) for c in fmt.columns).encode(), "good", line_no))
            continue
        data = corrupt(fmt, row, kind, draw)
        if data is None:   # not applicable to this format (no price column, say): a bad timestamp
            kind = "bad_ts"
            data = corrupt(fmt, row, kind, draw)
        lines.append(Line(data, ROW_CORRUPTIONS[kind], line_no, kind))
    return fmt, damage, lines


def write_log(path: Path, fmt: FuzzFormat, damage: str, lines: list[Line]) -> list[Line]:
    """Write the file; returns the data lines it really holds (none for empty / header only)."""
    newline = b"\r\n" if damage == "crlf" else b"\n"
    header = [",".join(fmt.columns).encode()] if fmt.header else []
    if damage == "empty":
        path.write_bytes(b"")
        return []
    if damage == "header_only":
        lines = []
    body = [line.data for line in lines]
    if damage == "blank_lines":
        body = [part for data in body for part in (data, b"")]
    data = newline.join(header + body) + (b"" if damage == "no_final_newline" else newline)
    if damage == "bom":
        data = b"\xef\xbb\xbf" + data
    path.write_bytes(data)
    return lines


def check_outputs(result, fmt: FuzzFormat, damage: str, lines: list[Line]) -> bool:
    """Assert the property; True when the exact line-by-line check ran too."""
    assert result.rows_read == result.rows_kept + result.rows_rejected
    assert sum(result.rejected_by_reason.values()) == result.rows_rejected
    rejected = pq.read_table(result.rejected_path).to_pylist()
    assert len(rejected) == result.rows_rejected
    for row in rejected:
        assert row["reason"], row
        assert row["source_row"] is not None and row["source_row"] >= 1, row
        assert row["source_file"], row

    events = pq.read_table(result.events_path).to_pylist()
    assert len(events) == result.rows_kept
    by_line = {line.line_no: line for line in lines}
    for event in events:
        assert event["shop_id"] and event["buyer_id"], event
        assert event["event_type"] in EVENT_TYPES, event
        assert event["ts"] is not None and event["source_row"] is not None, event
        if event["price"] is not None:
            assert math.isfinite(event["price"]) and event["price"] >= 0, event
        if event["event_type"] in PRODUCT_EVENTS:
            assert event["product_id"], event
        if not event["buyer_id"].isdigit():   # a stray quote can become part of an id
            assert any(line.kind == "merge" for line in lines), event
            continue
        line = by_line.get(int(event["buyer_id"]) - BUYER_BASE)   # a buyer id is BUYER_BASE + line
        assert line is not None and line.kind != "bad", (event, line)

    if any(line.kind == "merge" for line in lines):
        return False   # quotes and newlines inside fields may join lines: only the above holds
    # Line numbers count from the first line after the header; blank lines count too.
    step = 2 if damage == "blank_lines" else 1
    expect_kept = {(line.line_no - 1) * step + 1 for line in lines if line.kind in ("good", "ok")}
    expect_rejected = {(line.line_no - 1) * step + 1 for line in lines if line.kind == "bad"}
    either = {(line.line_no - 1) * step + 1 for line in lines if line.kind == "either"}
    kept_rows = [e["source_row"] for e in events]
    rejected_rows = [r["source_row"] for r in rejected]
    assert len(set(kept_rows)) == len(kept_rows) and len(set(rejected_rows)) == len(rejected_rows)
    assert set(kept_rows) - either == expect_kept
    assert set(rejected_rows) - either == expect_rejected, Counter(r["reason"] for r in rejected)
    assert result.rows_read == len(expect_kept) + len(expect_rejected) + len(either)
    return True


def test_corrupted_logs_of_every_format_are_ingested_or_refused_clearly(tmp_path_factory):
    tally: Counter = Counter()

    def check(generated) -> None:
        fmt, damage, lines = generated
        folder = tmp_path_factory.mktemp(fmt.name)
        lines = write_log(folder / "log.csv", fmt, damage, lines)
        tally["files"] += 1
        tally[f"format {fmt.name}"] += 1
        tally["malformed rows"] += sum(line.kind != "good" for line in lines)
        tally.update(f"corruption {line.corruption}" for line in lines if line.corruption)
        try:
            result = ingest(folder / "log.csv", folder / "out", IngestConfig(threads=1))
        except IngestError as error:
            assert str(folder / "log.csv") in str(error), "the error must name the file"
            tally["refused with IngestError"] += 1
            return
        tally["files checked line by line"] += check_outputs(result, fmt, damage, lines)
        tally["rows rejected"] += result.rows_rejected
        tally["rows kept"] += result.rows_kept

    fuzz = settings(max_examples=FILES_PER_FORMAT, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    for fmt in FORMATS.values():   # every format gets its share of files
        fuzz(given(corrupted_logs(fmt))(check))()
    print("\ningest fuzz:", dict(sorted(tally.items())))
    print(f"ingest fuzz: {tally['files']} files, {tally['malformed rows']} malformed rows")
    assert tally["malformed rows"] >= MIN_MALFORMED_ROWS, tally
    assert tally["files"] >= FILES_PER_FORMAT * len(FORMATS)
    assert tally["files checked line by line"] >= 5, tally


@pytest.mark.parametrize("damage", ["empty", "header_only"])
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_files_without_rows_are_refused_or_ingested_as_empty(tmp_path, name, damage):
    fmt = FORMATS[name]
    path = tmp_path / "log.csv"
    write_log(path, fmt, damage, [])
    try:
        result = ingest(path, tmp_path / "out", IngestConfig(threads=1))
    except IngestError as error:
        assert str(path) in str(error) and ("empty" in str(error) or "unknown log format" in str(error))
        return
    assert damage == "header_only" and fmt.header
    assert (result.rows_read, result.rows_kept, result.rows_rejected) == (0, 0, 0)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_a_line_over_duckdbs_maximum_is_rejected_not_fatal(tmp_path, name):
    fmt = FORMATS[name]
    first = lambda options: options[0]  # noqa: E731
    good = ",".join(csv_field(v) for v in good_row(fmt, 1, first).values())
    long_row = good_row(fmt, 2, first)
    long_row[fmt.roles["event"]] = "x" * (2_100_000)   # DuckDB's default max_line_size is 2,097,152
    path = tmp_path / "long.csv"
    rows = [good, ",".join(long_row[c] for c in fmt.columns), good.replace(str(BUYER_BASE + 1), str(BUYER_BASE + 3))]
    path.write_text("\n".join(([",".join(fmt.columns)] if fmt.header else []) + rows) + "\n")
    result = ingest(path, tmp_path / "out", IngestConfig(threads=1))
    assert result.rows_read == result.rows_kept + result.rows_rejected == 3
    assert result.rows_kept == 2
    rejected = pq.read_table(result.rejected_path).to_pylist()
    assert [r["source_row"] for r in rejected] == [2] and rejected[0]["reason"]


def test_rejected_rows_are_readable_with_duckdb(tmp_path):
    """rejected.parquet holds raw lines with NUL and replacement characters; DuckDB still reads it."""
    fmt = FORMATS["generic"]
    path = tmp_path / "log.csv"
    path.write_bytes(b"shop_id,buyer_id,ts,event_type,product_id,price,title\n"
                     b"s1,1\x00,2024-05-01 10:00:00,view,p1,1,a\n"
                     b"s1,2\xff,2024-05-01 10:00:00,view,p1,1,a\n"
                     b"s1,3,2024-05-01 10:00:00,view,p1,1,a\n")
    result = ingest(path, tmp_path / "out", IngestConfig(threads=1))
    assert result.rows_read == 3 and result.rows_kept == 1, fmt.name
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{result.rejected_path}')").fetchall()[0][0]
    assert n == 2


@pytest.mark.parametrize("name, data", [
    ("huge_first_line.csv", b"a" * (2 << 20)),                              # one field over csv's limit
    ("cr_only.csv", b"user_id,brand_id,type,visit_datetime\r1,2,0,4-15\r"),  # old Mac line ends
    ("broken.parquet", b"PAR1 not really parquet"),
    ("empty.parquet", b""),
    ("utf16.csv", "user_id,brand_id,type,visit_datetime\n1,2,0,4-15\n".encode("utf-16")),
    ("nul_header.csv", b"user_id,brand\x00_id,type,visit_datetime\n1,2,0,4-15\n"),
    ("bom_only.csv", b"\xef\xbb\xbf"),
    ("blank_first_line.csv", b"\r\nuser_id,brand_id,type,visit_datetime\n1,2,0,4-15\n"),
])
def test_unreadable_files_raise_ingest_error_naming_the_file(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(IngestError) as caught:
        ingest(path, tmp_path / "out", IngestConfig(threads=1))
    assert str(path) in str(caught.value)
