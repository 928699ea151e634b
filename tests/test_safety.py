"""SiteGuard: allow-list, robots.txt, rate limit and payment interception, against a real server.

The server records every request it receives (method, path, Host header, body), so "nothing was
sent" is checked where it matters: on the server.
"""

from __future__ import annotations

import asyncio
import http.server
from urllib.parse import urlsplit

import pytest

from agent.actions import parse_action
from harness.drivers import safety
from harness.drivers.observation import RawElement, is_pay_control
from harness.drivers.safety import SiteGuard
from local_server import serve_pages

DRIVERS = ("browser", "http")
pytestmark = pytest.mark.anyio

ROBOTS_TXT = "User-agent: *\nDisallow: /private\n"
PLACE_ORDER_PAGE = """<!doctype html><title>Review</title><h1>Review your order</h1>
<p class="product-name">Espresso Cups</p><p>Total: €24.00</p>
<form method="post" action="/order"><button type="submit">Place order</button></form>"""
SCRIPTED_PAY_PAGE = """<!doctype html><title>One-click</title><h1>One-click</h1>
<button type="button" id="go" onclick="fetch('/api/charge', {method: 'POST',
  headers: {'Content-Type': 'application/x-www-form-urlencoded'},
  body: 'card_number=4242424242424242&cvc=123'}).then(() => { document.title = 'sent'; })
  .catch(() => { document.title = 'refused'; })">Go</button>"""


class _GuardedHandler(http.server.SimpleHTTPRequestHandler):
    seen: list[dict]

    def log_message(self, *args) -> None:
        pass

    def _record(self, body: str = "") -> None:
        self.seen.append({"method": self.command, "path": self.path, "host": self.headers.get("Host", ""), "body": body})

    def _html(self, html: str, status: int = 200, content_type: str = "text/html; charset=utf-8") -> None:
        data = html.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._record()
        path = urlsplit(self.path).path
        port = self.server.server_address[1]
        if path == "/robots.txt":
            self._html(ROBOTS_TXT, content_type="text/plain")
        elif path == "/offsite":
            self._html(f"<!doctype html><title>Off</title><h1>Links out</h1>"
                       f"<img src='http://localhost:{port}/pixel.png' width='10' height='10' alt='pixel'>"
                       f"<a href='http://localhost:{port}/forms.html'>Elsewhere</a>")
        elif path == "/review":
            self._html(PLACE_ORDER_PAGE)
        elif path == "/scripted-pay":
            self._html(SCRIPTED_PAY_PAGE)
        else:
            super().do_GET()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._record(self.rfile.read(length).decode("utf-8", "replace"))
        self._html("<!doctype html><title>Paid</title><h1>Paid</h1>")


@pytest.fixture(scope="module")
def server():
    with serve_pages(_GuardedHandler) as httpd:
        yield httpd




def posts(server) -> list[dict]:
    return [r for r in server.seen if r["method"] == "POST"]


@pytest.mark.parametrize("driver", DRIVERS)
async def test_card_form_is_never_submitted_on_a_live_store(pools, server, driver):
    guard = SiteGuard(rate_limit_per_s=None)   # allow-list: the start URL's host
    before = len(posts(server))
    async with pools[driver].session(f"pay-{driver}", guard) as buyer:
        await buyer.goto(server.url + "checkout.html")
        text = (await buyer.observe()).text
        assert '[6] button "Continue"' in text.splitlines()
        typed = await buyer.act(parse_action('type [2] "4242424242424242"'))
        assert typed.converted and typed.done
        clicked = await buyer.act(parse_action("click [6]"))
    assert clicked.converted and clicked.done and clicked.error is None
    assert clicked.detail["intercepted"] is True
    assert clicked.detail["price"] == "€64.80"
    assert clicked.detail["product"] == "Trail Runner Shoe"
    assert len(posts(server)) == before, "a payment form reached the server"
    assert len(guard.intercepted) == 2


@pytest.mark.parametrize("driver", DRIVERS)
async def test_place_order_button_is_intercepted_but_submits_on_our_store(pools, server, driver):
    before = len(posts(server))
    async with pools[driver].session(f"order-{driver}", SiteGuard(rate_limit_per_s=None)) as buyer:
        await buyer.goto(server.url + "review")
        outcome = await buyer.act(parse_action("click [1]"))
    assert outcome.converted and outcome.detail["control"] == "Place order"
    assert outcome.detail["product"] == "Espresso Cups" and outcome.detail["price"] == "€24.00"
    assert len(posts(server)) == before
    # The same click on our own store goes through (so the test above can fail).
    async with pools[driver].session(f"ours-{driver}", SiteGuard(rate_limit_per_s=None, our_store=True)) as buyer:
        await buyer.goto(server.url + "review")
        outcome = await buyer.act(parse_action("click [1]"))
    assert outcome.error is None and not outcome.converted
    assert len(posts(server)) == before + 1


