"""Action execution in both drivers, and browser vs http equality on the mock store.

A real HTTP server on 127.0.0.1 serves the edge fixtures plus a few dynamic routes (a search
results page, an order confirmation with the sp-order-id meta) and records every request, so the
tests see what really reached the server.
"""

from __future__ import annotations

import http.server
import re
import time
from urllib.parse import parse_qs, urlsplit

import psutil
import pytest

from agent.actions import parse_action
from harness.drivers.browser import BrowserPool
from harness.drivers.http_driver import HttpPool
from storefronts import BUYER_HEADER
from storefronts.faults import Faults
from storefronts.fixtures import demo_catalog
from storefronts.orderlog import read_events
from storefronts.server import apps_in_process, serve_store
from harness.drivers.safety import SiteGuard
from local_server import serve_pages

DRIVERS = ("browser", "http")
SLOW_ANSWER_S = 0.3
pytestmark = pytest.mark.anyio


class _ShopHandler(http.server.SimpleHTTPRequestHandler):
    """Static edge fixtures plus /search and /order/<id>; every request is recorded."""

    seen: list[dict]

    def log_message(self, *args) -> None:
        pass

    def _record(self, body: str = "") -> None:
        self.seen.append({"method": self.command, "path": self.path, "buyer": self.headers.get(BUYER_HEADER), "body": body})

    def _html(self, html: str, status: int = 200) -> None:
        data = html.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._record()
        parts = urlsplit(self.path)
        if parts.path == "/search":
            query = parse_qs(parts.query)
            shown = ", ".join(f"{k}={v[0]}" for k, v in sorted(query.items()))
            self._html(f"<!doctype html><title>Results</title><h1>Results for {shown}</h1><a href='/forms.html'>Back to forms</a>")
        elif parts.path.startswith("/order/"):
            order_id = parts.path.rsplit("/", 1)[-1]
            self._html(f"<!doctype html><head><meta name='sp-order-id' content='{order_id}'><title>Thanks</title></head>"
                       f"<h1>Order {order_id} placed</h1>")
        elif parts.path == "/slow":
            time.sleep(SLOW_ANSWER_S)
            self._html("<!doctype html><title>Slow page</title><h1>Slow page</h1>")
        elif parts.path == "/robots.txt":
            self._html("", status=404)
        else:
            super().do_GET()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._record(self.rfile.read(length).decode("utf-8", "replace"))
        if self.path == "/slow":
            time.sleep(SLOW_ANSWER_S)
        self._html("<!doctype html><title>Posted</title><h1>Posted</h1>")


@pytest.fixture(scope="module")
def server():
    with serve_pages(_ShopHandler) as httpd:
        yield httpd




@pytest.fixture(params=DRIVERS)
async def buyer(request, pools, server):
    guard = SiteGuard.for_url(server.url, rate_limit_per_s=None)
    async with pools[request.param].session(f"test-{request.param}", guard) as session:
        yield session


def line_of(text: str, pattern: str) -> str:
    found = [line for line in text.splitlines() if re.search(pattern, line)]
    assert found, f"no line matching {pattern!r} in:\n{text}"
    return found[0]


def id_of(text: str, pattern: str) -> int:
    return int(re.match(r"\[(\d+)\]", line_of(text, pattern)).group(1))


def click(text: str, pattern: str) -> str:
    return f"click [{id_of(text, pattern)}]"


async def test_click_navigates(buyer, server):
    await buyer.goto(server.url + "forms.html")
    text = (await buyer.observe()).text
    outcome = await buyer.act(parse_action(click(text, 'link "Bestsellers"')))
    assert outcome.error is None and not outcome.done
    after = await buyer.observe()
    assert after.url == server.url + "duplicates.html"
    assert after.element_ids[0] == 1   # a new document: ids start again


async def test_type_fills_and_submits(buyer, server):
    await buyer.goto(server.url + "forms.html")
    text = (await buyer.observe()).text
    await buyer.act(parse_action(f'type [{id_of(text, "searchbox")}] "red mug"'))
    after = await buyer.observe()
    assert urlsplit(after.url).path == "/search" and parse_qs(urlsplit(after.url).query) == {"q": ["red mug"]}
    assert "Heading: Results for q=red mug" in after.text


