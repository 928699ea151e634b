"""The browser-free driver: httpx + BeautifulSoup over pages that need no JavaScript.

It reads each page with harness/drivers/soup_walk.py (the rules of harness/drivers/js/stamp.js over
BeautifulSoup), so on the mock store it produces the same observation text as the browser driver,
at a fraction of the cost. Links are followed with GET; forms are submitted with their field
values, like a browser without JavaScript would.

Two shortcuts make a simulation on our own store cheap, and neither changes what a buyer sees or
does (benchmarks/bench_http_driver.py): a store this process serves is called in-process, not
through its socket, and buyers who get the same HTML at the same URL share one parse and walk of
it, a buyer about to change it (type, select, tick) taking a copy of its own first.

    async with HttpPool() as pool:
        async with pool.session("buyer-3", guard) as buyer:
            await buyer.goto(url)
            observation = await buyer.observe()
            outcome = await buyer.act(parse_action("click [7]"))
"""

from __future__ import annotations

import asyncio
import copy
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import httpx
from bs4 import BeautifulSoup, Tag

from agent.actions import Action, ActionError, parse_action
from agent.page import ORDER_CONFIRMED_PATH, order_number
from harness.drivers.base import Observation, StepOutcome
from harness.drivers.observation import (
    DEFAULT_TOKEN_BUDGET, PAGE_TEXT_MAX_CHARS, PRODUCT_NAME_SELECTORS, accessible_name, chosen_option, click_error, collapse,
    disabled_error, find_element, interception_detail, is_form_field, listed_elements, pays_on_live_store,
    PageSnapshot, RawElement, render, scroll_window, stale_id_error, typing_error,
)
from harness.drivers.safety import SiteGuard
from harness.drivers.soup_walk import BLOCKS_IMPLICIT_SUBMISSION, SoupWalker, css_hidden_ids, form_fields, input_type
from storefronts import BUYER_HEADER
from storefronts.server import apps_in_process

DEFAULT_TIMEOUT_S = 20.0
DEFAULT_MAX_SESSIONS = 64
MAX_REDIRECTS = 10
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) SimPersona/0.1 (+http driver)"
HTML_TYPES = ("text/html", "application/xhtml+xml")
# lxml parses the mock store's pages in less than half html.parser's time (2.3 against 5.2 ms per
# page), and the traces replayed with either are the same (benchmarks/bench_http_parser.py).
HTML_PARSER = "lxml"
# Pages kept for sharing: the buyers of one shop meet a few dozen distinct pages between them.
DEFAULT_SHARED_PAGES = 64


# -- the pool and its sessions -------------------------------------------------------------------

@dataclass
class _Page:
    url: str
    soup: BeautifulSoup
    css_hidden: set[int]
    next_id: int = 1
    status: int = 200
    # A shared page is read by every buyer who got the same HTML at this URL: it is parsed and
    # walked once, and a buyer about to change it (type, select, tick) takes a private copy.
    shared: bool = False
    walk: tuple[PageSnapshot, dict[int, Tag]] | None = None   # a shared page's one walk


class SharedPages:
    """The last `size` pages parsed, by (url, status, html), for buyers who get the same HTML."""

    def __init__(self, size: int):
        self.size = size
        self._pages: OrderedDict[tuple[str, int, str], _Page] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: tuple[str, int, str]) -> _Page | None:
        page = self._pages.get(key)
        if page is None:
            self.misses += 1
            return None
        self.hits += 1
        self._pages.move_to_end(key)
        return page

    def put(self, key: tuple[str, int, str], page: _Page) -> None:
        if self.size <= 0:
            return
        self._pages[key] = page
        while len(self._pages) > self.size:
            self._pages.popitem(last=False)


