"""Themes: the mock store rendered the ways real shops differ, and a scripted buyer who still buys.

Every theme is served for real (HTTP server, demo catalog); a scripted buyer acts out one plan of
views, a search, an add, a removal and a two-product purchase, and the store's own order log must
hold exactly the order the plan asked for. Overlays, drawers, required options, icon-only buttons
and one-page checkouts are each checked where they are rendered.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from urllib.parse import urlsplit

import httpx
import pytest

from agent.page import parse
from harness.drivers import open_pool
from harness.drivers.safety import SiteGuard
from harness.eval.replay_plan import BuyerPlan, Intent
from harness.eval.scripted_buyer import run_buyer
from storefronts import BUYER_HEADER
from storefronts.catalog import StoreCatalog
from storefronts.fixtures import DEMO_SHOP, demo_catalog
from storefronts.orderlog import read_events, read_orders
from storefronts.server import serve_store
from storefronts.variants import HELD_OUT_THEMES, VariantError, builtin_themes, load_variant, training_themes, variant_from_dict

pytestmark = pytest.mark.anyio

def our_store_guard(store) -> SiteGuard:
    """The guard make-traces uses on its own store (checkouts go through)."""
    return SiteGuard(allow_hosts=[urlsplit(store.url).netloc], our_store=True, rate_limit_per_s=None,
                     respect_robots=False)


PLAN = [
    Intent("product_view", product_id="3003"),
    Intent("add_to_cart", product_id="3003"),
    Intent("page_view", category="kitchen"),
    Intent("search", query="kettle"),
    Intent("product_view", product_id="1001"),
    Intent("add_to_cart", product_id="1002"),
    Intent("remove_from_cart", product_id="1002"),
    Intent("purchase", items=Counter({"3003": 1, "1001": 2})),
]


def test_twelve_themes_some_held_out():
    themes = builtin_themes()
    assert len(themes) >= 12
    assert set(HELD_OUT_THEMES) <= set(themes)
    assert set(training_themes()).isdisjoint(HELD_OUT_THEMES)
    # Every theme differs from the default store in several ways at once.
    default = load_variant("default")
    for name in themes:
        variant = load_variant(name)
        changed = [key for key in variant.__dataclass_fields__ if key not in ("name", "description")
                   and getattr(variant, key) != getattr(default, key)]
        assert len(changed) >= 4, (name, changed)


def test_a_misspelt_theme_option_is_named():
    with pytest.raises(VariantError, match="after_add must be one of"):
        variant_from_dict({"after_add": "drawer"})
    with pytest.raises(VariantError, match="header_links: unknown page 'faq'"):
        variant_from_dict({"header_links": ["faq"]})
    with pytest.raises(VariantError, match="'address' or 'one_page'"):
        variant_from_dict({"checkout_steps": ["payment", "review"]})


@pytest.mark.parametrize("theme", builtin_themes())
async def test_a_scripted_buyer_buys_exactly_the_plan_on_every_theme(theme, tmp_path):
    catalog = StoreCatalog.load(demo_catalog(), DEMO_SHOP)
    plan = BuyerPlan(index=0, shop_id=DEMO_SHOP, buyer_id="b0", code=0, intents=list(PLAN),
                     expected=Counter({"3003": 1, "1001": 2}), n_events=len(PLAN))
    with serve_store(catalog, DEMO_SHOP, variant=theme, db_path=tmp_path / "orders.db") as store:
        async with open_pool("http", 1) as pool:
            result = await run_buyer(pool, our_store_guard(store), store.url, catalog, plan, "theme-test:0")
        orders = read_orders(store.db_path)
    assert result.error is None
    assert result.failures == []
    assert len(orders) == 1
    assert {item["product_id"]: item["quantity"] for item in orders[0]["items"]} == {"3003": 1, "1001": 2}
    observations = [parse(step.observation) for step in result.steps]
    variant = load_variant(theme)
    if variant.cookie_banner or variant.newsletter_popup or variant.after_add == "mini_cart":
        assert any(page.dialog is not None for page in observations), "the theme's dialog was never met"


async def test_browser_buyer_gets_past_every_overlay_of_a_held_out_theme(pools, tmp_path):
    catalog = StoreCatalog.load(demo_catalog(), DEMO_SHOP)
    plan = BuyerPlan(index=0, shop_id=DEMO_SHOP, buyer_id="b0", code=0, intents=list(PLAN),
                     expected=Counter({"3003": 1, "1001": 2}), n_events=len(PLAN))
    with serve_store(catalog, DEMO_SHOP, variant="atelier", db_path=tmp_path / "orders.db") as store:
        result = await run_buyer(pools["browser"], our_store_guard(store), store.url, catalog, plan, "theme-test:0")
        orders = read_orders(store.db_path)
    assert result.error is None and result.failures == []
    assert [{i["product_id"]: i["quantity"] for i in o["items"]} for o in orders] == [{"3003": 1, "1001": 2}]
    dialogs = {parse(step.observation).dialog for step in result.steps} - {None}
    assert {"We value your privacy", "10 % off your first order", "Added to your bag"} <= dialogs


def _client(store) -> httpx.Client:
    return httpx.Client(base_url=store.url, headers={BUYER_HEADER: "theme-probe"}, follow_redirects=True)


def test_overlays_stay_closed_once_answered():
    with serve_store(demo_catalog(), DEMO_SHOP, variant="atelier") as store, _client(store) as client:
        assert 'aria-labelledby="cookies-title"' in client.get("/").text
        client.post("/overlay/cookies", data={"choice": "all", "next": "/p/1001"})
        product = client.get("/p/1001").text
        assert 'aria-labelledby="cookies-title"' not in product
        assert 'aria-labelledby="newsletter-title"' in product
        # Only a page of this store is a place to go back to.
        response = client.post("/overlay/newsletter", data={"choice": "close", "next": "//evil.example/"},
                               follow_redirects=False)
        assert response.headers["location"] == "/"
        assert 'aria-labelledby="newsletter-title"' not in client.get("/p/1001").text


def test_a_required_size_is_asked_for_before_adding():
    with serve_store(demo_catalog(), DEMO_SHOP, variant="atelier") as store, _client(store) as client:
        client.post("/overlay/cookies", data={"choice": "all", "next": "/"})
        refused = client.post("/cart/add", data={"product_id": "1001", "quantity": "1"})
        assert "Please choose a size first." in refused.text
        assert "Bag, 0 items" in refused.text
        added = client.post("/cart/add", data={"product_id": "1001", "quantity": "1", "option": "M"})
        assert "Bag, 1 item" in added.text and 'aria-labelledby="mini-cart-title"' in added.text


def test_load_more_grows_one_list_and_quick_view_counts_a_product_view(tmp_path):
    few_per_page = dataclasses.replace(load_variant("nordhaus"), items_per_page=4)
    with serve_store(demo_catalog(), DEMO_SHOP, variant=few_per_page, db_path=tmp_path / "o.db") as store, \
            _client(store) as client:
        client.post("/overlay/newsletter", data={"choice": "close", "next": "/"})
        first = client.get("/search", params={"q": "e"}).text
        assert "Load more products" in first
        more = client.get("/search", params={"q": "e", "page": 2}).text
        assert more.count('<li>\n    <img') > first.count('<li>\n    <img')
        quick = client.get("/search", params={"q": "e", "quick_view": "1001"}).text
        assert 'aria-labelledby="quick-view-title"' in quick
        views = [e for e in read_events(store.db_path) if e["event_type"] == "product_view"]
    assert [e["product_id"] for e in views] == ["1001"]


async def test_a_themed_replay_spreads_real_decisions_over_the_training_themes(tmp_path):
    from agent.traces import read_traces
    from harness.eval.nav_base import NavBaseConfig, make_world, themed_config
    from harness.eval.replay import ReplayConfig, replay

    world = NavBaseConfig(shops=1, buyers_per_shop=24, products_per_shop=30)
    events, catalog, codes, _ = make_world(world, tmp_path / "world")
    themes = tuple(training_themes())
    report = await replay(events, catalog, codes, tmp_path / "traces",
                          ReplayConfig(driver="http", concurrency=8, themes=themes, max_steps_per_buyer=24, progress=False))
    traces = read_traces(report.traces_path)
    assert report.n_exact == report.n_buyers == 24  # every theme still places exactly the real orders
    assert {trace.variant for trace in traces} == set(themes)  # 24 buyers over 9 themes: each met
    assert len(list((tmp_path / "traces").glob("replay_store_*_*.sqlite"))) == len(themes)
    themed = themed_config(world)
    assert set(themes) <= set(themed.variants) and not set(HELD_OUT_THEMES) & set(themed.variants)
    assert themed.key() != world.key()


def test_a_theme_name_that_does_not_exist_is_refused_before_any_replay():
    from harness.eval.replay import ReplayConfig

    with pytest.raises(VariantError, match="neither a built-in variant"):
        ReplayConfig(themes=("harbour",))
