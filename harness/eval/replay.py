"""`simpersona make-traces`: act out real buyers' sessions in the mock store and record SFT traces.

For every real buyer × shop of events.parquet (DESIGN.md, "File formats") a scripted replayer
drives a real driver session (Chromium via harness.drivers.browser, or harness.drivers.http_driver for big runs)
through the mock store built from that shop's catalog, acting out the buyer's events in time order.
Every step is recorded as (observation, action): the observation is exactly the text the agent
would see, `(await session.observe()).text`, and the action is a line of the action grammar
(agent.actions), executed with `session.act(parse_action(line))`. One trace per buyer × shop goes
to traces.jsonl (agent.traces.Trace), appended and flushed as each buyer finishes; a trace's
`converted` says whether the replay placed at least one order (with an exact replay: whether the
real buyer purchased).

How events become actions (the replayer reads the observation, never a store's ids or URLs):

    product_view      reach the product's page: click its link when the page shows it, else type
                      its title into the search box (then pages of results), else the home page;
                      a repeated view re-opens the page (its own link, or `back` and click again)
    add_to_wishlist   the store has no wishlist: acted out as a product view
    page_view         the event's category listing when it has one, else the home page
    search            type the query into the search box (Enter submits)
    add_to_cart       on the product page, click the add-to-cart button
    remove_from_cart  in the cart, click the product's remove button
    checkout          go to the cart and start the checkout
    purchase          see "Purchases and quantities" below
    end of events     `stop`

Purchases and quantities. A run of consecutive purchase events of one session (checkout events in
between are part of it) is one order. Every purchase event is one unit: the order holds each
product with quantity = its number of purchase events in the run. To place it the replayer puts
exactly those products in the cart (adding what is missing, many logs such as Tmall 2014 buy
without add_to_cart; setting quantities; removing products the buyer carted earlier but does not
buy now), then goes through every checkout step filling the fields with test values
(agent.baselines.ShopPage.fields_to_fill / fake_value_for) and places the order.

Replay exactness. Each buyer's requests carry the tag `<replay_run_id>:<n>`, so the store's order
log (storefronts.orderlog.read_orders) tells buyers apart. A buyer is exact when the multiset
product_id -> units over the store's orders for its tag equals product_id -> number of real
purchase events. replay_report.json lists every buyer that is not exact with the missing and
extra units and the reason (never averaged away).

Long buyers. When a buyer's events would take more than `max_steps_per_buyer` steps (estimated
per event), runs of consecutive repeated views of one product within one visit (session) are
collapsed to one view first;
if that is not enough, the oldest browsing events (views, searches, page views, then cart
changes) are dropped. Purchases are always kept, so a buyer with many orders may still exceed the
budget. What was shortened is counted in the report.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.actions import parse_action
# _first_option reads a drop-down line's options; it lives with ShopPage so both read pages alike.
from agent.baselines import ShopPage, _first_option, fake_value_for
from agent.traces import Step, Trace
from codebook.schema import INGEST_META_FILE
from harness.drivers import check_driver, open_pool
from harness.drivers.base import StepOutcome
from harness.drivers.observation import NAME_MAX_CHARS, collapse, truncate
from storefronts.catalog import StoreCatalog, category_label, stable_unit
from storefronts.orderlog import read_orders

TRACES_FILE = "traces.jsonl"
REPORT_FILE = "replay_report.json"
EVENT_COLUMNS = ("shop_id", "buyer_id", "ts", "event_type", "product_id")
REPLAYED_EVENT_TYPES = (
    "page_view", "product_view", "search", "add_to_wishlist", "add_to_cart", "remove_from_cart",
    "checkout", "purchase",
)
BROWSING = ("product_view", "page_view", "search")

# Rough steps per event, only to decide whether a buyer needs shortening (see the docstring).
ESTIMATED_STEPS = {"product_view": 2, "page_view": 1, "search": 1, "add_to_cart": 1,
                   "remove_from_cart": 2, "checkout": 2}
ESTIMATED_ORDER_STEPS = 14  # cart, checkout, every form field, continue buttons, place order
ESTIMATED_ITEM_STEPS = 3    # reach the product and add it
NAVIGATION_STEP_LIMIT = 14  # steps to reach one product page before giving up
CHECKOUT_STEP_LIMIT = 40    # steps from the cart to the order confirmation
MAX_FILL_ATTEMPTS = 2       # a field the store keeps rejecting is not typed forever

_TEXT_ROLES = {"textbox", "input", "textarea", "email", "tel", "spinbutton"}
_SELECT_ROLES = {"combobox", "listbox", "select"}
_NEXT_PAGE = re.compile(r"^(next( page)?|more results|›|»)\b|^(›|»)$", re.IGNORECASE)
_CART_HEADING = re.compile(r"\b(cart|basket|bag|trolley)\b", re.IGNORECASE)
_REMOVE = re.compile(r"\b(remove|delete)\b", re.IGNORECASE)
_HEADER = re.compile(r"^(\w+):\s?(.*)$")
_CART_COUNT = re.compile(r"^(\d+)\s+items?\b|^empty\b", re.IGNORECASE)
_ORDER_CONFIRMED = re.compile(r"thank you for your order|your order number is|order (confirmed|received|placed)",
                              re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Configuration and report (the API `evaluate` calls)


@dataclass
class ReplayConfig:
    driver: str = "browser"          # browser | http
    concurrency: int = 4
    variant: str = "default"
    shops: tuple[str, ...] | None = None       # None: every shop with events
    max_buyers_per_shop: int | None = None     # sample (seeded) when set
    max_steps_per_buyer: int = 60
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.driver = check_driver(self.driver)
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_steps_per_buyer < 1:
            raise ValueError(f"max_steps_per_buyer must be at least 1, got {self.max_steps_per_buyer}")
        if self.max_buyers_per_shop is not None and self.max_buyers_per_shop < 1:
            raise ValueError(f"max_buyers_per_shop must be at least 1 or None, got {self.max_buyers_per_shop}")
        if self.shops is not None:
            self.shops = tuple(str(shop) for shop in self.shops)


@dataclass
class ReplayReport:
    traces_path: Path
    report_path: Path
    n_buyers: int
    n_exact: int
    mismatches: list[dict]
    details: dict = field(default_factory=dict)  # everything else written to replay_report.json

    def exact_fraction(self) -> float:
        return self.n_exact / self.n_buyers if self.n_buyers else 0.0

    def to_dict(self) -> dict:
        return {
            "traces_path": str(self.traces_path),
            "report_path": str(self.report_path),
            "n_buyers": self.n_buyers,
            "n_exact": self.n_exact,
            "exact_fraction": round(self.exact_fraction(), 6),
            "mismatches": self.mismatches,
            **self.details,
        }


class ReplayError(ValueError):
    """Input that cannot be replayed at all (bad columns, unknown shops, unknown event types)."""


# ---------------------------------------------------------------------------------------------
# Planning: one buyer's events -> the intents the replayer acts out


@dataclass
class Intent:
    """One thing the buyer does: an event, or a whole order (`items`: product_id -> units)."""

    kind: str  # an event type of REPLAYED_EVENT_TYPES (purchase: one order)
    product_id: str | None = None
    category: str | None = None
    query: str | None = None
    items: Counter = field(default_factory=Counter)
    session: str = ""  # the visit it belongs to (a repeated view in a new visit is kept)


@dataclass
class BuyerPlan:
    index: int  # n of the buyer tag <run_id>:<n>
    shop_id: str
    buyer_id: str
    code: int
    intents: list[Intent]
    expected: Counter  # product_id -> purchased units (every purchase event, never shortened)
    n_events: int
    collapsed_views: int = 0
    dropped_events: int = 0

    @property
    def estimated_steps(self) -> int:
        return estimate_steps(self.intents)


def estimate_steps(intents: list[Intent]) -> int:
    total = 1  # the final stop
    for intent in intents:
        if intent.kind == "purchase":
            total += ESTIMATED_ORDER_STEPS + ESTIMATED_ITEM_STEPS * len(intent.items)
        else:
            total += ESTIMATED_STEPS.get(intent.kind, 2)
    return total


def intents_from_events(events: pd.DataFrame) -> list[Intent]:
    """One buyer's events, in time order, as intents; consecutive purchases of a session are one order."""
    intents: list[Intent] = []
    order_session = None  # the session of the order still open at the end of `intents`
    for row in events.itertuples(index=False):
        kind = row.event_type
        product = _text(row.product_id)
        session = _text(getattr(row, "session_id", None))
        if kind == "purchase":
            if intents and intents[-1].kind == "purchase" and order_session == session:
                intents[-1].items[product] += 1
            else:
                intents.append(Intent("purchase", items=Counter({product: 1}), session=session))
                order_session = session
            continue
        if kind == "checkout" and intents and intents[-1].kind == "purchase" and order_session == session:
            continue  # a checkout inside a run of purchases is part of that order
        order_session = None
        if kind == "add_to_wishlist":
            kind = "product_view"  # the store has no wishlist (see the module docstring)
        intents.append(Intent(kind, product_id=product, category=_text(getattr(row, "category", None)),
                              query=_text(getattr(row, "query", None)), session=session))
    return intents


