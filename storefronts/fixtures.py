"""A small demo catalog and the saved HTML pages of the mock store built from it.

`demo_catalog()` is a dozen readable products in three categories, for tests and demos that need a
store but no real data. `save_fixtures(out_dir)` serves that catalog under every built-in variant,
walks a buyer through the whole funnel and writes each page it sees to
<out_dir>/<variant>/<page>.html. Pages are reproducible byte for byte (no timestamps, random ids
or ports in the HTML), so tests of the observation code can replay them and a diff shows exactly
what a template change did. Regenerate with:

    .venv/bin/python -m storefronts.fixtures tests/fixtures/store
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pandas as pd

from codebook.schema import CATALOG_SCHEMA
from storefronts import BUYER_HEADER
from storefronts.server import serve_store
from storefronts.variants import builtin_variants, load_variant

DEMO_SHOP = "demo"

_DEMO_PRODUCTS = [
    # product_id, title, category, brand, price
    ("1001", "Stainless Steel Kettle 1.7 L", "kitchen", "Brightway", 34.99),
    ("1002", "Cast Iron Frying Pan 28 cm", "kitchen", "Ironleaf", 42.50),
    ("1003", "Bamboo Cutting Board Set", "kitchen", "Greenhome", 18.90),
    ("1004", "Espresso Cups, Set of Four", "kitchen", "Brightway", 24.00),
    ("2001", "Trail Running Shoes", "sports", "Stridex", 89.95),
    ("2002", "Yoga Mat with Carry Strap", "sports", "Calmfit", 29.99),
    ("2003", "Insulated Water Bottle 750 ml", "sports", "Stridex", 21.50),
    ("2004", "Adjustable Dumbbells 2 x 10 kg", "sports", "Ironleaf", 119.00),
    ("3001", "Noise-Cancelling Headphones", "electronics", "Sonora", 149.00),
    ("3002", "Wireless Charging Pad", "electronics", "Voltix", 19.99),
    ("3003", "Portable Bluetooth Speaker", "electronics", "Sonora", 59.90),
    ("3004", "USB-C Power Bank 10000 mAh", "electronics", "Voltix", 27.49),
]

# Answers that pass every checkout step's validation; the card is a standard test number.
DEMO_ANSWERS = {
    "account": {"email": "ada@example.com", "password": ""},
    "address": {"full_name": "Ada Lovelace", "street": "12 Analytical Row", "city": "London",
                "postcode": "N1 9GU", "country": "GB"},
    "delivery": {"delivery": "standard"},
    "gift_options": {"gift_wrap": "", "gift_message": ""},
    "survey": {"heard_from": "friend", "newsletter": ""},
    "payment": {"card_name": "Ada Lovelace", "card_number": "4242 4242 4242 4242",
                "card_expiry": "12/29", "card_cvc": "123"},
    "review": {},
}


def rees46_catalog(log_path: Path, shop_id: str, products: int = 60) -> pd.DataFrame:
    """The first `products` products of a REES46 log that have a text category, as a catalog
    (CATALOG_SCHEMA columns) with readable titles: real products for store tests and benchmarks."""
    raw = pd.read_csv(log_path, nrows=4000).dropna(subset=["category_code"]).drop_duplicates("product_id")
    raw = raw.head(products)
    kind = raw["category_code"].str.split(".").str[-1].str.replace("_", " ")
    return pd.DataFrame(
        {
            "shop_id": shop_id,
            "product_id": raw["product_id"].astype(str),
            "title": (raw["brand"].fillna("").str.title() + " " + kind).str.strip(),
            "category": raw["category_code"],
            "brand": raw["brand"].fillna(""),
            "price": raw["price"].astype(float),
        }
    )


def demo_catalog() -> pd.DataFrame:
    """Twelve products (four each in kitchen, sports, electronics) with CATALOG_SCHEMA columns."""
    rows = [
        {"shop_id": DEMO_SHOP, "product_id": pid, "title": title, "category": category, "brand": brand,
         "price": price}
        for pid, title, category, brand, price in _DEMO_PRODUCTS
    ]
    return pd.DataFrame(rows, columns=CATALOG_SCHEMA.names).astype(
        {name: "string" for name in CATALOG_SCHEMA.names if name != "price"} | {"price": "float64"}
    )


def capture_pages(store_url: str, variant_name: str) -> dict[str, str]:
    """Walk one buyer through the store and return {page name: HTML} for every page type."""
    variant = load_variant(variant_name)
    pages: dict[str, str] = {}
    with httpx.Client(base_url=store_url, headers={BUYER_HEADER: "fixture-buyer"},
                      follow_redirects=True, timeout=10) as client:

        def get(name: str, url: str, **params) -> None:
            response = client.get(url, params=params or None)
            response.raise_for_status()
            pages[name] = response.text

        def post(url: str, data: dict) -> httpx.Response:
            response = client.post(url, data=data)
            response.raise_for_status()
            return response

        get("home", "/")
        get("listing", "/c/kitchen")
        get("search", "/search", q="bottle")
        get("product", "/p/2003")
        post("/cart/add", {"product_id": "2003", "quantity": "2"})
        pages["cart"] = post("/cart/add", {"product_id": "1001", "quantity": "1"}).text
        for step in variant.checkout_steps:
            get(f"checkout_{step}", f"/checkout/{step}")
            response = post(f"/checkout/{step}", DEMO_ANSWERS[step])
        pages["order"] = response.text
    return pages


def save_fixtures(out_dir: str | Path) -> list[Path]:
    """Write <out_dir>/<variant>/<page>.html for every built-in variant; return the files written."""
    written = []
    for name in builtin_variants():
        with serve_store(demo_catalog(), DEMO_SHOP, variant=name) as store:
            pages = capture_pages(store.url, name)
        folder = Path(out_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.html"):
            stale.unlink()
        for page, html in pages.items():
            path = folder / f"{page}.html"
            path.write_text(html, encoding="utf-8")
            written.append(path)
    return written


if __name__ == "__main__":
    files = save_fixtures(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/store")
    print(f"wrote {len(files)} pages")
