"""Per-shop type mixes (shop_mix.json) and per-type profiles (types.json) of a trained codebook.

A type's profile is the mean of its buyers' scaled features relative to the population, in
population standard deviations (an effect size per feature). The one-line summary names the
two strongest deviations in words ("many views", "adds to cart often") and then how the type
buys compared with everyone ("rarely buys", "buys often", or "abandons" when it also carts a
lot). The phrases come from the feature names, so new features get a sensible (if plainer)
phrase without touching this file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from codebook.metrics import shop_mixes

# A deviation must reach this many population standard deviations to be put into words.
NOTABLE_EFFECT = 0.5
# A type "buys often" above this multiple of the overall rate and "rarely buys" below its inverse.
CONVERSION_RATIO = 1.5

# (name fragments, phrase when high, phrase when low); the first matching row wins, so the more
# specific fragments come first.
_PHRASES: list[tuple[tuple[str, ...], str, str]] = [
    (("remove",), "removes items from the cart", "keeps what it carts"),
    (("recency",), "not seen for a while", "seen recently"),
    (("per_session",), "long visits", "short visits"),
    (("repeat",), "revisits the same products", "rarely revisits products"),
    (("weekend",), "shops at weekends", "shops on weekdays"),
    (("gap",), "slow between clicks", "quick between clicks"),
    (("first_session", "first_visit"), "buys on the first visit", "needs several visits to buy"),
    (("checkout",), "reaches checkout often", "rarely reaches checkout"),
    (("purchase", "buy", "order", "conver"), "buys often", "rarely buys"),
    (("cart",), "adds to cart often", "rarely adds to cart"),
    (("wishlist", "favour", "favor", "collect"), "saves favourites", "rarely saves favourites"),
    (("search", "query"), "searches a lot", "rarely searches"),
    (("price", "spend", "amount"), "looks at pricier items", "looks at cheaper items"),
    (("categor", "divers", "distinct", "unique", "entropy", "brand"), "browses widely", "sticks to a few products"),
    (("session", "visit"), "many visits", "a single visit"),
    (("day", "span", "recency", "tenure", "return"), "comes back over many days", "active on a single day"),
    (("duration", "dwell", "gap", "time", "hour"), "long sessions", "short sessions"),
    (("view", "click", "page"), "many views", "few views"),
    (("event", "action", "activity"), "very active", "little activity"),
]


def feature_phrase(name: str, effect: float) -> str:
    lowered = name.lower()
    for fragments, high, low in _PHRASES:
        if any(f in lowered for f in fragments):
            return high if effect > 0 else low
    return f"{'high' if effect > 0 else 'low'} {name.replace('_', ' ')}"


def summarize_type(effects: dict[str, float], conversion_rate: float | None, overall_rate: float | None, groups: dict[str, str]) -> str:
    """One line in words from a type's feature effects and its conversion rate."""
    phrases: list[str] = []
    ranked = sorted(effects.items(), key=lambda item: -abs(item[1]))
    for name, effect in ranked:
        if abs(effect) < NOTABLE_EFFECT or groups.get(name) == "embedding":
            continue
        phrase = feature_phrase(name, effect)
        if phrase not in phrases:
            phrases.append(phrase)
        if len(phrases) == 2:
            break
    if conversion_rate is not None and overall_rate:
        carts_a_lot = "adds to cart often" in phrases
        if conversion_rate >= CONVERSION_RATIO * overall_rate and "buys often" not in phrases:
            phrases.append("buys often")
        elif conversion_rate <= overall_rate / CONVERSION_RATIO:
            phrases = [p for p in phrases if p != "buys often"]
            word = "abandons" if carts_a_lot else "rarely buys"
            if word not in phrases and "rarely buys" not in phrases:
                phrases.append(word)
    return ", ".join(phrases) if phrases else "typical buyer"


def shop_mix_json(shop_ids: np.ndarray, codes: np.ndarray, codebook_size: int) -> dict:
    """shop_mix.json: for every shop its buyer count and probability over the K codes."""
    shops, n_buyers, mixes = shop_mixes(shop_ids, codes, codebook_size)
    return {
        "codebook_size": codebook_size,
        "shops": {
            str(shop): {"n_buyers": int(n), "probs": [round(float(p), 6) for p in mix]}
            for shop, n, mix in zip(shops, n_buyers, mixes)
        },
    }


def types_json(
    frame: pd.DataFrame,
    scaled: np.ndarray,
    codes: np.ndarray,
    codebook_size: int,
    feature_names: list[str],
    feature_groups: dict[str, str],
    top_n_categories: int = 3,
) -> dict:
    """types.json: per code its share, real conversion rate, median events, cart rate (share who
    added to a cart), median product views, top categories, a feature profile (effect sizes) and
    a one-line summary. Info columns that the frame lacks
    (converted, n_events, top_category) are reported as null."""
    codes = np.asarray(codes)
    population_mean = scaled.mean(0)
    population_std = np.where(scaled.std(0) > 1e-9, scaled.std(0), 1.0)
    converted = frame["converted"].to_numpy(dtype=np.float64) if "converted" in frame else None
    n_events = frame["n_events"].to_numpy(dtype=np.float64) if "n_events" in frame else None
    # Raw funnel counts, so policies can act out a type's real funnel (agent/baselines.py).
    carts = frame["count_add_to_cart"].to_numpy(dtype=np.float64) if "count_add_to_cart" in frame else None
    views = frame["count_product_view"].to_numpy(dtype=np.float64) if "count_product_view" in frame else None
    # Logs without categories (tmall brand log) leave top_category null: no top categories then.
    categories = frame["top_category"].astype("string").to_numpy(na_value=None) if "top_category" in frame else None
    overall_rate = float(converted.mean()) if converted is not None and len(converted) else None

    types = []
    for code in range(codebook_size):
        members = codes == code
        n = int(members.sum())
        entry: dict = {"code": code, "n_buyers": n, "share": n / max(len(codes), 1)}
        if n == 0:
            entry.update(conversion_rate=None, median_events=None, cart_rate=None, median_product_views=None,
                         top_categories=[], profile={}, summary="unused")
            types.append(entry)
            continue
        effects = (scaled[members].mean(0) - population_mean) / population_std
        profile = {name: round(float(e), 3) for name, e in zip(feature_names, effects)}
        rate = float(converted[members].mean()) if converted is not None else None
        entry["conversion_rate"] = rate
        entry["median_events"] = float(np.median(n_events[members])) if n_events is not None else None
        entry["cart_rate"] = float((carts[members] > 0).mean()) if carts is not None else None
        entry["median_product_views"] = float(np.median(views[members])) if views is not None else None
        entry["top_categories"] = _top_categories(categories[members], top_n_categories) if categories is not None else []
        entry["profile"] = profile
        entry["summary"] = summarize_type(profile, rate, overall_rate, feature_groups)
        types.append(entry)
    return {"codebook_size": codebook_size, "overall_conversion_rate": overall_rate, "types": types}


def _top_categories(values: np.ndarray, top_n: int) -> list[dict]:
    counts = pd.Series(values).dropna().value_counts()
    total = counts.sum()
    return [{"category": str(c), "share": float(k / total)} for c, k in counts.head(top_n).items()]
