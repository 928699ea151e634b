"""The scripted buyer of `simpersona make-traces`: acts out one BuyerPlan in the mock store.

harness/eval/replay_plan.py turns a real buyer's events into intents; this module drives one
driver session through them, recording every step as (observation, action): the observation is
exactly the text the agent would see, `(await session.observe()).text`, and the action a line of
the action grammar (agent.actions), executed with `session.act(parse_action(line))`. The buyer
reads each observation with agent.page.parse and finds controls by role and name, never by a
store's ids or URLs:

    product_view      reach the product's page: click its link when the page shows it, else type
                      its title into the search box (then pages of results), else the home page;
                      a repeated view re-opens the page (its own link, or `back` and click again)
    page_view         the intent's category listing when it has one, else the home page
    search            type the query into the search box (Enter submits)
    add_to_cart       on the product page, choose a required size or colour when the form has one,
                      then click the add-to-cart button
    remove_from_cart  in the cart, click the product's remove button
    checkout          go to the cart and start the checkout
    purchase          put exactly the order's products in the cart (adding what is missing, since
                      many logs such as Tmall 2014 buy without add_to_cart; setting quantities;
                      removing products carted before but not bought now), then go through every
                      checkout step filling the fields with test values
                      (agent.baselines.fields_to_fill / fake_value_for) and place the order
    end of intents    `stop`

A dialog over the page (a cookie banner, a newsletter pop-up, a mini-cart drawer) is closed with
its own close control before the buyer goes on, as people do; a drawer that links the cart is
used to get there.

An intent that cannot be acted out is recorded as a failure with its reason (IntentFailed) and
the buyer goes on with the next one.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.actions import parse_action
from agent.baselines import fake_value_for, fields_to_fill, first_real_option
from agent.page import PRODUCT_OPTION, REMOVE_FROM_CART, SELECT_ROLES, TEXT_ROLES, Page, names_cart, parse
from agent.traces import Step
from harness.drivers.base import StepOutcome
from harness.drivers.observation import NAME_MAX_CHARS, collapse, truncate
from harness.eval.replay_plan import BuyerPlan, Intent
from storefronts.catalog import StoreCatalog, category_label

NAVIGATION_STEP_LIMIT = 14  # steps to reach one product page before giving up
CHECKOUT_STEP_LIMIT = 40    # steps from the cart to the order confirmation
MAX_FILL_ATTEMPTS = 2       # a field the store keeps rejecting is not typed forever
DIALOG_CLOSE_ATTEMPTS = 3   # one dialog may open behind another (cookies, then a pop-up)

_NEXT_PAGE = re.compile(r"^(next( page)?|more results|load more( products)?|show more( products)?|›|»)\b|^(›|»)$",
                        re.IGNORECASE)


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


async def run_buyer(pool, guard, url: str, catalog: StoreCatalog, plan: BuyerPlan, tag: str) -> BuyerResult:
    """Act out one plan in its own driver session (tagged `tag`); a broken session is a result too."""
    started = time.perf_counter()
    buyer = None
    try:
        async with pool.session(tag, guard) as session:
            buyer = ScriptedBuyer(session, catalog, plan)
            await buyer.run(url)
    except Exception as error:  # one broken session must not end the run; the report says why
        steps = buyer.steps if buyer else []
        failures = buyer.failures if buyer else []
        return BuyerResult(plan, tag, steps, failures, buyer.orders_confirmed if buyer else 0,
                           error=f"{type(error).__name__}: {error}", duration_s=time.perf_counter() - started)
    return BuyerResult(plan, tag, buyer.steps, buyer.failures, buyer.orders_confirmed,
                       duration_s=time.perf_counter() - started)


class ScriptedBuyer:
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
        confirmed = self.page.order_confirmed and not parse(before).order_confirmed
        if outcome.converted or confirmed:
            self.orders_confirmed += 1
            self.cart.clear()
        return outcome

    async def _observe(self) -> None:
        self.observation = (await self.session.observe()).text

    @property
    def page(self) -> Page:
        return parse(self.observation)

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
        else:  # check_events rejects unknown types; this is a programming error
            raise AssertionError(f"unknown intent {kind!r}")

    async def close_dialog(self) -> None:
        """Close whatever dialog covers the page with its own close control."""
        for _ in range(DIALOG_CLOSE_ATTEMPTS):
            controls = self.page.dismiss_controls
            if self.page.dialog is None or not controls:
                return
            await self.act(f"click [{controls[0].element_id}]")

    # -- browsing ------------------------------------------------------------------------------

    def product(self, product_id: str | None):
        product = self.catalog.by_id.get(product_id or "")
        if product is None:
            raise IntentFailed(f"product {product_id!r} is not in the catalog of shop {self.plan.shop_id!r}")
        return product

    def on_product_page(self, product) -> bool:
        page = self.page
        return page.heading == shown_name(product.title) and bool(page.add_to_cart_buttons)

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
            await self.close_dialog()
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
                await self.close_dialog()
                links = [e for e in self.page.elements if e.role == "link" and e.name == label]
                if links:
                    await self.act(f"click [{links[0].element_id}]")
                    return
                await self.go_home()
        await self.go_home()

    async def go_home(self) -> None:
        await self.close_dialog()
        links = [e for e in self.page.elements if e.role == "link"]
        if not links:
            raise IntentFailed("the page has no link back to the home page")
        await self.act(f"click [{links[0].element_id}]")

    async def search(self, query: str | None) -> None:
        if not query:
            raise IntentFailed("search event without a query")
        for _ in range(2):
            await self.close_dialog()
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
        await self.choose_product_options()
        page = self.page
        quantity_fields = [e for e in page.elements if e.role == "spinbutton"]
        before = page.cart_items
        if units != 1 and quantity_fields:
            outcome = await self.act(_type(quantity_fields[0].element_id, str(units)))
        else:  # one unit; a purchase sets the quantity in the cart when it needs more
            outcome = await self.act(f"click [{page.add_to_cart_buttons[0].element_id}]")
            units = 1
        after = self.page.cart_items
        if before is not None and after is not None:
            units = after - before  # what the cart header says was added, even after an error
        elif outcome.error:
            units = 0
        if units <= 0:
            raise IntentFailed(f"adding {product.product_id!r} to the cart failed: {outcome.error or 'cart unchanged'}")
        self.cart[product.product_id] += units

    async def choose_product_options(self) -> None:
        """Pick the first size or colour of a product form that needs one before adding."""
        for element in fields_to_fill(self.page):
            if element.role in SELECT_ROLES and PRODUCT_OPTION.search(element.name):
                await self.act(_fill(element))

    async def open_cart(self) -> None:
        if names_cart(self.page.heading):
            return
        if not self.page.cart_links:  # a drawer that links the cart is the way there
            await self.close_dialog()
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
                   if e.role == "button" and REMOVE_FROM_CART.search(e.name)]
        if not buttons:
            raise IntentFailed(f"no remove button for {product.title!r} in the cart")
        before = self.page.cart_items
        outcome = await self.act(f"click [{buttons[0].element_id}]")
        if outcome.error and self.page.cart_items == before:
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
        buttons = self.page.checkout_buttons
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
        buttons = self.page.checkout_buttons
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
            await self.close_dialog()
            page = self.page
            url = page.url
            line = None
            # Typing submits with Enter: fill the controls that do not submit first, so the last
            # field typed sends a complete form.
            fields = sorted(fields_to_fill(page), key=lambda e: e.role in TEXT_ROLES)
            for element in fields:
                if attempts[(url, element.name)] >= MAX_FILL_ATTEMPTS:
                    continue
                attempts[(url, element.name)] += 1
                line = _fill(element)
                break
            if line is None:
                # The cart's checkout button again too, when a loaded browser dropped the first click.
                for candidates in (page.place_order_buttons, page.continue_buttons, page.checkout_buttons):
                    if candidates:
                        line = f"click [{candidates[0].element_id}]"
                        break
            if line is None:
                raise IntentFailed(f"stuck in the checkout at {urlsplit(url).path or url!r}: nothing to fill or press")
            await self.act(line)
        if self.orders_confirmed == before:
            raise IntentFailed(f"no order confirmation after {CHECKOUT_STEP_LIMIT} checkout steps")


def _fill(element) -> str:
    if element.role in SELECT_ROLES:
        return f'select [{element.element_id}] {_quote(first_real_option(element) or "")}'
    if element.role == "radio":
        return f"click [{element.element_id}]"
    return _type(element.element_id, fake_value_for(element.name) or "test")


def _type(element_id: int, text: str) -> str:
    return f"type [{element_id}] {_quote(text)}"


def _quote(text: str) -> str:
    """Text as a quoted action argument (agent.actions unescapes backslashes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------------------------
# Finding a product on the page


def shown_name(text: str) -> str:
    """How the observation writes a name (collapsed whitespace, cut at NAME_MAX_CHARS)."""
    return truncate(collapse(text), NAME_MAX_CHARS)


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