def shorten(intents: list[Intent], max_steps: int) -> tuple[list[Intent], int, int]:
    """Fit a buyer into max_steps (estimated): (intents, views collapsed, events dropped)."""
    if estimate_steps(intents) <= max_steps:
        return intents, 0, 0
    collapsed: list[Intent] = []
    for intent in intents:
        previous = collapsed[-1] if collapsed else None
        if (intent.kind == "product_view" and previous is not None and previous.kind == "product_view"
                and previous.product_id == intent.product_id and previous.session == intent.session):
            continue
        collapsed.append(intent)
    n_collapsed = len(intents) - len(collapsed)
    dropped = 0
    # Oldest browsing first, then cart changes; purchases never.
    for kinds in (BROWSING, ("add_to_cart", "remove_from_cart", "checkout")):
        position = 0
        while estimate_steps(collapsed) > max_steps and position < len(collapsed):
            if collapsed[position].kind in kinds:
                del collapsed[position]
                dropped += 1
            else:
                position += 1
    return collapsed, n_collapsed, dropped


def plan_buyers(events: pd.DataFrame, codes: pd.DataFrame, config: ReplayConfig) -> tuple[list[BuyerPlan], dict]:
    """The buyers to replay, shop by shop, and counts of the ones left out (with why)."""
    code_of = {(str(s), str(b)): int(c) for s, b, c in codes[["shop_id", "buyer_id", "code"]].itertuples(index=False)}
    events = events.sort_values(["shop_id", "buyer_id", "ts", "source_row"], kind="stable")
    plans: list[BuyerPlan] = []
    skipped = Counter()
    for shop_id, shop_events in events.groupby("shop_id", sort=True):
        buyers = list(shop_events.groupby("buyer_id", sort=True))
        if config.max_buyers_per_shop is not None and len(buyers) > config.max_buyers_per_shop:
            # Seeded per shop, so a shop's sample does not change when other shops are added.
            rng = np.random.default_rng([config.seed, int(stable_unit("replay-sample", str(shop_id)) * 2**32)])
            chosen = sorted(rng.choice(len(buyers), size=config.max_buyers_per_shop, replace=False))
            skipped["not_sampled"] += len(buyers) - len(chosen)
            buyers = [buyers[i] for i in chosen]
        for buyer_id, buyer_events in buyers:
            code = code_of.get((str(shop_id), str(buyer_id)))
            if code is None:
                skipped["no_code"] += 1
                continue
            intents = intents_from_events(buyer_events)
            expected = Counter(_text(p) for p in buyer_events.loc[buyer_events["event_type"] == "purchase", "product_id"])
            intents, n_collapsed, n_dropped = shorten(intents, config.max_steps_per_buyer)
            plans.append(BuyerPlan(len(plans), str(shop_id), str(buyer_id), code, intents, expected,
                                   len(buyer_events), n_collapsed, n_dropped))
    return plans, dict(skipped)


