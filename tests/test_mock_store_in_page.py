"""pytest-playwright over the real mock store: what a person sees is what the agent is told.

The harness tests drive Chromium through BrowserPool; this one uses pytest-playwright's own
`page` fixture, so the plugin's set-up (system Chromium, sandbox flags) is checked too.
"""

import re

from storefronts.fixtures import DEMO_SHOP, demo_catalog
from storefronts.server import serve_store


def test_listing_page_shows_every_product_with_price_and_add_to_cart(page):
    catalog = demo_catalog()
    with serve_store(catalog, DEMO_SHOP, "default") as store:
        page.goto(store.url)
        first_category = page.get_by_role("navigation").get_by_role("link").nth(1)
        first_category.click()
        cards = page.locator("main li, main article").filter(has=page.get_by_role("link"))
        titles = set(catalog["title"])
        shown = [card.inner_text() for card in cards.all()]
        listed = [text for text in shown if any(title in text for title in titles)]
        assert listed, "the listing shows products"
        for text in listed:
            assert re.search(r"€\d+\.\d\d", text), f"no price on card: {text!r}"
