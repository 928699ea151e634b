"""DOM -> observation text, shared by the browser driver and the http driver.

Both drivers walk the page (stamp.js in the live page, the http driver over BeautifulSoup) and
produce the same raw record per visible interactive element (`RawElement`). Everything that
decides what the agent reads happens here, once, in Python: the role, the accessible name, the
extras (input type and value, checked state, select options), the nearby product text, the cart
line, the dialog note and the cut to a token budget. The rules that the page walk itself needs
(which tags are interactive, which regexes find icons and card fields) are also defined here and
handed to stamp.js as one JSON object, so the two walkers cannot drift apart.

How the text is written (its lines, the escaping of page text, the words for cart, checkout and
paying) belongs to agent/page.py: this module fills its page model and agent/page.py renders it,
so the agent, the policies and the replay read back exactly what the drivers write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from agent.page import CART_BADGE, CART_EMPTY, CART_PATH, PLACE_ORDER, Page, cart_text, element_line, element_state, header_lines
from agent.page import Element as ShownElement
from agent.page import escape_ids, quote, unescape_ids
from agent.page import render as render_page

# How much of a page the agent reads at once: observation text is estimated at 4 characters per
# token and cut at this budget; the rest is reachable with `scroll down`.
DEFAULT_TOKEN_BUDGET = 1000
CHARS_PER_TOKEN = 4
# After a navigation or an action the browser driver waits for `load`, then for no pending
# fetch/XHR or short timer and this long without a DOM change (all capped at
# NETWORK_IDLE_TIMEOUT_MS), so pages that fade content in after a short timer are not read empty.
DEFAULT_SETTLE_MS = 250
NETWORK_IDLE_TIMEOUT_MS = 3000

NAME_MAX_CHARS = 80
CONTEXT_MAX_CHARS = 100
URL_MAX_CHARS = 200
ERROR_MAX_CHARS = 300
VALUE_MAX_CHARS = 60
MAX_OPTIONS_SHOWN = 15
MAX_ALERTS = 3

# Tags the walkers never look into (their text is not page text).
SKIP_TAGS = ("script", "style", "template", "noscript", "head", "title", "meta", "link", "iframe", "object")
# Tags that separate words: their text is joined to neighbours with a space (decided by tag, not
# by computed CSS, so the http driver gets the same text as the browser).
BLOCK_TAGS = (
    "address", "article", "aside", "blockquote", "br", "dd", "details", "dialog", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
    "header", "hr", "label", "legend", "li", "main", "nav", "ol", "p", "pre", "section", "summary",
    "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul", "img", "button", "input", "select",
    "textarea", "option",
)
INTERACTIVE_TAGS = ("a", "button", "input", "select", "textarea", "summary")
INTERACTIVE_ROLES = (
    "button", "link", "checkbox", "radio", "switch", "tab", "menuitem", "menuitemcheckbox",
    "menuitemradio", "option", "combobox", "textbox", "searchbox", "slider", "spinbutton",
)
# Controls (and field labels) whose text names themselves, never context for a neighbour.
CONTROL_TEXT_TAGS = ("button", "select", "textarea", "input", "option", "summary", "label")
# Context search: climb at most this many ancestors; give up on a container holding more than
# this many controls (it is a page section, not one product) or this much raw text.
CONTEXT_MAX_DEPTH = 6
CONTEXT_MAX_CONTROLS = 8
CONTEXT_SCAN_CHARS = 4000

# Icon class names: "icon-cart", "fa-shopping-cart", "bi-bag", "glyphicon-search", "ti-heart".
ICON_CLASS_PATTERN = r"^(?:icon|icons|fa|fas|far|fal|fab|bi|glyphicon|ti|la|las|mdi|ion|ionicons|feather|lni|ri|bx|bxs|gg|octicon)[-_]([a-z0-9][a-z0-9_-]*)$"
ICON_STOP_WORDS = (
    "lg", "sm", "xs", "xl", "2x", "3x", "4x", "5x", "fw", "spin", "pulse", "solid", "regular",
    "light", "thin", "duotone", "brands", "inverse", "border", "pull-left", "pull-right", "large",
    "small", "medium", "white", "black", "primary", "secondary", "wrapper", "container", "button",
    "btn", "only", "left", "right",
)
# Card fields of a payment form (name / id / autocomplete / placeholder).
CARD_FIELD_PATTERN = r"cc-number|cc-csc|cc-exp|card[\s_-]*num|cardnumber|credit[\s_-]*card|\bcvc\b|\bcvv2?\b|\bcsc\b|security[\s_-]*code|card[\s_-]*code"
_SUFFIX_CURRENCY = r"(?:€|EUR|USD|GBP|CHF|zł|kr)(?!\s?\d)"
MONEY_PATTERN = re.compile(
    r"[€$£¥]\s?\d(?:[\d.,]*\d)?|\d(?:[\d.,]*\d)?\s?" + _SUFFIX_CURRENCY
)
_COUNT_PATTERNS = (
    re.compile(r"(\d+)\s*(?:items?|articles?|products?|pcs|stück|artikel)\b", re.IGNORECASE),
    re.compile(r"\((\d+)\)"),
    re.compile(r"(?<![\d.,€$£¥])(\d{1,3})(?![\d.,])(?!\s?" + _SUFFIX_CURRENCY + ")"),
)
_WHITESPACE = re.compile(r"[\s\ufeff]+")


def stamp_rules() -> dict:
    """The walking rules stamp.js needs (the browser driver passes them as one JSON string)."""
    return {
        "skipTags": list(SKIP_TAGS),
        "blockTags": list(BLOCK_TAGS),
        "interactiveTags": list(INTERACTIVE_TAGS),
        "interactiveRoles": list(INTERACTIVE_ROLES),
        "controlTextTags": list(CONTROL_TEXT_TAGS),
        "contextMaxDepth": CONTEXT_MAX_DEPTH,
        "contextMaxControls": CONTEXT_MAX_CONTROLS,
        "contextScanChars": CONTEXT_SCAN_CHARS,
        "iconClassPattern": ICON_CLASS_PATTERN,
        "iconStopWords": list(ICON_STOP_WORDS),
        "cardFieldPattern": CARD_FIELD_PATTERN,
        "maxAlerts": MAX_ALERTS,
    }


@dataclass
class RawElement:
    """One visible interactive element as a walker found it, before any naming decision."""

    id: int
    tag: str
    role_attr: str = ""
    input_type: str = ""
    labelledby_text: str = ""
    description: str = ""      # aria-describedby: field hints and validation errors
    aria_label: str = ""
    label_text: str = ""
    value_attr: str = ""
    value: str = ""
    text: str = ""
    title: str = ""
    placeholder: str = ""
    alt: str = ""
    icon: str = ""
    name_attr: str = ""
    href: str = ""
    checked: bool = False
    disabled: bool = False
    multiple: bool = False
    options: list[str] = field(default_factory=list)
    selected: list[str] = field(default_factory=list)
    context: str = ""
    in_modal: bool = False
    in_card_form: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> "RawElement":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


@dataclass
class PageSnapshot:
    """What one walk over a page found; both drivers build this, then `render` makes the text."""

    url: str
    title: str
    elements: list[RawElement]
    heading: str = ""
    order_id: str = ""
    modal_open: bool = False
    modal_name: str = ""
    alerts: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "PageSnapshot":
        return cls(
            url=data["url"],
            title=data.get("title", ""),
            elements=[RawElement.from_dict(raw) for raw in data.get("elements", [])],
            heading=data.get("heading", ""),
            order_id=data.get("orderId", ""),
            modal_open=bool(data.get("modalOpen")),
            modal_name=data.get("modalName", ""),
            alerts=list(data.get("alerts", [])),
        )


@dataclass(frozen=True)
class Described:
    """An element as the agent reads it (`shown`, one line of the text) and the record behind it."""

    shown: ShownElement
    raw: RawElement

    def line(self) -> str:
        return element_line(self.shown)


@dataclass(frozen=True)
class Rendered:
    text: str
    shown_ids: list[int]
    first_index: int   # index (into the listed elements) of the first one shown
    next_index: int    # index of the first one not shown (== len when all shown)
    total: int


def collapse(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


_PORT_SUFFIX = re.compile(r":\d*$")  # "127.0.0.1:43215", "[::1]:8000", "shop.example:"


def shown_url(url: str) -> str:
    """The page's URL as the agent reads it: without the port and any credentials. A local store
    is served on a free port, a new one every run; a port in every page would make the same buyer's
    trace a different text each run, so the same traces would train different agents."""
    parts = urlsplit(url)
    host = _PORT_SUFFIX.sub("", parts.netloc.rpartition("@")[2])
    return parts._replace(netloc=host).geturl() if parts.netloc else url


def page_text(text: str, limit: int) -> str:
    """Page text for a header line: one line, and at most `limit` characters as written (with
    its escaped ids), so a hostile page cannot grow the header past its bounds."""
    return unescape_ids(truncate(escape_ids(collapse(text)), limit))


def humanize_token(token: str) -> str:
    """'shopping-cart' / 'shopping_cart' / 'shoppingCart' -> 'shopping cart'."""
    token = re.sub(r"([a-z])([A-Z])", r"\1 \2", token)
    return collapse(re.sub(r"[-_]+", " ", token)).lower()


def element_role(raw: RawElement) -> str:
    if raw.role_attr:
        return raw.role_attr
    if raw.tag == "a":
        return "link"
    if raw.tag in ("button", "summary"):
        return "button"
    if raw.tag == "select":
        return "listbox" if raw.multiple else "combobox"
    if raw.tag == "textarea":
        return "textbox"
    if raw.tag == "input":
        return {
            "button": "button", "submit": "button", "reset": "button", "image": "button",
            "checkbox": "checkbox", "radio": "radio", "range": "slider", "number": "spinbutton",
            "search": "searchbox", "file": "button",
        }.get(raw.input_type, "textbox")
    return "button" if raw.tag != "label" else "label"


def is_form_field(raw: RawElement) -> bool:
    return raw.tag in ("select", "textarea") or (
        raw.tag == "input" and raw.input_type not in ("button", "submit", "reset", "image")
    )


def accessible_name(raw: RawElement) -> str:
    """A simplified accessible-name computation, with icon names as the last resort."""
    text = collapse(raw.text)
    icon = humanize_token(raw.icon) if raw.icon else ""
    if raw.tag == "input" and raw.input_type in ("submit", "reset", "button", "image"):
        own = raw.value_attr or raw.alt or {"submit": "Submit", "reset": "Reset"}.get(raw.input_type, "")
    elif is_form_field(raw):
        own = raw.label_text
    else:
        own = text
        if own and icon and not re.search(r"[^\W\d_]", own):   # "2" next to a cart icon
            own = f"{icon} {own}"
    for candidate in (raw.labelledby_text, raw.aria_label, own, raw.title, raw.placeholder, icon,
                      raw.alt, humanize_token(raw.name_attr) if raw.name_attr else ""):
        candidate = collapse(candidate)
        if candidate:
            if "_" in candidate and " " not in candidate:   # material icons: "shopping_cart"
                candidate = humanize_token(candidate)
            return truncate(candidate, NAME_MAX_CHARS)
    return ""


def element_extras(raw: RawElement) -> str:
    """The element's state as the agent reads it (agent.page.element_state writes it)."""
    state: dict = {"disabled": raw.disabled}
    if raw.tag == "input" and raw.input_type in ("checkbox", "radio"):
        state["checked"] = raw.checked
    elif raw.tag == "select":
        shown = raw.options[:MAX_OPTIONS_SHOWN]
        state["selected"] = [truncate(collapse(option), NAME_MAX_CHARS) for option in raw.selected]
        state["options"] = [truncate(collapse(option), NAME_MAX_CHARS) for option in shown]
        state["more_options"] = len(raw.options) - len(shown)
    elif is_form_field(raw):
        if raw.input_type not in ("", "text", "search") and raw.tag == "input":
            state["input_type"] = raw.input_type
        value = collapse(raw.value)
        if value:
            state["value"] = truncate(value, VALUE_MAX_CHARS) if raw.input_type != "password" else "••••"
    return element_state(**state)