class HttpPool:
    """Many buyers over plain HTTP; `session()` gives each buyer its own cookie jar."""

    def __init__(self, token_budget: int = DEFAULT_TOKEN_BUDGET, timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_concurrency: int = DEFAULT_MAX_SESSIONS, user_agent: str = USER_AGENT,
                 fetch_stylesheets: bool = True, in_process: bool = True, shared_pages: int = DEFAULT_SHARED_PAGES):
        """in_process: call the app of a store this process serves (storefronts.server) directly,
        not through its socket; the pages and the store's order log are the same either way.
        shared_pages: how many parsed pages buyers share (0: each buyer parses every page)."""
        self.token_budget = token_budget
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.user_agent = user_agent
        self.fetch_stylesheets = fetch_stylesheets
        self.in_process = in_process
        self.stylesheet_cache: dict[str, str] = {}   # shared: stylesheets are the same for everyone
        self.shared_pages = SharedPages(shared_pages)
        self._slots: asyncio.Semaphore | None = None
        # Building an SSL context reads the CA bundle (~20 ms of CPU): once per pool, not per buyer.
        self._ssl_context = httpx.create_ssl_context()

    async def __aenter__(self) -> "HttpPool":
        self._slots = asyncio.Semaphore(self.max_concurrency)
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._slots = None

    def _in_process_transports(self) -> dict[str, httpx.ASGITransport]:
        if not self.in_process:
            return {}
        # raise_app_exceptions=False: an app error reaches the buyer as the 500 page a server sends.
        return {origin: httpx.ASGITransport(app=app, raise_app_exceptions=False)
                for origin, app in apps_in_process().items()}

    @asynccontextmanager
    async def session(self, buyer_tag: str, guard: SiteGuard | None = None) -> AsyncIterator["HttpSession"]:
        if self._slots is None:
            raise RuntimeError("HttpPool is not open: use `async with HttpPool() as pool:`")
        guard = guard if guard is not None else SiteGuard()
        async with self._slots:
            client = httpx.AsyncClient(
                headers={BUYER_HEADER: buyer_tag, "User-Agent": self.user_agent,
                         "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5"},
                timeout=self.timeout_s, follow_redirects=False, verify=self._ssl_context,
                mounts=self._in_process_transports())
            try:
                yield HttpSession(self, client, buyer_tag, guard)
            finally:
                await client.aclose()


