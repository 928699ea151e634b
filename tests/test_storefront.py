"""The mock storefront served for real by uvicorn and driven with httpx: pages, funnel, order log.

Every test talks HTTP to a real server on 127.0.0.1; the order log is read back from the SQLite
file the server wrote. Accessibility is checked structurally on the HTML (labels, alt text,
landmarks), which is what the harness's observation code relies on.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from bs4 import BeautifulSoup
from typer.testing import CliRunner

from agent.page import order_number
from codebook.schema import CATALOG_SCHEMA
from storefronts import BUYER_HEADER
from harness.cli.store import serve_store_command
from storefronts.catalog import CatalogError, StoreCatalog, stable_unit, synthetic_price
from storefronts.faults import Faults
from storefronts.fixtures import DEMO_ANSWERS, DEMO_SHOP, demo_catalog, save_fixtures
from storefronts.orderlog import OrderLog, read_events, read_meta, read_orders, stable_order_id
from storefronts.presentation import Pagination
from storefronts.server import serve_store
from storefronts.variants import VariantError, builtin_variants, load_variant

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "store"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BUYER = {BUYER_HEADER: "sim-buyer-7"}

pytestmark = pytest.mark.timeout(60)

# The shared Typer app as `simpersona` runs it, as a group however many commands are registered yet.
CLI = "import typer, harness.cli.store; from harness.cli.app import app; typer.main.get_group(app)()"


@pytest.fixture(scope="module")
def stores():
    """One running store per built-in variant, shared by the read-mostly tests."""
    with serve_store(demo_catalog(), DEMO_SHOP, "default") as default, \
            serve_store(demo_catalog(), DEMO_SHOP, "list") as listed, \
            serve_store(demo_catalog(), DEMO_SHOP, "worse") as worse:
        yield {"default": default, "list": listed, "worse": worse}


def client(store, headers=BUYER) -> httpx.Client:
    return httpx.Client(base_url=store.url, headers=headers, follow_redirects=True, timeout=10)


def soup(response: httpx.Response) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


def product_ids(page: BeautifulSoup) -> list[str]:
    """Product ids of the listing on a page, in the order shown."""
    return [a["href"].removeprefix("/p/") for a in page.select("main ul.products h3 a")]


def shown_prices(page: BeautifulSoup) -> list[float]:
    return [float(re.sub(r"[^\d.]", "", span.get_text())) for span in page.select("main ul.products .price")]


def accessibility_problems(html: str) -> list[str]:
    """What a screen reader (or our text observation) would trip over on this page."""
    page = BeautifulSoup(html, "html.parser")
    problems = []
    if page.html.get("lang") != "en":
        problems.append("<html> has no lang")
    if not (page.title and page.title.get_text(strip=True)):
        problems.append("page has no <title>")
    if len(page.find_all("h1")) != 1:
        problems.append(f"expected one <h1>, found {len(page.find_all('h1'))}")
    if not page.find("main"):
        problems.append("no <main> landmark")
    if page.find("script"):
        problems.append("page uses JavaScript")
    labelled = {label.get("for") for label in page.find_all("label")}
    for control in page.find_all(["input", "select", "textarea"]):
        if control.get("type") in ("hidden", "submit"):
            continue
        if control.get("id") not in labelled and not control.get("aria-label") and not control.find_parent("label"):
            problems.append(f"unlabelled {control.name} name={control.get('name')!r}")
    for image in page.find_all("img"):
        if not image.get("alt", "").strip():
            problems.append(f"image without alt text: {image.get('src', '')[:40]}")
        if not image.get("src", "").startswith("data:"):
            problems.append(f"external image {image.get('src')!r}")
    for button in page.find_all("button"):
        if not (button.get_text(strip=True) or button.get("aria-label")):
            problems.append("button without a name")
    for link in page.find_all("a"):
        if not (link.get_text(strip=True) or link.get("aria-label")):
            problems.append(f"link without a name: {link.get('href')}")
    return problems


def checkout(http: httpx.Client, steps, answers=DEMO_ANSWERS) -> httpx.Response:
    """Submit every checkout step with valid answers; returns the order confirmation response."""
    response = None
    for step in steps:
        assert http.get(f"/checkout/{step}").status_code == 200
        response = http.post(f"/checkout/{step}", data=answers[step])
        assert response.status_code == 200, response.text
    return response


# ---- pages ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["default", "list", "worse"])
def test_every_route_renders_and_is_accessible(stores, variant):
    store = stores[variant]
    with client(store, headers={BUYER_HEADER: f"a11y-{variant}"}) as http:
        pages = {
            "home": http.get("/"),
            "listing": http.get("/c/sports"),
            "search": http.get("/search", params={"q": "speaker"}),
            "empty search": http.get("/search"),
            "product": http.get("/p/3003"),
            "empty cart": http.get("/cart"),
            "cart": http.post("/cart/add", data={"product_id": "3003", "quantity": "1"}),
        }
        for step in store.variant.checkout_steps:
            pages[f"checkout {step}"] = http.get(f"/checkout/{step}")
            pages["order"] = http.post(f"/checkout/{step}", data=DEMO_ANSWERS[step])
        pages["missing product"] = http.get("/p/no-such-product")
        pages["missing order"] = http.get("/order/SP999999")
    for name, response in pages.items():
        expected = 404 if name.startswith("missing") else 200
        assert response.status_code == expected, f"{name}: {response.status_code}"
        assert accessibility_problems(response.text) == [], name
    assert "Portable Bluetooth Speaker" in pages["search"].text
    assert pages["order"].url.path.startswith("/order/SP")
    assert soup(pages["order"]).find("meta", attrs={"name": "sp-order-id"}) is not None


def test_accessibility_check_can_fail():
    bad = '<html><head><title>x</title></head><body><main><h1>x</h1><img src="data:,"><input id="q"></main></body></html>'
    problems = accessibility_problems(bad)
    assert any("alt" in p for p in problems) and any("unlabelled" in p for p in problems)
    assert any("lang" in p for p in problems)


def test_listing_pagination_and_sorting():
    variant = dataclasses.replace(load_variant("default"), items_per_page=3)
    with serve_store(demo_catalog(), DEMO_SHOP, variant) as store, client(store) as http:
        first = soup(http.get("/c/kitchen"))
        second = soup(http.get("/c/kitchen", params={"page": 2}))
        assert len(product_ids(first)) == 3 and len(product_ids(second)) == 1
        assert sorted(product_ids(first) + product_ids(second)) == ["1001", "1002", "1003", "1004"]
        assert first.find("a", attrs={"aria-current": "page", "aria-label": re.compile("Page 1")})
        assert first.find("a", rel="next")["href"] == "/c/kitchen?page=2"

        cheap_first = soup(http.get("/c/kitchen", params={"sort": "price_asc"}))
        assert shown_prices(cheap_first) == [18.90, 24.00, 34.99]
        assert cheap_first.find("a", rel="next")["href"] == "/c/kitchen?sort=price_asc&page=2"
        assert cheap_first.find("option", selected=True)["value"] == "price_asc"
        dear_first = soup(http.get("/c/kitchen", params={"sort": "price_desc"}))
        assert shown_prices(dear_first) == [42.50, 34.99, 24.00]
        newest = soup(http.get("/c/kitchen", params={"sort": "newest"}))
        assert product_ids(newest) == ["1004", "1003", "1002"]
        by_popularity = sorted(["1001", "1002", "1003", "1004"], key=lambda pid: -stable_unit("popularity", pid))
        assert product_ids(first) + product_ids(second) == by_popularity  # the default sort

        assert http.get("/c/kitchen", params={"sort": "cheapest"}).status_code == 400
        assert "price_asc" in http.get("/c/kitchen", params={"sort": "cheapest"}).text
        assert http.get("/c/kitchen", params={"page": 3}).status_code == 404
        assert http.get("/c/kitchen", params={"page": "two"}).status_code == 400
        assert http.get("/c/no-such-category").status_code == 404


def test_long_listings_link_a_window_of_pages():
    assert Pagination.of(total=100, per_page=10, page=5).links() == [1, None, 3, 4, 5, 6, 7, None, 10]
    assert Pagination.of(total=100, per_page=10, page=1).links() == [1, 2, 3, None, 10]
    assert Pagination.of(total=0, per_page=10, page=1).links() == [1]


def test_search_matches_every_word_and_is_logged(stores):
    store = stores["default"]
    with client(store, headers={BUYER_HEADER: "searcher"}) as http:
        assert product_ids(soup(http.get("/search", params={"q": "bottle"}))) == ["2003"]
        assert sorted(product_ids(soup(http.get("/search", params={"q": "SONORA"})))) == ["3001", "3003"]
        assert product_ids(soup(http.get("/search", params={"q": "sonora speaker"}))) == ["3003"]
        # No product has every word: the ones with the most of them (a half-right title still finds it).
        assert product_ids(soup(http.get("/search", params={"q": "sonora speaker bottle"}))) == ["3003"]
        nothing = http.get("/search", params={"q": "submarine"})
        assert product_ids(soup(nothing)) == [] and "No products found" in nothing.text
    searches = [e for e in read_events(store.db_path) if e["buyer_tag"] == "searcher" and e["event_type"] == "search"]
    assert [e["query"] for e in searches] == ["bottle", "SONORA", "sonora speaker", "sonora speaker bottle",
                                              "submarine"]


# ---- the funnel and the order log --------------------------------------------------------------


def test_cart_checkout_and_order_recorded_with_buyer_tag(tmp_path):
    db = tmp_path / "run.sqlite"
    with serve_store(demo_catalog(), DEMO_SHOP, "default", db_path=db) as store, client(store) as http:
        # Checkout needs a cart, and steps cannot be skipped.
        assert http.get("/checkout/address").url.path == "/cart"
        http.post("/cart/add", data={"product_id": "2003", "quantity": "2"})
        http.post("/cart/add", data={"product_id": "3002"})
        http.post("/cart/update", data={"product_id": "2003", "quantity": "1"})
        http.post("/cart/remove", data={"product_id": "3002"})
        cart = http.post("/cart/add", data={"product_id": "1001", "quantity": "2"})
        assert "Cart (3)" in cart.text and "€91.48" in cart.text
        assert http.get("/checkout/payment").url.path == "/checkout/address"
        assert http.post("/cart/add", data={"product_id": "1001", "quantity": "0"}).status_code == 400

        answers = {**DEMO_ANSWERS, "delivery": {"delivery": "express"}}
        for step in ("address", "delivery"):
            http.post(f"/checkout/{step}", data=answers[step])
        rejected = http.post("/checkout/payment", data={**answers["payment"], "card_number": "12ab"})
        assert rejected.status_code == 400
        page = soup(rejected)
        assert page.find(attrs={"role": "alert"}) and page.find("input", id="field-card_number")["aria-invalid"] == "true"
        assert "12ab" not in rejected.text  # an invalid value is not echoed back
        # Sticky form: a buyer typing one field at a time (Enter submits) keeps what passed.
        partial = http.post("/checkout/payment", data={"card_number": answers["payment"]["card_number"]})
        assert partial.status_code == 400
        assert soup(partial).find("input", id="field-card_number")["value"] == answers["payment"]["card_number"]
        http.post("/checkout/payment", data=answers["payment"])
        # Once accepted, card data is never rendered again.
        assert "4242 4242" not in http.get("/checkout/payment").text
        review = http.get("/checkout/review")
        assert "ending 4242" in review.text and "€96.47" in review.text
        confirmation = http.post("/checkout/review")
        order_id = soup(confirmation).find("meta", attrs={"name": "sp-order-id"})["content"]
        assert confirmation.url.path == f"/order/{order_id}"
        assert "Cart (0)" in confirmation.text

        orders = read_orders(db)  # readable while the server still runs (WAL)
    assert len(orders) == 1
    order = orders[0]
    assert order["order_id"] == order_id and order["buyer_tag"] == "sim-buyer-7"
    assert order["subtotal"] == pytest.approx(21.50 + 2 * 34.99)
    assert order["delivery_cost"] == pytest.approx(4.99)
    assert order["total"] == pytest.approx(21.50 + 2 * 34.99 + 4.99)
    assert [(i["product_id"], i["quantity"], i["unit_price"]) for i in order["items"]] == [
        ("2003", 1, 21.50), ("1001", 2, 34.99)]
    assert "4242 4242" not in json.dumps(order) and "123" not in order["details"].values()

    events = read_events(db)  # the file outlives the server
    assert {e["buyer_tag"] for e in events} == {"sim-buyer-7"}
    cart_changes = [(e["event_type"], e["product_id"], e["quantity"]) for e in events
                    if e["event_type"] in ("add_to_cart", "remove_from_cart")]
    assert cart_changes == [("add_to_cart", "2003", 2), ("add_to_cart", "3002", 1), ("remove_from_cart", "2003", 1),
                            ("remove_from_cart", "3002", 1), ("add_to_cart", "1001", 2)]
    purchases = [e for e in events if e["event_type"] == "purchase"]
    assert {(e["product_id"], e["quantity"], e["order_id"]) for e in purchases} == {
        ("2003", 1, order_id), ("1001", 2, order_id)}
    steps_seen = [e["step"] for e in events if e["event_type"] == "checkout" and e["status"] == 303]
    assert steps_seen == ["address", "delivery", "payment"]
    assert read_meta(db)["shop_id"] == DEMO_SHOP and json.loads(read_meta(db)["variant"])["name"] == "default"


def test_parallel_buyers_each_get_their_own_order(stores):
    """Conversions are counted per buyer tag even when many buyers shop at the same time."""
    store = stores["default"]
    buyers = [f"parallel-{n}" for n in range(6)]
    errors = []

    def shop(tag: str, product_id: str) -> None:
        try:
            with client(store, headers={BUYER_HEADER: tag}) as http:
                http.post("/cart/add", data={"product_id": product_id, "quantity": "3"})
                checkout(http, store.variant.checkout_steps)
        except Exception as error:  # collected: an assert in a thread would go unnoticed
            errors.append(error)

    product_for = dict(zip(buyers, ["1001", "1002", "2001", "2002", "3001", "3002"]))
    threads = [threading.Thread(target=shop, args=(tag, product_for[tag])) for tag in buyers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    orders = {o["buyer_tag"]: o for o in read_orders(store.db_path) if o["buyer_tag"].startswith("parallel-")}
    assert sorted(orders) == buyers
    prices = demo_catalog().set_index("product_id")["price"]
    for tag, order in orders.items():
        assert [(i["product_id"], i["quantity"]) for i in order["items"]] == [(product_for[tag], 3)]
        assert order["total"] == pytest.approx(3 * prices[product_for[tag]])
    assert len({o["order_id"] for o in orders.values()}) == len(buyers)


def test_order_log_writes_are_thread_safe(tmp_path):
    log = OrderLog(tmp_path / "log.sqlite")

    def write(worker: int) -> None:
        for n in range(25):
            log.record(buyer_tag=f"w{worker}", session_id="s", event_type="page_view", url=f"/{n}")
        log.place_order(buyer_tag=f"w{worker}", session_id="s", url="/checkout/review", subtotal=10.0,
                        delivery_cost=0.0, currency="EUR", details={},
                        items=[{"product_id": "p", "title": "t", "category": "c", "quantity": 1, "unit_price": 10.0}])

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    events = read_events(tmp_path / "log.sqlite")
    assert len([e for e in events if e["event_type"] == "page_view"]) == 8 * 25
    assert sorted(o["order_id"] for o in read_orders(tmp_path / "log.sqlite")) == sorted(
        stable_order_id(f"w{worker}", 1) for worker in range(8))


def test_a_buyer_gets_the_same_order_ids_whoever_orders_first(tmp_path):
    def order_ids(tags: list[str], path) -> dict[str, list[str]]:
        log = OrderLog(path)
        for tag in tags:
            log.place_order(buyer_tag=tag, session_id="s", url="/checkout/review", subtotal=1.0, delivery_cost=0.0,
                            currency="EUR", details={},
                            items=[{"product_id": "p", "title": "t", "category": "c", "quantity": 1, "unit_price": 1.0}])
        log.close()
        placed: dict[str, list[str]] = {}
        for order in read_orders(path):
            placed.setdefault(order["buyer_tag"], []).append(order["order_id"])
        return placed

    first = order_ids(["run:1", "run:2", "run:1", "run:3"], tmp_path / "a.sqlite")
    again = order_ids(["run:3", "run:1", "run:2", "run:1"], tmp_path / "b.sqlite")
    assert first == again and len({i for ids in first.values() for i in ids}) == 4
    assert all(re.fullmatch(r"SP\d{10}", i) and order_number(f"Order number {i}") == i for ids in first.values() for i in ids)


def test_human_visitor_is_tagged_by_cookie(stores):
    store = stores["list"]
    with client(store, headers={}) as human:
        human.get("/")
        human.get("/p/1002")
    tags = {e["buyer_tag"] for e in read_events(store.db_path) if e["url"] in ("/", "/p/1002")
            and not e["buyer_tag"].startswith("a11y")}
    assert len(tags) == 1 and next(iter(tags)).startswith("visitor-")


def test_worse_variant_has_more_steps_and_buy_button_after_description(stores):
    default, worse = stores["default"].variant, stores["worse"].variant
    assert len(worse.checkout_steps) > len(default.checkout_steps)

    def buy_button_after_description(store) -> bool:
        with client(store) as http:
            page = soup(http.get("/p/1002"))
        article = page.find("article")
        order = [tag for tag in article.descendants if getattr(tag, "name", None) in ("form", "p")]
        form = article.find("form", action="/cart/add")
        last_paragraph = [tag for tag in order if tag.name == "p"][-1]
        return order.index(form) > order.index(last_paragraph) and len(article.find_all("p")) > 5

    assert buy_button_after_description(stores["worse"])
    assert not buy_button_after_description(stores["default"])
    with client(stores["worse"], headers={BUYER_HEADER: "worse-buyer"}) as http:
        http.post("/cart/add", data={"product_id": "1002"})
        assert "42.50 EUR" in http.get("/cart").text
        confirmation = checkout(http, worse.checkout_steps)
    assert soup(confirmation).find("meta", attrs={"name": "sp-order-id"})
    assert any(o["buyer_tag"] == "worse-buyer" for o in read_orders(stores["worse"].db_path))


def test_two_variants_serve_side_by_side(stores):
    default, listed = stores["default"], stores["list"]
    assert default.port != listed.port and default.db_path != listed.db_path
    with client(default) as a, client(listed) as b:
        grid, rows = soup(a.get("/c/sports")), soup(b.get("/c/sports"))
    assert grid.select_one("ul.products.grid") and not grid.select_one("ul.products.list")
    assert rows.select_one("ul.products.list") and rows.find(class_="banner")
    assert sorted(product_ids(grid)) == sorted(product_ids(rows))


# ---- server lifecycle and faults ---------------------------------------------------------------


def _listening(port: int) -> bool:
    return any(c.laddr.port == port and c.status == psutil.CONN_LISTEN
               for c in psutil.Process().net_connections(kind="tcp"))


def test_port_and_threads_released_after_exit():
    gc.collect()
    threads_before = set(threading.enumerate())
    files_before = psutil.Process().num_fds()
    with serve_store(demo_catalog(), DEMO_SHOP) as store:
        port = store.port
        assert store.url == f"http://127.0.0.1:{port}/"
        assert httpx.get(store.url + "cart").status_code == 200
        assert _listening(port)
    assert not _listening(port)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert set(threading.enumerate()) == threads_before
    gc.collect()
    assert psutil.Process().num_fds() <= files_before  # no socket, thread pipe or SQLite file left open
    assert not store.db_path.exists()  # the temporary log goes with the store
    with serve_store(demo_catalog(), DEMO_SHOP, port=port) as again:  # the port can be reused at once
        assert httpx.get(again.url).status_code == 200


def test_busy_port_is_a_clear_error():
    with serve_store(demo_catalog(), DEMO_SHOP) as store:
        with pytest.raises(OSError, match=f"127.0.0.1:{store.port}"):
            with serve_store(demo_catalog(), DEMO_SHOP, port=store.port):
                pass


def test_fault_injection_rates():
    faults = Faults(error_rate=0.3, drop_rate=0.1, seed=11)
    outcomes = {"ok": 0, "error": 0, "dropped": 0}
    with serve_store(demo_catalog(), DEMO_SHOP, faults=faults) as store, client(store) as http:
        for _ in range(300):
            try:
                outcomes["error" if http.get("/robots.txt").status_code == 500 else "ok"] += 1
            except httpx.RemoteProtocolError:
                outcomes["dropped"] += 1
    assert 0.2 < outcomes["error"] / 300 < 0.4, outcomes
    assert 0.04 < outcomes["dropped"] / 300 < 0.18, outcomes
    with pytest.raises(ValueError, match="error_rate"):
        Faults(error_rate=1.5)
    assert not Faults().active


# ---- variants ----------------------------------------------------------------------------------


def test_builtin_variants_load():
    assert {"default", "list", "worse"} <= set(builtin_variants())
    worse = load_variant("worse")
    assert worse.buy_button_position == "below_description" and worse.long_description
    assert worse.format_price(12.99) == "12.99 EUR" and load_variant("default").format_price(12.99) == "€12.99"


@pytest.mark.parametrize(
    "content, fragments",
    [
        ({"layout": "grid", "colour": "red"}, ["bad.json", "'colour'"]),
        ({"items_per_page": "ten"}, ["bad.json", "'items_per_page'", "an integer"]),
        ({"layout": "carousel"}, ["bad.json", "layout", "grid, list"]),
        ({"checkout_steps": ["address", "teleport", "review"]}, ["bad.json", "'teleport'"]),
        ({"checkout_steps": ["review", "address"]}, ["bad.json", "last step"]),
        ("[1, 2]", ["bad.json", "JSON object"]),
        ("{not json", ["bad.json", "not valid JSON"]),
    ],
)
def test_invalid_variant_file_is_a_clear_error(tmp_path, content, fragments):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(VariantError) as error:
        load_variant(path)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_unknown_variant_name_lists_builtins():
    with pytest.raises(VariantError, match="default, list, saved_details, worse, worse_saved_details"):
        load_variant("shiny")


def test_variant_file_from_path_serves(tmp_path):
    path = tmp_path / "usd.json"
    path.write_text(json.dumps({"currency": "USD", "checkout_steps": ["address", "payment", "review"]}))
    with serve_store(demo_catalog(), DEMO_SHOP, path) as store, client(store) as http:
        assert store.variant.name == "usd"
        assert "$149.00" in http.get("/p/3001").text
        http.post("/cart/add", data={"product_id": "3001"})
        checkout(http, store.variant.checkout_steps)
        assert read_orders(store.db_path)[0]["currency"] == "USD"


# ---- catalogs ----------------------------------------------------------------------------------


def test_null_prices_get_synthetic_prices(tmp_path):
    rows = [
        {"shop_id": "s1", "product_id": "323294", "title": None, "category": "833", "brand": "2661", "price": None},
        {"shop_id": "s1", "product_id": "844400", "title": None, "category": "833", "brand": "2661", "price": None},
        {"shop_id": "s1", "product_id": "7", "title": "  Blue   mug ", "category": "kitchen.mug", "brand": None,
         "price": 9.5},
        {"shop_id": "s2", "product_id": "1", "title": "Other shop", "category": "x", "brand": "y", "price": 1.0},
    ]
    path = tmp_path / "catalog.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA), path)
    with serve_store(path, "s1") as store, client(store) as http:
        assert store.app.state.prices_synthetic == {"323294", "844400"}
        page = http.get("/p/323294")
        assert accessibility_problems(page.text) == []
        heading = soup(page).h1.get_text()
        assert heading == "Brand 2661 Category 833 #323294"
        expected = synthetic_price("323294", "833")
        assert f"€{expected:,.2f}" in page.text
        assert "Blue mug" in http.get("/c/kitchen.mug").text
        assert http.get("/p/1").status_code == 404  # another shop's product
    again = StoreCatalog.load(path, "s1")
    assert again.by_id["323294"].price == pytest.approx(expected) and expected > 0
    assert again.by_id["7"].price == 9.5 and not again.by_id["7"].price_synthetic


def test_shared_titles_are_told_apart():
    frame = demo_catalog()
    frame.loc[frame["product_id"].isin(["3001", "3003"]), "title"] = "Sonora Speaker"
    catalog = StoreCatalog.load(frame, DEMO_SHOP)
    assert catalog.by_id["3001"].title == "Sonora Speaker #3001"
    assert catalog.by_id["3003"].title == "Sonora Speaker #3003"
    assert catalog.by_id["3002"].title == "Wireless Charging Pad"


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda f: f.drop(columns=["brand"]), "missing column(s) brand"),
        (lambda f: f.assign(shop_id="elsewhere"), "no products for shop 'demo'; shops present: elsewhere"),
        (lambda f: pd.concat([f, f.iloc[[0]]], ignore_index=True), "row 13 repeats product_id '1001'"),
        (lambda f: f.assign(product_id=[None] + list(f["product_id"][1:])), "row 1 has no product_id"),
    ],
)
def test_bad_catalog_is_a_clear_error(change, fragment):
    with pytest.raises(CatalogError, match=re.escape(fragment)):
        StoreCatalog.load(change(demo_catalog()), DEMO_SHOP)


def test_demo_catalog_has_catalog_schema():
    frame = demo_catalog()
    assert list(frame.columns) == CATALOG_SCHEMA.names
    assert len(frame) == 12 and frame["category"].nunique() == 3 and frame["price"].notna().all()
    pa.Table.from_pandas(frame, schema=CATALOG_SCHEMA, preserve_index=False)  # types fit the schema


def test_real_rees46_products_serve():
    """Real product rows (category codes, brands, prices, no titles) become a browsable store."""
    source = DATA / "rees46_multicategory_2019oct" / "2019-Oct_head17k.csv"
    if not source.exists():
        pytest.skip(f"real data not found at {source}")
    raw = pd.read_csv(source, nrows=3000, dtype=str)
    catalog = pd.DataFrame({
        "shop_id": "rees46", "product_id": raw["product_id"], "title": None,
        "category": raw["category_code"], "brand": raw["brand"], "price": pd.to_numeric(raw["price"]),
    }).drop_duplicates("product_id")
    with serve_store(catalog, "rees46") as store, client(store) as http:
        home = http.get("/")
        assert home.status_code == 200 and accessibility_problems(home.text) == []
        first_category = soup(home).select_one("section a[href^='/c/']")["href"]
        listing = soup(http.get(first_category))
        assert product_ids(listing)
        product_page = http.get(f"/p/{product_ids(listing)[0]}")
        assert product_page.status_code == 200 and "#" in soup(product_page).h1.get_text()
        assert http.get("/search", params={"q": "samsung"}).status_code == 200
        # rees46 has a few zero prices: those become synthetic rather than "free".
        zero_priced = set(catalog.loc[catalog["price"] <= 0, "product_id"])
        assert store.prices_synthetic == zero_priced


# ---- fixtures and the command line -------------------------------------------------------------


def test_saved_fixtures_are_reproducible_and_up_to_date(tmp_path):
    written = save_fixtures(tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    for variant in ("default", "list", "worse"):
        for page in ("home", "listing", "search", "product", "cart", "checkout_address", "checkout_review", "order"):
            assert f"{variant}/{page}.html" in names
    assert "worse/checkout_survey.html" in names and "default/checkout_survey.html" not in names
    for relative in sorted(names):
        fresh = (tmp_path / relative).read_text(encoding="utf-8")
        assert not re.search(r"127\.0\.0\.1|sp_session|visitor-", fresh), relative
        committed = FIXTURES / relative
        assert committed.exists(), f"{relative} missing: run python -m storefronts.fixtures tests/fixtures/store"
        assert committed.read_text(encoding="utf-8") == fresh, f"{relative} is stale: regenerate the fixtures"


def test_cli_serves_until_ctrl_c(tmp_path):
    catalog_path = tmp_path / "catalog.parquet"
    pq.write_table(pa.Table.from_pandas(demo_catalog(), schema=CATALOG_SCHEMA, preserve_index=False), catalog_path)
    db = tmp_path / "cli.sqlite"
    command = [sys.executable, "-c", CLI, "serve-store", "--catalog", str(catalog_path), "--shop", DEMO_SHOP, "--variant", "list",
               "--db", str(db)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    try:
        url = None
        for line in process.stdout:
            match = re.search(r"http://127\.0\.0\.1:\d+/", line)
            if match:
                url = match.group(0)
                break
        assert url, "the command printed no URL"
        assert httpx.get(url + "c/kitchen", headers={BUYER_HEADER: "cli"}).status_code == 200
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "Stopping" in output
    assert [e["buyer_tag"] for e in read_events(db)] == ["cli"]
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_cli_rejects_bad_variant(tmp_path):
    cli = typer.Typer()  # our command alone, on a group of its own as in `simpersona`
    cli.callback()(lambda: None)
    cli.command("serve-store")(serve_store_command)
    args = ["serve-store", "--catalog", str(tmp_path / "none.parquet"), "--shop", "x"]
    bad_variant = CliRunner().invoke(cli, [*args, "--variant", "shiny"])
    assert bad_variant.exit_code != 0 and "shiny" in bad_variant.output
    missing = CliRunner().invoke(cli, args)
    assert missing.exit_code == 1 and "catalog file not found" in missing.output


def test_saved_details_checkout_opens_filled_in_and_orders_by_confirming(tmp_path):
    """A signed-in returning buyer submits each step as shown: no field needs typing."""
    db = tmp_path / "saved.sqlite"
    with serve_store(demo_catalog(), DEMO_SHOP, "saved_details", db_path=db) as store, client(store) as http:
        http.post("/cart/add", data={"product_id": "2003"})
        for step in ("address", "delivery", "payment"):
            form = soup(http.get(f"/checkout/{step}")).find("form", method=lambda m: m and m.lower() == "post")
            fields = {tag["name"]: tag.get("value", "") for tag in form.find_all("input")
                      if tag.get("name") and tag.get("type") not in ("radio", "checkbox")}
            fields |= {tag["name"]: tag.find("option", selected=True)["value"] for tag in form.find_all("select")}
            fields |= {tag["name"]: tag["value"] for tag in form.find_all("input", type="radio", checked=True)}
            assert all(fields.values()), f"{step}: empty fields {[k for k, v in fields.items() if not v]}"
            assert http.post(f"/checkout/{step}", data=fields).status_code in (200, 303)
        assert http.post("/checkout/review").status_code in (200, 303)
    (order,) = read_orders(db)
    assert [item["product_id"] for item in order["items"]] == ["2003"]
    assert "4242424242424242" not in json.dumps(order["details"])  # the saved card is never logged
