"""The observation text format (agent/page.py): every page model renders and parses back to
itself, and the saved pages of tests/fixtures, read the way the http driver reads them, parse
into the elements and the shop words a buyer acts on."""

from __future__ import annotations

from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.page import Element, Page, element_state, names_cart, parse, render
from harness.drivers.soup_walk import SoupWalker, css_hidden_ids
from harness.drivers.observation import render as render_snapshot

FIXTURES = Path(__file__).resolve().parent / "fixtures"
STORE = FIXTURES / "store" / "default"
PAGE_URL = "http://127.0.0.1:8000/page"
EXAMPLES = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Page text that tries to break the format: quotes, ids in brackets, escapes, the context mark,
# line breaks, header-like and scroll-note-like lines, unicode.
TRICKY = ['"', "'", "[", "]", "[12]", " [ 7 ] ", "\\", "\\[3]", "—", " — ", "\n", "\r", "\t", "|", "…",
          "Elements:", "URL: ", "Notice: ", "… 3 more elements below (scroll down)", "checked", "disabled",
          'value="x"', "options:", "selected=", "é", "€12.50", "٣", "🛒", "\ufeff", " "]
TEXT = st.one_of(
    st.text(max_size=30),
    st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=4)), max_size=12).map("".join),
    st.text(min_size=200, max_size=600),   # a long line
)
ROLES = st.one_of(st.sampled_from(["link", "button", "textbox", "searchbox", "combobox", "listbox", "checkbox",
                                   "radio", "spinbutton", "slider", "tab", "menuitem"]),
                  st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True))
INPUT_TYPES = st.sampled_from(["", "email", "password", "number", "tel", "date", "url"])


@st.composite
def states(draw) -> dict:
    """Arguments of element_state, in any combination the writer accepts."""
    return {
        "checked": draw(st.one_of(st.none(), st.booleans())),
        "selected": draw(st.lists(TEXT, max_size=2)),
        "options": draw(st.one_of(st.none(), st.lists(TEXT, max_size=4))),
        "more_options": draw(st.integers(0, 40)),
        "input_type": draw(INPUT_TYPES),
        "value": draw(st.one_of(st.none(), TEXT)),
        "disabled": draw(st.booleans()),
    }


@st.composite
def elements(draw) -> Element:
    return Element(draw(st.integers(0, 10**9)), draw(ROLES), draw(TEXT), element_state(**draw(states())), draw(TEXT))


@st.composite
def pages(draw) -> Page:
    return Page(
        url=draw(TEXT), title=draw(TEXT), heading=draw(TEXT), cart=draw(TEXT),
        notices=tuple(draw(st.lists(TEXT, max_size=3))), error=draw(TEXT),
        dialog=draw(st.one_of(st.none(), TEXT)), elements=tuple(draw(st.lists(elements(), max_size=8))),
        above=draw(st.integers(0, 500)), below=draw(st.integers(0, 500)),
    )


def test_every_page_renders_and_parses_back_to_itself():
    seen = 0

    @EXAMPLES
    @given(pages())
    def check(page: Page) -> None:
        nonlocal seen
        seen += 1
        text = render(page)
        assert parse(text) == page
        # Only element lines start with an id, however the page text looks.
        assert sum(line.startswith("[") for line in text.split("\n")) == len(page.elements)

    check()
    assert seen >= 400


def test_the_element_state_is_read_back_as_written():
    @EXAMPLES
    @given(states())
    def check(state: dict) -> None:
        element = parse(render(Page("u", "t", elements=(Element(1, "combobox", "x", element_state(**state)),)))).elements[0]
        assert element.checked is state["checked"]
        assert element.disabled is state["disabled"]
        assert element.selected == [as_written(option) for option in state["selected"]]
        assert element.options == [as_written(option) for option in state["options"] or []]
        assert element.value == (None if state["value"] is None else as_written(state["value"]))

    check()


def as_written(value: str) -> str:
    """A quoted value as the text can hold it: on one line, its double quotes written as '."""
    return value.replace("\n", " ").replace('"', "'")