async def test_select_and_checkbox_change_the_form_that_is_then_submitted(buyer, server):
    await buyer.goto(server.url + "forms.html")
    text = (await buyer.observe()).text
    sort_id, check_id = id_of(text, 'combobox "Sort by"'), id_of(text, 'checkbox "In stock only"')
    assert (await buyer.act(parse_action(f'select [{sort_id}] "price: LOW to high"'))).error is None
    assert (await buyer.act(parse_action(f"click [{check_id}]"))).error is None
    text = (await buyer.observe()).text
    assert 'selected="Price: low to high"' in line_of(text, 'combobox "Sort by"')
    assert line_of(text, 'checkbox "In stock only"').endswith("checked") and "unchecked" not in text
    await buyer.act(parse_action(click(text, 'button "Apply"')))
    after = await buyer.observe()
    assert "Heading: Results for email=ada@example.com, in_stock=yes, sort=price" in after.text


async def test_stale_malformed_and_wrong_actions_become_errors(buyer, server):
    await buyer.goto(server.url + "forms.html")
    stale = await buyer.act(parse_action("click [99]"))
    assert stale.error.startswith("no element [99] on this page") and not stale.done
    assert f"Error: {stale.error}" in (await buyer.observe()).text
    malformed = await buyer.act("click 5")
    assert "malformed 'click' action" in malformed.error
    assert "unknown action 'dance'" in (await buyer.act("dance wildly")).error
    text = (await buyer.observe()).text
    assert "Error: unknown action 'dance'" in text
    button = id_of(text, 'button "Search"')
    assert "cannot type into" in (await buyer.act(parse_action(f'type [{button}] "x"'))).error
    sort_id = id_of(text, 'combobox "Sort by"')
    wrong = await buyer.act(parse_action(f'select [{sort_id}] "Cheapest"'))
    assert wrong.error == f'[{sort_id}] has no option "Cheapest"; options: "Most popular" | "Price: low to high"'
    # A click only opens a drop-down, which the text cannot show: the buyer is told how to choose.
    clicked = await buyer.act(parse_action(f"click [{sort_id}]"))
    assert clicked.error == f'[{sort_id}] is a drop-down; choose an option with select [{sort_id}] "option"'
    ok = await buyer.act(parse_action("scroll down"))
    assert ok.error == "already at the bottom of the page"
    assert "Error:" not in (await buyer.observe()).text.replace("Error: already", "")


def count_snapshots(buyer) -> list[int]:
    """Counts the driver's full passes over the page from now on (one entry per pass)."""
    passes, original = [], buyer.snapshot
    def counting(*args, **kwargs):
        passes.append(1)
        return original(*args, **kwargs)
    buyer.snapshot = counting
    return passes


async def test_an_action_on_the_page_just_read_needs_no_second_pass_over_it(buyer, server):
    await buyer.goto(server.url + "forms.html")
    text = (await buyer.observe()).text
    passes = count_snapshots(buyer)
    assert (await buyer.act(parse_action(f'select [{id_of(text, "combobox")}] "Price: low to high"'))).error is None
    assert passes == []
    # The observation is used up by the action: the next action, unobserved, reads the page anew.
    assert (await buyer.act(parse_action(click(text, 'checkbox "In stock only"')))).error is None
    assert passes == [1]


@pytest.mark.parametrize("page, removed, pattern", [
    ("forms.html", "document.querySelector('#sort').remove()", 'combobox "Sort by"'),
    ("shadow.html", "document.querySelector('#card').shadowRoot.querySelector('button').remove()", 'button "Add to cart"'),
])
async def test_a_page_that_changed_after_the_observation_is_read_again_before_the_action(
        pools, server, page, removed, pattern):
    async with pools["browser"].session("test-changed", SiteGuard.for_url(server.url, rate_limit_per_s=None)) as buyer:
        await buyer.goto(server.url + page)
        text = (await buyer.observe()).text
        gone = id_of(text, pattern)
        await buyer.page.evaluate(removed)   # as the page's own script would, after the agent read it
        passes = count_snapshots(buyer)
        outcome = await buyer.act(parse_action(f"click [{gone}]"))
        assert passes == [1]
        assert outcome.error.startswith(f"no element [{gone}] on this page"), outcome.error


async def test_a_disabled_control_is_an_error_not_a_click(buyer, server):
    await buyer.goto(server.url + "covered.html")
    sold_out = id_of((await buyer.observe()).text, 'button "Sold out"')
    assert (await buyer.act(parse_action(f"click [{sold_out}]"))).error == f"[{sold_out}] is disabled"


