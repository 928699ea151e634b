"""Benchmark: observation extraction, in-page script vs page.content() + BeautifulSoup (not a test).

For each page (a generated category page of real-world theme size, the edge fixtures, and the mock
store's home, listing, product and search pages when storefronts is importable), the page is loaded once in headless Chromium, then the observation
text is extracted `--repeats` times in two ways on the same live page:

- in-page: harness/drivers/js/stamp.js in one page.evaluate, then harness.drivers.observation.render (what the
  browser driver does);
- baseline: page.content() serialised to Python, parsed with BeautifulSoup (html.parser) and
  walked with the http driver's SoupWalker, then the same render.

It prints the median ms per page for both and the ratio baseline / in-page (target: >= 3), per
page and over all pages. Small pages are dominated by the fixed cost of one round trip to the
browser, which both methods pay; the gap grows with the page.

    .venv/bin/python benchmarks/bench_observation.py
    .venv/bin/python benchmarks/bench_observation.py --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.server
import shutil
import statistics
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from bs4 import BeautifulSoup
from rich.console import Console
from rich.table import Table

from harness.drivers.browser import BrowserPool
from harness.drivers.soup_walk import SoupWalker, css_hidden_ids
from harness.drivers.observation import render
from harness.drivers.safety import SiteGuard

EDGE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "edge"
EDGE_PAGES = ("shop_listing.html", "duplicates.html", "long.html", "checkout.html", "icons.html", "modal.html")
THEME_PAGE = "theme_category.html"   # generated: a page of real-world size
STORE_PATHS = ("", "c/kitchen", "p/1001", "search?q=steel")
TARGET_RATIO = 3.0


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def theme_category_page(products: int = 48, menu_links: int = 200, footer_links: int = 60) -> str:
    """A category page of the size a Shopify/WooCommerce theme serves (~2,500 nodes, ~300 KB):
    mega menu, product cards with swatches, rating stars and quick-view buttons, a big footer
    and an inline JSON blob, as real pages carry."""
    menu = "".join(f'<li class="menu-item"><a href="/collections/c{i}" class="menu-link">Category {i}</a></li>'
                   for i in range(menu_links))
    star = '<svg class="icon icon-star" viewBox="0 0 20 20" aria-hidden="true"><path d="M10 1l3 6 6 1-4 4 1 6-6-3-6 3 1-6-4-4 6-1z"/></svg>'
    cards = "".join(
        f'<li class="grid__item"><div class="card-wrapper product-card"><div class="card__media">'
        f'<a href="/products/p{i}" class="full-unstyled-link" tabindex="-1"><img src="/img/p{i}.jpg" alt="" width="300" height="300" loading="lazy"></a></div>'
        f'<div class="card__content"><h3 class="card__heading"><a href="/products/p{i}" class="full-unstyled-link">Product number {i}</a></h3>'
        f'<div class="rating" role="img" aria-label="4.5 out of 5 stars">{star * 5}</div>'
        f'<div class="price"><span class="price-item price-item--regular">€{10 + i}.99</span></div>'
        f'<ul class="swatches">{"".join(f"<li><span class=swatch style=background:#{c}{c}{c}></span></li>" for c in "abc")}</ul>'
        f'<form method="post" action="/cart/add" class="product-form"><input type="hidden" name="id" value="{i}">'
        f'<button type="submit" name="add" class="button button--full-width">Add to cart</button></form>'
        f'<button type="button" class="quick-add__submit" aria-haspopup="dialog">Quick view</button></div></div></li>'
        for i in range(products))
    footer = "".join(f'<li><a href="/pages/p{i}" class="link">Footer page {i}</a></li>' for i in range(footer_links))
    blob = '{"products": [' + ",".join(f'{{"id": {i}, "title": "Product number {i}", "variants": [{{"sku": "SKU-{i}-{j}", "price": {1000 + i}}}' + "".join(f', {{"sku": "SKU-{i}-{j}{k}"}}' for k in range(8)) + "]}" for i in range(products) for j in range(3)) + "]}"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>All products – Theme Store</title>'
            f'<style>.visually-hidden{{position:absolute!important;width:1px;height:1px;overflow:hidden}}.drawer{{display:none}}</style></head>'
            f'<body><header class="header"><a href="/" class="header__heading-link">Theme Store</a>'
            f'<nav class="header__inline-menu"><ul class="list-menu">{menu}</ul></nav>'
            f'<a href="/cart" class="header__icon header__icon--cart"><svg class="icon icon-cart" aria-hidden="true"></svg><span class="visually-hidden">Cart</span><div class="cart-count-bubble"><span aria-hidden="true">2</span></div></a></header>'
            f'<div class="drawer" id="menu-drawer"><ul>{menu}</ul></div>'
            f'<main id="MainContent"><h1 class="collection-hero__title">All products</h1><ul id="product-grid" class="grid product-grid">{cards}</ul></main>'
            f'<footer class="footer"><ul class="footer-block__details-content">{footer}</ul></footer>'
            f'<script type="application/json" id="collection-data">{blob}</script></body></html>')


def serve_edge_fixtures(stack: ExitStack) -> str:
    """The edge fixtures plus the theme-sized page, from a temporary copy."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-observation-")))
    for page in EDGE_PAGES:
        shutil.copy(EDGE / page, folder / page)
    (folder / THEME_PAGE).write_text(theme_category_page(), encoding="utf-8")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stack.callback(server.server_close)
    stack.callback(server.shutdown)
    return f"http://127.0.0.1:{server.server_address[1]}/"