# ---------------------------------------------------------------------------------------------
# Reading an observation


def shown_name(text: str) -> str:
    """How the observation writes a name (collapsed whitespace, cut at NAME_MAX_CHARS)."""
    return truncate(collapse(text), NAME_MAX_CHARS)


def header_value(observation: str, key: str) -> str:
    """A header line of the observation (`Heading: ...`), "" when absent."""
    for line in observation.splitlines()[:12]:
        match = _HEADER.match(line)
        if match and match.group(1).lower() == key.lower():
            return match.group(2).strip()
    return ""


def cart_count(observation: str) -> int | None:
    """Units in the cart from the `Cart: 2 items, €31.98` header line; None when not shown."""
    match = _CART_COUNT.match(header_value(observation, "Cart"))
    if not match:
        return None
    return int(match.group(1)) if match.group(1) else 0


def shows_order_confirmation(observation: str) -> bool:
    return any(_ORDER_CONFIRMED.search(header_value(observation, key)) for key in ("Heading", "Notice", "Title"))


def mentioning(elements, title: str):
    """Elements whose name mentions the product title, best match first (a title such as "TV"
    is inside "Remove TV stand from cart" too, so the name with the least else in it wins)."""
    wanted = collapse(title)
    found = []
    for element in elements:
        name = element.name
        if wanted in name or (name.endswith("…") and len(name) > 20 and _cut_title_in(name[:-1], wanted)):
            found.append(element)
    return sorted(found, key=lambda e: len(e.name) - len(wanted))


def _cut_title_in(stem: str, title: str) -> bool:
    """Whether `stem` ends with a long enough beginning of `title` (a name cut at its limit)."""
    for start in range(len(stem)):
        tail = stem[start:]
        if len(tail) < 20:
            return False
        if title.startswith(tail):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Acting out one buyer


class IntentFailed(Exception):
    """An event that could not be acted out; the message says why (it goes into the report)."""


@dataclass
class BuyerResult:
    plan: BuyerPlan
    tag: str
    steps: list[Step]
    failures: list[dict]
    orders_confirmed: int
    error: str | None = None  # the driver broke (no trace written)
    duration_s: float = 0.0