async def test_card_post_from_page_script_is_blocked_at_the_network(pools, server):
    before = len(posts(server))
    guard = SiteGuard(rate_limit_per_s=None)
    async with pools["browser"].session("scripted-pay", guard) as buyer:
        await buyer.goto(server.url + "scripted-pay")
        outcome = await buyer.act(parse_action("click [1]"))   # "Go": not a pay control by name
        assert outcome.error is None and not outcome.converted
        assert (await buyer.observe()).title == "refused"
    assert len(posts(server)) == before
    assert any("payment details" in b.reason for b in guard.blocked)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_hosts_off_the_allow_list_are_blocked(pools, server, driver):
    guard = SiteGuard(rate_limit_per_s=None)
    async with pools[driver].session(f"offsite-{driver}", guard) as buyer:
        await buyer.goto(server.url + "offsite")
        text = (await buyer.observe()).text
        assert text.splitlines()[-1] == "[1] link \"Elsewhere\""
        outcome = await buyer.act(parse_action("click [1]"))
    port = urlsplit(server.url).port
    assert outcome.error == f"not visited: host localhost:{port} is not on the allow-list"
    assert not [r for r in server.seen if r["host"].startswith("localhost")], "an off-list host was contacted"
    assert all("localhost" in b.url for b in guard.blocked) and guard.blocked


@pytest.mark.parametrize("driver", DRIVERS)
async def test_robots_txt_disallow_is_an_error_not_a_visit(pools, server, driver):
    private_visits = lambda: [r for r in server.seen if r["path"].startswith("/private")]  # noqa: E731
    before = len(private_visits())
    async with pools[driver].session(f"robots-{driver}", SiteGuard(rate_limit_per_s=None)) as buyer:
        outcome = await buyer.goto(server.url + "private/forms.html")
        text = (await buyer.observe()).text
    assert outcome.error == f"not visited: robots.txt of {urlsplit(server.url).netloc} disallows /private/forms.html"
    assert f"Error: {outcome.error}" in text
    assert len(private_visits()) == before
    async with pools[driver].session(f"no-robots-{driver}", SiteGuard(rate_limit_per_s=None, respect_robots=False)) as buyer:
        await buyer.goto(server.url + "private/forms.html")
    assert len(private_visits()) == before + 1


# -- without a browser ---------------------------------------------------------------------------

async def test_token_bucket_spaces_requests_per_host(monkeypatch):
    clock = {"now": 100.0}
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["now"] += seconds

    monkeypatch.setattr(safety.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(safety.asyncio, "sleep", fake_sleep)
    guard = SiteGuard(allow_hosts=["a.test", "b.test"], rate_limit_per_s=2.0, burst=2, respect_robots=False)
    for _ in range(4):
        assert await guard.check("http://a.test/p", is_page=True) is None
    await guard.check("http://b.test/p", is_page=True)   # another host has its own bucket
    assert slept == [pytest.approx(0.5), pytest.approx(0.5)]
    assert clock["now"] == pytest.approx(101.0)
    assert asyncio.sleep is fake_sleep


def test_card_posts_and_pay_controls_are_recognised():
    live, ours = SiteGuard(), SiteGuard(our_store=True)
    assert live.card_post_reason("POST", b"name=Ada&card_number=4242&cvc=1")
    assert live.card_post_reason("POST", "billing[cc-number]=4242")
    assert live.card_post_reason("POST", "product_id=1001&quantity=2") is None
    assert ours.card_post_reason("POST", "card_number=4242") is None
    assert is_pay_control(RawElement(1, "button"), "Pay now")
    assert is_pay_control(RawElement(1, "input", input_type="submit"), "Complete purchase")
    assert is_pay_control(RawElement(1, "button", in_card_form=True), "Continue")
    assert not is_pay_control(RawElement(1, "button"), "Add to cart")
    assert not is_pay_control(RawElement(1, "input", input_type="text", in_card_form=True), "Card number")


def test_only_a_checkout_with_something_in_it_counts_as_paying():
    """A live store's conversion is a place-order/pay control with an order behind it: a button on
    a checkout page or with a full cart, never a payment logo, a "Buy now" on an empty cart or a
    "Checkout now" link (which only leads to the checkout)."""
    from harness.drivers.observation import PageSnapshot, pays_on_live_store

    cart_full = RawElement(9, "a", text="Basket (1 item) €12.00", href="/basket/")
    home = PageSnapshot("https://shop.example/", "Shop", [cart_full])
    empty = PageSnapshot("https://shop.example/product/3", "Kettle", [])
    preview = PageSnapshot("https://shop.example/checkout/preview/", "Preview", [])
    place_order = RawElement(1, "button", text="Place order")
    assert pays_on_live_store("click", place_order, preview)
    assert pays_on_live_store("click", place_order, home)
    assert not pays_on_live_store("click", RawElement(2, "button", text="Buy now"), empty)
    assert not pays_on_live_store("click", RawElement(3, "a", alt="Pay with Visa", href="/pay-methods"), home)
    assert not pays_on_live_store("click", RawElement(4, "a", text="Pay now", href="/offers"), home)
    assert not pays_on_live_store("click", RawElement(5, "a", text="Checkout now", href="/checkout/"), home)
    assert pays_on_live_store("click", RawElement(6, "button", text="Continue", in_card_form=True), empty)
    assert pays_on_live_store("type", RawElement(7, "input", input_type="text", in_card_form=True), empty)