def element_context(raw: RawElement, name: str) -> str:
    # A field is named by its label; what it needs beside that is its hint or error message.
    context = collapse(raw.description) or collapse(raw.context)
    if not context or context == name:
        return ""
    return truncate(context, CONTEXT_MAX_CHARS)


def describe(raw: RawElement) -> Described:
    name = accessible_name(raw)
    shown = ShownElement(raw.id, element_role(raw), name, element_extras(raw), element_context(raw, name))
    return Described(shown, raw)


def cart_state(elements: list[Described]) -> str | None:
    """The cart line's value ("2 items, €31.98", "empty") from the page's cart link or badge;
    None when none shows a count."""
    by_href = [e for e in elements if e.raw.href and CART_PATH.search(e.raw.href.split("?")[0])]
    by_name = [e for e in elements if CART_BADGE.search(e.shown.name) and e.shown.role in ("link", "button")]
    for cart in by_href or by_name:
        for text in (cart.shown.name, cart.shown.context):
            count = _cart_count(text)
            money = MONEY_PATTERN.search(text)
            if count is not None or money:
                return cart_text(count, money.group(0).strip() if money else None)
    return None


def _cart_count(text: str) -> int | None:
    for pattern in _COUNT_PATTERNS:
        match = pattern.search(text)
        if match:
            return int(match.group(1))
    return None


