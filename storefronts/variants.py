"""Layout variants of the mock store: every option is a named, defaulted field of `Variant`.

A variant is data. The built-in ones live as JSON files beside this module
(storefronts/variants/<name>.json); an A/B run may also point at any JSON file of its own.
A JSON file holds a subset of the fields below; every field it leaves out keeps its default.
Unknown keys and wrongly typed values are errors that name the file and the key, because a
misspelt option silently falling back to its default would make an A/B comparison meaningless.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path

from storefronts.checkout import STEPS

VARIANTS_DIR = Path(__file__).with_name("variants")
# Themes: variants that differ the way real shops differ (wording, icon-only buttons, overlays,
# drawers, required options, checkout length, paging, navigation). Traces are replayed across
# them; the held-out ones are never seen in training, so success there measures transfer.
THEMES_DIR = VARIANTS_DIR / "themes"
HELD_OUT_THEMES = ("atelier", "nordhaus", "quickmart")

LAYOUTS = ("grid", "list")
SORTS = ("popularity", "price_asc", "price_desc", "newest")
SORT_LABELS = {
    "popularity": "Most popular",
    "price_asc": "Price: low to high",
    "price_desc": "Price: high to low",
    "newest": "Newest first",
}
BUY_BUTTON_POSITIONS = ("top", "below_description")
PRICE_DISPLAYS = ("symbol", "code")  # "€12.99" or "12.99 EUR"
CART_WORDS = ("Cart", "Bag", "Basket")
AFTER_ADD = ("cart_page", "mini_cart", "stay")
REQUIRED_OPTIONS = ("", "size", "colour")
OPTION_VALUES = {"size": ("S", "M", "L", "XL"), "colour": ("Black", "White", "Navy", "Red")}
LISTING_PAGING = ("pages", "load_more")
HOME_STYLES = ("categories", "search_first")
CLOSE_CONTROLS = ("text", "aria_label", "title", "icon")  # how an overlay's close control is named
# Pages the header and footer may link to (storefronts/templates/info.html renders each).
INFO_PAGES = {
    "help": "Help centre", "account": "My account", "wishlist": "Wishlist", "stores": "Find a store",
    "gift-cards": "Gift cards", "returns": "Returns", "about": "About us", "contact": "Contact us",
    "delivery-info": "Delivery information", "careers": "Careers", "blog": "Journal", "privacy": "Privacy",
}
CURRENCY_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "CNY": "¥", "JPY": "¥"}


class VariantError(ValueError):
    """A variant that cannot be loaded; the message names the file and the offending key."""


@dataclass(frozen=True)
class Variant:
    """How the store looks and how long its funnel is. Every field has a sensible default."""

    name: str = "default"
    description: str = "Product grid, four-step checkout."
    store_name: str = "SimPersona Shop"
    # Listing pages (category and search results).
    layout: str = "grid"  # grid | list
    items_per_page: int = 12
    default_sort: str = "popularity"  # popularity | price_asc | price_desc | newest
    # Home page and header.
    featured_count: int = 8
    nav_categories: int = 8  # the header links to this many of the largest categories
    home_categories: int = 24  # the home page lists this many of the largest categories
    # Product page.
    show_recommendations: bool = True  # a "Customers also viewed" block
    recommendations_count: int = 4
    add_to_cart_label: str = "Add to cart"
    buy_button_position: str = "top"  # top | below_description
    long_description: bool = False  # several paragraphs of text on every product page
    # Prices and promotions.
    sale_badges: bool = False  # a "Sale" badge and a struck-through former price on some products
    free_shipping_banner: bool = False
    currency: str = "EUR"
    price_display: str = "symbol"  # symbol: "€12.99" | code: "12.99 EUR"
    express_delivery_price: float = 4.99
    # Checkout: the step names, in order (see storefronts/checkout.py for what each asks).
    checkout_steps: tuple[str, ...] = ("address", "delivery", "payment", "review")
    # A signed-in returning customer: every checkout step opens filled in with saved details
    # (checkout.SAVED_CUSTOMER), so buying is a matter of confirming each step.
    saved_details: bool = False
    # Theme: how the pages word and arrange the same shop (see THEMES_DIR).
    cart_word: str = "Cart"  # Cart | Bag | Basket: the header link, the cart page and its notices
    cart_icon: bool = False  # the header's cart link is an icon with a count, named only by aria-label
    add_to_cart_icon: bool = False  # the add-to-cart button is an icon, named only by aria-label and title
    after_add: str = "cart_page"  # cart_page: go to the cart | mini_cart: a drawer opens | stay: a notice
    quick_view: bool = False  # listings offer a "Quick view" dialog with its own add-to-cart button
    required_option: str = ""  # "" | size | colour: a choice the product form needs before adding
    listing_paging: str = "pages"  # pages: numbered pages | load_more: one growing list
    home_style: str = "categories"  # categories: a category list | search_first: a search box and popular searches
    cookie_banner: bool = False  # a consent dialog over the first page until it is answered
    newsletter_popup: bool = False  # a sign-up dialog over product pages until it is closed
    popup_close: str = "text"  # text | aria_label | title | icon: how the sign-up dialog's close control is named
    header_links: tuple[str, ...] = ()  # INFO_PAGES keys linked in the header
    footer_links: tuple[str, ...] = ()  # INFO_PAGES keys linked in the footer

    def __post_init__(self) -> None:
        _check_choice("layout", self.layout, LAYOUTS)
        _check_choice("default_sort", self.default_sort, SORTS)
        _check_choice("buy_button_position", self.buy_button_position, BUY_BUTTON_POSITIONS)
        _check_choice("price_display", self.price_display, PRICE_DISPLAYS)
        _check_choice("cart_word", self.cart_word, CART_WORDS)
        _check_choice("after_add", self.after_add, AFTER_ADD)
        _check_choice("required_option", self.required_option, REQUIRED_OPTIONS)
        _check_choice("listing_paging", self.listing_paging, LISTING_PAGING)
        _check_choice("home_style", self.home_style, HOME_STYLES)
        _check_choice("popup_close", self.popup_close, CLOSE_CONTROLS)
        for key in ("items_per_page", "featured_count", "home_categories", "recommendations_count"):
            if getattr(self, key) < 1:
                raise VariantError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.nav_categories < 0:
            raise VariantError(f"nav_categories must be >= 0, got {self.nav_categories}")
        if self.express_delivery_price < 0:
            raise VariantError(f"express_delivery_price must be >= 0, got {self.express_delivery_price}")
        # Lists from JSON become tuples so the variant stays hashable and immutable.
        for key in ("checkout_steps", "header_links", "footer_links"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        _check_checkout_steps(self.checkout_steps)
        for key in ("header_links", "footer_links"):
            unknown = [slug for slug in getattr(self, key) if slug not in INFO_PAGES]
            if unknown:
                raise VariantError(f"{key}: unknown page {unknown[0]!r}; known pages: {', '.join(INFO_PAGES)}")

    def format_price(self, amount: float) -> str:
        """The price as this variant shows it, e.g. "€12.99" or "12.99 EUR"."""
        if self.price_display == "code":
            return f"{amount:,.2f} {self.currency}"
        symbol = CURRENCY_SYMBOLS.get(self.currency, self.currency + " ")
        return f"{symbol}{amount:,.2f}"


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise VariantError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _check_checkout_steps(steps: tuple[str, ...]) -> None:
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        raise VariantError(f"checkout_steps: unknown step {unknown[0]!r}; known steps: {', '.join(STEPS)}")
    if len(set(steps)) != len(steps):
        raise VariantError(f"checkout_steps: a step appears twice in {list(steps)}")
    # Every order needs somewhere to ship to and a last look before it is placed.
    if "address" not in steps and "one_page" not in steps:
        raise VariantError(f"checkout_steps: must include 'address' or 'one_page', got {list(steps)}")
    if "review" not in steps:
        raise VariantError(f"checkout_steps: must include 'review', got {list(steps)}")
    if steps[-1] != "review":
        raise VariantError(f"checkout_steps: 'review' must be the last step, got {list(steps)}")


def builtin_variants() -> list[str]:
    """Names of the variants shipped in storefronts/variants/ (themes not included)."""
    return sorted(path.stem for path in VARIANTS_DIR.glob("*.json"))


def builtin_themes() -> list[str]:
    """Names of the themes shipped in storefronts/variants/themes/."""
    return sorted(path.stem for path in THEMES_DIR.glob("*.json"))


def training_themes() -> list[str]:
    """The themes traces may be replayed on (every theme but the held-out ones)."""
    return [name for name in builtin_themes() if name not in HELD_OUT_THEMES]


def load_variant(spec: str | Path | Variant) -> Variant:
    """A Variant from a built-in variant or theme name ("default", "worse", "atelier"), a JSON file
    path, or as is."""
    if isinstance(spec, Variant):
        return spec
    if isinstance(spec, str) and "/" not in spec:
        for folder in (VARIANTS_DIR, THEMES_DIR):
            if (folder / f"{spec}.json").is_file():
                return variant_from_file(folder / f"{spec}.json")
    path = Path(spec)
    if path.is_file():
        return variant_from_file(path)
    raise VariantError(
        f"variant {str(spec)!r} is neither a built-in variant ({', '.join(builtin_variants())}), "
        f"a theme ({', '.join(builtin_themes())}) nor an existing JSON file"
    )


def variant_from_file(path: Path) -> Variant:
    """Read one variant JSON file; the variant's name defaults to the file's stem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise VariantError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise VariantError(f"{path}: expected a JSON object of variant options, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    return variant_from_dict(data, source=str(path))


def variant_from_dict(data: dict, source: str = "<dict>") -> Variant:
    """Build a Variant from plain data, checking every key and value type."""
    fields = {f.name: f for f in dataclasses.fields(Variant)}
    hints = typing.get_type_hints(Variant)
    for key, value in data.items():
        if key not in fields:
            raise VariantError(f"{source}: unknown key {key!r}; known keys: {', '.join(fields)}")
        if not _has_type(value, hints[key]):
            raise VariantError(f"{source}: key {key!r} expects {_type_name(hints[key])}, got {value!r}")
    try:
        return Variant(**data)
    except VariantError as error:
        raise VariantError(f"{source}: {error}") from None


def _has_type(value: object, hint: object) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    # tuple[str, ...]: JSON writes it as a list of strings.
    return isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)


def _type_name(hint: object) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, "a list of strings"
    )


def variant_to_dict(variant: Variant) -> dict:
    """Plain data for manifests and JSON files (the inverse of variant_from_dict)."""
    data = dataclasses.asdict(variant)
    for key in ("checkout_steps", "header_links", "footer_links"):
        data[key] = list(getattr(variant, key))
    return data


__all__ = [
    "Variant",
    "VariantError",
    "builtin_variants",
    "builtin_themes",
    "training_themes",
    "HELD_OUT_THEMES",
    "load_variant",
    "variant_from_dict",
    "variant_from_file",
    "variant_to_dict",
    "SORTS",
    "SORT_LABELS",
    "LAYOUTS",
]
