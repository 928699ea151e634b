"""What the pages show beyond the catalog: placeholder images, product copy and pagination.

All of it is derived from the product and the variant alone, so every page is reproducible byte
for byte (the saved fixtures depend on that) and no external asset is ever requested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, urlencode

from storefronts.catalog import Product, stable_unit


@lru_cache(maxsize=4096)
def image_uri(category: str, initials: str) -> str:
    """A data: URI of a small SVG tile, coloured by category and marked with the product initials."""
    hue = int(stable_unit("hue", category) * 360)
    svg = (
        "<svg xmlns='http://www.w3.org/2000/svg' width='160' height='120' viewBox='0 0 160 120'>"
        f"<rect width='160' height='120' fill='hsl({hue},45%,82%)'/>"
        "<text x='80' y='72' font-family='sans-serif' font-size='36' text-anchor='middle' "
        f"fill='#333'>{initials}</text></svg>"
    )
    return "data:image/svg+xml," + quote(svg, safe=" =/:,#%()")


def product_image(product: Product) -> str:
    return image_uri(product.category, product.initials)


def short_description(product: Product) -> str:
    maker = f"by {product.brand}" if product.brand and not product.brand.isdigit() else "from a trusted maker"
    return f"{product.title}, {maker}, from our {product.category_label.lower()} range."


def long_description(product: Product) -> list[tuple[str, str]]:
    """Several (heading, paragraph) pairs: enough text to push whatever follows well down the page."""
    label = product.category_label.lower()
    return [
        ("About this product",
         f"{product.title} is one of the most carefully chosen items in our {label} range. We test every "
         "product we list for everyday use, and we only keep the ones that our customers come back to. "
         "This one has earned its place through steady, reliable performance and a fair price."),
        ("Details",
         f"Product number {product.product_id}. Category: {product.category_label}. "
         f"Brand: {product.brand or 'not stated'}. The item ships in recyclable packaging with a printed "
         "quick-start leaflet. Colours may look slightly different on screen than in daylight."),
        ("Materials and care",
         "Keep the item clean and dry when it is not in use. Wipe it with a soft, slightly damp cloth and "
         "avoid harsh cleaning products, which can dull the finish over time. Store it away from direct "
         "sunlight and sources of heat so that it keeps its shape and colour for years."),
        ("Delivery",
         "Orders placed on a working day before 2 pm leave our warehouse the same day. Standard delivery "
         "takes three to five working days; express delivery takes one to two. You receive an email with "
         "a tracking link as soon as the parcel is on its way."),
        ("Returns",
         "You may return the item within 30 days of delivery, unused and in its original packaging. Start "
         "a return from your order confirmation and print the prepaid label. We refund the full price, "
         "including standard delivery, within five working days of receiving the parcel."),
        ("Warranty",
         "The item comes with a two-year warranty against manufacturing defects. Keep your order "
         "confirmation as proof of purchase. The warranty does not cover wear and tear, accidental damage "
         "or damage caused by using the item for something it was not designed for."),
        ("What our customers say",
         f"Customers who bought {product.title} praise its build quality and value for money. Several "
         "mention that it arrived quickly and was well packed. A few would have liked more colour choices, "
         "and we have passed that on to the maker."),
    ]


@dataclass(frozen=True)
class Pagination:
    page: int
    pages: int
    per_page: int
    total: int

    @classmethod
    def of(cls, total: int, per_page: int, page: int) -> "Pagination":
        return cls(page=page, pages=max(1, math.ceil(total / per_page)), per_page=per_page, total=total)

    @property
    def first_index(self) -> int:
        return (self.page - 1) * self.per_page

    @property
    def shown_from(self) -> int:
        return min(self.total, self.first_index + 1)

    @property
    def shown_to(self) -> int:
        return min(self.total, self.first_index + self.per_page)

    def window(self, items: list) -> list:
        return items[self.first_index:self.first_index + self.per_page]

    def links(self, around: int = 2) -> list[int | None]:
        """Page numbers to link: first, last and `around` either side of this one; None marks a gap."""
        wanted = {1, self.pages, *range(self.page - around, self.page + around + 1)}
        numbers = sorted(n for n in wanted if 1 <= n <= self.pages)
        shown: list[int | None] = []
        for number in numbers:
            if shown and number - shown[-1] > 1:
                shown.append(None)
            shown.append(number)
        return shown


def page_url(path: str, **params: object) -> str:
    """A URL with the given query parameters, leaving out empty ones (page 1 keeps no ?page=)."""
    kept = {
        key: value
        for key, value in params.items()
        if value is not None and value != "" and not (key == "page" and value == 1)
    }
    return path + ("?" + urlencode(kept) if kept else "")


def category_url(category: str) -> str:
    return "/c/" + quote(category, safe="")


def product_url(product: Product) -> str:
    return "/p/" + quote(product.product_id, safe="")