class HttpSession:
    """One buyer over plain HTTP. Implements harness.drivers.base.BuyerSession."""

    def __init__(self, pool: HttpPool, client: httpx.AsyncClient, buyer_tag: str, guard: SiteGuard):
        self.pool = pool
        self.client = client
        self.buyer_tag = buyer_tag
        self.guard = guard
        self.page: _Page | None = None
        self.history: list[str] = []
        self._start = 0                       # index of the first element shown (scroll position)
        self._scrolled_from: list[int] = []   # earlier starts, for `scroll up`
        self._error: str | None = None
        # What the agent read last (page, snapshot, tags by id), until it acts: only our own actions
        # change a page here, so the action needs no second walk over it.
        self._observed: tuple[_Page, PageSnapshot, dict[int, Tag]] | None = None

    # -- the BuyerSession interface -------------------------------------------------------------

    async def goto(self, url: str) -> StepOutcome:
        self.guard.adopt_start_url(url)
        outcome = await self._navigate("GET", url)
        self._error = outcome.error
        return outcome

    async def observe(self) -> Observation:
        if self.page is None:   # nothing opened (or the first page failed): like a blank tab
            rendered = render(PageSnapshot("about:blank", "", []), error=self._error)
            return Observation("about:blank", "", rendered.text, [])
        snapshot, by_id = self.snapshot()
        self._observed = (self.page, snapshot, by_id)
        rendered = render(snapshot, start=self._start, error=self._error, token_budget=self.pool.token_budget)
        return Observation(snapshot.url, snapshot.title, rendered.text, rendered.shown_ids)

    async def act(self, action: Action | str) -> StepOutcome:
        try:
            if isinstance(action, str):
                action = parse_action(action)
            outcome = await self._dispatch(action)
        except ActionError as error:
            outcome = StepOutcome(error=str(error))
        self._error = outcome.error
        return outcome

    # -- observation ----------------------------------------------------------------------------

    def snapshot(self) -> tuple[PageSnapshot, dict[int, Tag]]:
        assert self.page is not None
        if self.page.walk is not None:
            return self.page.walk
        walker = SoupWalker(self.page.soup, self.page.css_hidden)
        snapshot, by_id, self.page.next_id = walker.snapshot(self.page.url, self.page.next_id)
        if self.page.shared:   # nobody changes a shared page, so every walk of it is this one
            self.page.walk = (snapshot, by_id)
        return snapshot, by_id

    def _snapshot_for_action(self) -> tuple[PageSnapshot, dict[int, Tag]]:
        """The walk the agent just read if it was over this page, else a new one; an action uses it up."""
        observed, self._observed = self._observed, None
        if observed is not None and observed[0] is self.page:
            return observed[1], observed[2]
        return self.snapshot()

    # -- actions --------------------------------------------------------------------------------

    async def _dispatch(self, action: Action) -> StepOutcome:
        if action.verb == "stop":
            return StepOutcome(done=True, detail={"reason": "stop"})
        if action.verb == "back":
            if len(self.history) < 2:
                return StepOutcome(error="there is no previous page")
            self.history.pop()
            previous = self.history.pop()
            return await self._navigate("GET", previous)
        if self.page is None:
            return StepOutcome(error="no page is open; nothing to act on")
        snapshot, by_id = self._snapshot_for_action()
        if action.verb == "scroll":
            return self._scroll(snapshot, action.text or "down")
        raw = find_element(snapshot, action.element_id)
        if raw is None or raw not in listed_elements(snapshot):
            if raw is not None:
                return StepOutcome(error=f"[{raw.id}] is behind the open dialog; close the dialog first")
            return StepOutcome(error=stale_id_error(action.element_id))
        if self.page.shared and _changes_page(action.verb, by_id[raw.id]):
            by_id = await self._take_private_copy()
        tag = by_id[raw.id]
        walker = SoupWalker(self.page.soup, self.page.css_hidden)
        intercepted = self._intercept_payment(action, raw, snapshot)
        if intercepted:
            return intercepted
        if action.verb == "click":
            if click_error(raw):
                return StepOutcome(error=click_error(raw))
            return await self._click(tag, raw, walker)
        if action.verb == "type":
            if typing_error(raw):
                return StepOutcome(error=typing_error(raw))
            if tag.name == "textarea":
                tag.string = action.text or ""
                return StepOutcome()   # Enter in a textarea is a new line, not a submit
            tag["value"] = action.text or ""
            return await self._implicit_submit(tag, walker)
        if action.verb == "select":
            index, error = chosen_option(raw, action.text or "")
            if error:
                return StepOutcome(error=error)
            for position, option in enumerate(tag.find_all("option")):
                if position == index:
                    option["selected"] = ""
                elif not tag.has_attr("multiple"):
                    option.attrs.pop("selected", None)
            return StepOutcome()
        raise ActionError(f"unknown action {action.verb!r}")

    async def _click(self, tag: Tag, raw: RawElement, walker: SoupWalker) -> StepOutcome:
        if raw.disabled:
            return StepOutcome(error=disabled_error(raw.id))
        kind = input_type(tag)
        if tag.name == "a" and tag.has_attr("href"):
            href = tag["href"].strip()
            if href.lower().startswith("javascript:"):
                return StepOutcome(error=f"[{raw.id}] needs JavaScript, which this driver does not run")
            target = urljoin(self.page.url, href)
            if _same_document(target, self.page.url) and "#" in href:
                return StepOutcome()   # an in-page anchor
            return await self._navigate("GET", target)
        if tag.name == "input" and kind in ("checkbox", "radio"):
            if kind == "radio":
                form = walker.form_of(tag) or self.page.soup
                for other in form.find_all("input", attrs={"type": "radio", "name": tag.get("name")}):
                    other.attrs.pop("checked", None)
                tag["checked"] = ""
            elif tag.has_attr("checked"):
                del tag["checked"]
            else:
                tag["checked"] = ""
            return StepOutcome()
        if tag.name == "summary":
            details = tag.find_parent("details")
            if details is not None:
                if details.has_attr("open"):
                    del details["open"]
                else:
                    details["open"] = ""
            return StepOutcome()
        is_submit = (tag.name == "button" and (tag.get("type") or "submit").lower() == "submit") or (
            tag.name == "input" and kind in ("submit", "image"))
        if is_submit:
            form = walker.form_of(tag)
            if form is None:
                return StepOutcome(error=f"[{raw.id}] does nothing without JavaScript")
            return await self._submit(form, tag)
        if is_form_field(raw):
            return StepOutcome()   # focusing a field changes nothing
        return StepOutcome(error=f"[{raw.id}] does nothing without JavaScript, which this driver does not run")

    async def _implicit_submit(self, field_tag: Tag, walker: SoupWalker) -> StepOutcome:
        """Enter in a text field: submit through the default button, as browsers do."""
        form = walker.form_of(field_tag)
        if form is None:
            return StepOutcome()
        submitters = [t for t in form.find_all(["button", "input"])
                      if (t.name == "button" and (t.get("type") or "submit").lower() == "submit")
                      or (t.name == "input" and input_type(t) in ("submit", "image"))]
        if submitters:
            if submitters[0].has_attr("disabled"):
                return StepOutcome()
            return await self._submit(form, submitters[0])
        blocking = [t for t in form.find_all("input") if input_type(t) in BLOCKS_IMPLICIT_SUBMISSION]
        if len(blocking) > 1:
            return StepOutcome()
        return await self._submit(form, None)

    async def _submit(self, form: Tag, submitter: Tag | None) -> StepOutcome:
        method = ((submitter.get("formmethod") if submitter is not None else None) or form.get("method") or "get").lower()
        action = (submitter.get("formaction") if submitter is not None else None) or form.get("action") or self.page.url
        target = urljoin(self.page.url, action)
        pairs = form_fields(form, submitter)
        if method == "post":
            return await self._navigate("POST", target, body=urlencode(pairs))
        parts = urlsplit(target)
        return await self._navigate("GET", urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(pairs), "")))

    def _scroll(self, snapshot: PageSnapshot, direction: str) -> StepOutcome:
        self._start, error = scroll_window(snapshot, self._start, self._scrolled_from, direction,
                                           self.pool.token_budget)
        if error:
            return StepOutcome(error=error)
        return StepOutcome()

    def _intercept_payment(self, action: Action, raw: RawElement, snapshot: PageSnapshot) -> StepOutcome | None:
        if not self.guard.intercepts_payments:
            return None
        if not pays_on_live_store(action.verb, raw, snapshot):
            return None
        name = accessible_name(raw)
        soup = self.page.soup
        product_tag = next((t for t in (soup.select_one(s) for s in PRODUCT_NAME_SELECTORS) if t is not None), None)
        page_text = collapse(soup.body.get_text(" ") if soup.body else soup.get_text(" "))[:PAGE_TEXT_MAX_CHARS]
        detail = interception_detail(name, snapshot.url, page_text, product_tag.get_text(" ") if product_tag else "")
        self.guard.record_interception({"buyer": self.buyer_tag, **detail})
        return StepOutcome(done=True, converted=True, detail=detail)

    # -- requests -------------------------------------------------------------------------------

    async def _navigate(self, method: str, url: str, body: str | None = None) -> StepOutcome:
        """Fetch a page through the guard, following redirects hop by hop (each hop is checked)."""
        for _ in range(MAX_REDIRECTS + 1):
            reason = self.guard.card_post_reason(method, body) if body is not None else None
            if reason:
                self.guard.block(url, reason)
            else:
                reason = await self.guard.check(url, is_page=True)
            if reason:
                return StepOutcome(error=f"not visited: {reason}")
            try:
                headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else None
                response = await self.client.request(method, url, content=body, headers=headers)
            except httpx.HTTPError as error:
                return StepOutcome(error=f"could not open {url}: {type(error).__name__}: {error}"[:300])
            if response.is_redirect and response.headers.get("location"):
                url = urljoin(str(response.url), response.headers["location"])
                if response.status_code in (301, 302, 303):
                    method, body = "GET", None
                continue
            break
        else:
            return StepOutcome(error=f"too many redirects from {url}")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and content_type not in HTML_TYPES:
            return StepOutcome(error=f"{url} is not a web page ({content_type})")
        key = (str(response.url), response.status_code, response.text)
        self.page = self.pool.shared_pages.get(key)
        if self.page is None:
            self.page = await self._parse(*key, shared=self.pool.shared_pages.size > 0)
            self.pool.shared_pages.put(key, self.page)
        self.history.append(self.page.url)
        self._start = 0
        self._scrolled_from.clear()
        return self._arrival()

    async def _parse(self, url: str, status: int, html: str, shared: bool) -> _Page:
        soup = BeautifulSoup(html, HTML_PARSER)
        return _Page(url=url, soup=soup, css_hidden=await self._hidden_by_css(soup, url), status=status, shared=shared)

    async def _take_private_copy(self) -> dict[int, Tag]:
        """Replace the shared page by this buyer's own copy of it; returns the copy's tags by id.

        The copy carries the ids the shared page's walk stamped on its tags, so the walk the
        buyer just read stays true of it and need not be done again."""
        shared = self.page
        soup = copy.copy(shared.soup)
        self.page = _Page(url=shared.url, soup=soup, css_hidden=await self._hidden_by_css(soup, shared.url),
                          next_id=shared.next_id, status=shared.status)
        return {int(tag["data-sp-id"]): tag for tag in soup.find_all(attrs={"data-sp-id": True})}

    async def _hidden_by_css(self, soup: BeautifulSoup, page_url: str) -> set[int]:
        return css_hidden_ids(soup, await self._stylesheets(soup, page_url))

    async def _stylesheets(self, soup: BeautifulSoup, page_url: str) -> list[str]:
        sheets = [style.get_text() for style in soup.find_all("style")]
        if not self.pool.fetch_stylesheets:
            return sheets
        for link in soup.find_all("link", href=True):
            if "stylesheet" not in [r.lower() for r in (link.get("rel") or [])]:
                continue
            href = urljoin(page_url, link["href"])
            if href not in self.pool.stylesheet_cache:
                css = ""
                if await self.guard.check(href, is_page=False, rate_limited=False) is None:
                    try:
                        response = await self.client.get(href)
                        if response.status_code == 200:
                            css = response.text
                    except httpx.HTTPError:
                        css = ""
                self.pool.stylesheet_cache[href] = css
            sheets.append(self.pool.stylesheet_cache[href])
        return sheets

    def _arrival(self) -> StepOutcome:
        meta = self.page.soup.find("meta", attrs={"name": "sp-order-id"})
        if meta is not None and meta.get("content"):
            return StepOutcome(done=True, converted=True, detail={"order_id": meta["content"], "url": self.page.url})
        if ORDER_CONFIRMED_PATH.search(self.page.url):
            title = self.page.soup.title.get_text(" ") if self.page.soup.title else ""
            return StepOutcome(done=True, converted=True, detail={"order_id": order_number(title), "url": self.page.url})
        return StepOutcome()


def _changes_page(verb: str, tag: Tag) -> bool:
    """Whether the action edits the page in place (fields, options, boxes, <details>)."""
    if verb in ("type", "select"):
        return True
    return verb == "click" and ((tag.name == "input" and input_type(tag) in ("checkbox", "radio")) or tag.name == "summary")


def _same_document(a: str, b: str) -> bool:
    return urlsplit(a)._replace(fragment="") == urlsplit(b)._replace(fragment="")
