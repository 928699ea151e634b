"""The browser driver: one headless Chromium per process, one isolated context per buyer.

(Over 500 lines on purpose: the pool and the session share the browser's lifecycle, relaunch and
routing state; the in-page walk is stamp.js and the text format agent/page.py, kept apart.)

    async with BrowserPool(max_concurrency=8) as pool:
        async with pool.session("buyer-3", guard) as buyer:   # context closed on exit, always
            outcome = await buyer.goto(url)
            observation = await buyer.observe()
            outcome = await buyer.act(parse_action('type [4] "running shoes"'))

Observation runs harness/drivers/js/stamp.js inside the page (one evaluate per observation), so element ids
live in the DOM as `data-sp-id` and every action resolves by that id, never by position. An action
on the page just observed reuses that pass unless the page changed since (stamp.js watches); a click
is a real mouse click at a point where the element is on top, so a banner over it is reported.

A page is ready when its `load` event has fired, no fetch/XHR call and no short timer of it is
pending and its DOM has had no mutation for `settle_ms` (one in-page wait, which also reads the
order-confirmation marker), so content a page adds a moment after loading is seen, and a static
page costs `settle_ms` and no more.

The pool outlives its browser: when Chromium dies or disconnects (killed, out of memory), the
sessions in flight raise BrowserSessionLost and the next `session()` relaunches it
(`pool.relaunches` counts that). A killed renderer ends only its own buyer's session. Closing the
pool, also after a crash or a cancellation, leaves no Chromium process behind;
`chromium_processes()` and `pool_rss_mb()` let a long run check that.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import urljoin, urlsplit

import psutil

from playwright.async_api import (
    Browser, BrowserContext, Error as PlaywrightError, JSHandle, Page, Route, Request,
    TimeoutError as PlaywrightTimeoutError, async_playwright,
)

from agent.actions import Action, ActionError, parse_action
from agent.page import ORDER_CONFIRMED_PATH, order_number
from harness.drivers.base import Observation, StepOutcome
from storefronts import BUYER_HEADER
from harness.drivers.observation import (
    DEFAULT_SETTLE_MS, DEFAULT_TOKEN_BUDGET, NETWORK_IDLE_TIMEOUT_MS, PAGE_TEXT_MAX_CHARS, PRODUCT_NAME_SELECTORS,
    accessible_name, chosen_option, click_error, disabled_error, find_element, interception_detail,
    listed_elements, pays_on_live_store, PageSnapshot, RawElement, render, scroll_window, stale_id_error, stamp_rules,
    typing_error,
)
from harness.drivers.safety import SiteGuard

log = logging.getLogger("simpersona.browser")

SYSTEM_CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# Chromium's headless shell (Debian's chromium-headless-shell, the browser Playwright itself uses for
# headless runs) has no browser UI: measured on the mock store it costs 2.3 instead of 3.7 CPU
# seconds per buyer, the browser process alone 0.5 instead of 1.3. The binary, not /usr/bin's wrapper
# script, so that Playwright's handle on the process is the browser itself.
SYSTEM_HEADLESS_SHELL_PATHS = ("/usr/lib/chromium/chromium-headless-shell", "/usr/bin/chromium-headless-shell")
# Chromium keeps only the last --disable-features switch, so Playwright's own list is repeated here.
PLAYWRIGHT_DISABLED_FEATURES = (
    "AvoidUnnecessaryBeforeUnloadCheckSync", "DestroyProfileOnBrowserClose", "HttpsUpgrades",
    "HttpsFirstBalancedModeAutoEnable", "LensOverlay", "MediaRouter", "PaintHolding",
    "ThirdPartyStoragePartitioning", "AvoidCorsURLLoaderRestartOnRedirect", "OptimizationHints",
    "NetworkTimeServiceQuerying", "AimEnabled", "PreconnectToSearch",
)
# Every new context opens a browser window, and each window started two renderers nobody uses: the
# omnibox popup (a WebUI page) and a spare renderer. Without them a buyer costs one renderer
# process instead of three, which cut Chromium's CPU per buyer by about a third (measured).
UNUSED_WINDOW_FEATURES = (
    "WebUIOmniboxPopup", "WebUIOmniboxAimPopup", "WebUIOmniboxFullPopup", "WebUIReloadButton",
    "PreloadTopChromeWebUI", "SpareRendererForSitePerProcess",
)
CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
    "--disable-features=" + ",".join(PLAYWRIGHT_DISABLED_FEATURES + UNUSED_WINDOW_FEATURES),
)
DEFAULT_MAX_CONTEXTS = 8            # buyers with an open browser context at the same time
DEFAULT_ACTION_TIMEOUT_MS = 5000     # a click/fill that cannot happen in this time is an error
DEFAULT_NAVIGATION_TIMEOUT_MS = 20000
DEFAULT_VIEWPORT = (1280, 900)
JS_DIR = Path(__file__).with_name("js")


def _in_page_script(name: str) -> str:
    """One of the scripts the driver runs inside the page (harness/drivers/js/)."""
    return (JS_DIR / name).read_text(encoding="utf-8").strip()


STAMP_JS = _in_page_script("stamp.js")
STAMP_RULES_JSON = json.dumps(stamp_rules())
# stamp.js compiled once per document and kept behind a handle, which the page's own scripts cannot
# reach: each observation then sends a short call instead of the whole script (0.4 of the 1.5 ms an
# observation of a small page takes, measured).
_STAMP_FUNCTION_JS = f"() => ({STAMP_JS})"
_CALL_STAMP_JS = "(stamp, rulesJson) => stamp(rulesJson)"
_PAGE_TEXT_JS = _in_page_script("page_text.js")
# Runs first in every document: counts what the page is still waiting for, so the settle check
# below can wait for content a page adds a moment after loading: pending short timers (setTimeout
# up to 1 s) and fetch/XMLHttpRequest calls in flight; and whether the document is being left (a
# link, a form or a script started a navigation): then the step is not over until the next
# document replaces this one, however quiet this one is.
_PENDING_WORK_JS = _in_page_script("pending_work.js")

# True while the document is as the last stamp.js pass left it (stamp.js watches for changes).
_UNCHANGED_SINCE_STAMP_JS = "() => window.__spChanged === false"

# Where a real mouse click on element `id` lands: the element is scrolled into view, then the
# centre of its first box whose top-most element is the element itself (or inside it, or a label of
# it) is the point; an element covered everywhere (a banner, an overlay) is named instead. One round
# trip and a mouse click, where Playwright's locator click injects its selector engine into every
# new document and makes several round trips (waiting for animation frames among them).
_CLICK_POINT_JS = _in_page_script("click_point.js")

# Resolves once nothing is pending and the DOM has had no mutation for quietMs (or capMs after the
# start, whichever comes first), then returns the order-confirmation marker: the page-ready check
# and the arrival check in one round trip.
_SETTLE_JS = _in_page_script("settle.js")


MAX_REDIRECT_HOPS = 20   # what browsers allow before calling it a loop


def client_redirect_page(target: str) -> str:
    """A page that sends the browser on to `target` at once, replacing itself in the history."""
    attribute = html.escape(target)
    script_string = json.dumps(target).replace("</", "<\\/")   # cannot close the script element
    return ("<!doctype html><title>Redirecting</title>"
            f'<meta http-equiv="refresh" content="0;url={attribute}">'
            f"<script>location.replace({script_string})</script>"
            f'<p>Redirecting to <a href="{attribute}">{attribute}</a></p>')


def _redirect_page_headers(redirect_headers: dict[str, str]) -> dict[str, str]:
    """The redirect's own headers (cookies it sets among them) on the page that replaces it."""
    kept = {name: value for name, value in redirect_headers.items()
            if name.lower() not in ("location", "content-length", "content-type", "content-encoding", "transfer-encoding")}
    return {**kept, "content-type": "text/html; charset=utf-8", "cache-control": "no-store"}


