"""Observation text of hand-made edge-case pages (tests/fixtures/edge), read by real Chromium.

The pages are served by a real HTTP server on 127.0.0.1; the assertions name exact lines for key
elements and check that hidden ones are absent.
"""

from __future__ import annotations


import pytest

from agent.actions import parse_action
from harness.drivers.browser import BrowserPool
from harness.drivers.observation import (
    CHARS_PER_TOKEN, PageSnapshot, RawElement, accessible_name, cart_state, describe, previous_start, render, shown_url,
)
from harness.drivers.safety import SiteGuard
from local_server import serve_pages

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def site():
    with serve_pages() as httpd:
        yield httpd.url


@pytest.fixture(scope="module")
async def pool(anyio_backend):
    async with BrowserPool(settle_ms=150) as browser_pool:
        yield browser_pool


@pytest.fixture
async def buyer(pool, site):
    async with pool.session("test-observation", SiteGuard.for_url(site, rate_limit_per_s=None)) as session:
        yield session


async def observe(buyer, url: str) -> str:
    outcome = await buyer.goto(url)
    assert outcome.error is None, outcome.error
    return (await buyer.observe()).text


def lines(text: str) -> list[str]:
    return text.splitlines()


# -- pages in a real browser ------------------------------------------------------------------

async def test_hidden_elements_are_pruned(buyer, site):
    text = await observe(buyer, site + "hidden.html")
    assert lines(text)[-3:] == ['[1] link "Visible link"', '[2] button "More info"', '[3] button "Visible button"']
    for hidden in ("display none", "visibility hidden", "Aria hidden", "Inside aria hidden", "Hidden attribute",
                   "Inside hidden div", "Zero size", "Off screen", "Inside template", "closed dialog",
                   "closed details", "Removed from the DOM", "secret"):
        assert hidden not in text


async def test_icon_only_controls_are_named_and_cart_is_read(buyer, site):
    text = await observe(buyer, site + "icons.html")
    for line in ('[1] link "search"', '[2] link "My account"', '[3] link "Wishlist"', '[4] link "cart 2 €31.98"',
                 '[5] button "menu"', '[6] button "Close banner"', '[7] button "shopping bag"'):
        assert line in lines(text)
    assert "Cart: 2 items, €31.98" in lines(text)


async def test_open_modal_lists_only_its_content(buyer, site):
    text = await observe(buyer, site + "modal.html")
    assert 'Note: a dialog ("We use cookies") is open; only its content is listed.' in text
    assert '[4] button "Accept all" — We use cookies Choose your cookie settings.' in lines(text)
    assert "Shoes" not in text and "Add to cart" not in text
    blocked = await buyer.act(parse_action("click [1]"))
    assert blocked.error and "dialog" in blocked.error
    await buyer.act(parse_action("click [4]"))
    after = await buyer.observe()
    # The dialog is gone; the page's ids did not change when it closed.
    assert "Note:" not in after.text
    assert '[1] link "Shoes"' in lines(after.text) and '[3] button "Add to cart"' in lines(after.text)


async def test_fade_in_content_is_waited_for(buyer, site):
    text = await observe(buyer, site + "fadein.html")
    assert '[1] link "Linen Shirt" — €39.00' in lines(text)
    assert '[2] button "Add to cart" — Linen Shirt €39.00' in lines(text)


async def test_duplicated_labels_carry_their_product(buyer, site):
    text = await observe(buyer, site + "duplicates.html")
    for line in ('[3] button "Add to cart" — Blue Mug €12.50', '[6] button "Add to cart" — Red Mug €13.00',
                 '[9] button "Add to cart" — Green Mug €14.25'):
        assert line in lines(text)


async def test_open_shadow_dom_is_observed_and_clickable(buyer, site):
    text = await observe(buyer, site + "shadow.html")
    assert '[2] button "Add to cart" — Shadow Lamp €49.00' in lines(text)
    outcome = await buyer.act(parse_action("click [2]"))
    assert outcome.error is None
    assert (await buyer.observe()).url.endswith("/cart?added=77")


async def test_form_fields_show_type_value_and_options(buyer, site):
    text = await observe(buyer, site + "checkout.html")
    assert '[5] combobox "Country" selected="Germany" options: "Germany" | "France"' in lines(text)
    assert '[2] textbox "Card number"' in lines(text)
    forms = await observe(buyer, site + "forms.html")
    assert '[5] textbox "Your email" type=email value="ada@example.com"' in lines(forms)
    assert '[4] checkbox "In stock only" unchecked' in lines(forms)


async def test_long_page_is_cut_to_the_token_budget_and_scrolls(pool, site):
    guard = SiteGuard.for_url(site, rate_limit_per_s=None)
    async with pool.session("test-long", guard) as buyer:
        await buyer.goto(site + "long.html")
        first = await buyer.observe()
        budget_chars = pool.token_budget * CHARS_PER_TOKEN
        assert len(first.text) <= budget_chars + 100   # + the "more below" hint line
        assert lines(first.text)[-1].endswith("more elements below (scroll down)")
        assert first.element_ids[0] == 1 and len(first.element_ids) < 301
        assert (await buyer.act(parse_action("scroll down"))).error is None
        second = await buyer.observe()
        assert second.element_ids[0] == first.element_ids[-1] + 1
        assert "more elements above (scroll up)" in second.text
        await buyer.act(parse_action("scroll up"))
        assert (await buyer.observe()).element_ids == first.element_ids
        outcome = await buyer.act(parse_action("scroll up"))
        assert outcome.error == "already at the top of the page"