def page_urls(stack: ExitStack) -> list[str]:
    edge = serve_edge_fixtures(stack)
    urls = [edge + page for page in (THEME_PAGE, *EDGE_PAGES)]
    try:
        from storefronts.fixtures import demo_catalog
        from storefronts.server import serve_store
    except ImportError:
        return urls
    store = stack.enter_context(serve_store(demo_catalog(), "demo"))
    return urls + [store.url + path for path in STORE_PATHS]


async def in_page(session) -> str:
    snapshot = await session.snapshot()
    return render(snapshot).text


async def via_content_and_soup(session) -> str:
    html = await session.page.content()
    soup = BeautifulSoup(html, "html.parser")
    styles = [style.get_text() for style in soup.find_all("style")]
    walker = SoupWalker(soup, css_hidden_ids(soup, styles))
    snapshot, _, _ = walker.snapshot(session.page.url, 1)
    return render(snapshot).text


async def timed(extract, session, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await extract(session)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def run(repeats: int) -> None:
    console = Console()
    table = Table(title=f"Observation extraction, median of {repeats} (ms/page)")
    for column in ("page", "elements", "in-page script", "content()+BeautifulSoup", "ratio"):
        table.add_column(column, justify="right" if column != "page" else "left")
    totals = {"in_page": 0.0, "baseline": 0.0}
    with ExitStack() as stack:
        urls = page_urls(stack)
        async with BrowserPool(settle_ms=100) as pool:
            for url in urls:
                async with pool.session("bench-observation", SiteGuard.for_url(url, rate_limit_per_s=None, respect_robots=False)) as session:
                    outcome = await session.goto(url)
                    if outcome.error:
                        console.print(f"[red]skipped {url}: {outcome.error}")
                        continue
                    await in_page(session)   # first stamping writes the ids; time the steady state
                    fast = await timed(in_page, session, repeats)
                    slow = await timed(via_content_and_soup, session, repeats)
                    elements = len((await session.snapshot()).elements)
                totals["in_page"] += fast
                totals["baseline"] += slow
                name = url.split("/", 3)[-1] or "(store home)"
                table.add_row(name, str(elements), f"{fast:.1f}", f"{slow:.1f}", f"{slow / fast:.1f}x")
    ratio = totals["baseline"] / totals["in_page"]
    table.add_row("all pages", "", f"{totals['in_page']:.1f}", f"{totals['baseline']:.1f}", f"{ratio:.1f}x")
    console.print(table)
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    console.print(f"in-page script: {totals['in_page'] / len(urls):.1f} ms/page; "
                  f"page.content() + BeautifulSoup: {totals['baseline'] / len(urls):.1f} ms/page; "
                  f"ratio {ratio:.1f}x ({verdict} the {TARGET_RATIO:.0f}x target)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="extractions per page and method")
    args = parser.parse_args()
    asyncio.run(run(args.repeats))


if __name__ == "__main__":
    main()
