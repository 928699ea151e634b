"""The observation text: what a buyer reads of one page, as a model, as text, and its words.

The drivers write every page they observe in this format (harness/drivers/observation.py decides
what is shown, `render` here decides how it is written), the agent reads it in its prompt, and the
baseline policies and the replay's scripted buyer read it back with `parse`. Writing and reading
live together so they cannot drift apart. A page reads:

    URL: http://127.0.0.1/c/shoes                   (without port or credentials)
    Title: Shoes - Demo Store
    Heading: Shoes                                  (when the page has a heading)
    Cart: 2 items, €31.98                           (when the page shows a cart count)
    Notice: Added to your cart                      (alerts on the page)
    Error: no element [99] on this page; …          (the last action's error)
    Note: a dialog ("Cookies") is open; only its content is listed.
    Elements:                                       ("Elements: none" on a page without any)
    … 3 more elements above (scroll up)
    [7] link "Trail Runner" — €59.90
    [8] button "Add to cart" — Trail Runner €59.90
    [9] combobox "Sort by" selected="Price" options: "Price" | "Name"
    [12] checkbox "Gift wrap" unchecked disabled
    … 23 more elements below (scroll down)

An element line is `[id] role "name" extra — context`: the extra is the control's state, written
by `element_state`; the context is the page text next to the element. Both are optional. Only
element lines start with an id: page text that looks like one ("[12]") is written escaped
("\\[12]") and read back unescaped, and a double quote inside a name is written as '.

Below the format: the words stores use for the cart, the checkout and placing an order, shared by
the policies, the scripted buyer, the drivers' cart line and the live-store safety guard.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class Element:
    """One element line. Every field is one line of text; a name never holds a double quote
    (it is written between double quotes), so the model keeps what the text can say."""

    element_id: int
    role: str
    name: str
    extra: str = ""     # the state: checked, selected=…, options: …, type=…, value=…, disabled
    context: str = ""   # page text near the element (its product, a field's hint)

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", _one_line(self.role))
        object.__setattr__(self, "name", _as_name(self.name))
        object.__setattr__(self, "extra", _one_line(self.extra))
        object.__setattr__(self, "context", _one_line(self.context))

    @property
    def checked(self) -> bool | None:
        """True / False for a checkbox or radio, None for other controls."""
        words = _state_words(self.extra)
        return True if "checked" in words else False if "unchecked" in words else None

    @property
    def disabled(self) -> bool:
        return "disabled" in _state_words(self.extra)

    @property
    def selected(self) -> list[str]:
        """The chosen options of a drop-down."""
        return _state_values(self.extra).get("selected=", [])

    @property
    def options(self) -> list[str]:
        """The options a drop-down shows (a long list is cut; `… N more` is not an option)."""
        return _state_values(self.extra).get("options:", [])

    @property
    def value(self) -> str | None:
        """What a text field holds; None when empty (a password's value is shown as "••••")."""
        values = _state_values(self.extra).get("value=")
        return values[0] if values else None


@dataclass(frozen=True)
class Page:
    """One observation. Optional header lines are absent when their field is empty; `dialog` is
    None when no dialog is open and "" for a dialog without a name. `above` and `below` count
    the listed elements outside this window (reachable with `scroll up|down`)."""

    url: str
    title: str
    heading: str = ""
    cart: str = ""          # "2 items, €31.98", "empty" (see cart_text)
    notices: tuple[str, ...] = ()
    error: str = ""
    dialog: str | None = None
    elements: tuple[Element, ...] = ()
    above: int = 0
    below: int = 0

    def __post_init__(self) -> None:
        for name in ("url", "title", "heading", "cart", "error"):
            object.__setattr__(self, name, _one_line(getattr(self, name)))
        object.__setattr__(self, "notices", tuple(_one_line(notice) for notice in self.notices))
        if self.dialog is not None:
            object.__setattr__(self, "dialog", _as_name(self.dialog))
        object.__setattr__(self, "elements", tuple(self.elements))

    # -- what buyers ask of a page (the vocabulary below) ------------------------------------

    @property
    def more_below(self) -> bool:
        return self.below > 0

    @property
    def cart_items(self) -> int | None:
        """Units in the cart from the cart line; None when the page shows no count."""
        if self.cart == CART_EMPTY:
            return 0
        match = re.match(r"(\d+) items?\b", self.cart)
        return int(match.group(1)) if match else None

    @property
    def order_confirmed(self) -> bool:
        """The page says an order went through (our store's thank-you page, or a shop's notice)."""
        return any(ORDER_CONFIRMED.search(text) for text in (self.heading, self.title, *self.notices))

    def _clickable(self, pattern: re.Pattern) -> list[Element]:
        return [e for e in self.elements if e.role in CLICKABLE_ROLES and pattern.search(e.name)]

    @property
    def add_to_cart_buttons(self) -> list[Element]:
        return [e for e in self._clickable(ADD_TO_CART) if not REMOVE_FROM_CART.search(e.name)]

    @property
    def checkout_buttons(self) -> list[Element]:
        return self._clickable(CHECKOUT)

    @property
    def place_order_buttons(self) -> list[Element]:
        return [e for e in self._clickable(PLACE_ORDER) if not ADD_TO_CART.search(e.name)]

    @property
    def continue_buttons(self) -> list[Element]:
        return [e for e in self.elements if e.role == "button" and CONTINUE.search(e.name)]

    @property
    def continue_links(self) -> list[Element]:
        """Links styled as a checkout's next step ("Continue" to the order preview), not "Continue shopping"."""
        return [e for e in self.elements if e.role == "link" and CONTINUE.search(e.name)
                and not CONTINUE_SHOPPING.search(e.name)]

    @property
    def cart_links(self) -> list[Element]:
        return [e for e in self.elements if e.role == "link" and names_cart(e.name)]

    @property
    def dismiss_controls(self) -> list[Element]:
        """What closes the open dialog (a cookie banner's "Accept all", a pop-up's "×" or "Close",
        a drawer's "Continue shopping"); empty when no dialog is open."""
        if self.dialog is None:
            return []
        return [e for e in self.elements if e.role in CLICKABLE_ROLES and DISMISS.search(e.name)]


def _one_line(text: str) -> str:
    # A line break inside a field would start a line of its own (and could forge an element).
    return text.replace("\n", " ")


def _as_name(text: str) -> str:
    return _one_line(text).replace('"', "'")


# ---------------------------------------------------------------------------------------------
# Writing


HEADER_KEYS = ("URL", "Title", "Heading", "Cart", "Notice", "Error")
CART_EMPTY = "empty"
_ID_LOOKALIKE = re.compile(r"\[(\s*\d+\s*)\]")
_ESCAPED_ID = re.compile(r"\\\[(\s*\d+\s*)\]")


def escape_ids(text: str) -> str:
    """Page text that looks like an element id ("[12]") is written "\\[12]", never as an id."""
    return _ID_LOOKALIKE.sub(r"\\[\1]", text)


def unescape_ids(text: str) -> str:
    """The inverse of escape_ids (each id lookalike carries exactly the one backslash it added)."""
    return _ESCAPED_ID.sub(r"[\1]", text)


def quote(text: str) -> str:
    return '"' + text.replace('"', "'") + '"'


def element_state(*, checked: bool | None = None, selected: Sequence[str] = (),
                  options: Sequence[str] | None = None, more_options: int = 0, input_type: str = "",
                  value: str | None = None, disabled: bool = False) -> str:
    """The extra of an element line: `checked`/`unchecked` for a checkbox or radio;
    `selected="A" options: "A" | "B" | … 3 more` for a drop-down; `type=email value="…"` for a
    field; `disabled` for any control. Element.checked/selected/options/value read it back."""
    parts = []
    if checked is not None:
        parts.append("checked" if checked else "unchecked")
    if selected:
        parts.append("selected=" + " | ".join(quote(option) for option in selected))
    if options is not None:
        more = f" | … {more_options} more" if more_options > 0 else ""
        parts.append("options: " + " | ".join(quote(option) for option in options) + more)
    if input_type:
        parts.append(f"type={input_type}")
    if value is not None:
        parts.append(f"value={quote(value)}")
    if disabled:
        parts.append("disabled")
    return " ".join(parts)


def cart_text(items: int | None, total: str | None) -> str:
    """The cart line's value: "empty", "2 items, €31.98", "1 item" or "€5.00"."""
    if items == 0:
        return CART_EMPTY
    parts = []
    if items is not None:
        parts.append(f"{items} item" + ("" if items == 1 else "s"))
    if total:
        parts.append(total)
    return ", ".join(parts)


def element_line(element: Element) -> str:
    parts = [f"[{element.element_id}] {element.role} {quote(escape_ids(element.name))}"]
    if element.extra:
        parts.append(escape_ids(element.extra))
    if element.context:
        parts.append(f"— {escape_ids(element.context)}")
    return " ".join(parts)


def header_lines(page: Page) -> list[str]:
    """Every line above the first element line: the header and the scroll-up note."""
    lines = [f"URL: {page.url}", f"Title: {escape_ids(page.title)}"]
    if page.heading:
        lines.append(f"Heading: {escape_ids(page.heading)}")
    if page.cart:
        lines.append(f"Cart: {page.cart}")
    lines += [f"Notice: {escape_ids(notice)}" for notice in page.notices]
    if page.error:
        lines.append(f"Error: {page.error}")   # our own words: an id in them is meant
    if page.dialog is not None:
        label = f" ({quote(escape_ids(page.dialog))})" if page.dialog else ""
        lines.append(f"Note: a dialog{label} is open; only its content is listed.")
    lines.append("Elements:" if page.elements or page.above or page.below else "Elements: none")
    if page.above:
        lines.append(f"… {page.above} more elements above (scroll up)")
    return lines


def render(page: Page) -> str:
    lines = header_lines(page) + [element_line(element) for element in page.elements]
    if page.below:
        lines.append(f"… {page.below} more elements below (scroll down)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading

# An element line starts with its id in ASCII digits; the rest is read by _ELEMENT_REST, and a
# line that starts with an id but breaks the grammar keeps its id (its text becomes the context).
_ELEMENT_START = re.compile(r"^[ \t]*\[([0-9]+)\](.*)$")
_ELEMENT_REST = re.compile(r'^ (\S+) "([^"]*)"(.*)$')
_HEADER = re.compile(r"^(" + "|".join(HEADER_KEYS) + r"): ?(.*)$")
_DIALOG = re.compile(r'^Note: a dialog(?: \("(.*)"\))? is open; only its content is listed\.$')
_SCROLL_NOTE = re.compile(r"^… (\d+) more elements (above|below) \(scroll (?:up|down)\)$")
_STATE_TOKEN = re.compile(r'"[^"]*"|[^\s"]+')
_CONTEXT_MARK = " — "


def parse(text: str) -> Page:
    """The page an observation text shows. Lenient: header lines may be missing (a fragment of
    element lines is a page too) and lines outside the format (a cut mark) are skipped."""
    fields: dict = {"url": "", "title": "", "notices": [], "elements": []}
    in_header = True
    for line in text.split("\n"):
        if match := _ELEMENT_START.match(line):
            fields["elements"].append(_parse_element(int(match.group(1)), match.group(2)))
            in_header = False
        elif match := _SCROLL_NOTE.match(line):
            fields["above" if match.group(2) == "above" else "below"] = int(match.group(1))
        elif line.startswith("Elements:"):
            in_header = False
        elif in_header and (match := _DIALOG.match(line)):
            fields["dialog"] = unescape_ids(match.group(1) or "")
        elif in_header and (match := _HEADER.match(line)):
            key, value = match.group(1), match.group(2)
            if key == "Notice":
                fields["notices"].append(unescape_ids(value))
            elif key in ("URL", "Cart", "Error"):
                fields[key.lower()] = value
            else:
                fields[key.lower()] = unescape_ids(value)
    return Page(**fields)


def _parse_element(element_id: int, rest: str) -> Element:
    match = _ELEMENT_REST.match(rest)
    if not match:
        return Element(element_id, "", "", context=unescape_ids(rest.strip()))
    role, name, tail = match.groups()
    extra, context = _split_context(tail[1:] if tail.startswith(" ") else tail)
    return Element(element_id, role, unescape_ids(name), unescape_ids(extra), unescape_ids(context))


def _split_context(tail: str) -> tuple[str, str]:
    """(extra, context) of what follows an element's name: the context starts at the first
    " — " outside the extra's quoted values (an option may be called "Small — 10 cm")."""
    if tail.startswith(_CONTEXT_MARK[1:]):
        return "", tail[len(_CONTEXT_MARK) - 1:]
    quoted = False
    for index, char in enumerate(tail):
        if char == '"':
            quoted = not quoted
        elif not quoted and tail.startswith(_CONTEXT_MARK, index):
            return tail[:index], tail[index + len(_CONTEXT_MARK):]
    return tail, ""


def _state_words(extra: str) -> set[str]:
    return {token for token in _STATE_TOKEN.findall(extra) if not token.startswith('"')}


def _state_values(extra: str) -> dict[str, list[str]]:
    """The quoted values after each key of element_state: selected=, options:, value=."""
    values: dict[str, list[str]] = {}
    key = None
    for token in _STATE_TOKEN.findall(extra):
        if token.startswith('"'):
            if key is not None:
                values[key].append(token[1:-1])
        elif token in ("selected=", "options:", "value="):
            key = token
            values[key] = []
        elif token != "|":
            key = None
    return values


# ---------------------------------------------------------------------------------------------
# The words of shopping (generic: no store's own ids or URLs)

# Roles a buyer clicks, types into, or chooses from.
CLICKABLE_ROLES = frozenset({"link", "button", "menuitem", "tab", "option"})
TEXT_ROLES = frozenset({"textbox", "searchbox", "input", "textarea", "spinbutton", "email", "tel"})
SELECT_ROLES = frozenset({"combobox", "listbox", "select"})

ADD_TO_CART = re.compile(r"\badd\b.*\b(cart|bag|basket|trolley)\b|\bbuy now\b|^add$", re.IGNORECASE)
REMOVE_FROM_CART = re.compile(r"\b(remove|delete)\b", re.IGNORECASE)
CHECKOUT = re.compile(r"check\s*-?\s*out|proceed to|go to payment", re.IGNORECASE)
# A checkout's next step, including a choice that moves it on (Oscar's "Select option" per delivery method)
CONTINUE = re.compile(r"\b(continue|next|review|proceed|save)\b|\bselect (this )?option\b", re.IGNORECASE)
CONTINUE_SHOPPING = re.compile(r"\b(shopping|browsing|page)\b|write a review|reviews?\b.*\b(all|more)\b", re.IGNORECASE)
# Controls that place an order or pay. Buyers press one to finish a checkout; on a store that is
# not ours the safety guard intercepts a click on any of them (harness/drivers/safety.py).
PLACE_ORDER = re.compile(
    r"\b(pay|pay now|place (my )?order|buy now|complete (purchase|order|payment)|submit order|"
    r"confirm (order|purchase|payment)|purchase now|order now)\b",
    re.IGNORECASE,
)
# Controls that close a dialog without doing anything else in it.
DISMISS = re.compile(
    r"^(close\b|accept( all)?\b|only essential|reject\b|decline\b|no,? thanks|not now|maybe later|dismiss|"
    r"got it|continue (shopping|browsing)|[×✕✖xX]$)",
    re.IGNORECASE,
)
# A choice a product form needs before it can be added ("Size", "Colour").
PRODUCT_OPTION = re.compile(r"\b(size|colou?r|variant|style|fit|width|length)\b", re.IGNORECASE)
# A name that means the cart: "Cart, 2 items", "Basket", "View my basket", "Your cart" (a link or
# a heading), but not a product called "Laptop bag".
CART = re.compile(r"\bcart\b|^(bag|basket|trolley)\b|\b(shopping|my|your|view) (bag|basket|trolley)\b",
                  re.IGNORECASE)
# Where a page shows the cart count: a control whose name starts with the cart ("Cart (2)",
# "Basket 2 items"); a name that only mentions it ("Remove Kettle 1.7 L from cart") has numbers
# that are no count.
CART_BADGE = re.compile(r"^(view |my |your |shopping )?(cart|basket|bag)\b", re.IGNORECASE)
CART_PATH = re.compile(r"/(cart|basket|bag|warenkorb|panier|carrito|carrello)\b", re.IGNORECASE)
ORDER_CONFIRMED = re.compile(r"thank you for your order|your order number is|order (confirmed|received|placed)",
                             re.IGNORECASE)
# The address of a shop's confirmation page (our store says so with <meta name="sp-order-id">).
ORDER_CONFIRMED_PATH = re.compile(
    r"order[-_/]?(received|confirm(ed|ation)?|complete(d)?|success)|thank[-_]?you|checkout/success",
    re.IGNORECASE,
)


# The order number a shop's confirmation names: "Order 100001: confirmation", "Order #A-1234 received".
ORDER_NUMBER = re.compile(r"\border\s*(?:number|no\.?|#)?\s*:?\s*#?([A-Z0-9][A-Z0-9-]{3,})\b", re.IGNORECASE)


def order_number(*texts: str) -> str | None:
    """The first order number in these texts (title, heading), or None."""
    for text in texts:
        match = ORDER_NUMBER.search(text or "")
        if match and any(ch.isdigit() for ch in match.group(1)):
            return match.group(1)
    return None


def names_cart(name: str) -> bool:
    """A control or heading named for the cart (not an add-to-cart button)."""
    return bool(CART.search(name)) and not ADD_TO_CART.search(name)