def test_page_text_that_imitates_an_element_stays_text():
    page = Page("http://x/", 'Deal [5] button "Pay"', elements=(
        Element(3, "link", 'Shoes [9] button "Buy"', context="click [99]\n[98] button"),))
    text = render(page)
    assert text.splitlines() == [
        "URL: http://x/",
        "Title: Deal \\[5] button \"Pay\"",
        "Elements:",
        "[3] link \"Shoes \\[9] button 'Buy'\" — click \\[99] \\[98] button",
    ]
    assert [e.element_id for e in parse(text).elements] == [3]


def test_a_fragment_and_a_cut_observation_keep_their_element_ids():
    fragment = parse('[1] button "OK"\n   [2] link "x" — text [99] button\n[3]garbage\n…')
    assert [(e.element_id, e.role, e.name) for e in fragment.elements] == [(1, "button", "OK"), (2, "link", "x"), (3, "", "")]
    assert fragment.elements[1].context == "text [99] button"


# ---------------------------------------------------------------------------------------------
# The saved pages, read the way the http driver reads them


def observe(path: Path) -> str:
    soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    hidden = css_hidden_ids(soup, [style.get_text() for style in soup.find_all("style")])
    snapshot, _, _ = SoupWalker(soup, hidden).snapshot(PAGE_URL, 1)
    return render_snapshot(snapshot, token_budget=4000).text


SAVED_PAGES = sorted(p for p in FIXTURES.rglob("*.html"))


@pytest.mark.parametrize("path", SAVED_PAGES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_saved_page_parses_to_a_model_that_renders_the_same_text(path):
    text = observe(path)
    page = parse(text)
    assert render(page) == text
    assert page.url == "http://127.0.0.1/page"  # the port is not shown
    assert [e.element_id for e in page.elements] == [
        int(line[1:line.index("]")]) for line in text.splitlines() if line.startswith("[")]


def store_page(name: str) -> Page:
    return parse(observe(STORE / f"{name}.html"))


def names(elements: list[Element]) -> list[str]:
    return [e.name for e in elements]


def test_product_page_shows_its_buy_button_and_quantity():
    page = store_page("product")
    assert page.heading == "Insulated Water Bottle 750 ml"
    assert page.cart == "empty" and page.cart_items == 0
    assert names(page.add_to_cart_buttons) == ["Add to cart"]
    assert page.add_to_cart_buttons[0].context.startswith("Insulated Water Bottle 750 ml Brand: Stridex €21.50")
    quantity = next(e for e in page.elements if e.role == "spinbutton")
    assert (quantity.name, quantity.value) == ("Quantity", "1")
    assert not page.order_confirmed and not page.place_order_buttons


def test_cart_page_shows_count_items_and_the_way_to_checkout():
    page = store_page("cart")
    assert names_cart(page.heading) and page.cart_items == 3
    assert page.notices == ("Added Stainless Steel Kettle 1.7 L to your cart.",)
    assert names(page.cart_links) == ["Cart, 3 items"]
    assert names(page.checkout_buttons) == ["Proceed to checkout"]
    assert [(e.name, e.value) for e in page.elements if e.role == "spinbutton"] == [
        ("Quantity of Insulated Water Bottle 750 ml", "2"), ("Quantity of Stainless Steel Kettle 1.7 L", "1")]
    assert not page.add_to_cart_buttons


def test_checkout_pages_show_fields_choices_and_the_order_button():
    address = store_page("checkout_address")
    country = next(e for e in address.elements if e.name == "Country")
    assert (country.role, country.selected, country.options[:3]) == ("combobox", ["Choose…"], ["Choose…", "Germany", "France"])
    assert [e.name for e in address.elements if e.role == "textbox"] == ["Full name", "Street and house number", "City", "Postcode"]
    assert names(address.continue_buttons) == ["Continue to delivery"]

    delivery = store_page("checkout_delivery")
    assert [(e.role, e.checked) for e in delivery.elements if e.role == "radio"] == [("radio", True), ("radio", False)]

    review = store_page("checkout_review")
    assert names(review.place_order_buttons) == ["Place order"]
    assert names(review.checkout_buttons) == []


def test_order_page_is_a_confirmation_and_no_other_page_is():
    assert store_page("order").order_confirmed
    for name in ("home", "listing", "search", "product", "cart", "checkout_review"):
        assert not store_page(name).order_confirmed, name