class BuyerReplayer:
    """Drives one session through one buyer's intents, recording every (observation, action)."""

    def __init__(self, session, catalog: StoreCatalog, plan: BuyerPlan):
        self.session = session
        self.catalog = catalog
        self.plan = plan
        self.steps: list[Step] = []
        self.failures: list[dict] = []
        self.cart: Counter = Counter()  # what this buyer put in the cart, product_id -> units
        self.orders_confirmed = 0
        self.observation = ""

    # -- the two primitives --------------------------------------------------------------------

    async def start(self, url: str) -> None:
        outcome = await self.session.goto(url)
        if outcome.error:
            raise RuntimeError(f"could not open the store at {url}: {outcome.error}")
        await self._observe()

    async def act(self, line: str) -> StepOutcome:
        """Record (current observation, action), execute the action, read the next observation."""
        before = self.observation
        self.steps.append(Step(before, line))
        outcome = await self.session.act(parse_action(line))
        if line != "stop":
            await self._observe()
        # The page decides, not only the outcome: on a loaded machine a browser click can time
        # out (an error) although the order went through.
        confirmed = shows_order_confirmation(self.observation) and not shows_order_confirmation(before)
        if outcome.converted or confirmed:
            self.orders_confirmed += 1
            self.cart.clear()
        return outcome

    async def _observe(self) -> None:
        self.observation = (await self.session.observe()).text

    @property
    def page(self) -> ShopPage:
        return ShopPage.read(self.observation)

    # -- the whole buyer -----------------------------------------------------------------------

    async def run(self, url: str) -> None:
        await self.start(url)
        for number, intent in enumerate(self.plan.intents):
            try:
                await self.perform(intent)
            except IntentFailed as failure:
                self.failures.append({"intent": number, "event": intent.kind,
                                      "product_id": intent.product_id or dict(intent.items), "reason": str(failure)})
        await self.act("stop")

    async def perform(self, intent: Intent) -> None:
        kind = intent.kind
        if kind == "product_view":
            await self.view_product(intent.product_id)
        elif kind == "page_view":
            await self.view_page(intent.category)
        elif kind == "search":
            await self.search(intent.query)
        elif kind == "add_to_cart":
            await self.add_to_cart(intent.product_id, 1)
        elif kind == "remove_from_cart":
            await self.remove_from_cart(intent.product_id)
        elif kind == "checkout":
            await self.start_checkout()
        elif kind == "purchase":
            await self.purchase(intent.items)
        else:  # plan_buyers rejects unknown types; this is a programming error
            raise AssertionError(f"unknown intent {kind!r}")

    # -- browsing ------------------------------------------------------------------------------

    def product(self, product_id: str | None):
        product = self.catalog.by_id.get(product_id or "")
        if product is None:
            raise IntentFailed(f"product {product_id!r} is not in the catalog of shop {self.plan.shop_id!r}")
        return product

    def on_product_page(self, product) -> bool:
        page = self.page
        return header_value(self.observation, "Heading") == shown_name(product.title) and bool(page.add_to_cart)

    async def view_product(self, product_id: str | None) -> None:
        product = self.product(product_id)
        await self.reach_product(product, fresh=True)

    async def reach_product(self, product, fresh: bool) -> None:
        """Get to the product's page: click its link, else search its title, else go home and
        look there. `fresh`: the page must be opened anew (a view), even if it is shown now."""
        target = shown_name(product.title)
        searched = went_home = False
        arrived = False
        for _ in range(NAVIGATION_STEP_LIMIT):
            on_page = self.on_product_page(product)
            if on_page and (arrived or not fresh):
                return
            page = self.page
            links = [e for e in page.elements if e.role == "link" and e.name == target]
            search_boxes = [e for e in page.elements if e.role == "searchbox"]
            if links:
                await self.act(f"click [{links[0].element_id}]")
                arrived = True
            elif on_page:
                await self.act("back")  # the page does not link itself: back, then click it there
            elif search_boxes and not searched:
                await self.act(_type(search_boxes[0].element_id, product.title))
                searched = True
            elif searched and page.more_below:  # results further down the page
                await self.act("scroll down")
            elif searched and (next_links := [e for e in page.elements if e.role == "link" and _NEXT_PAGE.search(e.name)]):
                await self.act(f"click [{next_links[0].element_id}]")
            elif not went_home and page.elements:
                await self.act(f"click [{page.elements[0].element_id}]")  # the logo / home link
                went_home = True
            else:
                break
        raise IntentFailed(f"could not reach the page of {product.product_id!r} ({product.title!r})")

    async def view_page(self, category: str | None) -> None:
        """A listing of the category when the page links it, else the home page."""
        if category and category in self.catalog.by_category:
            label = shown_name(category_label(category))
            for _ in range(2):
                links = [e for e in self.page.elements if e.role == "link" and e.name == label]
                if links:
                    await self.act(f"click [{links[0].element_id}]")
                    return
                await self.go_home()
        await self.go_home()

    async def go_home(self) -> None:
        links = [e for e in self.page.elements if e.role == "link"]
        if not links:
            raise IntentFailed("the page has no link back to the home page")
        await self.act(f"click [{links[0].element_id}]")

    async def search(self, query: str | None) -> None:
        if not query:
            raise IntentFailed("search event without a query")
        for _ in range(2):
            boxes = [e for e in self.page.elements if e.role == "searchbox"]
            if boxes:
                await self.act(_type(boxes[0].element_id, query))
                return
            await self.go_home()
        raise IntentFailed("no search box on the page or the home page")

    # -- cart ----------------------------------------------------------------------------------

    async def add_to_cart(self, product_id: str | None, units: int) -> None:
        """Reach the product and add `units` of it (typing the quantity submits the add form)."""
        product = self.product(product_id)
        await self.reach_product(product, fresh=False)
        page = self.page
        quantity_fields = [e for e in page.elements if e.role == "spinbutton"]
        before = cart_count(self.observation)
        if units != 1 and quantity_fields:
            outcome = await self.act(_type(quantity_fields[0].element_id, str(units)))
        else:  # one unit; a purchase sets the quantity in the cart when it needs more
            outcome = await self.act(f"click [{page.add_to_cart[0].element_id}]")
            units = 1
        after = cart_count(self.observation)
        if before is not None and after is not None:
            units = after - before  # what the cart header says was added, even after an error
        elif outcome.error:
            units = 0
        if units <= 0:
            raise IntentFailed(f"adding {product.product_id!r} to the cart failed: {outcome.error or 'cart unchanged'}")
        self.cart[product.product_id] += units

    async def open_cart(self) -> None:
        if _CART_HEADING.search(header_value(self.observation, "Heading")):
            return
        links = self.page.cart_links
        if not links:
            await self.go_home()
            links = self.page.cart_links
        if not links:
            raise IntentFailed("no link to the cart on the page")
        await self.act(f"click [{links[0].element_id}]")

    async def remove_from_cart(self, product_id: str | None) -> None:
        product = self.product(product_id)
        if not self.cart[product.product_id]:
            raise IntentFailed(f"{product.product_id!r} is not in the cart (it was carted before the log starts)")
        await self.open_cart()
        buttons = [e for e in mentioning(self.page.elements, product.title)
                   if e.role == "button" and _REMOVE.search(e.name)]
        if not buttons:
            raise IntentFailed(f"no remove button for {product.title!r} in the cart")
        before = cart_count(self.observation)
        outcome = await self.act(f"click [{buttons[0].element_id}]")
        if outcome.error and cart_count(self.observation) == before:
            raise IntentFailed(f"removing {product.product_id!r} from the cart failed: {outcome.error}")
        del self.cart[product.product_id]

    async def set_cart_quantity(self, product, units: int) -> None:
        fields = [e for e in mentioning(self.page.elements, product.title) if e.role == "spinbutton"]
        if not fields:
            raise IntentFailed(f"no quantity field for {product.title!r} in the cart")
        await self.act(_type(fields[0].element_id, str(units)))
        self.cart[product.product_id] = units

    async def start_checkout(self) -> None:
        if not self.cart:
            raise IntentFailed("checkout with an empty cart")
        await self.open_cart()
        buttons = self.page.checkout
        if not buttons:
            raise IntentFailed("no checkout button in the cart")
        await self.act(f"click [{buttons[0].element_id}]")

    # -- purchase ------------------------------------------------------------------------------

    async def purchase(self, items: Counter) -> None:
        """Put exactly `items` in the cart, go through every checkout step, place the order.
        Products the shop does not sell are left out (and reported); the rest is still bought."""
        unsellable = [product_id for product_id in items if product_id not in self.catalog.by_id]
        items = Counter({p: units for p, units in items.items() if p not in unsellable})
        if items:
            await self.place_order(items)
        if unsellable:
            raise IntentFailed(f"product(s) {', '.join(map(repr, unsellable))} not in the catalog of shop "
                               f"{self.plan.shop_id!r}: not bought")

    async def place_order(self, items: Counter) -> None:
        products = {product_id: self.product(product_id) for product_id in items}
        for product_id, units in items.items():
            for attempt in range(2):  # a second try when a loaded browser drops the click
                if self.cart[product_id]:
                    break
                try:
                    await self.add_to_cart(product_id, units)
                except IntentFailed:
                    if attempt:
                        raise
        await self.open_cart()
        for product_id in [p for p in self.cart if p not in items]:
            await self.remove_from_cart(product_id)
        for product_id, units in items.items():
            if self.cart[product_id] != units:
                await self.set_cart_quantity(products[product_id], units)
        buttons = self.page.checkout
        if not buttons:
            raise IntentFailed("no checkout button in the cart")
        before = self.orders_confirmed
        await self.act(f"click [{buttons[0].element_id}]")
        await self.complete_checkout()
        if self.orders_confirmed == before:
            raise IntentFailed("the checkout did not reach an order confirmation")

    async def complete_checkout(self) -> None:
        attempts = Counter()
        before = self.orders_confirmed
        for _ in range(CHECKOUT_STEP_LIMIT):
            if self.orders_confirmed > before:
                return
            page = self.page
            url = header_value(self.observation, "URL")
            line = None
            # Typing submits with Enter: fill the controls that do not submit first, so the last
            # field typed sends a complete form.
            fields = sorted(page.fields_to_fill(), key=lambda e: e.role in _TEXT_ROLES)
            for element in fields:
                if attempts[(url, element.name)] >= MAX_FILL_ATTEMPTS:
                    continue
                attempts[(url, element.name)] += 1
                line = _fill(element)
                break
            if line is None:
                # The cart's checkout button again too, when a loaded browser dropped the first click.
                for candidates in (page.place_order, page.continue_buttons, page.checkout):
                    if candidates:
                        line = f"click [{candidates[0].element_id}]"
                        break
            if line is None:
                raise IntentFailed(f"stuck in the checkout at {urlsplit(url).path or url!r}: nothing to fill or press")
            await self.act(line)
        if self.orders_confirmed == before:
            raise IntentFailed(f"no order confirmation after {CHECKOUT_STEP_LIMIT} checkout steps")