async def test_a_click_on_a_covered_element_names_what_covers_it(pools, server):
    """A real mouse click lands on whatever is on top: the agent is told, and clears it first."""
    async with pools["browser"].session("test-covered", SiteGuard.for_url(server.url, rate_limit_per_s=None)) as buyer:
        await buyer.goto(server.url + "covered.html")
        text = (await buyer.observe()).text
        covered = await buyer.act(parse_action(click(text, 'link "Bestsellers"')))
        assert covered.error == f'[{id_of(text, "Bestsellers")}] is covered by <div> "We use cookies Accept cookies"'
        assert (await buyer.act(parse_action(click(text, 'button "Accept cookies"')))).error is None
        assert (await buyer.act(parse_action(click((await buyer.observe()).text, 'link "Bestsellers"')))).error is None
        assert (await buyer.observe()).url == server.url + "duplicates.html"


@pytest.mark.parametrize("control, next_title", [('button "Send"', "Posted"), ('link "Open slowly"', "Slow page")])
async def test_a_click_that_leaves_the_page_is_over_when_the_next_page_is_there(server, control, next_title):
    """Even with no settle time: a form is sent in a task after the click, and a slow answer keeps
    the old page up meanwhile; the agent must not be shown the old page as the click's result."""
    async with BrowserPool(settle_ms=0) as pool:
        async with pool.session("test-slow", SiteGuard.for_url(server.url, rate_limit_per_s=None)) as buyer:
            await buyer.goto(server.url + "slow.html")
            outcome = await buyer.act(parse_action(click((await buyer.observe()).text, control)))
            assert outcome.error is None
            assert (await buyer.observe()).title == next_title


async def test_back_stop_and_conversion(buyer, server):
    assert (await buyer.act(parse_action("back"))).error == "there is no previous page"
    await buyer.goto(server.url + "forms.html")
    await buyer.goto(server.url + "duplicates.html")
    assert (await buyer.act(parse_action("back"))).error is None
    assert (await buyer.observe()).url == server.url + "forms.html"
    stop = await buyer.act(parse_action("stop"))
    assert stop.done and not stop.converted
    confirmed = await buyer.goto(server.url + "order/SP-123")
    assert confirmed.converted and confirmed.done and confirmed.detail["order_id"] == "SP-123"


async def test_every_request_carries_the_buyer_tag(pools, server):
    for driver in DRIVERS:
        guard = SiteGuard.for_url(server.url, rate_limit_per_s=None)
        async with pools[driver].session(f"tag-{driver}", guard) as session:
            await session.goto(server.url + "duplicates.html?tagged")
        tagged = [r for r in server.seen if r["path"] == "/duplicates.html?tagged" and r["buyer"] == f"tag-{driver}"]
        assert tagged, driver


# -- browser vs http on the mock store ----------------------------------------------------------

FIELD_ANSWERS = {
    "Email address": "ada@example.com", "Full name": "Ada Lovelace", "Street and house number": "12 Analytical Row",
    "City": "London", "Postcode": "N1 9GU", "Name on card": "Ada Lovelace", "Expiry date": "12/29",
}
SELECT_ANSWERS = {"Country": "United Kingdom", "Sort by": "Price: low to high"}


def scripted_action(text: str) -> str:
    """A fixed shopper: kitchen -> sort -> kettle -> quantity 2 -> cart -> checkout forms."""
    url = line_of(text, r"^URL: ")
    if "/checkout/" in url or "/c/kitchen" in url and "sort=" not in url:
        for name, answer in SELECT_ANSWERS.items():
            line = next((l for l in text.splitlines() if f'combobox "{name}"' in l), None)
            if line and answer not in line.split("options:")[0]:
                return f'select [{id_of(line, ".")}] "{answer}"'
        if "/c/kitchen" in url:
            return click(text, 'button "Sort"')
        for name, answer in FIELD_ANSWERS.items():
            line = next((l for l in text.splitlines() if f'textbox "{name}"' in l), None)
            if line and "value=" not in line:
                return f'type [{id_of(line, ".")}] "{answer}"'
        return click(text, 'button "(Continue to|Place order)')
    for page, pattern in (("/cart", 'link "Proceed to checkout"'), ("/p/", "spinbutton"),
                          ("/c/kitchen", 'link "Stainless Steel Kettle'), ("", 'link "Kitchen"')):
        if page in url:
            if pattern == "spinbutton":
                return f'type [{id_of(text, pattern)}] "2"'
            return f"click [{id_of(text, pattern)}]"
    raise AssertionError(text)


