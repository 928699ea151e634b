"""Replay of real buyers into SFT traces (harness/eval/replay.py): real logs from ../shared/data are
ingested, a sample of their buyers is acted out in real Chromium against the mock store, and the
store's own order log must equal the real purchases buyer by buyer."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from agent.actions import parse_action
from agent.traces import read_traces
from codebook.ingest import ingest
from harness.eval.replay import ReplayConfig, replay
from harness.eval.replay_plan import Intent, ReplayError, intents_from_events, shorten
from storefronts.orderlog import read_orders

pytestmark = pytest.mark.anyio

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TMALL = DATA / "tmall_brand_2014" / "t_alibaba_data.csv"
REES46 = DATA / "rees46_multicategory_2019oct" / "2019-Oct_head17k.csv"

# Buyers picked for what they exercise (shop -> buyers); few, because every order is ~15 browser steps:
#   tmall 11080: 3035250 (2 purchases on different days, an add-to-cart, repeated views),
#                2940000 (138 views over 20 days: shortened), 10018000 (one view)
#   REES46 samsung: 518626299 (2 purchases of one product in one session: quantity 2),
#                   514480286 (carted twice, never bought); apple: 519840569 (carted in 2
#                   sessions, no purchase)
SAMPLES = {
    "tmall": (TMALL, {"11080": ["3035250", "2940000", "10018000"]}),
    "rees46": (REES46, {"samsung": ["518626299", "514480286"], "apple": ["519840569"]}),
}
CATALOG_NOTE_WORDS = {"tmall": "brand", "rees46": "brand and category"}


def _require(path: Path) -> None:
    if not path.is_file():
        pytest.skip(f"real data not found: {path} (tests read ../shared/data next to the repo)")


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, dict]:
    """Each dataset ingested once; the sample's events written beside ingest.json (for the catalog note)."""
    chosen = {}
    for name, (raw, buyers) in SAMPLES.items():
        _require(raw)
        out = tmp_path_factory.mktemp(name)
        result = ingest(raw, out)
        events = pd.read_parquet(result.events_path)
        keep = pd.Series(False, index=events.index)
        for shop, shop_buyers in buyers.items():
            keep |= events["shop_id"].eq(shop) & events["buyer_id"].isin(shop_buyers)
        sample = events[keep]
        found = set(zip(sample["shop_id"], sample["buyer_id"]))
        wanted = {(shop, buyer) for shop, shop_buyers in buyers.items() for buyer in shop_buyers}
        assert found == wanted, f"{name}: buyers missing from the log: {wanted - found}"
        sample.to_parquet(out / "sample_events.parquet")
        purchases = sample[sample["event_type"] == "purchase"].groupby(["shop_id", "buyer_id"])["product_id"]
        chosen[name] = {
            "events": out / "sample_events.parquet",
            "catalog": result.catalog_path,
            "codes": sample[["shop_id", "buyer_id"]].drop_duplicates().assign(code=3),
            "real": {key: Counter(products) for key, products in purchases},
            "n_buyers": len(wanted),
        }
    return chosen


@pytest.fixture(scope="module")
async def browser_runs(samples, pools, tmp_path_factory):
    """Both datasets replayed in real Chromium at once (one browser, the pool's contexts)."""
    outs = {name: tmp_path_factory.mktemp(f"replay-{name}-browser") for name in samples}
    reports = await asyncio.gather(*(
        replay(sample["events"], sample["catalog"], sample["codes"], outs[name],
               ReplayConfig(driver="browser", concurrency=4, progress=False),
               pool=pools["browser"], run_id=f"test-{name}")
        for name, sample in samples.items()))
    return {name: (outs[name], report) for name, report in zip(samples, reports)}


def _driver_errors(trace) -> int:
    """Steps whose next observation shows an error: on a loaded machine a browser click can time
    out (sometimes after navigating), and the replayer then reads the page again and goes on."""
    return sum("\nError: " in step.observation for step in trace.steps)


def _units_by_buyer(report_dict: dict) -> dict[tuple[str, str], dict]:
    return {(b["shop_id"], b["buyer_id"]): b for b in report_dict["buyers"]}


