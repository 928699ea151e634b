"""One shop's products as the store shows them, built from catalog.parquet (CATALOG_SCHEMA).

Public logs often lack names and prices, so this module fills the gaps deterministically:
- a missing (null, NaN or non-positive) price becomes a synthetic price derived from the product
  id and the category, so the same product costs the same in every run and every variant;
- a missing title is composed from brand, category and id, titles shared by several products get
  the product id appended, and category codes such as "appliances.kitchen.kettle" or "4756105"
  get readable labels ("Kettle", "Category 4756105").
Popularity and recency are not in the catalog either: popularity is a stable pseudo-random score
per product id, and "newest" orders by product id, highest first (the public logs we ingest
number their items in the order they were listed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from codebook.schema import CATALOG_SCHEMA

UNCATEGORIZED = "uncategorized"


@dataclass(frozen=True)
class Product:
    product_id: str
    title: str
    category: str
    category_label: str
    brand: str
    price: float
    price_synthetic: bool
    popularity: float  # in [0, 1), higher is more popular
    on_sale: bool  # shown with a sale badge when the variant has sale_badges
    list_price: float  # the struck-through "was" price of a product on sale

    @property
    def initials(self) -> str:
        words = [word for word in re.split(r"\W+", self.title) if word]
        return "".join(word[0] for word in words[:2]).upper() or "?"


class CatalogError(ValueError):
    """A catalog that cannot be served; the message names the file, row or shop."""


def stable_unit(*parts: str) -> float:
    """A number in [0, 1) fixed by the given strings (the same in every process, unlike hash())."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@lru_cache(maxsize=65536)
def _category_price_level(category: str) -> float:
    return math.exp(math.log(5) + stable_unit("category", category) * math.log(300 / 5))


def synthetic_price(product_id: str, category: str) -> float:
    """A plausible shelf price: a per-category level (5 to 300) times a per-product spread."""
    product_spread = 0.6 + stable_unit("product", product_id) * 1.0
    return max(0.99, math.floor(_category_price_level(category) * product_spread) + 0.99)


def category_label(category: str) -> str:
    """A readable name for a category code: last dotted segment, or "Category <id>" for numbers."""
    if category == UNCATEGORIZED:
        return "Other products"
    leaf = category.split(".")[-1].replace("_", " ").strip()
    if not leaf:
        return category
    if leaf.isdigit():
        return f"Category {leaf}"
    return leaf[0].upper() + leaf[1:]


def readable_title(title: str | None, category: str, brand: str, product_id: str) -> str:
    """The catalog title with whitespace tidied, or one composed from brand, category and id."""
    if title and title.strip():
        return " ".join(title.split())
    brand_part = f"Brand {brand}" if brand.isdigit() else brand.title()
    words = [brand_part, category_label(category) if category != UNCATEGORIZED else "Item", f"#{product_id}"]
    return " ".join(word for word in words if word)


def _natural_key(product_id: str) -> tuple[int, int, str]:
    # Numeric ids compare as numbers so "newest" puts item 1000 after item 999.
    return (0, int(product_id), "") if product_id.isdigit() else (1, 0, product_id)