async def _walk_the_funnel(sessions: dict, steps: int = 16) -> list[str]:
    """Every session takes the scripted buyer's steps in turn; their observations must agree."""
    urls = []
    for _ in range(steps):
        texts = {name: (await s.observe()).text for name, s in sessions.items()}
        assert len(set(texts.values())) == 1, texts
        text = next(iter(texts.values()))
        urls.append(line_of(text, "^URL: "))
        action = parse_action(scripted_action(text))
        outcomes = {name: await s.act(action) for name, s in sessions.items()}
        assert len({o.error for o in outcomes.values()}) == 1, outcomes
    return urls


def _connections_to(port: int) -> int:
    return sum(1 for c in psutil.Process().net_connections("tcp")
               if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


async def test_browser_and_http_drivers_see_the_same_mock_store(pools):
    with serve_store(demo_catalog(), "demo") as store:
        sessions = {}
        guard = SiteGuard.for_url(store.url, our_store=True, rate_limit_per_s=None)
        async with pools["browser"].session("same-browser", guard) as sessions["browser"], \
                pools["http"].session("same-http", guard) as sessions["http"]:
            for session in sessions.values():
                await session.goto(store.url)
            urls = await _walk_the_funnel(sessions)
        paths = {urlsplit(u.split(" ", 1)[1]).path for u in urls}
        # The walk really went through the funnel: listing, product, cart, checkout steps.
        assert {"/", "/c/kitchen", "/p/1001", "/cart", "/checkout/address"} <= paths, paths
        assert any(p.startswith("/checkout/") and p != "/checkout/address" for p in paths), paths


async def test_the_http_driver_calls_a_store_this_process_serves_without_a_socket():
    with serve_store(demo_catalog(), "demo") as store:
        assert store.url.rstrip("/") in apps_in_process()
        guard = SiteGuard.for_url(store.url, our_store=True, rate_limit_per_s=None)
        async with HttpPool(in_process=True) as in_process, HttpPool(in_process=False) as over_tcp:
            async with in_process.session("in-process", guard) as direct:
                async with over_tcp.session("socket", guard) as wired:
                    for session in (direct, wired):
                        await session.goto(store.url)
                    urls = await _walk_the_funnel({"in-process": direct, "socket": wired})
                    assert _connections_to(store.port) > 0   # the socket buyer's keep-alive connection
                assert _connections_to(store.port) == 0
                await direct.act("back")   # still served, with no connection at all
                assert _connections_to(store.port) == 0
        logged = {tag: [event["event_type"] for event in read_events(store.db_path) if event["buyer_tag"] == tag]
                  for tag in ("in-process", "socket")}
        assert logged["in-process"][:-1] == logged["socket"]   # the store logged both buyers alike (and the back)
        assert "checkout" in logged["socket"]
    assert any("/checkout/" in url for url in urls), urls
    assert store.url.rstrip("/") not in apps_in_process()
    # Slow answers and dropped connections belong to the network path: such a store keeps its socket.
    with serve_store(demo_catalog(), "demo", faults=Faults(drop_rate=0.5)) as faulty:
        assert faulty.url.rstrip("/") not in apps_in_process()


async def test_buyers_who_get_the_same_page_share_one_parse_and_one_who_changes_it_gets_a_copy():
    with serve_store(demo_catalog(), "demo") as store:
        guard = SiteGuard.for_url(store.url, our_store=True, rate_limit_per_s=None)
        async with HttpPool(shared_pages=8) as shared, HttpPool(shared_pages=0) as unshared:
            async with shared.session("first", guard) as first, shared.session("second", guard) as second, \
                    unshared.session("alone", guard) as alone:
                for session in (first, second, alone):
                    await session.goto(store.url)
                # In step: the second buyer reads each page after the first has typed into or
                # chosen on its own copy, and must still see it as the buyer alone does.
                urls = await _walk_the_funnel({"first": first, "second": second, "alone": alone})
        assert shared.shared_pages.hits > shared.shared_pages.misses > 0
        assert unshared.shared_pages.hits == 0
    assert any("sort=" in url for url in urls) and any("/checkout/" in url for url in urls), urls


# -- resources ---------------------------------------------------------------------------------

def _chromium_children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if "chrom" in p.name().lower()}


async def test_no_orphaned_chromium_after_the_pool_closes(server):
    before = _chromium_children()
    async with BrowserPool() as pool:
        async with pool.session("orphans", SiteGuard.for_url(server.url, rate_limit_per_s=None)) as session:
            await session.goto(server.url + "forms.html")
            during = _chromium_children() - before
    assert during, "the pool should have started Chromium processes"
    gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in during if psutil.pid_exists(pid)], timeout=10)
    assert not alive, f"Chromium processes left running: {[p.pid for p in alive]}"
