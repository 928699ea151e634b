"""The browser driver: one headless Chromium per process, one isolated context per buyer.

    async with BrowserPool(max_concurrency=8) as pool:
        async with pool.session("buyer-3", guard) as buyer:   # context closed on exit, always
            outcome = await buyer.goto(url)
            observation = await buyer.observe()
            outcome = await buyer.act(parse_action('type [4] "running shoes"'))

Observation runs harness/stamp.js inside the page (one evaluate per observation), so element ids
live in the DOM as `data-sp-id` and every action resolves by locator, never by position.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from playwright.async_api import (
    Browser, BrowserContext, Error as PlaywrightError, Page, Route, Request,
    TimeoutError as PlaywrightTimeoutError, async_playwright,
)

from agent.actions import Action, ActionError, parse_action
from harness.driver import BUYER_HEADER, Observation, StepOutcome
from harness.observation import (
    CONFIRMATION_URL_PATTERN, DEFAULT_SETTLE_MS, DEFAULT_TOKEN_BUDGET, NETWORK_IDLE_TIMEOUT_MS,
    PAGE_TEXT_MAX_CHARS, PRODUCT_NAME_SELECTORS, PageSnapshot, RawElement, accessible_name,
    find_element, interception_detail, is_form_field, is_pay_control, listed_elements, match_option,
    no_option_error, render, stale_id_error, stamp_rules,
    scroll_window,
)
from harness.safety import SiteGuard

log = logging.getLogger("simpersona.browser")

SYSTEM_CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
)
DEFAULT_MAX_CONTEXTS = 8            # buyers with an open browser context at the same time
DEFAULT_ACTION_TIMEOUT_MS = 5000     # a click/fill that cannot happen in this time is an error
DEFAULT_NAVIGATION_TIMEOUT_MS = 20000
DEFAULT_VIEWPORT = (1280, 900)
STAMP_JS = (Path(__file__).with_name("stamp.js")).read_text(encoding="utf-8")
STAMP_RULES_JSON = json.dumps(stamp_rules())
_PAGE_TEXT_JS = """(args) => {
  const node = args.selectors.map((s) => document.querySelector(s)).find(Boolean);
  return {text: (document.body ? document.body.innerText : '').slice(0, args.limit),
          product: node ? node.innerText : ''};
}"""
_ORDER_ID_JS = """() => { const m = document.querySelector('meta[name="sp-order-id"]');
  return m ? (m.getAttribute('content') || '') : ''; }"""


def find_chromium() -> str | None:
    """The system Chromium if there is one; None lets Playwright use its own download."""
    for candidate in SYSTEM_CHROMIUM_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class BrowserPool:
    """One Chromium for the process; `session()` gives each buyer its own context."""

    def __init__(self, headless: bool = True, executable_path: str | None = None,
                 settle_ms: int = DEFAULT_SETTLE_MS, max_concurrency: int = DEFAULT_MAX_CONTEXTS,
                 token_budget: int = DEFAULT_TOKEN_BUDGET,
                 action_timeout_ms: int = DEFAULT_ACTION_TIMEOUT_MS,
                 navigation_timeout_ms: int = DEFAULT_NAVIGATION_TIMEOUT_MS,
                 viewport: tuple[int, int] = DEFAULT_VIEWPORT,
                 launch_args: tuple[str, ...] = CHROMIUM_ARGS):
        self.headless = headless
        self.executable_path = executable_path or find_chromium()
        self.settle_ms = settle_ms
        self.max_concurrency = max_concurrency
        self.token_budget = token_budget
        self.action_timeout_ms = action_timeout_ms
        self.navigation_timeout_ms = navigation_timeout_ms
        self.viewport = viewport
        self.launch_args = launch_args
        self.browser: Browser | None = None
        self._playwright = None
        self._slots: asyncio.Semaphore | None = None

    async def __aenter__(self) -> "BrowserPool":
        if self.executable_path is None:
            log.info("no system Chromium found; using Playwright's own browser")
        self._playwright = await async_playwright().start()
        try:
            self.browser = await self._playwright.chromium.launch(
                headless=self.headless, executable_path=self.executable_path, args=list(self.launch_args))
        except BaseException:
            await self._playwright.stop()
            raise
        self._slots = asyncio.Semaphore(self.max_concurrency)
        return self

    async def __aexit__(self, *exc_info) -> None:
        try:
            if self.browser is not None:
                await self.browser.close()
        finally:
            self.browser = None
            if self._playwright is not None:
                await self._playwright.stop()
                self._playwright = None

    @asynccontextmanager
    async def session(self, buyer_tag: str, guard: SiteGuard | None = None) -> AsyncIterator["BrowserSession"]:
        if self.browser is None or self._slots is None:
            raise RuntimeError("BrowserPool is not open: use `async with BrowserPool() as pool:`")
        guard = guard if guard is not None else SiteGuard()
        async with self._slots:
            context = await self.browser.new_context(
                extra_http_headers={BUYER_HEADER: buyer_tag},
                viewport={"width": self.viewport[0], "height": self.viewport[1]},
                service_workers="block",   # a service worker would bypass the guard's routing
            )
            try:
                context.set_default_timeout(self.action_timeout_ms)
                context.set_default_navigation_timeout(self.navigation_timeout_ms)
                page = await context.new_page()
                session = BrowserSession(self, context, page, buyer_tag, guard)
                await context.route("**/*", session._route)
                yield session
            finally:
                await context.close()


class BrowserSession:
    """One buyer's tab. Implements harness.driver.BuyerSession."""

    def __init__(self, pool: BrowserPool, context: BrowserContext, page: Page, buyer_tag: str, guard: SiteGuard):
        self.pool = pool
        self.context = context
        self.page = page
        self.buyer_tag = buyer_tag
        self.guard = guard
        self._start = 0                 # index of the first element shown (scroll position)
        self._scrolled_from: list[int] = []   # earlier starts, for `scroll up`
        self._error: str | None = None  # the last action's error, shown in the next observation
        self._blocked_pages: list[str] = []
        page.on("framenavigated", self._on_navigated)
        context.on("page", self._on_popup)

    # -- the BuyerSession interface -------------------------------------------------------------

    async def goto(self, url: str) -> StepOutcome:
        self.guard.adopt_start_url(url)
        self._blocked_pages.clear()
        try:
            await self.page.goto(url, wait_until="load")
        except PlaywrightError as error:
            outcome = StepOutcome(error=self._navigation_error(url, error))
        else:
            await self._settle()
            outcome = await self._arrival() or StepOutcome()
        self._error = outcome.error
        return outcome

    async def observe(self) -> Observation:
        snapshot = await self.snapshot()
        rendered = render(snapshot, start=self._start, error=self._error, token_budget=self.pool.token_budget)
        return Observation(snapshot.url, snapshot.title, rendered.text, rendered.shown_ids)

    async def act(self, action: Action | str) -> StepOutcome:
        self._blocked_pages.clear()
        try:
            if isinstance(action, str):
                action = parse_action(action)
            outcome = await self._dispatch(action)
            if outcome.error is None and self._blocked_pages:   # the click led off the allowed site
                outcome = StepOutcome(error=f"not visited: {self._blocked_pages[-1]}")
        except ActionError as error:
            outcome = StepOutcome(error=str(error))
        except PlaywrightTimeoutError:
            outcome = StepOutcome(error=f"{action} timed out: the element could not be used (covered, disabled or moving)")
        except PlaywrightError as error:
            outcome = StepOutcome(error=self._blocked_pages[-1] if self._blocked_pages else f"{action} failed: {_first_line(error)}")
        self._error = outcome.error
        return outcome

    # -- observation --------------------------------------------------------------------------

    async def snapshot(self) -> PageSnapshot:
        """Stamp ids into the live page and read it (retried once if it navigates meanwhile)."""
        for attempt in range(2):
            try:
                return PageSnapshot.from_dict(json.loads(await self.page.evaluate(STAMP_JS, STAMP_RULES_JSON)))
            except PlaywrightError:
                if attempt:
                    raise
                await self._settle()
        raise AssertionError("unreachable")

    async def _settle(self) -> None:
        """Load, then network idle (capped: some pages never go idle), then a short settle."""
        for state, timeout in (("load", self.pool.navigation_timeout_ms), ("networkidle", NETWORK_IDLE_TIMEOUT_MS)):
            try:
                await self.page.wait_for_load_state(state, timeout=timeout)
            except PlaywrightError:
                pass
        await asyncio.sleep(self.pool.settle_ms / 1000)

    # -- actions --------------------------------------------------------------------------------

    async def _dispatch(self, action: Action) -> StepOutcome:
        if action.verb == "stop":
            return StepOutcome(done=True, detail={"reason": "stop"})
        if action.verb == "back":
            return await self._back()
        snapshot = await self.snapshot()
        if action.verb == "scroll":
            return await self._scroll(snapshot, action.text or "down")
        raw = find_element(snapshot, action.element_id)
        if raw is None or raw not in listed_elements(snapshot):
            if raw is not None:
                return StepOutcome(error=f"[{raw.id}] is behind the open dialog; close the dialog first")
            return StepOutcome(error=stale_id_error(action.element_id))
        intercepted = await self._intercept_payment(action, raw, snapshot)
        if intercepted:
            return intercepted
        locator = self.page.locator(f'[data-sp-id="{raw.id}"]').first
        if action.verb == "click":
            # A new tab would leave this buyer behind: open links in the same tab.
            await locator.evaluate("el => { if (el.closest('a')) el.closest('a').removeAttribute('target'); }")
            await locator.click()
        elif action.verb == "type":
            if not is_form_field(raw) or raw.tag == "select" or raw.input_type in ("checkbox", "radio"):
                return StepOutcome(error=f"cannot type into [{raw.id}] ({raw.tag}); type into a text field")
            await locator.fill(action.text or "")
            await locator.press("Enter")
        elif action.verb == "select":
            if raw.tag != "select":
                return StepOutcome(error=f"[{raw.id}] is not a drop-down; click it instead")
            index = match_option(raw.options, action.text or "")
            if index is None:
                return StepOutcome(error=no_option_error(raw.id, raw.options, action.text or ""))
            await locator.select_option(index=index)
        else:
            raise ActionError(f"unknown action {action.verb!r}")
        await self._settle()
        return await self._arrival() or StepOutcome()

    async def _back(self) -> StepOutcome:
        before = self.page.url
        response = await self.page.go_back(wait_until="load")
        if response is None and self.page.url == before:
            return StepOutcome(error="there is no previous page")
        await self._settle()
        return await self._arrival() or StepOutcome()

    async def _scroll(self, snapshot: PageSnapshot, direction: str) -> StepOutcome:
        self._start, error = scroll_window(snapshot, self._start, self._scrolled_from, direction,
                                           self.pool.token_budget)
        if error:
            return StepOutcome(error=error)
        # Scroll the real page too, so lazy-loading content below the fold appears.
        listed = listed_elements(snapshot)
        if self._start < len(listed):
            first = self.page.locator(f'[data-sp-id="{listed[self._start].id}"]').first
            await first.evaluate("el => el.scrollIntoView({block: 'start'})")
        else:
            await self.page.evaluate("() => window.scrollTo(0, 0)")
        await self._settle()
        return StepOutcome()

    async def _arrival(self) -> StepOutcome | None:
        """Did this step reach an order confirmation?"""
        order_id = await self.page.evaluate(_ORDER_ID_JS)
        if order_id:
            return StepOutcome(done=True, converted=True, detail={"order_id": order_id, "url": self.page.url})
        if CONFIRMATION_URL_PATTERN.search(self.page.url):
            return StepOutcome(done=True, converted=True, detail={"order_id": None, "url": self.page.url})
        return None

    async def _intercept_payment(self, action: Action, raw: RawElement, snapshot: PageSnapshot) -> StepOutcome | None:
        """On a store that is not ours, a pay/place-order step ends the episode unsent."""
        if not self.guard.intercepts_payments:
            return None
        name = accessible_name(raw)
        pays = (action.verb == "click" and is_pay_control(raw, name)) or (
            action.verb == "type" and raw.in_card_form)
        if not pays:
            return None
        page = await self.page.evaluate(_PAGE_TEXT_JS, {"selectors": list(PRODUCT_NAME_SELECTORS), "limit": PAGE_TEXT_MAX_CHARS})
        detail = interception_detail(name, snapshot.url, page["text"], page["product"])
        self.guard.record_interception({"buyer": self.buyer_tag, **detail})
        return StepOutcome(done=True, converted=True, detail=detail)

    # -- events -------------------------------------------------------------------------------

    async def _route(self, route: Route, request: Request) -> None:
        """Every request of this buyer passes the site guard first."""
        is_page = request.is_navigation_request()
        reason = self.guard.card_post_reason(request.method, request.post_data_buffer)
        if reason:
            self.guard.block(request.url, reason)
        else:
            reason = await self.guard.check(
                request.url, is_page=is_page,
                rate_limited=is_page or request.resource_type in ("xhr", "fetch") or request.method != "GET")
        try:
            if reason:
                if is_page and request.frame == self.page.main_frame:
                    self._blocked_pages.append(reason)
                await route.abort("blockedbyclient")
            else:
                await route.continue_()
        except PlaywrightError:
            pass   # the page or context closed meanwhile

    def _on_navigated(self, frame) -> None:
        if frame == self.page.main_frame:
            self._start = 0
            self._scrolled_from.clear()

    def _on_popup(self, page: Page) -> None:
        if page != self.page:
            asyncio.ensure_future(page.close())

    def _navigation_error(self, url: str, error: PlaywrightError) -> str:
        if self._blocked_pages:
            return f"not visited: {self._blocked_pages[-1]}"
        return f"could not open {url}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