def _next_hop_headers(headers: dict[str, str], from_url: str, to_url: str) -> dict[str, str]:
    """The request's headers for the next hop; credentials stay with their own origin."""
    same_origin = urlsplit(from_url)[:2] == urlsplit(to_url)[:2]
    return {name: value for name, value in headers.items()
            if same_origin or name.lower() not in ("cookie", "authorization")}


class BrowserSessionLost(RuntimeError):
    """The buyer's page can no longer be driven: its renderer crashed or the browser died."""


def find_chromium(headless: bool = True) -> str | None:
    """The system Chromium if there is one (its headless shell first, for headless runs); None lets
    Playwright use its own download."""
    candidates = (SYSTEM_HEADLESS_SHELL_PATHS if headless else ()) + SYSTEM_CHROMIUM_PATHS
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def chromium_processes(root: psutil.Process | None = None) -> list[psutil.Process]:
    """The Chromium processes below `root` (default: this process), through Playwright's driver."""
    root = root or psutil.Process()
    found = []
    for process in root.children(recursive=True):
        try:
            if "chrom" in process.name().lower():
                found.append(process)
        except psutil.Error:   # ended meanwhile
            continue
    return found


def pool_rss_mb(processes: list[psutil.Process] | None = None) -> float:
    """Resident memory of the Chromium processes (default: all below this process), in MB.
    Shared pages count once per process, so this overstates the total; it is for watching trends."""
    total = 0
    for process in chromium_processes() if processes is None else processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


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
        self.executable_path = executable_path or find_chromium(headless)
        self.settle_ms = settle_ms
        self.max_concurrency = max_concurrency
        self.token_budget = token_budget
        self.action_timeout_ms = action_timeout_ms
        self.navigation_timeout_ms = navigation_timeout_ms
        self.viewport = viewport
        self.launch_args = launch_args
        self.browser: Browser | None = None
        self.relaunches = 0             # browsers started again after one died
        self._playwright = None
        self._slots: asyncio.Semaphore | None = None
        self._launch_lock = asyncio.Lock()
        self._launched: dict[int, float] = {}   # pid -> create time of every Chromium process seen
        # An inert switch that marks this pool's browser process among others (tests run several).
        self._marker = f"--simpersona-pool={uuid.uuid4().hex}"

    async def __aenter__(self) -> "BrowserPool":
        if self.executable_path is None:
            log.info("no system Chromium found; using Playwright's own browser")
        self._playwright = await async_playwright().start()
        try:
            await self._launch()
        except BaseException:
            await self._playwright.stop()
            raise
        self._slots = asyncio.Semaphore(self.max_concurrency)
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._note_processes()
        try:
            if self.browser is not None:
                await asyncio.shield(self._close_browser(self.browser))
        finally:
            self.browser = None
            try:
                if self._playwright is not None:
                    await asyncio.shield(self._playwright.stop())
            finally:
                self._playwright = None
                self._reap()

    async def _launch(self) -> None:
        self.browser = await self._playwright.chromium.launch(
            headless=self.headless, executable_path=self.executable_path, args=[*self.launch_args, self._marker])
        self._note_processes()

    async def _relaunch(self) -> None:
        """Start a new browser if the current one died; one relaunch however many buyers notice."""
        async with self._launch_lock:
            if self.browser is not None and self.browser.is_connected():
                return
            log.warning("Chromium died or disconnected; relaunching")
            self._note_processes()
            if self.browser is not None:
                await self._close_browser(self.browser)
            await asyncio.to_thread(self._reap)
            try:
                await self._launch()
            except PlaywrightError:   # Playwright's driver went down with it: start that again too
                log.warning("restarting Playwright's driver")
                try:
                    await self._playwright.stop()
                except Exception as error:   # noqa: BLE001 - it is gone either way
                    log.debug("stopping the old driver: %s", error)
                self._playwright = await async_playwright().start()
                await self._launch()
            self.relaunches += 1

    @staticmethod
    async def _close_browser(browser: Browser) -> None:
        try:
            await browser.close()
        except PlaywrightError as error:   # already gone
            log.debug("closing the browser: %s", _first_line(error))

    def processes(self) -> list[psutil.Process]:
        """This pool's Chromium processes: its browser process and everything below it."""
        found = []
        for process in chromium_processes():
            try:
                if self._marker in process.cmdline():
                    found += [process, *process.children(recursive=True)]
            except psutil.Error:
                continue
        return found

    def _note_processes(self) -> None:
        """Remember our Chromium processes, so none can outlive the pool (see _reap); forget the
        ones that ended, so that a long run does not collect dead process ids."""
        self._launched = {pid: created for pid, created in self._launched.items() if psutil.pid_exists(pid)}
        for process in self.processes():
            try:
                self._launched[process.pid] = process.create_time()
            except psutil.Error:
                continue

    def _reap(self, timeout_s: float = 5.0) -> None:
        """Wait for the Chromium processes this pool started to end; kill the ones that do not
        (a browser killed from outside can leave its zygote or GPU process behind)."""
        ours = []
        for pid, created in self._launched.items():
            try:
                process = psutil.Process(pid)
                if process.create_time() == created:   # not a new process that reused the pid
                    ours.append(process)
            except psutil.Error:
                continue
        self._launched.clear()
        _, alive = psutil.wait_procs(ours, timeout=timeout_s)
        for process in alive:
            log.warning("killing leftover Chromium process %d", process.pid)
            try:
                process.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(alive, timeout=timeout_s)

    @asynccontextmanager
    async def session(self, buyer_tag: str, guard: SiteGuard | None = None) -> AsyncIterator["BrowserSession"]:
        if self._playwright is None or self._slots is None:
            raise RuntimeError("BrowserPool is not open: use `async with BrowserPool() as pool:`")
        guard = guard if guard is not None else SiteGuard()
        async with self._slots:
            if self.browser is None or not self.browser.is_connected():
                await self._relaunch()
            browser = self.browser
            try:
                context = await browser.new_context(
                    extra_http_headers={BUYER_HEADER: buyer_tag},
                    viewport={"width": self.viewport[0], "height": self.viewport[1]},
                    service_workers="block",   # a service worker would bypass the guard's routing
                )
            except PlaywrightError as error:
                if not browser.is_connected():
                    raise BrowserSessionLost(f"the browser died before {buyer_tag} started: {_first_line(error)}") from error
                raise
            try:
                await context.add_init_script(_PENDING_WORK_JS)
                context.set_default_timeout(self.action_timeout_ms)
                context.set_default_navigation_timeout(self.navigation_timeout_ms)
                page = await context.new_page()
                self._note_processes()   # the new renderer too
                session = BrowserSession(self, context, page, buyer_tag, guard)
                await context.route("**/*", session._route)
                yield session
            except PlaywrightError as error:
                if not browser.is_connected():
                    raise BrowserSessionLost(f"the browser died during {buyer_tag}: {_first_line(error)}") from error
                raise
            finally:
                # Shielded: a cancelled buyer still closes its context (and with it the renderer).
                await asyncio.shield(_close_quietly(context))