def render(snapshot: PageSnapshot, *, start: int = 0, error: str | None = None,
           token_budget: int = DEFAULT_TOKEN_BUDGET) -> Rendered:
    """The observation text: header lines, then elements from `start` while the budget lasts."""
    all_elements = [describe(raw) for raw in snapshot.elements]
    listed = [e for e in all_elements if e.raw.in_modal] if snapshot.modal_open else all_elements
    start = max(0, min(start, len(listed)))
    # Every header field is bounded: a hostile page cannot grow the observation past its budget
    # with a long URL, title or dialog name.
    window = Page(
        url=truncate(collapse(shown_url(snapshot.url)), URL_MAX_CHARS),
        title=page_text(snapshot.title, NAME_MAX_CHARS),
        heading=page_text(snapshot.heading, NAME_MAX_CHARS),
        cart=cart_state(all_elements) or "",
        notices=tuple(page_text(alert, CONTEXT_MAX_CHARS * 2) for alert in snapshot.alerts[:MAX_ALERTS]),
        error=truncate(collapse(error), ERROR_MAX_CHARS) if error else "",
        dialog=page_text(snapshot.modal_name, NAME_MAX_CHARS) if snapshot.modal_open else None,
        above=start,
        below=len(listed) - start,
    )
    budget_chars = token_budget * CHARS_PER_TOKEN
    used = sum(len(line) + 1 for line in header_lines(window))
    index = start
    while index < len(listed):
        line_chars = len(listed[index].line()) + 1
        # Always show at least one element, so a tiny budget cannot stall the agent.
        if index > start and used + line_chars > budget_chars:
            break
        used += line_chars
        index += 1
    shown = listed[start:index]
    window = replace(window, elements=tuple(e.shown for e in shown), below=len(listed) - index)
    return Rendered(render_page(window), [e.shown.element_id for e in shown], start, index, len(listed))