@pytest.mark.parametrize("name", ["tmall", "rees46"])
async def test_browser_replay_places_exactly_the_real_orders(name, samples, browser_runs):
    sample = samples[name]
    out, report = browser_runs[name]
    assert report.mismatches == [], json.dumps(report.mismatches, indent=1)[:3000]
    assert report.n_buyers == report.n_exact == sample["n_buyers"]
    assert report.exact_fraction() == 1.0

    # The store's order log, read independently, equals the real purchases buyer by buyer.
    written = json.loads(report.report_path.read_text())
    tags = {(b["shop_id"], b["buyer_id"]): b["buyer_tag"] for b in written["buyers"]}
    ordered: dict[str, Counter] = {}
    for db in out.glob("replay_store_*.sqlite"):
        for order in read_orders(db):
            for item in order["items"]:
                ordered.setdefault(order["buyer_tag"], Counter())[item["product_id"]] += item["quantity"]
    for key, tag in tags.items():
        assert ordered.get(tag, Counter()) == sample["real"].get(key, Counter()), key
    assert sum(sum(units.values()) for units in ordered.values()) >= 2  # real orders were placed
    assert written["n_purchase_units"] == sum(sum(c.values()) for c in sample["real"].values())
    assert CATALOG_NOTE_WORDS[name] in written["catalog"]["catalog_note"]
    if name == "tmall":  # 2940000's 138 views: repeated views within a day collapsed, each day kept
        assert written["shortened"]["buyers"] == 1 and written["shortened"]["views_collapsed"] > 100

    traces = read_traces(report.traces_path)  # validates every line and every action
    assert len(traces) == sample["n_buyers"]
    for trace in traces:
        assert trace.code == 3 and trace.steps[-1].action == "stop"
        assert trace.converted == ((trace.shop_id, trace.buyer_id) in sample["real"])
        for step in trace.steps:
            parse_action(step.action)
            assert step.observation.startswith("URL: http://127.0.0.1/")


async def test_http_driver_places_the_same_orders(samples, browser_runs, pools, tmp_path):
    for name, sample in samples.items():
        report = await replay(sample["events"], sample["catalog"], sample["codes"], tmp_path / name,
                              ReplayConfig(driver="http", progress=False), pool=pools["http"], run_id=f"http-{name}")
        browser = _units_by_buyer(json.loads(browser_runs[name][1].report_path.read_text()))
        http = json.loads(report.report_path.read_text())
        assert report.n_exact == report.n_buyers == sample["n_buyers"]
        for key, entry in _units_by_buyer(http).items():
            assert entry["exact"] and browser[key]["exact"]
        # Same orders, and where no click failed, the same actions (both drivers render the same
        # observation text on the mock store).
        by_buyer = {(t.shop_id, t.buyer_id): t for t in read_traces(report.traces_path)}
        for trace in read_traces(browser_runs[name][1].traces_path):
            other = by_buyer[(trace.shop_id, trace.buyer_id)]
            if not _driver_errors(trace) and not _driver_errors(other):
                assert [s.action for s in trace.steps] == [s.action for s in other.steps]


async def test_the_same_buyers_write_the_same_traces_on_fresh_ports(samples, pools, tmp_path):
    # Each replay serves its stores on fresh ports and finishes its buyers in its own order: neither
    # may show in what the agent is trained on (the order ids: test_storefront).
    sample = samples["rees46"]
    runs = [await replay(sample["events"], sample["catalog"], sample["codes"], tmp_path / str(concurrency),
                         ReplayConfig(driver="http", concurrency=concurrency, progress=False), pool=pools["http"])
            for concurrency in (1, 4)]
    first, second = (sorted(read_traces(run.traces_path), key=lambda t: t.buyer_id) for run in runs)
    assert first == second and sum(t.converted for t in first) == 1


async def test_a_purchase_the_store_cannot_sell_is_a_mismatch_with_a_reason(samples, pools, tmp_path):
    sample = samples["rees46"]
    events = pd.read_parquet(sample["events"])
    buyer = events[(events["shop_id"] == "samsung") & (events["buyer_id"] == "518626299")].iloc[[-1]].copy()
    buyer["product_id"] = "no-such-product"
    buyer["event_type"] = "purchase"
    broken = pd.concat([events, buyer], ignore_index=True)
    report = await replay(broken, sample["catalog"], sample["codes"], tmp_path,
                          ReplayConfig(driver="http", progress=False), pool=pools["http"])
    assert report.n_buyers == sample["n_buyers"] and report.n_exact == report.n_buyers - 1
    [mismatch] = report.mismatches
    assert (mismatch["shop_id"], mismatch["buyer_id"]) == ("samsung", "518626299")
    assert mismatch["missing"] == {"no-such-product": 1} and mismatch["extra"] == {}
    assert "not in the catalog" in mismatch["reason"]
    # The rest of the buyer was still replayed: its real order went through.
    assert mismatch["replayed"] == dict(sample["real"][("samsung", "518626299")])
    assert len(read_traces(report.traces_path)) == report.n_buyers


