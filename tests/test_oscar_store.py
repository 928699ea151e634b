"""django-oscar as a store nobody here wrote: started from our catalog, shopped by real buyers
(headless Chromium and the http driver), its own order table checked buyer by buyer.

The buyers here are driven by element names read from each observation (no model), so a failure
points at the store, the drivers or the order count, not at an agent.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

from agent.actions import parse_action
from harness.drivers.safety import SiteGuard
from harness.sim.simulate import acted_element, audit
from agent.page import parse as parse_page
from storefronts.orderlog import orders_by_buyer, products_by_buyer, read_orders

oscar = pytest.importorskip("storefronts.oscar")
if not oscar.oscar_installed():
    pytest.skip("django-oscar is not installed (pip install -e '.[oscar]')", allow_module_level=True)

DRIVERS = ("browser", "http")
pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.browser]
CATALOG = pd.DataFrame({
    "shop_id": ["s1", "s1", "s1"],
    "product_id": ["p1", "p2", "p3"],
    "title": ["Espresso Cups", "Kettle 1.7 L", "Tea Towel"],
    "category": ["kitchen", "kitchen", "home"],
    "brand": ["Acme", "Acme", "Linen Co"],
    "price": [24.0, 39.5, 8.25],
})
GUEST_CHECKOUT = [  # (verb, element name, text): what a guest does in Oscar as it ships
    ("click", "Add to basket", None),
    ("click", "Checkout now", None),
    ("type", "My email address is", "guest@example.com"),
    ("type", "First name", "Ada"),
    ("type", "Last name", "Buyer"),
    ("type", "First line of address", "1 Main Street"),
    ("type", "City", "Berlin"),
    ("type", "Post/Zip-code", "10115"),
    ("click", "Continue", None),
    ("click", "Place order", None),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with oscar.serve_oscar(CATALOG, "s1", db_path=tmp_path_factory.mktemp("oscar") / "oscar.sqlite") as running:
        yield running


def by_name(text: str, verb: str, name: str, value: str | None) -> str:
    page = parse_page(text)
    element = next((e for e in page.elements if e.name == name), None)
    assert element is not None, f"no element named {name!r} in:\n{text}"
    return f'{verb} [{element.element_id}]' + (f' "{value}"' if value is not None else "")


async def shop(pool, store, tag: str, guard: SiteGuard, steps) -> list:
    outcomes = []
    async with pool.session(tag, guard) as buyer:
        await buyer.goto(store.url)
        for verb, name, value in steps:
            observation = await buyer.observe()
            outcomes.append(await buyer.act(parse_action(by_name(observation.text, verb, name, value))))
            if outcomes[-1].done:
                break
    return outcomes


def staging_guard(store) -> SiteGuard:
    return SiteGuard.for_url(store.url, rate_limit_per_s=None, place_orders=True)


def test_oscar_serves_the_catalog_with_prices(store):
    import httpx

    page = httpx.get(store.url, follow_redirects=True, timeout=30).text
    for title in CATALOG["title"]:
        assert title in page
    assert "€39.50" in page


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_guest_checkout_is_one_order_in_oscars_own_table(pools, store, driver):
    run = f"oscar-{driver}"
    outcomes = await shop(pools[driver], store, f"{run}:0", staging_guard(store), GUEST_CHECKOUT)
    leaver = await shop(pools[driver], store, f"{run}:1", staging_guard(store), GUEST_CHECKOUT[:2])
    assert outcomes[-1].converted and outcomes[-1].done, outcomes
    assert not any(o.converted for o in leaver)
    assert orders_by_buyer(store.db_path, run) == {0: 1}   # the buyer who stopped at the basket has none
    order = next(o for o in read_orders(store.db_path) if o["buyer_tag"] == f"{run}:0")
    assert outcomes[-1].detail.get("order_id") in (order["order_id"], None)
    assert order["lines"] == 1 and order["total"] > 0
    bought = products_by_buyer(store.db_path, run)  # what the task benchmark scores: our product ids
    assert list(bought) == [0] and sum(bought[0].values()) == 1 and set(bought[0]) <= set(CATALOG["product_id"])


async def test_without_place_orders_the_place_order_click_is_intercepted(pools, store):
    outcomes = await shop(pools["http"], store, "intercepted:0", SiteGuard.for_url(store.url, rate_limit_per_s=None),
                          GUEST_CHECKOUT)
    assert outcomes[-1].converted and outcomes[-1].detail["intercepted"]
    assert outcomes[-1].detail["control"] == "Place order"
    assert not any(o.converted for o in outcomes[:-1]), "'Checkout now' is no payment"
    assert orders_by_buyer(store.db_path, "intercepted") == {}


def test_trajectory_steps_name_the_element_and_the_audit_counts_what_got_in_the_way():
    text = ('URL: https://shop.example/\nTitle: Shop\nNote: a dialog ("Newsletter") is open; only its content is listed.\n'
            'Elements:\n[3] button "Close newsletter"\n[4] textbox "Email"')
    page = parse_page(text)
    assert acted_element(page, "click [3]") == {"role": "button", "name": "Close newsletter"}
    assert acted_element(page, "click [9]") is None and acted_element(page, "stop") is None
    steps = [{"error": "[7] is covered by <div> \"Subscribe\"", "dialog": "Newsletter"},
             {"error": None, "dialog": None}]
    records = [{"buyer_index": 0, "outcome": "converted", "steps": steps,
                "detail": {"intercepted": True, "control": "Place order"}},
               {"buyer_index": 1, "outcome": "left", "steps": steps[1:], "detail": {}}]
    found = audit(records, {"cdn.example": 3})
    assert found["interceptions"] == 1 and found["intercepted"][0]["control"] == "Place order"
    assert found["covered_element_errors"] == 1 and found["buyers_meeting_overlays"] == 1
    assert found["overlays"] == {"Newsletter": 1} and found["blocked_requests_this_session"] == 3
    assert re.search("cdn", next(iter(found["blocked_by_host"])))


async def test_an_ab_on_oscar_counts_each_arms_orders_and_the_choice_of_delivery_is_one_more_step(tmp_path):
    """Arm B (shipping_choice) offers standard or express delivery: Oscar then shows its shipping-method
    page, which it skips in arm A (free shipping only). Outcomes come from each arm's Oscar database."""
    import json

    from agent.baselines import TypeProfilePolicy
    from harness.sim.ab import ABConfig, run_ab
    from test_policies import write_codebook

    codebook = write_codebook(tmp_path / "codebook")
    config = ABConfig(shop="high", codebook_dir=codebook, catalog=CATALOG, catalog_shop="s1", engine="oscar",
                      variant_a="default", variant_b="shipping_choice", buyers=4, driver="http", concurrency=2,
                      max_steps=40, out_dir=tmp_path, run_id="oscar-ab", progress=False, n_bootstrap=200)
    result = await run_ab(config, TypeProfilePolicy.from_codebook(codebook), plot=False)

    arms = result.summary["arms"]
    for arm in ("A", "B"):
        assert arms[arm]["converted_store_counted"] == arms[arm]["converted_claimed"] > 0
        assert (tmp_path / "oscar-ab" / arm / "oscar.sqlite").is_file()
    visited = {arm: [any("/checkout/shipping-method/" in step["url"] for step in json.loads(line)["steps"])
                     for line in (tmp_path / "oscar-ab" / arm / "trajectories.jsonl").read_text().splitlines()
                     if json.loads(line)["outcome"] == "converted"]
               for arm in ("A", "B")}
    assert not any(visited["A"]) and visited["B"] and all(visited["B"])
    with pytest.raises(ValueError, match="engine"):
        ABConfig(shop="high", codebook_dir=codebook, catalog=CATALOG, engine="shopify")
