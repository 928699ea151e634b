"""A SYNTHETIC clickstream with planted buyer types: the demo's default log and a test oracle.

Nothing here is real data. Every shop is called "synthetic-shop-NN", every buyer
"synthetic-buyer-NNNNN". The generator plants BUYER_TYPES (window shopper, decisive buyer, ...)
that differ in sessions, events per session, search use, wishlist, cart, removal and purchase
rates, price level, category focus, time of day and weekday. Each shop draws its own mix of types
from a seeded Dirichlet, each buyer x shop pair gets one type, and each buyer jitters its type's
rates (log-normal noise) so that buyers of a type are alike but not copies.

The log is written as a CSV in the generic schema of codebook/ingest.py, so it goes through the
same ingest path as a real log. The ground truth is written beside it:

- synthetic_truth.parquet: shop_id, buyer_id, planted_type (one row per buyer x shop pair);
- synthetic_truth.json:    the config, the type descriptions and parameters, each shop's mix.

Same config (seed included) -> byte-identical files.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

EVENTS_CSV = "synthetic_events.csv"
TRUTH_PARQUET = "synthetic_truth.parquet"
TRUTH_JSON = "synthetic_truth.json"


@dataclass(frozen=True)
class BuyerType:
    """One planted behaviour. Rates are per session or per viewed product, as named.

    sessions / events_per_session: means of the (noisy) counts per buyer x shop.
    search_share: share of browsing steps that are searches.
    wishlist_rate: chance per viewed product of saving it.
    cart_rate: chance per session of adding a viewed product to the cart.
    remove_rate: chance that a carted product is removed again.
    purchase_rate: chance that a session with a cart ends in a purchase.
    price_level: preferred price quantile within a category (0 cheapest, 1 dearest).
    category_focus: chance that a viewed product is from the buyer's favourite category.
    hour / hour_spread: session start time of day (UTC hours), mean and spread.
    weekend_share: share of sessions on Saturday or Sunday.
    seconds_per_event: mean pause between events.
    """

    name: str
    description: str
    sessions: float
    events_per_session: float
    search_share: float
    wishlist_rate: float
    cart_rate: float
    remove_rate: float
    purchase_rate: float
    price_level: float
    category_focus: float
    hour: float
    hour_spread: float
    weekend_share: float
    seconds_per_event: float


BUYER_TYPES: tuple[BuyerType, ...] = (
    BuyerType("window_shopper", "Browses many products across categories in evening and "
              "weekend sessions and almost never adds anything to the cart.",
              3.0, 8, 0.04, 0.03, 0.03, 0.0, 0.15, 0.6, 0.15, 21.0, 1.0, 0.65, 55),
    BuyerType("decisive_buyer", "Comes once, finds the product in a few clicks at lunchtime "
              "on a weekday, adds it to the cart and pays.",
              1.2, 3, 0.2, 0.0, 0.95, 0.02, 0.95, 0.55, 0.9, 12.5, 1.0, 0.15, 25),
    BuyerType("cart_abandoner", "Fills the cart after midnight, often removes items again and "
              "leaves without paying.",
              3.0, 5, 0.08, 0.04, 0.95, 0.5, 0.04, 0.7, 0.6, 1.5, 1.0, 0.3, 40),
    BuyerType("comparison_researcher", "Returns again and again on weekday mornings to compare "
              "many products of one category, saves favourites, and buys after long research.",
              5.0, 7, 0.08, 0.25, 0.2, 0.1, 0.5, 0.5, 0.95, 9.5, 1.0, 0.15, 90),
    BuyerType("searcher", "Finds products by typing searches rather than browsing, in the "
              "afternoon; buys now and then.",
              3.0, 5, 0.75, 0.02, 0.35, 0.05, 0.45, 0.5, 0.5, 15.5, 1.0, 0.3, 30),
    BuyerType("bargain_hunter", "Looks only at the cheapest products, searches for deals and "
              "buys cheap items, mostly at weekends.",
              3.0, 6, 0.2, 0.08, 0.45, 0.15, 0.55, 0.03, 0.4, 17.0, 1.0, 0.85, 35),
    BuyerType("loyal_repeat_buyer", "Visits very often in short early-morning sessions and buys "
              "again and again from the same category, mostly dear products.",
              5.0, 3, 0.04, 0.0, 0.8, 0.02, 0.9, 0.85, 0.9, 6.5, 0.8, 0.35, 20),
)

# Word lists per category: titles are "<colour> <material> <item>", brands are invented.
CATEGORIES: dict[str, dict] = {
    "apparel": {
        "items": ["t-shirt", "hoodie", "jeans", "dress", "jacket", "sweater", "skirt", "shirt"],
        "materials": ["cotton", "linen", "wool", "denim", "fleece", "silk"],
        "price": 35.0,
        "brands": ["Northwind", "Loomcraft", "Urbanthread"],
    },
    "shoes": {
        "items": ["sneakers", "boots", "sandals", "loafers", "running shoes", "slippers"],
        "materials": ["leather", "suede", "canvas", "mesh", "rubber"],
        "price": 70.0,
        "brands": ["Stridewell", "Pacefoot", "Cobbler & Co"],
    },
    "electronics": {
        "items": ["headphones", "phone case", "charger", "speaker", "smartwatch", "keyboard"],
        "materials": ["wireless", "compact", "pro", "mini", "travel"],
        "price": 90.0,
        "brands": ["Voltic", "Sonance", "Pixelon"],
    },
    "home": {
        "items": ["mug", "lamp", "cushion", "blanket", "vase", "candle", "towel set"],
        "materials": ["ceramic", "glass", "cotton", "wooden", "velvet"],
        "price": 25.0,
        "brands": ["Hearthly", "Nestwood", "Casa Lumo"],
    },
    "beauty": {
        "items": ["face cream", "shampoo", "lipstick", "perfume", "serum", "body lotion"],
        "materials": ["organic", "vegan", "fragrance-free", "herbal", "mineral"],
        "price": 20.0,
        "brands": ["Glowen", "Purelle", "Verdant"],
    },
    "sports": {
        "items": ["yoga mat", "water bottle", "dumbbells", "backpack", "cycling gloves"],
        "materials": ["lightweight", "recycled", "foam", "steel", "waterproof"],
        "price": 40.0,
        "brands": ["Trailpeak", "Corestrong", "Aeromove"],
    },
}
COLOURS = ["Red", "Blue", "Black", "White", "Green", "Grey", "Navy", "Beige", "Pink", "Yellow"]
DEAL_WORDS = ["cheap", "sale", "discount", "deal", "under 20"]


@dataclass
class SyntheticConfig:
    """Size and seed of the synthetic log; the defaults make a demo-sized run.

    Defaults: 12 shops x 500 buyers = 6,000 buyer x shop pairs, about 175k events.
    """

    n_shops: int = 12
    buyers_per_shop: int = 500
    products_per_shop: int = 120
    days: int = 28
    start_date: str = "2024-03-04"  # a Monday
    mix_concentration: float = 1.5  # Dirichlet alpha per type; lower = more lopsided shops
    buyer_noise: float = 0.15  # log-normal sigma of each buyer's jitter of its type's rates
    seed: int = 7


@dataclass
class SyntheticLog:
    """Where the generator wrote the log and its truth, with a few counts."""

    events_csv: Path
    truth_parquet: Path
    truth_json: Path
    n_events: int
    n_pairs: int
    shop_mix: dict[str, dict[str, float]] = field(default_factory=dict)


def generate_synthetic(out_dir: Path | str, config: SyntheticConfig | None = None) -> SyntheticLog:
    """Write synthetic_events.csv (generic schema) and the planted-type truth into out_dir."""
    config = config or SyntheticConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    start = datetime.fromisoformat(config.start_date).replace(tzinfo=timezone.utc)

    rows: list[tuple] = []
    truth: list[tuple[str, str, str]] = []
    shop_mix: dict[str, dict[str, float]] = {}
    type_names = [t.name for t in BUYER_TYPES]
    for s in range(config.n_shops):
        shop = f"synthetic-shop-{s + 1:02d}"
        catalog = _shop_catalog(rng, shop, config.products_per_shop)
        mix = rng.dirichlet([config.mix_concentration] * len(BUYER_TYPES))
        shop_mix[shop] = {name: round(float(p), 6) for name, p in zip(type_names, mix)}
        planted = rng.choice(len(BUYER_TYPES), size=config.buyers_per_shop, p=mix)
        for b, type_index in enumerate(planted):
            buyer = f"synthetic-buyer-{s * config.buyers_per_shop + b + 1:05d}"
            kind = BUYER_TYPES[type_index]
            truth.append((shop, buyer, kind.name))
            rows += _buyer_events(rng, kind, shop, buyer, catalog, start, config)

    columns = ["shop_id", "buyer_id", "session_id", "ts", "event_type", "product_id",
               "category", "price", "query", "title", "brand"]
    events = pd.DataFrame(rows, columns=columns)
    seconds = pd.to_timedelta(events["ts"].round(), unit="s")
    events["ts"] = (pd.Timestamp(start) + seconds).dt.strftime("%Y-%m-%d %H:%M:%S")
    events_csv = out / EVENTS_CSV
    # DuckDB writes CSV quickly and quotes only fields that need it.
    duckdb.from_df(events).write_csv(str(events_csv), header=True)
    truth_parquet = out / TRUTH_PARQUET
    pd.DataFrame(truth, columns=["shop_id", "buyer_id", "planted_type"]).to_parquet(
        truth_parquet, index=False
    )
    truth_json = out / TRUTH_JSON
    truth_json.write_text(json.dumps({
        "synthetic": True,
        "note": "SYNTHETIC data with planted buyer types; not a real log",
        "config": asdict(config),
        "types": [asdict(t) for t in BUYER_TYPES],
        "shop_mix": shop_mix,
        "files": {"events": EVENTS_CSV, "truth": TRUTH_PARQUET},
    }, indent=2) + "\n")
    return SyntheticLog(events_csv, truth_parquet, truth_json, len(events), len(truth), shop_mix)


def read_truth(out_dir: Path | str) -> tuple[pd.DataFrame, dict]:
    """(buyer x shop -> planted_type table, the truth JSON) written by generate_synthetic."""
    out = Path(out_dir)
    return pd.read_parquet(out / TRUTH_PARQUET), json.loads((out / TRUTH_JSON).read_text())


# ------------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class _Product:
    product_id: str
    category: str
    title: str
    brand: str
    price: float


@dataclass
class _ShopCatalog:
    """Products of one shop by category, each category sorted by price (cheapest first)."""

    by_category: dict[str, list[_Product]]
    names: list[str]
    cumulative_weights: list[float]  # of the chance that a random pick lands in each category

    def random_category(self, rng: np.random.Generator) -> str:
        index = bisect.bisect_right(self.cumulative_weights, rng.random())
        return self.names[min(index, len(self.names) - 1)]


def _shop_catalog(rng: np.random.Generator, shop: str, n_products: int) -> _ShopCatalog:
    names = list(CATEGORIES)
    # Each shop leans on a few categories, as real shops do.
    shares = rng.dirichlet([0.8] * len(names))
    counts = np.maximum(8, np.round(shares * n_products)).astype(int)
    by_category: dict[str, list[_Product]] = {}
    serial = 0
    for category, count in zip(names, counts):
        words = CATEGORIES[category]
        prices = np.sort(np.round(words["price"] * rng.lognormal(0.0, 0.6, size=count)) + 0.99)
        products = []
        for price in prices:
            serial += 1
            title = (f"{COLOURS[rng.integers(len(COLOURS))]} "
                     f"{_pick(rng, words['materials'])} {_pick(rng, words['items'])}")
            products.append(_Product(f"{shop}-p{serial:04d}", category, title,
                                     _pick(rng, words["brands"]), round(float(price), 2)))
        by_category[category] = products
    return _ShopCatalog(by_category, names, list(np.cumsum(counts / counts.sum())))


def _pick(rng: np.random.Generator, words: list[str]) -> str:
    return words[rng.integers(len(words))]


# -------------------------------------------------------------------------------- buyers


def _jitter(rng: np.random.Generator, value: float, sigma: float, cap: float = 1.0) -> float:
    return float(min(cap, value * rng.lognormal(0.0, sigma)))


def _buyer_events(rng, kind: BuyerType, shop: str, buyer: str, catalog: _ShopCatalog, start,
                  config) -> list:
    """All events of one buyer x shop pair, session by session; ts in seconds since start."""
    noise = config.buyer_noise
    rates = {
        "search_share": _jitter(rng, kind.search_share, noise, 0.9),
        "wishlist_rate": _jitter(rng, kind.wishlist_rate, noise, 0.9),
        "cart_rate": _jitter(rng, kind.cart_rate, noise, 0.98),
        "remove_rate": _jitter(rng, kind.remove_rate, noise, 0.95),
        "purchase_rate": _jitter(rng, kind.purchase_rate, noise, 0.98),
    }
    favourite = catalog.random_category(rng)
    n_sessions = 1 + rng.poisson(max(0.0, kind.sessions * rng.lognormal(0, noise) - 1))
    rows = []
    for number, ts in enumerate(_session_starts(rng, kind, n_sessions, start, config.days), 1):
        session = f"{buyer}-s{number:02d}"
        steps = _session_steps(rng, kind, rates, catalog, favourite)
        # Pauses stay well under the 30-minute gap that would split a session.
        pauses = np.minimum(900.0, 3 + rng.exponential(kind.seconds_per_event, size=len(steps)))
        for (event_type, product, query), pause in zip(steps, pauses):
            ts += float(pause)
            if product is None:
                rows.append((shop, buyer, session, ts, event_type, None, None, None, query,
                             None, None))
            else:
                rows.append((shop, buyer, session, ts, event_type, product.product_id,
                             product.category, product.price, query, product.title,
                             product.brand))
    return rows


def _session_starts(rng, kind: BuyerType, n: int, start: datetime, days: int) -> list[float]:
    """Session starts (seconds after `start`): weekday/weekend and hour by type, 2 h apart."""
    weekend_days = [d for d in range(days) if (start + timedelta(days=d)).weekday() >= 5]
    week_days = [d for d in range(days) if (start + timedelta(days=d)).weekday() < 5]
    starts = []
    for _ in range(n):
        pool = weekend_days if rng.random() < kind.weekend_share else week_days
        day = pool[rng.integers(len(pool))]
        hour = (kind.hour + rng.normal(0, kind.hour_spread)) % 24
        starts.append(day * 86400.0 + hour * 3600.0)
    starts.sort()
    for i in range(1, len(starts)):  # keep sessions apart: a 30-minute gap splits them anyway
        starts[i] = max(starts[i], starts[i - 1] + 7200.0)
    return starts


def _session_steps(rng, kind: BuyerType, rates: dict, catalog: _ShopCatalog,
                   favourite: str) -> list[tuple]:
    """(event_type, product or None, query or None) for one session, in order."""
    n_browse = 1 + rng.poisson(max(0.0, kind.events_per_session - 1))
    steps: list[tuple] = []
    if rng.random() < 0.5:
        steps.append(("page_view", None, None))
    viewed: list[_Product] = []
    for _ in range(n_browse):
        if rng.random() < kind.category_focus:
            category = favourite
        else:
            category = catalog.random_category(rng)
        if rng.random() < rates["search_share"]:
            steps.append(("search", None, _query(rng, kind, category)))
        product = _pick_product(rng, kind, catalog.by_category[category])
        steps.append(("product_view", product, None))
        viewed.append(product)
        if rng.random() < rates["wishlist_rate"]:
            steps.append(("add_to_wishlist", product, None))
    if rng.random() >= rates["cart_rate"]:
        return steps
    carted = [viewed[-1]] + [p for p in viewed[:-1] if rng.random() < 0.15]
    for product in carted:
        steps.append(("add_to_cart", product, None))
    kept = []
    for product in carted:
        if rng.random() < rates["remove_rate"]:
            steps.append(("remove_from_cart", product, None))
        else:
            kept.append(product)
    if kept and rng.random() < rates["purchase_rate"]:
        steps.append(("checkout", None, None))
        steps += [("purchase", product, None) for product in kept]
    return steps


def _pick_product(rng, kind: BuyerType, products: list[_Product]) -> _Product:
    """A product near the buyer's price level within the category (sorted by price)."""
    wanted = min(1.0, max(0.0, kind.price_level + rng.normal(0, 0.12)))
    centre = round(wanted * (len(products) - 1))
    spread = max(1, len(products) // 10)
    index = centre + int(rng.integers(-spread, spread + 1))
    return products[min(len(products) - 1, max(0, index))]


def _query(rng, kind: BuyerType, category: str) -> str:
    words = CATEGORIES[category]
    query = f"{_pick(rng, words['materials'])} {_pick(rng, words['items'])}"
    if kind.price_level < 0.2:
        query = f"{_pick(rng, DEAL_WORDS)} {query}"
    return query