async def test_real_world_shop_listing_names_every_product(buyer, site):
    text = await observe(buyer, site + "shop_listing.html")
    products = {"Enamel Coffee Pot": "€34.00", "Oak Cutting Board": "€24.90",
                "Linen Tea Towels (set of 3)": "€18.50", "Cast Iron Skillet": "€45.00"}
    for title, price in products.items():
        product_lines = [line for line in lines(text) if title in line]
        assert any(price in line for line in product_lines), (title, product_lines)
        # Its cart control (add to cart, or select options / read more when it cannot be added
        # from the listing) names the product and carries the price as context.
        control = [line for line in product_lines if ("Add to cart" in line or "Select options" in line
                                                      or "Read more" in line)]
        assert control and price in control[0], (title, product_lines)
    assert "Cart: 1 item, €24.90" in lines(text)
    assert "View cart" not in text and "My Account" not in text   # hidden by the theme's CSS


async def test_ids_are_stable_on_reobservation_and_fresh_after_navigation(buyer, site):
    first = await observe(buyer, site + "duplicates.html")
    again = (await buyer.observe()).text
    assert first == again
    await buyer.goto(site + "forms.html")
    fresh = await buyer.observe()
    assert fresh.element_ids[0] == 1


# -- the rendering rules, without a browser -----------------------------------------------------

def test_accessible_name_order_and_icon_fallback():
    assert accessible_name(RawElement(1, "button", aria_label="Close", text="×")) == "Close"
    assert accessible_name(RawElement(1, "a", text="", icon="fa-shopping-cart"[3:])) == "shopping cart"
    assert accessible_name(RawElement(1, "a", text="3", icon="icon-cart"[5:])) == "cart 3"
    assert accessible_name(RawElement(1, "input", input_type="submit", value_attr="")) == "Submit"
    assert accessible_name(RawElement(1, "input", input_type="text", label_text="", placeholder="Email")) == "Email"
    assert accessible_name(RawElement(1, "input", input_type="text", name_attr="postal_code")) == "postal code"


def test_cart_state_is_read_from_the_cart_link():
    def cart(**fields):
        return cart_state([describe(RawElement(1, "a", **fields))])

    assert cart(href="/cart", text="Cart (3) · 12,50 €") == "3 items, 12,50 €"
    assert cart(href="/basket", text="Basket 0") == "empty"
    assert cart(href="/cart", text="1 item €24.90") == "1 item, €24.90"
    assert cart(href="/products/shoes", text="Shoes 2") is None


def test_render_always_shows_one_element_and_reports_the_rest():
    snapshot = PageSnapshot("http://x/", "T", [RawElement(i, "a", text="x" * 50, href="/") for i in range(1, 6)])
    rendered = render(snapshot, token_budget=1)
    assert rendered.shown_ids == [1]
    assert rendered.text.endswith("… 4 more elements below (scroll down)")


def test_observe_command_prints_what_the_agent_reads(site, capsys):
    from harness.cli.observe import observe as observe_command
    from harness.drivers import Driver

    observe_command(site + "duplicates.html", driver=Driver.http, budget=40, settle_ms=0,
                    respect_robots=True, buyer_tag="cli-test")
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == [f"URL: {shown_url(site)}duplicates.html", "Title: Many add-to-cart buttons", "Heading: Bestsellers"]
    assert printed[-1].endswith("more elements below (scroll down)")


async def test_the_same_page_reads_the_same_on_any_port_and_never_shows_credentials(pool, site):
    texts = []
    with serve_pages() as other:
        assert other.url != site
        for url in (site, other.url):
            async with pool.session("test-port", SiteGuard.for_url(url, rate_limit_per_s=None)) as buyer:
                texts.append(await observe(buyer, url + "duplicates.html"))
    assert texts[0] == texts[1] and texts[0].startswith("URL: http://127.0.0.1/duplicates.html\n")
    with_credentials = render(PageSnapshot("https://user:secret@shop.example:8443/cart?step=2", "Cart", []))
    assert with_credentials.text.startswith("URL: https://shop.example/cart?step=2\n")


def test_scroll_up_window_reaches_back_to_where_scrolling_down_started():
    snapshot = PageSnapshot("http://x/", "T", [RawElement(i, "a", text=f"item {i} " + "x" * (i % 7 * 10), href="/")
                                               for i in range(1, 301)])
    starts = [0]
    while (window := render(snapshot, start=starts[-1], token_budget=200)).next_index < window.total:
        starts.append(window.next_index)
    assert len(starts) > 10
    for later in starts[1:]:
        earlier = previous_start(snapshot, later, token_budget=200)
        assert render(snapshot, start=earlier, token_budget=200).next_index >= later
        assert earlier == 0 or render(snapshot, start=earlier - 1, token_budget=200).next_index < later