async def _close_quietly(context: BrowserContext) -> None:
    try:
        await context.close()
    except PlaywrightError as error:   # the browser died meanwhile: nothing left to close
        log.debug("closing a context: %s", _first_line(error))


class BrowserSession:
    """One buyer's tab. Implements harness.drivers.base.BuyerSession."""

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
        self._lost: str | None = None   # why this page can no longer be driven
        self._observed: PageSnapshot | None = None   # what the agent read last, until it acts
        self._stamp: JSHandle | None = None   # stamp.js in the current document
        self._loads = 0                 # documents loaded so far (the page's `load` events)
        page.on("framenavigated", self._on_navigated)
        page.on("load", self._on_load)
        page.on("crash", lambda _: self._mark_lost("the page's renderer process crashed"))
        page.on("close", lambda _: self._mark_lost("the page was closed"))
        context.on("page", self._on_popup)

    # -- the BuyerSession interface -------------------------------------------------------------

    async def goto(self, url: str) -> StepOutcome:
        self.guard.adopt_start_url(url)
        self._blocked_pages.clear()
        try:
            await self.page.goto(url, wait_until="load")
        except PlaywrightError as error:
            self._raise_if_lost(error)
            outcome = StepOutcome(error=self._navigation_error(url, error))
        else:
            outcome = await self._settle_and_arrive()
            if outcome.error is None and self._blocked_pages:   # a redirect on the way was refused
                outcome = StepOutcome(error=f"not visited: {self._blocked_pages[-1]}")
        self._error = outcome.error
        return outcome

    async def observe(self) -> Observation:
        snapshot = self._observed = await self.snapshot()
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
        except PlaywrightTimeoutError as error:
            self._raise_if_lost(error)
            outcome = StepOutcome(error=f"{action} timed out: the element could not be used (covered, disabled or moving)")
        except PlaywrightError as error:
            self._raise_if_lost(error)
            outcome = StepOutcome(error=self._blocked_pages[-1] if self._blocked_pages else f"{action} failed: {_first_line(error)}")
        self._error = outcome.error
        return outcome

    # -- observation --------------------------------------------------------------------------

    async def snapshot(self) -> PageSnapshot:
        """Stamp ids into the live page and read it (retried once if it navigates meanwhile)."""
        for attempt in range(2):
            try:
                if self._stamp is None:
                    self._stamp = await self.page.evaluate_handle(_STAMP_FUNCTION_JS)
                return PageSnapshot.from_dict(json.loads(await self._stamp.evaluate(_CALL_STAMP_JS, STAMP_RULES_JSON)))
            except PlaywrightError as error:
                self._stamp = None   # its document is gone
                self._raise_if_lost(error)
                if attempt:
                    raise
                await self._settle()
        raise AssertionError("unreachable")

    async def _snapshot_for_action(self) -> PageSnapshot:
        """The snapshot the agent just read, while the page is unchanged since (one cheap check
        instead of a second stamp.js pass), else a new one. An action uses it up: whatever it does,
        the next action reads the page again."""
        observed, self._observed = self._observed, None
        if observed is not None:
            try:
                if await self.page.evaluate(_UNCHANGED_SINCE_STAMP_JS):
                    return observed
            except PlaywrightError as error:   # the page navigated meanwhile
                self._raise_if_lost(error)
        return await self.snapshot()

    async def _settle(self) -> str:
        """Wait until the page is ready: `load` fired, then no short timer and no fetch/XHR
        pending and the DOM quiet for settle_ms, all checked inside the page; the wait after
        `load` is capped (some pages never go quiet). Returns the order id the page shows ('' when
        none).

        A local store answers in milliseconds, so this replaces Playwright's network-idle state,
        which always waits 500 ms after the last request.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NETWORK_IDLE_TIMEOUT_MS / 1000
        for _ in range(3):   # a navigation that starts during the wait restarts it
            self._raise_if_lost()
            loads_before = self._loads
            try:
                await self.page.wait_for_load_state("load", timeout=self.pool.navigation_timeout_ms)
            except PlaywrightError as error:
                self._raise_if_lost(error)
            left_ms = max(0.0, (deadline - loop.time()) * 1000)
            try:
                settled = await self.page.evaluate(_SETTLE_JS, [self.pool.settle_ms, left_ms])
            except PlaywrightError as error:   # the page is navigating: settle the one it brings
                self._raise_if_lost(error)
                settled = {"orderId": "", "leaving": True}
            if not settled["leaving"]:
                return settled["orderId"]
            # A form or link is on its way (say, placing an order on a slow store): the page it
            # brings is this step's outcome, so wait for it rather than observe the old page.
            await self._wait_for_load_after(loads_before, self.pool.navigation_timeout_ms / 1000)
        return ""

    async def _wait_for_load_after(self, loads_before: int, timeout_s: float) -> None:
        """Until a document loads that had not when loads_before was read (or timeout_s passes)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._loads == loads_before and asyncio.get_running_loop().time() < deadline:
            self._raise_if_lost()
            await asyncio.sleep(0.02)

    async def _settle_and_arrive(self) -> StepOutcome:
        """Settle, then: did this step reach an order confirmation?"""
        order_id = await self._settle()
        if order_id:
            return StepOutcome(done=True, converted=True, detail={"order_id": order_id, "url": self.page.url})
        if ORDER_CONFIRMED_PATH.search(self.page.url):
            detail = {"order_id": order_number(await self.page.title()), "url": self.page.url}
            return StepOutcome(done=True, converted=True, detail=detail)
        return StepOutcome()

    def _mark_lost(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason

    def _raise_if_lost(self, error: BaseException | None = None) -> None:
        """Raise BrowserSessionLost if the page, its context or the browser is gone: the buyer
        cannot go on, and an error outcome would only repeat for every remaining step."""
        browser = self.context.browser
        if self._lost is None and browser is not None and not browser.is_connected():
            self._mark_lost("the browser died or disconnected")
        if self._lost is None and error is not None and _is_gone_error(error):
            self._mark_lost(_first_line(error))
        if self._lost is not None:
            raise BrowserSessionLost(f"buyer {self.buyer_tag}: {self._lost}") from error

    # -- actions --------------------------------------------------------------------------------

    async def _dispatch(self, action: Action) -> StepOutcome:
        if action.verb == "stop":
            return StepOutcome(done=True, detail={"reason": "stop"})
        if action.verb == "back":
            return await self._back()
        snapshot = await self._snapshot_for_action()
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
            # links open in the same tab: stamp.js removed their target
            error = click_error(raw) or await self._click(raw)
            if error:
                return StepOutcome(error=error)
        elif action.verb == "type":
            if typing_error(raw):
                return StepOutcome(error=typing_error(raw))
            await locator.fill(action.text or "")
            await locator.press("Enter")
        elif action.verb == "select":
            index, error = chosen_option(raw, action.text or "")
            if error:
                return StepOutcome(error=error)
            await locator.select_option(index=index)
        else:
            raise ActionError(f"unknown action {action.verb!r}")
        return await self._settle_and_arrive()

    async def _click(self, raw: RawElement) -> str | None:
        """A real mouse click on the element; an error line when it cannot receive one."""
        if raw.disabled:
            return disabled_error(raw.id)
        point = await self.page.evaluate(_CLICK_POINT_JS, raw.id)
        if "error" in point:
            return stale_id_error(raw.id) if point["error"] == "gone" else f"[{raw.id}] {point['error']}"
        await self.page.mouse.click(point["x"], point["y"])
        return None

    async def _back(self) -> StepOutcome:
        before = self.page.url
        response = await self.page.go_back(wait_until="load")
        if response is None and self.page.url == before:
            return StepOutcome(error="there is no previous page")
        return await self._settle_and_arrive()

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

    async def _intercept_payment(self, action: Action, raw: RawElement, snapshot: PageSnapshot) -> StepOutcome | None:
        """On a store that is not ours, a pay/place-order step ends the episode unsent."""
        if not self.guard.intercepts_payments:
            return None
        if not pays_on_live_store(action.verb, raw, snapshot):
            return None
        name = accessible_name(raw)
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
                await self._forward(route, request, is_page)
        except PlaywrightError:
            pass   # the page or context closed meanwhile

    async def _forward(self, route: Route, request: Request, is_page: bool) -> None:
        """Send an allowed request; every hop of a redirect chain is checked by the guard.

        Chromium follows a redirect without routing the next request, so the browser is never
        handed one: each hop is fetched here without following. A page's redirect becomes a tiny
        page that sends the browser on to the target (a new navigation, routed again, with the
        right URL and history); a subresource's chain is followed here, hop by hop.
        """
        if not request.url.startswith(("http:", "https:")):
            await route.continue_()   # data:, blob: and the like never leave the browser
            return
        if self.guard.our_store:
            # Our mock store only ever redirects to itself: no hop to check, and fetching every
            # request through Playwright would cost about a quarter of each buyer's CPU.
            await route.continue_()
            return
        url, method, body, headers = request.url, request.method, request.post_data_buffer, None
        for _ in range(MAX_REDIRECT_HOPS):
            try:
                response = await route.fetch(url=url, method=method, post_data=body, headers=headers,
                                             max_redirects=0, timeout=self.pool.navigation_timeout_ms)
            except PlaywrightError:
                await route.abort("failed")   # unreachable host, reset connection: the page sees a network error
                return
            location = response.headers.get("location")
            # A page's hop becomes a navigation of its own (below), which the route counts.
            reason = await self.guard.check_redirect(url, response.status, location, is_page=is_page,
                                                     rate_limited=not is_page)
            if reason:
                if is_page and request.frame == self.page.main_frame:
                    self._blocked_pages.append(reason)
                await route.abort("blockedbyclient")
                return
            if not (300 <= response.status < 400 and location):
                await route.fulfill(response=response)
                return
            target = urljoin(url, location)
            if is_page:
                await route.fulfill(status=200, body=client_redirect_page(target),
                                    headers=_redirect_page_headers(response.headers))
                return
            headers = _next_hop_headers(request.headers, url, target)
            url = target
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, body = "GET", None   # what browsers do (Fetch standard, "HTTP-redirect fetch")
        await route.abort("failed")   # a redirect loop

    def _on_navigated(self, frame) -> None:
        if frame == self.page.main_frame:
            self._observed = self._stamp = None
            self._start = 0
            self._scrolled_from.clear()

    def _on_load(self, _page) -> None:
        self._loads += 1

    def _on_popup(self, page: Page) -> None:
        if page != self.page:
            asyncio.ensure_future(page.close())

    def _navigation_error(self, url: str, error: PlaywrightError) -> str:
        if self._blocked_pages:
            return f"not visited: {self._blocked_pages[-1]}"
        return f"could not open {url}: {_first_line(error)}"


_GONE_MESSAGES = ("target crashed", "page crashed", "target page, context or browser has been closed",
                  "browser has been closed", "browser has disconnected", "connection closed")


def _is_gone_error(error: BaseException) -> bool:
    """Playwright's way of saying the page, its context or the browser no longer exists."""
    return any(message in str(error).lower() for message in _GONE_MESSAGES)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