class StoreCatalog:
    """The products of one shop, with lookup, category listings, search and sorting."""

    def __init__(self, products: list[Product], shop_id: str):
        self.shop_id = shop_id
        self.products = products
        self.by_id = {product.product_id: product for product in products}
        self.by_category: dict[str, list[Product]] = {}
        for product in products:
            self.by_category.setdefault(product.category, []).append(product)
        self.categories = sorted(self.by_category, key=category_label)
        self.by_popularity = sort_products(products, "popularity")
        self.prices_synthetic = frozenset(p.product_id for p in products if p.price_synthetic)
        # Lower-cased text each product is found by, built once rather than per query.
        self._search_text = {
            p.product_id: " ".join((p.title, p.brand, p.category, p.category_label, p.product_id)).lower()
            for p in products
        }

    @classmethod
    def load(cls, catalog: str | Path | pd.DataFrame, shop_id: str) -> "StoreCatalog":
        """Read catalog.parquet (or take a DataFrame with CATALOG_SCHEMA columns) for one shop."""
        source = "catalog DataFrame" if isinstance(catalog, pd.DataFrame) else str(catalog)
        frame = catalog if isinstance(catalog, pd.DataFrame) else _read_parquet(Path(catalog))
        missing = [name for name in CATALOG_SCHEMA.names if name not in frame.columns]
        if missing:
            raise CatalogError(
                f"{source}: missing column(s) {', '.join(missing)}; expected {', '.join(CATALOG_SCHEMA.names)}"
            )
        rows = frame[frame["shop_id"].astype("string").eq(str(shop_id)).fillna(False).astype(bool)]
        if rows.empty:
            shops = frame["shop_id"].dropna().astype(str).unique()
            sample = ", ".join(sorted(shops)[:10]) + (" …" if len(shops) > 10 else "")
            raise CatalogError(f"{source}: no products for shop {shop_id!r}; shops present: {sample or 'none'}")
        products: dict[str, Product] = {}
        for row in _rows(rows):
            product = _product_from_row(source, *row)
            if product.product_id in products:
                raise CatalogError(
                    f"{source}: row {row[0]} repeats product_id {product.product_id!r} of shop {shop_id!r}; "
                    "a catalog has one row per product"
                )
            products[product.product_id] = product
        return cls(_distinct_titles(list(products.values())), str(shop_id))

    def in_category(self, category: str) -> list[Product]:
        return self.by_category.get(category, [])

    def largest_categories(self, count: int) -> list[str]:
        """The categories with the most products (ties in label order), for navigation."""
        return sorted(self.categories, key=lambda c: -len(self.by_category[c]))[:count]

    def search(self, query: str) -> list[Product]:
        """Products whose title, brand, category or id contains every word of the query; when none
        does, the ones containing the most of its words (as shops answer a mistyped query), so a
        buyer who typed a title half right still finds something to look at."""
        terms = query.lower().split()
        if not terms:
            return []
        matched = {p.product_id: sum(term in self._search_text[p.product_id] for term in terms) for p in self.products}
        best = max(matched.values(), default=0)
        if best == 0:
            return []
        return [p for p in self.products if matched[p.product_id] == best]

    def featured(self, count: int) -> list[Product]:
        return self.by_popularity[:count]

    def also_viewed(self, product: Product, count: int) -> list[Product]:
        """Popular products of the same category first, then popular ones from elsewhere."""
        same = [p for p in sort_products(self.in_category(product.category), "popularity") if p is not product]
        chosen = same[:count]
        for other in self.by_popularity:
            if len(chosen) == count:
                break
            if other.category != product.category:
                chosen.append(other)
        return chosen


def sort_products(products: list[Product], sort: str) -> list[Product]:
    """Order products by one of variants.SORTS; ties break on product id so order is stable."""
    by_id = sorted(products, key=lambda p: _natural_key(p.product_id))
    if sort == "price_asc":
        return sorted(by_id, key=lambda p: p.price)
    if sort == "price_desc":
        return sorted(by_id, key=lambda p: -p.price)
    if sort == "popularity":
        return sorted(by_id, key=lambda p: -p.popularity)
    if sort == "newest":
        return by_id[::-1]
    raise ValueError(f"unknown sort {sort!r}")


def _distinct_titles(products: list[Product]) -> list[Product]:
    """Products sharing a title (common when titles are composed from brand and category) get
    their id appended, so a buyer reading a listing can tell them apart."""
    counts = Counter(product.title for product in products)
    return [
        dataclasses.replace(p, title=f"{p.title} #{p.product_id}") if counts[p.title] > 1 else p
        for p in products
    ]


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CatalogError(f"{path}: catalog file not found")
    try:
        return pq.read_table(path).to_pandas()
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise CatalogError(f"{path}: cannot read as Parquet ({error})") from None


def _rows(rows: pd.DataFrame):
    """(row number, product_id, title, category, brand, price) as plain Python values, where the
    row number is the 1-based data row a person would count; missing text is None, missing price NaN."""
    texts = [rows[name].astype(object).where(rows[name].notna(), None).tolist()
             for name in ("product_id", "title", "category", "brand")]
    prices = pd.to_numeric(rows["price"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan).tolist()
    row_numbers = [index + 1 if isinstance(index, numbers.Integral) else index for index in rows.index]
    return zip(row_numbers, *texts, prices)


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _product_from_row(source: str, row_number: object, product_id: object, title: object, category: object,
                      brand: object, price: float) -> Product:
    product_id = _text(product_id)
    if not product_id:
        raise CatalogError(f"{source}: row {row_number} has no product_id")
    category = _text(category) or UNCATEGORIZED
    brand = _text(brand)
    synthetic = math.isnan(price) or price <= 0
    if synthetic:
        price = synthetic_price(product_id, category)
    return Product(
        product_id=product_id,
        title=readable_title(_text(title), category, brand, product_id),
        category=category,
        category_label=category_label(category),
        brand=brand,
        price=round(price, 2),
        price_synthetic=synthetic,
        popularity=stable_unit("popularity", product_id),
        on_sale=stable_unit("sale", product_id) < 0.25,
        list_price=math.floor(price * 1.25) + 0.99,
    )