async def test_every_event_type_on_a_real_catalog(samples, pools, tmp_path):
    """A hand-written session over the REES46 samsung catalog: page view, search, views, carting,
    a removal, a checkout that is left, then a purchase; only the purchased product is ordered."""
    catalog = pd.read_parquet(samples["rees46"]["catalog"])
    samsung = catalog[catalog["shop_id"] == "samsung"]
    phones = samsung[samsung["category"] == "electronics.smartphone"]["product_id"].tolist()
    first, second = phones[5], phones[40]
    kinds = [("page_view", None, "electronics.smartphone", None), ("search", None, None, "samsung tv"),
             ("product_view", first, None, None), ("product_view", first, None, None),
             ("add_to_wishlist", second, None, None), ("add_to_cart", first, None, None),
             ("add_to_cart", second, None, None), ("remove_from_cart", second, None, None),
             ("checkout", None, None, None), ("product_view", second, None, None),
             ("purchase", second, None, None)]
    events = pd.DataFrame([
        {"shop_id": "samsung", "buyer_id": "b1", "session_id": "s1",
         "ts": pd.Timestamp("2019-10-01", tz="UTC") + pd.Timedelta(seconds=i), "event_type": kind,
         "product_id": product, "category": category, "price": None, "query": query, "source_row": i + 1}
        for i, (kind, product, category, query) in enumerate(kinds)
    ])
    codes = pd.DataFrame({"shop_id": ["samsung"], "buyer_id": ["b1"], "code": [0]})
    report = await replay(events, catalog, codes, tmp_path, ReplayConfig(driver="http", progress=False),
                          pool=pools["http"])
    assert report.n_exact == 1, report.mismatches
    [trace] = read_traces(report.traces_path)
    actions = [step.action for step in trace.steps]
    assert any(a.startswith("type") and '"samsung tv"' in a for a in actions)
    observations = [step.observation for step in trace.steps]
    assert any("Heading: Smartphone" in o for o in observations)  # the page view's category listing
    assert any('Remove' in o and "Your cart" in o for o in observations)
    assert sum("/checkout/address" in o.split("\n", 1)[0] for o in observations) >= 2  # left, then bought
    [order] = read_orders(next(tmp_path.glob("replay_store_*.sqlite")))
    assert [(i["product_id"], i["quantity"]) for i in order["items"]] == [(second, 1)]
    assert json.loads(report.report_path.read_text())["failed_events"] == {}


# --- planning, without a store --------------------------------------------------------------


def _events(rows) -> pd.DataFrame:
    return pd.DataFrame([{"event_type": kind, "product_id": product, "session_id": session}
                         for kind, product, session in rows])


def test_purchases_of_one_session_are_one_order_and_wishlists_are_views():
    intents = intents_from_events(_events([
        ("product_view", "a", "s1"), ("purchase", "a", "s1"), ("checkout", None, "s1"), ("purchase", "a", "s1"),
        ("purchase", "b", "s1"), ("purchase", "a", "s2"), ("add_to_wishlist", "c", "s2")]))
    assert [i.kind for i in intents] == ["product_view", "purchase", "purchase", "product_view"]
    assert intents[1].items == Counter({"a": 2, "b": 1}) and intents[2].items == Counter({"a": 1})
    assert intents[3].product_id == "c"


def test_long_buyers_lose_repeated_views_first_and_never_purchases():
    views = [Intent("product_view", product_id="a", session="s1") for _ in range(40)]
    views += [Intent("product_view", product_id="a", session="s2")]  # a new visit: kept
    order = Intent("purchase", items=Counter({"a": 1}))
    intents = views + [order] + [Intent("product_view", product_id="b"), Intent("product_view", product_id="a")] * 3
    short, collapsed, dropped = shorten(intents, max_steps=60)
    assert collapsed == 39 and dropped == 0 and order in short and len(short) == len(intents) - 39
    assert short == shorten(short, 60)[0]  # already short enough: untouched
    many_orders = [Intent("product_view", product_id=str(i)) for i in range(30)] + [order] * 5
    short, collapsed, dropped = shorten(many_orders, max_steps=60)
    assert short.count(order) == 5 and dropped == 30 and collapsed == 0


async def test_bad_input_is_named(samples, tmp_path):
    codes = samples["rees46"]["codes"]
    catalog = samples["rees46"]["catalog"]
    with pytest.raises(ReplayError, match="missing column.*event_type"):
        await replay(pd.DataFrame({"shop_id": ["x"], "buyer_id": ["y"], "ts": [0], "product_id": ["p"]}),
                     catalog, codes, tmp_path)
    events = pd.read_parquet(samples["rees46"]["events"])
    events.loc[events.index[2], "event_type"] = "teleport"
    with pytest.raises(ReplayError, match="row 3 has event_type 'teleport'"):
        await replay(events, catalog, codes, tmp_path)
    with pytest.raises(ReplayError, match="no-such-shop"):
        await replay(samples["rees46"]["events"], catalog, codes, tmp_path, ReplayConfig(shops=("no-such-shop",)))
