"""Drivers: a browser (Playwright) or plain HTTP client per buyer, the page → observation text,
the in-page JavaScript, and the live-store safety guard. Imports nothing else from harness.

`DRIVERS` names the drivers and `open_pool` builds one; every command and module asks here.
"""

from __future__ import annotations

from enum import Enum


class Driver(str, Enum):
    browser = "browser"  # headless Chromium through Playwright: runs the store's JavaScript
    http = "http"  # httpx + BeautifulSoup: no JavaScript, a fraction of the CPU per buyer


DRIVERS = tuple(driver.value for driver in Driver)


def check_driver(name: str) -> str:
    """The driver's name, or a ValueError that lists the valid ones."""
    value = getattr(name, "value", name)
    if value not in DRIVERS:
        raise ValueError(f"driver must be one of {', '.join(DRIVERS)}; got {value!r}")
    return value


def open_pool(driver: str, concurrency: int, **options):
    """The pool for `driver` (imported lazily: the HTTP driver needs no Playwright).

    options go to the pool's constructor (settle_ms and headless for the browser, token_budget for
    both); an option left at None keeps the pool's own default.
    """
    options = {key: value for key, value in options.items() if value is not None}
    if check_driver(driver) == Driver.browser.value:
        from harness.drivers.browser import BrowserPool

        return BrowserPool(max_concurrency=concurrency, **{"headless": True, **options})
    from harness.drivers.http_driver import HttpPool

    options.pop("settle_ms", None)
    options.pop("headless", None)
    return HttpPool(max_concurrency=concurrency, **options)
