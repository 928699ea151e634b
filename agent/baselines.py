"""Baseline policies: a random clicker and a buyer-type funnel profile.

Both speak the action grammar (agent.actions) and implement agent.policy.Policy, so the harness
runs them exactly like the LLM agent. Both are deterministic given each buyer's seed.

RandomPolicy clicks uniformly among the ids of the observation, or scrolls, goes back or stops.

TypeProfilePolicy acts out the funnel of the buyer's type as measured on real buyers. From the
codebook artifact's types.json it reads, per code:

    conversion_rate         (required) share of the type's real buyers who purchased
    cart_rate               (optional) share who added anything to a cart; when absent it is
                            conversion_rate / assumed_cart_conversion (capped to [conversion_rate, 1])
    median_product_views    (optional) product views per buyer; falls back to median_events
                            (product views dominate the public logs), then to default_views
    top_categories          (optional) category names (or {"category": ...} objects) the type
                            browses most; category links with these names are preferred

At the start of an episode the buyer draws its plan from its seed: how many products it views
before deciding (1 + Poisson(median views - 1), capped at max_views), whether it adds the last
viewed product to the cart (probability cart_rate), and whether it then checks out (probability
conversion_rate / cart_rate). The two draws multiply to the type's real conversion rate.

The policy reads the observation with agent.page.parse: links, buttons and form fields told apart
by role and by words in their accessible names (agent/page.py's add to cart, checkout, continue,
place order; field labels such as email or postcode here), never by a store's own ids, so it works
on every layout variant of the mock store and on other stores alike.

Layout friction (an ASSUMPTION, not data): the real funnel rates above were measured on real
stores, with their own checkouts. For a harder layout to cost conversions, TypeProfilePolicy
adds a small friction model (FrictionModel, parameters named there with their defaults):

    - every checkout step beyond `free_checkout_steps` (4, the default variant's address,
      delivery, payment, review) makes a buyer abandon with probability
      `checkout_step_abandonment`;
    - a product page whose add-to-cart control is not in the first observation window (the
      buyer must scroll to find it) makes a buyer give up with probability
      `hidden_buy_button_abandonment`;
    - `type_scale` multiplies both probabilities per buyer type (default 1 for every type).

Each buyer draws one "patience" number per kind of friction from its seed, on a stream of its
own (so the funnel plan and the browsing draws stay exactly as without friction), and abandons
at the k-th unit of friction when patience < 1 - (1 - p)^k. So the same buyer on two layouts
meets the same thresholds: a layout with more friction loses a superset of the buyers the easier
one loses, which is what makes A/B arms with shared seeds paired. On a layout no harder than
the default (four checkout steps, buy button in view) the model never fires.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from codebook.artifact import TYPES_FILE, ArtifactError, CodebookArtifact
from agent.page import CART, PRODUCT_OPTION, SELECT_ROLES, TEXT_ROLES, Element, Page, parse
from agent.policy import BuyerTurn

# ---------------------------------------------------------------------------------------------
# Random baseline


@dataclass
class RandomPolicy:
    """Uniform over `click [id]` for every id on the page, scroll up/down, back and stop.

    Text fields get `type [id] "<word>"` instead of a click, with a word from a small list.
    The choice at step t depends only on (buyer seed, t, observation).
    """

    words: tuple[str, ...] = ("shoes", "phone", "gift", "blue", "sale")
    name: str = "random"

    def act(self, turns: list[BuyerTurn]) -> list[str]:
        return [self._act_one(turn) for turn in turns]

    def _act_one(self, turn: BuyerTurn) -> str:
        rng = np.random.default_rng([turn.seed, len(turn.history)])
        choices = [_random_action_for(element, rng, self.words) for element in parse(turn.observation).elements]
        choices += ["scroll down", "scroll up", "back", "stop"]
        return choices[int(rng.integers(len(choices)))]


def _random_action_for(element: Element, rng: np.random.Generator, words: tuple[str, ...]) -> str:
    if element.role in TEXT_ROLES:
        return f'type [{element.element_id}] "{words[int(rng.integers(len(words)))]}"'
    return f"click [{element.element_id}]"


# ---------------------------------------------------------------------------------------------
# Type profiles (from the codebook artifact)


@dataclass(frozen=True)
class TypeProfile:
    """The funnel statistics of one buyer type that TypeProfilePolicy acts out."""

    code: int
    conversion_rate: float
    cart_rate: float
    median_product_views: float
    top_categories: tuple[str, ...] = ()

    @property
    def purchase_given_cart(self) -> float:
        return 0.0 if self.cart_rate <= 0 else min(1.0, self.conversion_rate / self.cart_rate)


class TypeProfileError(ValueError):
    """types.json is missing or lacks what a type profile needs."""


def load_type_profiles(
    codebook: CodebookArtifact | str | Path, assumed_cart_conversion: float = 0.5, default_views: float = 3.0
) -> dict[int, TypeProfile]:
    """Every code's funnel statistics from the artifact's types.json (fields in the module docstring)."""
    try:
        artifact = codebook if isinstance(codebook, CodebookArtifact) else CodebookArtifact.load(codebook)
    except ArtifactError as error:
        raise TypeProfileError(str(error)) from error
    path = artifact.path / TYPES_FILE
    if not artifact.types:
        raise TypeProfileError(f"{path}: not found or empty; the type-profile policy needs the codebook's {TYPES_FILE}")
    profiles = {}
    for code, entry in sorted(artifact.types.items()):
        if entry.get("conversion_rate", entry.get("real_conversion_rate")) is None:
            continue  # an unused code (no buyers), or a log without purchases: nothing to act out
        profiles[code] = _profile_from_entry(code, entry, f"{path}: code {code!r}", assumed_cart_conversion, default_views)
    if not profiles:
        raise TypeProfileError(f"{path}: no buyer type with a conversion_rate; the policy needs real conversion rates")
    return profiles


def _profile_from_entry(code, entry, where, assumed_cart_conversion, default_views) -> TypeProfile:
    conversion = _rate(entry, ("conversion_rate", "real_conversion_rate"), where, required=True)
    cart = _rate(entry, ("cart_rate", "add_to_cart_rate"), where, required=False)
    if cart is None:
        cart = conversion / assumed_cart_conversion
    cart = min(1.0, max(cart, conversion))
    views = _number(entry, ("median_product_views", "median_events"), where)
    categories = []
    for item in entry.get("top_categories") or []:
        name = item.get("category") if isinstance(item, dict) else item
        if name:
            categories.append(str(name))
    return TypeProfile(code, conversion, cart, views if views is not None else default_views, tuple(categories))


def _rate(entry: dict, keys: tuple[str, ...], where: str, required: bool) -> float | None:
    value = _number(entry, keys, where)
    if value is None:
        if required:
            raise TypeProfileError(f"{where}: missing {keys[0]!r} (share of the type's buyers who purchased)")
        return None
    if not 0.0 <= value <= 1.0:
        raise TypeProfileError(f"{where}: {keys[0]!r} must lie in [0, 1], got {value}")
    return value


def _number(entry: dict, keys: tuple[str, ...], where: str) -> float | None:
    for key in keys:
        if entry.get(key) is not None:
            try:
                value = float(entry[key])
            except (TypeError, ValueError) as exc:
                raise TypeProfileError(f"{where}: {key!r} must be a number, got {entry[key]!r}") from exc
            if not math.isfinite(value):
                raise TypeProfileError(f"{where}: {key!r} must be finite, got {value}")
            return value
    return None


# ---------------------------------------------------------------------------------------------
# Reading a shop page: forms to fill, products and listings (the cart and checkout words are
# agent/page.py's)

_OPTIONAL = re.compile(r"\boptional\b", re.IGNORECASE)
_NOT_A_FORM_SELECT = re.compile(r"sort|order by|quantity|qty|per page|language|currency", re.IGNORECASE)
_PRICE = re.compile(r"[$€£¥]\s?\d|\d[\d,]*[.,]\d\d\b")
_NAVIGATION = re.compile(
    r"^(home|search|sort|filter|next|previous|prev|page \d+|\d+|back|menu|account|sign in|log ?in|help|"
    r"about|contact|privacy|terms|all|shop|store|categories)\b",
    re.IGNORECASE,
)

# Fake test data for checkout forms, chosen by the field's label. Order matters: first match wins.
_FAKE_FIELDS: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), value)
    for pattern, value in (
        (r"e-?mail", "test.buyer@example.com"),
        (r"phone|mobile|tel", "5550100"),
        (r"name on card|card ?holder", "Test Buyer"),
        (r"card.*(number|no)|card$|\bpan\b", "4242424242424242"),
        (r"expir|exp\b|mm\s*/\s*yy", "12/30"),
        (r"cvc|cvv|security code", "123"),
        (r"(post|zip)\s*code|postal|\bzip\b", "10115"),
        (r"city|town", "Testville"),
        (r"country", "Testland"),
        (r"state|province|region|county", "Test State"),
        (r"address|street|line 1", "1 Test Street"),
        (r"first name|given", "Test"),
        (r"last name|surname|family", "Buyer"),
        (r"name|holder", "Test Buyer"),
        (r"coupon|voucher|promo|discount|gift", ""),
        (r"search|find|query", ""),
        (r"quantity|qty", ""),
    )
)
_DEFAULT_FIELD_VALUE = "test"


def fake_value_for(label: str) -> str | None:
    """The test value to type into a field labelled `label`; None to leave it alone."""
    for pattern, value in _FAKE_FIELDS:
        if pattern.search(label):
            return value or None
    return _DEFAULT_FIELD_VALUE


def fields_to_fill(page: Page) -> list[Element]:
    """Empty required-looking form fields, in page order: text fields without a value,
    drop-downs still on their placeholder, and a radio group with nothing checked.
    Search, sort, quantity and "(optional)" fields are left alone."""
    fields = []
    radios = [e for e in page.elements if e.role == "radio"]
    if radios and not any(e.checked for e in radios):
        fields.append(radios[0])
    for element in page.elements:
        if element.role == "searchbox" or _OPTIONAL.search(element.name) or element.disabled:
            continue
        if element.role in TEXT_ROLES:
            if element.value is None and fake_value_for(element.name) is not None:
                fields.append(element)
        elif element.role in SELECT_ROLES and not _NOT_A_FORM_SELECT.search(element.name):
            if _is_placeholder((element.selected or [""])[0]) and first_real_option(element):
                fields.append(element)
    return fields


def first_real_option(element: Element) -> str | None:
    """The first option of a drop-down that is not its placeholder ("Choose…")."""
    return next((option for option in element.options if not _is_placeholder(option)), None)


def _is_placeholder(option: str) -> bool:
    return not option.strip() or bool(re.match(r"^\W*(select|choose|please|--|none\b)", option.strip(), re.IGNORECASE))


def product_links(page: Page) -> list[Element]:
    """Links that look like products: a price in the name or beside it, else non-navigation links."""
    links = [e for e in page.elements if e.role == "link" and e.name and not CART.search(e.name)]
    priced = [e for e in links if _PRICE.search(e.name) or _PRICE.search(e.context)]
    if priced:
        return priced
    return [e for e in links if not _NAVIGATION.search(e.name) and len(e.name) > 12]


def category_links(page: Page, categories: tuple[str, ...] | None = None) -> list[Element]:
    """Links to listings: those naming one of `categories`, or with None every link that is
    neither a product nor the cart nor the first (logo) link."""
    products = {e.element_id for e in product_links(page)}
    links = [e for e in page.elements if e.role == "link" and e.element_id not in products]
    links = [e for e in links[1:] if e.name and not CART.search(e.name)]
    if categories is None:
        return links
    wanted = [c.lower().replace("_", " ") for c in categories if c]
    return [e for e in links if any(w in e.name.lower() or e.name.lower() in w for w in wanted)]


# ---------------------------------------------------------------------------------------------
# Type-profile baseline


@dataclass(frozen=True)
class FrictionModel:
    """How a harder layout makes buyers give up (an assumption, see the module docstring).

    checkout_step_abandonment: chance of abandoning at each checkout step beyond free_checkout_steps.
    free_checkout_steps: checkout steps the real conversion rates already include (address,
        delivery, payment, review: the default variant's four).
    hidden_buy_button_abandonment: chance of giving up at each product page whose add-to-cart
        control must be scrolled to.
    type_scale: per-code multiplier of both chances (missing codes: 1.0).
    """

    checkout_step_abandonment: float = 0.10
    free_checkout_steps: int = 4
    hidden_buy_button_abandonment: float = 0.15
    type_scale: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("checkout_step_abandonment", "hidden_buy_button_abandonment"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FrictionModel.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.free_checkout_steps < 0:
            raise ValueError(f"FrictionModel.free_checkout_steps must be >= 0, got {self.free_checkout_steps}")
        for code, scale in self.type_scale.items():
            if scale < 0:
                raise ValueError(f"FrictionModel.type_scale[{code}] must be >= 0, got {scale}")

    def gives_up(self, patience: float, probability: float, units: int, code: int) -> bool:
        """Whether a buyer with this patience draw gives up after `units` units of friction."""
        if units <= 0:
            return False
        p = min(1.0, probability * self.type_scale.get(code, 1.0))
        return patience < 1.0 - (1.0 - p) ** units


NO_FRICTION = FrictionModel(checkout_step_abandonment=0.0, hidden_buy_button_abandonment=0.0)


@dataclass
class FunnelPlan:
    """What one buyer will do, drawn once from its seed at the start of the episode."""

    views_before_decision: int
    adds_to_cart: bool
    buys: bool


@dataclass
class _Episode:
    rng: np.random.Generator
    plan: FunnelPlan
    product_views: int = 0
    in_cart: bool = False
    last_url: str = ""
    view_counted: bool = False  # this visit of the current page was counted as a product view
    expects_product: bool = False  # the last action clicked a product link
    visited_category: bool = False
    fill_attempts: Counter = field(default_factory=Counter)  # (url, field label) -> times typed
    steps_on_url: int = 0
    # Friction (FrictionModel): the buyer's patience draws and the friction met so far.
    checkout_patience: float = 1.0
    button_patience: float = 1.0
    checking_out: bool = False  # clicked a checkout button; every new page from here is a step
    checkout_paths: list[str] = field(default_factory=list)
    hidden_button_pages: set = field(default_factory=set)


@dataclass
class TypeProfilePolicy:
    """Acts out each buyer type's real funnel statistics (see the module docstring).

    profiles: code -> TypeProfile, usually load_type_profiles(codebook_dir).
    max_views: cap on product views before the cart decision, so a buyer that plans to buy has
        steps left for the checkout within the run's max_steps.
    scroll_probability: chance of scrolling a listing instead of clicking when it has products.
    category_probability: chance that a buyer first opens a listing of one of its type's top
        categories (when the page links one) instead of a product shown on the page.
    stuck_after: steps on one URL without progress after which the buyer goes back (or leaves).
    max_fill_attempts: how often one form field is filled in before the buyer stops retrying it.
    friction: how a harder layout makes buyers give up (FrictionModel; NO_FRICTION turns it off).

    Per-buyer state (views so far, cart, filled fields) lives in the policy, keyed by buyer index,
    and starts afresh whenever a turn arrives with an empty history.
    """

    profiles: dict[int, TypeProfile]
    max_views: int = 6
    scroll_probability: float = 0.1
    category_probability: float = 0.5
    stuck_after: int = 8
    max_fill_attempts: int = 2
    friction: FrictionModel = field(default_factory=FrictionModel)
    name: str = "type-profile"
    _episodes: dict[tuple[int, int], _Episode] = field(default_factory=dict, repr=False)

    @classmethod
    def from_codebook(cls, codebook: CodebookArtifact | str | Path, **options) -> "TypeProfilePolicy":
        """The type profiles of a codebook artifact (codebook.artifact), loaded or by its directory."""
        return cls(load_type_profiles(codebook), **options)

    def act(self, turns: list[BuyerTurn]) -> list[str]:
        return [self._act_one(turn) for turn in turns]

    def plan_for(self, code: int, seed: int) -> FunnelPlan:
        """The funnel plan a buyer of type `code` with seed `seed` follows."""
        return self._start_episode(code, seed).plan

    def forget(self, buyer_index: int) -> None:
        """Drop a finished buyer's state (the harness calls this when an episode ends)."""
        for key in [k for k in self._episodes if k[0] == buyer_index]:
            del self._episodes[key]

    def _profile(self, code: int) -> TypeProfile:
        if code not in self.profiles:
            raise TypeProfileError(
                f"buyer type {code} has no profile with a conversion_rate in types.json (profiled: {sorted(self.profiles)})"
            )
        return self.profiles[code]

    def _start_episode(self, code: int, seed: int) -> _Episode:
        profile = self._profile(code)
        rng = np.random.default_rng([seed, 7])
        extra_views = rng.poisson(max(profile.median_product_views - 1.0, 0.0))
        views = int(min(self.max_views, 1 + extra_views))
        adds = bool(rng.random() < profile.cart_rate)
        buys = adds and bool(rng.random() < profile.purchase_given_cart)
        # Patience comes from a stream of its own: the plan and browsing draws stay as they were.
        checkout_patience, button_patience = np.random.default_rng([seed, 8]).random(2)
        return _Episode(
            rng=rng,
            plan=FunnelPlan(views, adds, buys),
            checkout_patience=float(checkout_patience),
            button_patience=float(button_patience),
        )

    def _act_one(self, turn: BuyerTurn) -> str:
        key = (turn.buyer_index, turn.seed)
        if not turn.history or key not in self._episodes:
            self._episodes[key] = self._start_episode(turn.code, turn.seed)
        episode = self._episodes[key]
        page = parse(turn.observation)
        self._note_page(episode, page)
        if self._gives_up_on_checkout(episode, page, turn.code):
            return "stop"
        return self._decide(episode, page, self._profile(turn.code))

    def _note_page(self, episode: _Episode, page: Page) -> None:
        arrived = page.url != episode.last_url
        episode.steps_on_url = 0 if arrived else episode.steps_on_url + 1
        episode.last_url = page.url
        if arrived:
            episode.view_counted = False
        # A product page is counted once per visit, when its add-to-cart control is in view; a
        # return to the same product is another view, as in the logs' view counts (a shop with one
        # product, as each Tmall brand has, is otherwise viewed once and never decided on).
        if page.add_to_cart_buttons and not episode.view_counted:
            episode.product_views += 1
            episode.view_counted = True
            episode.expects_product = False

    def _gives_up_on_checkout(self, episode: _Episode, page: Page, code: int) -> bool:
        """Count a new checkout page (by URL path) and apply the checkout-step friction."""
        if not (episode.in_cart and episode.checking_out):
            return False
        path = urlparse(page.url).path
        if path and path not in episode.checkout_paths:
            episode.checkout_paths.append(path)
        extra_steps = len(episode.checkout_paths) - self.friction.free_checkout_steps
        return self.friction.gives_up(episode.checkout_patience, self.friction.checkout_step_abandonment, extra_steps, code)

    def _decide(self, episode: _Episode, page: Page, profile: TypeProfile) -> str:
        plan = episode.plan
        code = profile.code
        if episode.steps_on_url >= self.stuck_after:
            return "stop" if episode.steps_on_url >= self.stuck_after + 2 else "back"
        # A dialog over the page is closed, unless it is a drawer that leads a buyer on to the checkout.
        leads_on = episode.in_cart and plan.buys and (page.checkout_buttons or page.cart_links)
        if page.dismiss_controls and not leads_on:
            return f"click [{page.dismiss_controls[0].element_id}]"
        if episode.in_cart:
            return self._checkout_step(episode, page) if plan.buys else "stop"
        if episode.expects_product and not page.add_to_cart_buttons and page.more_below and episode.steps_on_url < 3:
            # A product page whose buy button is further down: some buyers do not look for it.
            episode.hidden_button_pages.add(page.url)
            units = len(episode.hidden_button_pages)
            if self.friction.gives_up(episode.button_patience, self.friction.hidden_buy_button_abandonment, units, code):
                return "stop"
            return "scroll down"
        episode.expects_product = False
        decided = episode.product_views >= plan.views_before_decision
        if decided and not plan.adds_to_cart:
            return "stop"
        if decided and page.add_to_cart_buttons:
            for option in fields_to_fill(page):  # a size or colour the form needs first
                if option.role in SELECT_ROLES and PRODUCT_OPTION.search(option.name):
                    return f'select [{option.element_id}] "{first_real_option(option)}"'
            episode.in_cart = True
            return f"click [{page.add_to_cart_buttons[0].element_id}]"
        return self._browse_step(episode, page, profile)

    def _browse_step(self, episode: _Episode, page: Page, profile: TypeProfile) -> str:
        rng = episode.rng
        favourites = category_links(page, profile.top_categories)
        if favourites and not episode.visited_category and rng.random() < self.category_probability:
            episode.visited_category = True
            return f"click [{favourites[int(rng.integers(len(favourites)))].element_id}]"
        products = product_links(page)
        scrolls = page.more_below and episode.steps_on_url == 0 and rng.random() < self.scroll_probability
        if products and not scrolls:
            episode.expects_product = True
            return f"click [{products[int(rng.integers(len(products)))].element_id}]"
        categories = favourites or category_links(page)
        if categories and episode.steps_on_url >= 1:
            return f"click [{categories[int(rng.integers(len(categories)))].element_id}]"
        if page.more_below and episode.steps_on_url < 2:
            return "scroll down"
        return "back"

    def _checkout_step(self, episode: _Episode, page: Page) -> str:
        """Move a buyer with a full cart towards the order: fill the form, continue, place the order."""
        for element in fields_to_fill(page):
            attempt = (page.url, element.name)
            if episode.fill_attempts[attempt] >= self.max_fill_attempts:
                continue  # the store keeps rejecting or forgetting this field: try the button
            episode.fill_attempts[attempt] += 1
            if element.role in SELECT_ROLES:
                return f'select [{element.element_id}] "{first_real_option(element)}"'
            if element.role == "radio":
                return f"click [{element.element_id}]"
            return f'type [{element.element_id}] "{fake_value_for(element.name)}"'
        if page.checkout_buttons and not page.place_order_buttons:
            episode.checking_out = True  # the pages from the next one on are checkout steps
        for candidates in (page.place_order_buttons, page.checkout_buttons, page.continue_buttons,
                           page.continue_links if episode.checking_out else [], page.cart_links):
            if candidates:
                return f"click [{candidates[0].element_id}]"
        return "scroll down" if page.more_below else "back"