def _fill(element) -> str:
    if element.role in _SELECT_ROLES:
        return f'select [{element.element_id}] {_quote(_first_option(element) or "")}'
    if element.role == "radio":
        return f"click [{element.element_id}]"
    return _type(element.element_id, fake_value_for(element.name) or "test")


def _type(element_id: int, text: str) -> str:
    return f"type [{element_id}] {_quote(text)}"


def _quote(text: str) -> str:
    """Text as a quoted action argument (agent.actions unescapes backslashes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    return str(value).strip()


# ---------------------------------------------------------------------------------------------
# Inputs


def load_frame(source: str | Path | pd.DataFrame, what: str) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.is_file():
        raise ReplayError(f"{path}: {what} file not found")
    try:
        return pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise ReplayError(f"{path}: cannot read the {what} as Parquet ({error})") from None


def check_events(events: pd.DataFrame, source: str) -> pd.DataFrame:
    """Validate the columns and event types; returns a copy with string ids and source_row."""
    missing = [name for name in EVENT_COLUMNS if name not in events.columns]
    if missing:
        raise ReplayError(f"{source}: missing column(s) {', '.join(missing)}; expected events.parquet columns "
                          f"{', '.join(EVENT_COLUMNS)} (+ session_id, category, query, source_row)")
    events = events.copy()
    unknown = ~events["event_type"].isin(REPLAYED_EVENT_TYPES)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise ReplayError(f"{source}: row {row + 1} has event_type {events['event_type'].iloc[row]!r}; "
                          f"expected one of {', '.join(REPLAYED_EVENT_TYPES)}")
    for name in ("shop_id", "buyer_id"):
        if events[name].isna().any():
            row = int(np.flatnonzero(events[name].isna().to_numpy())[0])
            raise ReplayError(f"{source}: row {row + 1} has no {name}")
        events[name] = events[name].astype(str)
    if "source_row" not in events.columns:
        events["source_row"] = np.arange(1, len(events) + 1)  # the frame's order breaks ties in ts
    return events


def check_codes(codes: pd.DataFrame) -> pd.DataFrame:
    missing = [name for name in ("shop_id", "buyer_id", "code") if name not in codes.columns]
    if missing:
        raise ReplayError(f"codes: missing column(s) {', '.join(missing)}; expected shop_id, buyer_id, code")
    return codes


def catalog_note(events_source) -> dict:
    """What ingest.json next to events.parquet says about where titles and products come from."""
    if isinstance(events_source, pd.DataFrame):
        return {"note": "events given as a DataFrame: no ingest.json to read the catalog note from"}
    meta_path = Path(events_source).parent / INGEST_META_FILE
    if not meta_path.is_file():
        return {"note": f"no {INGEST_META_FILE} next to {events_source}"}
    meta = json.loads(meta_path.read_text())
    return {key: meta.get(key) for key in ("format", "catalog_note", "title_source", "shop_note", "ts_resolution")}


# ---------------------------------------------------------------------------------------------
# Running


def make_traces(events, catalog, codes, out_dir, config: ReplayConfig = ReplayConfig()) -> ReplayReport:
    """Replay every planned buyer and write traces.jsonl, replay_report.json and one store
    order log per shop (replay_store_<shop>.sqlite) into out_dir; see the module docstring."""
    return asyncio.run(replay(events, catalog, codes, out_dir, config))


async def replay(events, catalog, codes, out_dir, config: ReplayConfig = ReplayConfig(), pool=None,
                 run_id: str | None = None) -> ReplayReport:
    """make_traces for callers that already run an event loop.

    pool: an open driver pool (BrowserPool / HttpPool) to use instead of opening one for
        config.driver; the caller closes it (tests share one browser between runs).
    run_id: the first half of every buyer tag; default replay-<UTC time>.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    events_frame = check_events(load_frame(events, "events"), str(events) if not isinstance(events, pd.DataFrame) else "events")
    catalog_frame = load_frame(catalog, "catalog")
    codes = check_codes(codes)
    if config.shops is not None:
        present = set(events_frame["shop_id"].unique())
        unknown = [shop for shop in config.shops if shop not in present]
        if unknown:
            raise ReplayError(f"shop(s) {', '.join(unknown)} have no events; shops with events include "
                              f"{', '.join(sorted(present)[:10])}")
        events_frame = events_frame[events_frame["shop_id"].isin(config.shops)]
    plans, skipped = plan_buyers(events_frame, codes, config)
    run_id = run_id or f"replay-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"

    # A fresh replay: earlier traces and order logs in out_dir would mix with this run's.
    traces_path = out_dir / TRACES_FILE
    traces_path.unlink(missing_ok=True)
    by_shop: dict[str, list[BuyerPlan]] = {}
    for plan in plans:
        by_shop.setdefault(plan.shop_id, []).append(plan)
    for shop in by_shop:
        store_db_path(out_dir, shop).unlink(missing_ok=True)

    started = time.perf_counter()
    results: list[BuyerResult] = []
    comparisons: list[dict] = []
    with traces_path.open("a", encoding="utf-8") as traces_file, _progress_bar(config.progress) as progress:
        task = progress.add_task("replay", total=len(plans), exact=0)
        counts = Counter()
        async with (nullcontext(pool) if pool is not None else make_pool(config)) as pool:
            # A few shops at once, so logs with many small shops still keep `concurrency` buyers busy.
            shop_slots = asyncio.Semaphore(config.concurrency)

            async def one_shop(shop: str, shop_plans: list[BuyerPlan]) -> None:
                async with shop_slots:
                    shop_results = await replay_shop(pool, shop, shop_plans, catalog_frame, config, run_id, out_dir,
                                                     traces_file, progress, task, counts)
                results.extend(shop_results)
                comparisons.extend(compare_orders(shop_results, store_db_path(out_dir, shop)))
                counts["exact"] += sum(c["exact"] for c in comparisons if c["shop_id"] == shop)
                progress.update(task, exact=counts["exact"])

            await asyncio.gather(*(one_shop(shop, shop_plans) for shop, shop_plans in by_shop.items()))
    elapsed = time.perf_counter() - started
    return write_report(out_dir, run_id, config, plans, results, comparisons, skipped, elapsed, catalog_note(events))


