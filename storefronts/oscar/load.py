"""Fill a migrated Oscar database from one shop of our catalog (runs inside the Oscar process).

Everything a merchant would set up in Oscar's dashboard, done with Oscar's own models: a product
type, a partner with a stock record and price per product, a category tree from our categories,
and Germany as the one shipping country (so Oscar's address form hides the country choice and
checks a five-digit postcode, like the mock store's checkout).
"""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.utils.text import slugify

from storefronts.catalog import StoreCatalog

SHIPPING_COUNTRY = ("DE", "Germany")
STOCK_PER_PRODUCT = 10_000  # synthetic buyers never run a product out of stock
PARTNER_NAME = "SimPersona"


def catalog_loaded() -> bool:
    from oscar.apps.catalogue.models import Product

    return Product.objects.exists()


@transaction.atomic
def load_catalog(catalog: StoreCatalog) -> int:
    """Create one Oscar product per catalog product; returns how many."""
    from oscar.apps.address.models import Country
    from oscar.apps.catalogue.models import Category, Product, ProductCategory, ProductClass
    from oscar.apps.partner.models import Partner, StockRecord

    code, name = SHIPPING_COUNTRY
    Country.objects.update_or_create(iso_3166_1_a2=code, defaults={
        "iso_3166_1_a3": "DEU", "iso_3166_1_numeric": "276", "printable_name": name, "name": name,
        "is_shipping_country": True})
    product_class, _ = ProductClass.objects.get_or_create(
        name="Product", defaults={"requires_shipping": True, "track_stock": True})
    partner, _ = Partner.objects.get_or_create(name=PARTNER_NAME)
    categories: dict[str, Category] = {}
    for product in catalog.products:
        category = categories.get(product.category_label)
        if category is None:
            category = Category.add_root(name=product.category_label, slug=slugify(product.category_label)[:200] or "c")
            categories[product.category_label] = category
        oscar_product = Product.objects.create(
            structure=Product.STANDALONE, title=product.title, upc=product.product_id[:64],
            slug=slugify(product.title)[:128] or "product", product_class=product_class,
            description=f"{product.title} by {product.brand}." if product.brand else product.title,
        )
        ProductCategory.objects.create(product=oscar_product, category=category)
        StockRecord.objects.create(product=oscar_product, partner=partner, partner_sku=product.product_id[:128],
                                   price_currency="EUR", price=Decimal(f"{product.price:.2f}"),
                                   num_in_stock=STOCK_PER_PRODUCT)
    return len(catalog.products)