def scroll_window(snapshot: PageSnapshot, start: int, scrolled_from: list[int], direction: str,
                  token_budget: int = DEFAULT_TOKEN_BUDGET) -> tuple[int, str | None]:
    """Where the observation window starts after `scroll up|down`, and an error when it cannot
    move. `scrolled_from` (the starts that `scroll down` left) is updated in place. Both drivers
    use this, so they scroll identically."""
    rendered = render(snapshot, start=start, token_budget=token_budget)
    if direction == "down":
        if rendered.next_index >= rendered.total:
            return start, "already at the bottom of the page"
        scrolled_from.append(start)
        return rendered.next_index, None
    if start == 0:
        return start, "already at the top of the page"
    # Back to exactly where `scroll down` came from; computed when the page changed since.
    earlier = scrolled_from.pop() if scrolled_from else None
    if earlier is not None and earlier < start:
        return earlier, None
    return previous_start(snapshot, start, token_budget), None


def previous_start(snapshot: PageSnapshot, start: int, token_budget: int = DEFAULT_TOKEN_BUDGET) -> int:
    """Where `scroll up` starts: the earliest index whose window still reaches `start`.

    Windows that start past the top all carry the "above" line, so their ends only grow with
    their starts and a binary search finds it; the top window is checked on its own.
    """
    if start <= 0 or render(snapshot, start=0, token_budget=token_budget).next_index >= start:
        return 0
    low, high = 1, start - 1
    while low < high:
        middle = (low + high) // 2
        if render(snapshot, start=middle, token_budget=token_budget).next_index >= start:
            high = middle
        else:
            low = middle + 1
    return low