def store_db_path(out_dir: Path, shop: str) -> Path:
    safe = re.sub(r"[^\w.-]", "_", shop)[:80]
    return out_dir / f"replay_store_{safe}.sqlite"


def make_pool(config: ReplayConfig):
    return open_pool(config.driver, config.concurrency)


async def replay_shop(pool, shop: str, plans: list[BuyerPlan], catalog_frame: pd.DataFrame, config: ReplayConfig,
                      run_id: str, out_dir: Path, traces_file, progress, task, counts: Counter) -> list[BuyerResult]:
    """Serve the shop's store and replay its buyers, `concurrency` at a time (the pool's slots)."""
    from harness.drivers.safety import SiteGuard
    from storefronts.server import serve_store

    try:
        shop_catalog = StoreCatalog.load(catalog_frame, shop)
    except ValueError as error:  # no products for the shop: every buyer fails with this reason
        results = [BuyerResult(plan, f"{run_id}:{plan.index}", [], [], 0, error=str(error)) for plan in plans]
        progress.update(task, advance=len(plans))
        return results
    store_context = serve_store(shop_catalog, shop, variant=config.variant, db_path=store_db_path(out_dir, shop))
    store = await asyncio.to_thread(store_context.__enter__)
    try:
        guard = SiteGuard(allow_hosts=[urlsplit(store.url).netloc], our_store=True, rate_limit_per_s=None,
                          respect_robots=False)

        async def one_buyer(plan: BuyerPlan) -> BuyerResult:
            result = await replay_buyer(pool, guard, store.url, shop_catalog, plan, f"{run_id}:{plan.index}")
            if result.error is None:
                trace = Trace(plan.shop_id, plan.buyer_id, plan.code, result.steps, result.orders_confirmed > 0)
                traces_file.write(trace.to_json() + "\n")
                traces_file.flush()
            progress.update(task, advance=1)
            return result

        return list(await asyncio.gather(*(one_buyer(plan) for plan in plans)))
    finally:
        await asyncio.to_thread(store_context.__exit__, None, None, None)


