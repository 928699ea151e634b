"""codebook.ingest on the real logs in /work/shared/data and on deliberately broken files.

Expected counts come from each dataset's SOURCE.md or are recomputed here from the raw file with
the csv module, never from the code under test.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from codebook.formats import FORMATS, UnknownFormatError, detect_format
from codebook.ingest import IngestConfig, IngestError, ingest, read_ingest_result, summary_table
from codebook.schema import CATALOG_SCHEMA, EVENT_TYPES, EVENTS_SCHEMA, REJECTED_SCHEMA

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TMALL = DATA / "tmall_brand_2014" / "t_alibaba_data.csv"
IJCAI_HEAD = DATA / "tmall_ijcai15_repeat_buyers" / "user_log_format1_head.csv"
IJCAI_SLICE = DATA / "tmall_ijcai15_repeat_buyers" / "user_log_format1_double11_slice.csv"
IJCAI_RAW_PANDAS = (
    DATA / "tmall_ijcai15_repeat_buyers" / "raw"
    / "Carmelo1997_BIT_DM_PROJECT__dataset_user_log_format1.csv"
)
IJCAI_RAW_DBLAB = (
    DATA / "tmall_ijcai15_repeat_buyers" / "raw"
    / "Hou0318-0717_taobao-realtime-dashboard__data_user_log.csv"
)
REES46 = DATA / "rees46_multicategory_2019oct" / "2019-Oct_head17k.csv"
TAOBAO = DATA / "taobao_userbehavior_2017" / "UserBehavior_head.csv"

needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real data folder {DATA} is absent (it sits beside the repo)"
)


def sql(query: str) -> list[tuple]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.execute(query).fetchall()


def events_of(result) -> str:
    return f"read_parquet('{result.events_path}')"


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# ----------------------------------------------------------------------------- real logs


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """Each real file ingested once, by name."""
    cache: dict[str, object] = {}

    def get(name: str, path: Path, **options):
        if name not in cache:
            out = tmp_path_factory.mktemp(name)
            cache[name] = ingest(path, out, IngestConfig(threads=2, **options))
        return cache[name]

    return get


# name, file, format, rows, buyers, shops, sessions, conversion of buyer x shop pairs
SOURCE_MD_FIGURES = [
    ("tmall", TMALL, "tmall_brand_2014", 182_880, 884, 9_531, 31_739, 0.0785),
    ("ijcai_head", IJCAI_HEAD, "ijcai15_user_log", 9_465, 61, 1_430, 1_381, 0.162),
    ("ijcai_slice", IJCAI_SLICE, "ijcai15_user_log", 9_956, 357, 1_215, 357, 0.358),
    ("taobao", TAOBAO, "taobao_user_behavior", 84_287, 814, 2_911, 14_096, None),
]


@needs_data
@pytest.mark.parametrize(
    "name,path,fmt,rows,buyers,shops,sessions,conversion", SOURCE_MD_FIGURES,
    ids=[f[0] for f in SOURCE_MD_FIGURES],
)
def test_public_logs_match_source_md(ingested, name, path, fmt, rows, buyers, shops, sessions,
                                     conversion):
    result = ingested(name, path)
    assert result.format == fmt
    assert result.rows_read == rows == result.rows_kept + result.rows_rejected
    assert result.rows_rejected == 0
    assert (result.buyers, result.shops, result.sessions) == (buyers, shops, sessions)
    if conversion is not None:
        assert round(result.conversion_rate, 4 if conversion == 0.0785 else 3) == conversion
    assert set(result.events_by_type) <= set(EVENT_TYPES)
    assert sum(result.events_by_type.values()) == result.rows_kept


@needs_data
def test_tmall_event_codes_and_pseudo_products(ingested):
    result = ingested("tmall", TMALL)
    assert result.events_by_type == {
        "product_view": 174_539, "purchase": 6_984, "add_to_wishlist": 1_204, "add_to_cart": 153,
    }
    assert result.shop_field == "brand_id" and result.title_source == "ids"
    assert "pseudo-product per brand" in result.catalog_note
    assert result.products == result.shops  # one pseudo-product per brand
    first = sql(f"SELECT shop_id, buyer_id, product_id, event_type, strftime(ts, '%Y-%m-%d %H:%M') "
                f"FROM {events_of(result)} WHERE source_row = 1")
    assert first == [("13451", "10944750", "brand:13451", "product_view", "2013-06-04 00:00")]


@needs_data
def test_day_level_logs_invent_no_time_of_day(ingested):
    for name, path in (("tmall", TMALL), ("ijcai_head", IJCAI_HEAD)):
        result = ingested(name, path)
        assert result.ts_resolution == "day"
        assert "buyer-day" in result.session_rule
        meta = json.loads(result.meta_path.read_text())
        assert meta["ts_resolution"] == "day"
        off_midnight = sql(f"SELECT count(*) FROM {events_of(result)} "
                           f"WHERE ts <> date_trunc('day', ts)")[0][0]
        assert off_midnight == 0
        # same-day order survives through source_row: it is the data line number
        n_rows, distinct_rows, top = sql(
            f"SELECT count(*), count(DISTINCT source_row), max(source_row) FROM {events_of(result)}"
        )[0]
        assert n_rows == distinct_rows == top


@needs_data
def test_taobao_is_headerless_and_its_shop_proxy_is_called_weak(ingested):
    assert detect_format(["1", "2268318", "2520377", "pv", "1511544070"], "x").name == (
        "taobao_user_behavior"
    )
    result = ingested("taobao", TAOBAO)
    assert result.shop_field == "category_id" and "WEAK" in result.shop_note
    assert result.events_by_type == {
        "product_view": 75_693, "add_to_cart": 4_494, "add_to_wishlist": 2_351, "purchase": 1_749,
    }
    assert "30-minute inactivity gap" in result.session_rule


@needs_data
def test_rees46_rows_without_brand_are_rejected_and_counted(ingested):
    with open(REES46, newline="") as f:
        rows = list(csv.DictReader(f))
    no_brand = [r for r in rows if not r["brand"].strip()]
    buyers_with_brand = {r["user_id"] for r in rows if r["brand"].strip()}
    result = ingested("rees46", REES46)
    assert result.rows_read == len(rows) == 17_434
    assert result.rejected_by_reason == {"missing shop id": len(no_brand)}
    assert result.rows_kept == len(rows) - len(no_brand)
    assert result.buyers == len(buyers_with_brand)
    assert result.title_source == "text" and result.shop_field == "brand"
    titles = dict(sql(f"SELECT product_id, title FROM read_parquet('{result.catalog_path}')"))
    assert titles["1005004"] == "Huawei smartphone"


@needs_data
def test_rees46_as_one_shop_matches_source_md(ingested):
    result = ingested("rees46_single", REES46, shop_field="single")
    assert (result.rows_kept, result.buyers, result.sessions, result.shops) == (
        17_434, 4_504, 5_066, 1
    )
    assert round(result.conversion_rate, 4) == 0.0429  # 193 / 4,504 users
    assert result.events_by_type == {"product_view": 17_055, "purchase": 214, "add_to_cart": 165}
    assert "user_session" in result.session_rule


@needs_data
def test_rees46_other_shop_field_and_a_forbidden_one(ingested, tmp_path):
    result = ingested("rees46_code", REES46, shop_field="category_code")
    with open(REES46, newline="") as f:
        codes = {r["category_code"] for r in csv.DictReader(f) if r["category_code"]}
    assert result.shops == len(codes) == 115
    with pytest.raises(IngestError, match="category_code, category_id, single"):
        ingest(REES46, tmp_path, IngestConfig(shop_field="user_id"))


def _core_events(result, exclude_buyer: str) -> list[tuple]:
    return sql(
        f"SELECT shop_id, buyer_id, ts::VARCHAR, event_type, product_id, category, count(*) "
        f"FROM {events_of(result)} WHERE buyer_id <> '{exclude_buyer}' GROUP BY ALL ORDER BY ALL"
    )


@needs_data
def test_raw_ijcai_copies_give_the_same_events_as_the_normalised_files(ingested):
    pandas_copy = ingested("ijcai_raw_pandas", IJCAI_RAW_PANDAS)
    dblab_copy = ingested("ijcai_raw_dblab", IJCAI_RAW_DBLAB)
    assert pandas_copy.format == "ijcai15_user_log_pandas"
    assert dblab_copy.format == "ijcai15_dblab"
    assert pandas_copy.rows_read == dblab_copy.rows_read == 10_000
    assert pandas_copy.rows_rejected == dblab_copy.rows_rejected == 0
    brands = sql(f"SELECT count(*) FROM read_parquet('{pandas_copy.catalog_path}') "
                 f"WHERE brand LIKE '%.%'")[0][0]
    assert brands == 0  # "2661.0" became "2661"
    # SOURCE.md: the normalised files are the raw ones minus the last, possibly cut-off user.
    assert _core_events(pandas_copy, "283204") == _core_events(ingested("ijcai_head", IJCAI_HEAD),
                                                               "283204")
    assert _core_events(dblab_copy, "166924") == _core_events(
        ingested("ijcai_slice", IJCAI_SLICE), "166924"
    )


@needs_data
def test_output_files_have_the_shared_schemas(ingested):
    result = ingested("rees46", REES46)
    for path, schema in ((result.events_path, EVENTS_SCHEMA), (result.catalog_path, CATALOG_SCHEMA),
                         (result.rejected_path, REJECTED_SCHEMA)):
        assert pq.read_schema(path).remove_metadata().equals(schema), path
    meta = json.loads(result.meta_path.read_text())
    for key in ("format", "source_files", "shop_field", "ts_resolution", "title_source",
                "catalog_note", "rows_read", "rows_kept", "rows_rejected", "rejected_by_reason",
                "shops", "buyers", "buyer_shop_pairs", "sessions", "conversion_rate",
                "events_by_type"):
        assert key in meta
    assert read_ingest_result(result.out_dir) == result


@needs_data
def test_several_files_of_one_format_and_a_mix_of_formats(tmp_path):
    both = ingest([IJCAI_HEAD, IJCAI_SLICE], tmp_path / "both")
    assert both.rows_read == 9_465 + 9_956 and len(both.source_files) == 2
    assert both.buyers == 61 + 357 - 61  # the files share 61 users
    with pytest.raises(IngestError, match="one format"):
        ingest([IJCAI_HEAD, TMALL], tmp_path / "mixed")


@needs_data
def test_summary_table_renders(ingested):
    console = Console(record=True, width=160)
    console.print(summary_table(ingested("ijcai_head", IJCAI_HEAD)))
    text = console.export_text()
    assert "9,465" in text and "seller_id" in text and "16.23%" in text


# ------------------------------------------------------------------------ format detection


def test_every_known_header_is_detected():
    for fmt in FORMATS.values():
        if fmt.has_header and fmt.columns:
            assert detect_format(list(fmt.columns), "x") is fmt
    dblab_row = "328862,406349,1280,2700,5476,11,11,0,0,1,四川".split(",")
    assert detect_format(dblab_row, "x").name == "ijcai15_dblab"
    assert detect_format(["\ufeffshop_id", "buyer_id", "ts", "event_type", "price"], "x").name == (
        "generic"
    )


def test_unknown_header_error_lists_formats_and_what_it_saw(tmp_path):
    path = write(tmp_path / "odd.csv", "customer,when,what\n1,2024-01-01,view\n")
    with pytest.raises(IngestError) as caught:
        ingest(path, tmp_path / "out")
    assert isinstance(caught.value.__cause__, UnknownFormatError)
    message = str(caught.value)
    assert str(path) in message and "'customer', 'when', 'what'" in message
    for fmt in FORMATS.values():
        assert fmt.name in message
    assert "user_id,brand_id,type,visit_datetime" in message
    assert "required shop_id, buyer_id, ts, event_type" in message


# --------------------------------------------------------------------------- broken input

REES46_HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
)
GOOD = "2019-10-01 00:00:00 UTC,view,1,10,electronics.smartphone,apple,10.5,100,s1\n"
BROKEN_LINES = [  # (data line, expected reason or None for a kept row)
    (GOOD, None),
    ("2019-13-01 00:00:00 UTC,view,1,10,,apple,10.5,100,s1\n", "bad timestamp"),
    ("2019-10-01 00:01:00 UTC,teleport,1,10,,apple,10.5,100,s1\n", "unknown event code"),
    ("2019-10-01 00:02:00 UTC,view,,10,,apple,10.5,100,s1\n", "missing product id"),
    ("2019-10-01 00:02:00 UTC,view,1,10,,apple,10.5,,s1\n", "missing buyer id"),
    ("2019-10-01 00:02:00 UTC,view,1,10,,,10.5,100,s1\n", "missing shop id"),
    ("\n", "blank"),
    ("2019-10-01 00:03:00 UTC,view,1,10,,apple,-3,100,s1\n", "negative price"),
    ("2019-10-01 00:03:00 UTC,view,1,10,,app\xffle,3,100,s1\n", "non-UTF-8 bytes"),
    ("2019-10-01 00:03:00 UTC,view,1,10\n", "wrong column count"),
    ("2019-10-01 00:03:00 UTC,view,1,10,,apple,3,100,s1,extra\n", "wrong column count"),
    ('2019-10-01 00:04:00 UTC,cart,2,10,"a,b",apple,abc,100,s1\n', "bad price"),
    ("2019-10-01 00:05:00 UTC,purchase,2,10,,apple,3,100,s1\n", None),
]


def _broken_file(path: Path) -> Path:
    body = REES46_HEADER + "".join(line for line, _ in BROKEN_LINES)
    return write(path, body.encode("latin-1"))  # \xff becomes one invalid UTF-8 byte


def test_each_bad_row_is_rejected_with_its_reason_and_row_number(tmp_path):
    result = ingest(_broken_file(tmp_path / "broken.csv"), tmp_path / "out")
    expected = {row: reason for row, (_, reason) in enumerate(BROKEN_LINES, 1)
                if reason not in (None, "blank")}
    kept_rows = [row for row, (_, reason) in enumerate(BROKEN_LINES, 1) if reason is None]

    rejected = pq.read_table(result.rejected_path).to_pylist()
    assert {r["source_row"]: r["reason"] for r in rejected} == expected
    assert all(r["source_file"] == str(tmp_path / "broken.csv") for r in rejected)
    raw_of = {r["source_row"]: r["raw"] for r in rejected}
    assert raw_of[10] == "2019-10-01 00:03:00 UTC,view,1,10"
    assert raw_of[12] == '2019-10-01 00:04:00 UTC,cart,2,10,"a,b",apple,abc,100,s1'
    assert "app" in raw_of[9] and "le,3,100,s1" in raw_of[9]

    kept = sql(f"SELECT source_row, event_type FROM {events_of(result)} ORDER BY source_row")
    assert kept == [(kept_rows[0], "product_view"), (kept_rows[1], "purchase")]
    assert result.rows_read == result.rows_kept + result.rows_rejected == len(BROKEN_LINES) - 1
    assert result.blank_lines == 1
    assert sum(result.rejected_by_reason.values()) == result.rows_rejected == len(expected)
    assert result.rejected_by_reason["wrong column count"] == 2


@pytest.mark.parametrize("n_lines", [20_000, 600_000])
def test_bad_rows_in_a_large_file_keep_exact_row_numbers(tmp_path, n_lines):
    """Kept rows after many rejected and blank lines still carry their own line number. The large
    file (~45 MB) is read by DuckDB in parallel chunks, where numbering by position would break."""
    lines = []
    for i in range(1, n_lines + 1):
        if i % 997 == 0:
            lines.append("broken,line\n")
        elif i % 1_999 == 0:
            lines.append("\n")
        else:  # the row's own number is stored in product_id
            lines.append(f"2019-10-01 00:00:00 UTC,view,{i},10,,brand{i % 7},1.0,{i % 50},s{i}\n")
    path = write(tmp_path / "big.csv", REES46_HEADER + "".join(lines))
    result = ingest(path, tmp_path / "out", IngestConfig(threads=2))
    mismatched = sql(f"SELECT count(*) FROM {events_of(result)} "
                     f"WHERE CAST(product_id AS BIGINT) <> source_row")[0][0]
    assert mismatched == 0
    assert result.rejected_by_reason == {"wrong column count": n_lines // 997}
    assert result.blank_lines == n_lines // 1_999 - n_lines // (997 * 1_999)
    assert result.rows_read == result.rows_kept + result.rows_rejected


# ----------------------------------------------------------------------- generic + sessions

GENERIC_HEADER = "shop_id,buyer_id,ts,event_type,product_id,price\n"


def test_sessions_split_at_a_30_minute_gap_per_shop_and_buyer(tmp_path):
    rows = [
        ("s1", "b1", "2024-05-01 10:00:00", "VIEW", "p1"),
        ("s1", "b1", "2024-05-01 10:10:00", "cart", "p1"),
        ("s1", "b1", "2024-05-01 10:39:00", "search", ""),  # 29 min later: same session
        ("s1", "b1", "2024-05-01 11:20:00", "product_view", "p2"),  # 41 min later: new session
        ("s2", "b1", "2024-05-01 11:21:00", "purchase", "p9"),  # another shop: its own session
        ("s1", "b2", "1714557600", "pv", "p1"),  # Unix seconds are accepted too
    ]
    text = GENERIC_HEADER + "".join(f"{s},{b},{t},{e},{p},1.5\n" for s, b, t, e, p in rows)
    path = write(tmp_path / "gen.csv", text)
    result = ingest(path, tmp_path / "out")
    assert result.format == "generic" and result.rows_kept == 6
    sessions = sql(f"SELECT source_row, session_id FROM {events_of(result)} ORDER BY source_row")
    ids = [s for _, s in sessions]
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert len(set(ids)) == 4 and result.sessions == 4
    assert "30-minute inactivity gap per shop x buyer" in result.session_rule
    assert result.events_by_type["product_view"] == 3

    wider = ingest(path, tmp_path / "wider", IngestConfig(session_gap_minutes=60))
    assert wider.sessions == 3


def test_generic_parquet_input(tmp_path):
    table = pa.table({
        "shop_id": ["a", "a", "b", "b"],
        "buyer_id": ["u1", "u1", "u2", "u2"],
        "ts": pa.array([1_714_557_600_000_000 + i * 60_000_000 for i in range(4)],
                       pa.timestamp("us", tz="UTC")),
        "event_type": ["product_view", "purchase", "product_view", "add_to_cart"],
        "product_id": ["p1", "p1", "p2", "p2"],
        "price": [10.0, 10.0, -1.0, 3.0],
        "title": ["Red cotton t-shirt", "Red cotton t-shirt", "Blue mug", "Blue mug"],
        "session_id": ["v1", "v1", "v2", "v2"],
    })
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    result = ingest(path, tmp_path / "out")
    assert (result.format, result.rows_read, result.rows_kept) == ("generic", 4, 3)
    assert result.rejected_by_reason == {"negative price": 1}
    assert pq.read_table(result.rejected_path).to_pylist()[0]["source_row"] == 3
    assert result.title_source == "text" and result.conversion_rate == 0.5
    rows = sql(f"SELECT source_row, strftime(ts, '%H:%M') FROM {events_of(result)} "
               f"ORDER BY source_row")
    assert rows == [(1, "10:00"), (2, "10:01"), (4, "10:03")]
    titles = sql(f"SELECT title FROM read_parquet('{result.catalog_path}') ORDER BY 1")
    assert titles == [("Blue mug",), ("Red cotton t-shirt",)]