def is_pay_control(raw: RawElement, name: str) -> bool:
    """A control that pays or places an order (generic, for stores that are not ours)."""
    is_submit_like = raw.tag in ("button", "summary") or raw.role_attr == "button" or (
        raw.tag == "input" and raw.input_type in ("submit", "button", "image")
    ) or raw.tag == "a"
    if not is_submit_like:
        return False
    if PLACE_ORDER.search(name):
        return True
    # A submit button of a form that asks for card details pays, whatever it is called.
    return raw.in_card_form and raw.tag != "a" and raw.input_type not in ("button", "reset")


# Where a shop takes the order: a checkout, payment, review or preview page.
CHECKOUT_PAGE = re.compile(r"/(checkout|pay(ment)?|review|preview|place[-_]?order|confirm)", re.IGNORECASE)


def pays_on_live_store(verb: str, raw: RawElement, snapshot: PageSnapshot) -> bool:
    """Would this step pay on a store that is not ours? Then the driver intercepts it.

    A card field typed into pays. A click pays only on a place-order/pay control with something
    to order: a button with a non-empty cart or on a checkout page, a link only on a checkout page
    and named by its own text. A payment-method logo in the footer, a banner or a "Buy now" on an
    empty cart is no order.
    """
    if verb == "type":
        return raw.in_card_form
    if verb != "click" or not is_pay_control(raw, accessible_name(raw)):
        return False
    if raw.in_card_form:
        return True   # the submit of a form that asks for card details
    on_checkout_page = bool(CHECKOUT_PAGE.search(urlsplit(snapshot.url).path))
    if raw.tag == "a":
        return on_checkout_page and bool(collapse(raw.text))
    return on_checkout_page or cart_has_items(snapshot)


def cart_has_items(snapshot: PageSnapshot) -> bool:
    """The page's cart badge shows at least one item or a non-zero total."""
    cart = cart_state([describe(raw) for raw in snapshot.elements])
    if not cart or cart == CART_EMPTY:
        return False
    count = _cart_count(cart)
    if count is not None:
        return count > 0
    money = MONEY_PATTERN.search(cart)
    return money is not None and _money_value(money.group(0)) > 0