async def replay_buyer(pool, guard, url: str, catalog: StoreCatalog, plan: BuyerPlan, tag: str) -> BuyerResult:
    started = time.perf_counter()
    replayer = None
    try:
        async with pool.session(tag, guard) as session:
            replayer = BuyerReplayer(session, catalog, plan)
            await replayer.run(url)
    except Exception as error:  # one broken session must not end the run; the report says why
        steps = replayer.steps if replayer else []
        failures = replayer.failures if replayer else []
        return BuyerResult(plan, tag, steps, failures, replayer.orders_confirmed if replayer else 0,
                           error=f"{type(error).__name__}: {error}", duration_s=time.perf_counter() - started)
    return BuyerResult(plan, tag, replayer.steps, replayer.failures, replayer.orders_confirmed,
                       duration_s=time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# Exactness and the report


def ordered_units(orders: list[dict]) -> dict[str, Counter]:
    """buyer tag -> product_id -> units over all of the tag's orders."""
    units: dict[str, Counter] = {}
    for order in orders:
        bought = units.setdefault(order["buyer_tag"], Counter())
        for item in order["items"]:
            bought[str(item["product_id"])] += int(item["quantity"])
    return units


def compare_orders(results: list[BuyerResult], db_path: Path) -> list[dict]:
    """One comparison per buyer: the store's orders under its tag against its real purchases."""
    replayed = ordered_units(read_orders(db_path)) if db_path.is_file() else {}
    comparisons = []
    for result in results:
        plan = result.plan
        got = replayed.get(result.tag, Counter())
        expected = plan.expected
        missing = expected - got
        extra = got - expected
        reasons = [f"{f['event']} {f['product_id']}: {f['reason']}" for f in result.failures
                   if f["event"] in ("purchase", "add_to_cart", "remove_from_cart", "checkout")]
        if result.error:
            reasons.insert(0, result.error)
        comparisons.append({
            "shop_id": plan.shop_id, "buyer_id": plan.buyer_id, "buyer_tag": result.tag,
            "exact": not missing and not extra and result.error is None,
            "expected": dict(expected), "replayed": dict(got), "missing": dict(missing), "extra": dict(extra),
            "reason": "; ".join(reasons) if (missing or extra or result.error) else "",
            "steps": len(result.steps), "failures": result.failures,
        })
    return comparisons


def write_report(out_dir: Path, run_id: str, config: ReplayConfig, plans: list[BuyerPlan], results: list[BuyerResult],
                 comparisons: list[dict], skipped: dict, elapsed: float, note: dict) -> ReplayReport:
    mismatches = [c for c in comparisons if not c["exact"]]
    steps = np.array([len(r.steps) for r in results if r.error is None] or [0])
    shortened = [p for p in plans if p.collapsed_views or p.dropped_events]
    failures = Counter(f["event"] for r in results for f in r.failures)
    details = {
        "run_id": run_id,
        "config": {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(config).items()},
        "quantity_rule": "one purchase event = one unit; consecutive purchase events of one session are one "
                         "order; exact = product_id -> units over the store's orders equals product_id -> "
                         "number of real purchase events, buyer by buyer",
        "n_shops": len({p.shop_id for p in plans}),
        "n_skipped": skipped,
        "n_traces_written": sum(r.error is None for r in results),
        "n_driver_errors": sum(r.error is not None for r in results),
        "n_buyers_with_purchases": sum(bool(p.expected) for p in plans),
        "n_purchase_units": int(sum(sum(p.expected.values()) for p in plans)),
        "n_orders_confirmed": sum(r.orders_confirmed for r in results),
        "steps": {"total": int(steps.sum()), "mean": round(float(steps.mean()), 2),
                  "median": float(np.median(steps)), "max": int(steps.max()),
                  "over_budget": int(sum(len(r.steps) > config.max_steps_per_buyer for r in results))},
        "shortened": {"buyers": len(shortened), "views_collapsed": sum(p.collapsed_views for p in plans),
                      "events_dropped": sum(p.dropped_events for p in plans),
                      "events_in_log": sum(p.n_events for p in plans)},
        "failed_events": dict(failures),
        "wishlist_note": "the store has no wishlist: add_to_wishlist events are replayed as product views",
        "catalog": note,
        "seconds": round(elapsed, 2),
        "buyers_per_minute": round(60 * len(plans) / elapsed, 1) if elapsed > 0 else None,
        "buyers": [{k: c[k] for k in ("shop_id", "buyer_id", "buyer_tag", "exact", "steps")} for c in comparisons],
    }
    report = ReplayReport(out_dir / TRACES_FILE, out_dir / REPORT_FILE, len(plans),
                          sum(c["exact"] for c in comparisons), mismatches, details)
    report.report_path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    return report


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]make-traces"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("buyers  {task.fields[exact]} exact"),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    )