def read_total(text: str) -> str | None:
    """The order total on a checkout page: the amount after 'total', else the largest amount."""
    match = re.search(r"total[^€$£¥\d]{0,30}(" + MONEY_PATTERN.pattern + ")", text, re.IGNORECASE)
    if match:
        return match.group(1).strip()
    amounts = [m.group(0).strip() for m in MONEY_PATTERN.finditer(text)]
    if not amounts:
        return None
    return max(amounts, key=_money_value)


def _money_value(amount: str) -> float:
    digits = re.sub(r"[^\d.,]", "", amount)
    if "," in digits and (digits.rfind(",") > digits.rfind(".")):
        digits = digits.replace(".", "").replace(",", ".")
    else:
        digits = digits.replace(",", "")
    try:
        return float(digits)
    except ValueError:
        return 0.0


# Where a checkout page names what is being bought (for the interception report), best first.
PRODUCT_NAME_SELECTORS = (
    "[class*=product-name]", "[class*=product-title]", "[class*=product__title]", "[class*=item-name]",
    "[class*=line-item] [class*=title]", "[class*=cart-item] [class*=name]", "h1",
)
PAGE_TEXT_MAX_CHARS = 20000


def stale_id_error(element_id: int) -> str:
    return f"no element [{element_id}] on this page (stale or unknown id); use an id from the current list"


def disabled_error(element_id: int) -> str:
    return f"[{element_id}] is disabled"


def find_element(snapshot: PageSnapshot, element_id: int) -> RawElement | None:
    return next((raw for raw in snapshot.elements if raw.id == element_id), None)


def listed_elements(snapshot: PageSnapshot) -> list[RawElement]:
    """The elements an action may target now (a modal dialog hides the page behind it)."""
    return [raw for raw in snapshot.elements if raw.in_modal] if snapshot.modal_open else snapshot.elements


def match_option(options: list[str], wanted: str) -> int | None:
    """Index of the option the agent meant: exact label, then case- and space-insensitive."""
    if wanted in options:
        return options.index(wanted)
    folded = collapse(wanted).casefold()
    for index, option in enumerate(options):
        if collapse(option).casefold() == folded:
            return index
    return None


def no_option_error(element_id: int, options: list[str], wanted: str) -> str:
    shown = " | ".join(quote(o) for o in options[:MAX_OPTIONS_SHOWN])
    return f"[{element_id}] has no option {quote(wanted)}; options: {shown}"


# The errors both drivers give for a click that something on top of the element would catch
# (click_point.js, a modal dialog, a Playwright timeout); the run's audit counts them.
COVERED_ERROR = re.compile(r"is covered by|behind the open dialog|could not be used \(covered")


def click_error(raw: RawElement) -> str | None:
    """Why `click [id]` cannot act on the element, else None. A drop-down only opens on a click,
    which changes nothing in the observation text, so a buyer clicking it would wait forever."""
    if raw.tag == "select":
        return f'[{raw.id}] is a drop-down; choose an option with select [{raw.id}] "option"'
    return None


def typing_error(raw: RawElement) -> str | None:
    """Why `type [id] "text"` cannot go into the element, else None."""
    if not is_form_field(raw) or raw.tag == "select" or raw.input_type in ("checkbox", "radio"):
        return f"cannot type into [{raw.id}] ({raw.tag}); type into a text field"
    return None


def chosen_option(raw: RawElement, wanted: str) -> tuple[int | None, str | None]:
    """(index of the option `select [id] "wanted"` names, None), or (None, the buyer's error line)."""
    if raw.tag != "select":
        return None, f"[{raw.id}] is not a drop-down; click it instead"
    index = match_option(raw.options, wanted)
    if index is None:
        return None, no_option_error(raw.id, raw.options, wanted)
    return index, None


def interception_detail(control: str, url: str, page_text: str, product: str) -> dict:
    return {
        "intercepted": True,
        "control": control,
        "url": url,
        "product": truncate(collapse(product), NAME_MAX_CHARS) if product else None,
        "price": read_total(page_text),
    }
