"""Planning a replay: which real buyers are replayed, and what each of them does.

Part of `simpersona make-traces` (harness/eval/replay.py runs it; harness/eval/scripted_buyer.py
acts each plan out in the store). The input is events.parquet (DESIGN.md, "File formats") and
the buyer types of the codebook (shop_id, buyer_id, code); the output is one BuyerPlan per real
buyer × shop: the buyer's events in time order as intents, and the units it really purchased.

Events become intents one to one, with two exceptions:

    add_to_wishlist   the store has no wishlist: planned as a product view
    purchase          a run of consecutive purchase events of one session (checkout events in
                      between are part of it) is one order; every purchase event is one unit, so
                      the order holds each product with quantity = its number of purchase events

`BuyerPlan.expected` (product_id -> purchased units, over every purchase event) is what the
store's order log must show for the replay of this buyer to be exact.

Long buyers. When a buyer's intents would take more than `max_steps_per_buyer` steps (estimated
per intent), runs of consecutive repeated views of one product within one visit (session) are
collapsed to one view first; if that is not enough, the oldest browsing intents (views, searches,
page views, then cart changes) are dropped. Purchases are always kept, so a buyer with many orders
may still exceed the budget. What was shortened is counted in the plan (and the report).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from storefronts.catalog import stable_unit

EVENT_COLUMNS = ("shop_id", "buyer_id", "ts", "event_type", "product_id")
REPLAYED_EVENT_TYPES = (
    "page_view", "product_view", "search", "add_to_wishlist", "add_to_cart", "remove_from_cart",
    "checkout", "purchase",
)
BROWSING = ("product_view", "page_view", "search")

# Rough steps per intent, only to decide whether a buyer needs shortening (see the docstring).
ESTIMATED_STEPS = {"product_view": 2, "page_view": 1, "search": 1, "add_to_cart": 1,
                   "remove_from_cart": 2, "checkout": 2}
ESTIMATED_ORDER_STEPS = 14  # cart, checkout, every form field, continue buttons, place order
ESTIMATED_ITEM_STEPS = 3    # reach the product and add it


class ReplayError(ValueError):
    """Input that cannot be replayed at all (bad columns, unknown shops, unknown event types)."""


# ---------------------------------------------------------------------------------------------
# Inputs


def load_frame(source: str | Path | pd.DataFrame, what: str) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.is_file():
        raise ReplayError(f"{path}: {what} file not found")
    try:
        return pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise ReplayError(f"{path}: cannot read the {what} as Parquet ({error})") from None


def check_events(events: pd.DataFrame, source: str) -> pd.DataFrame:
    """Validate the columns and event types; returns a copy with string ids and source_row."""
    missing = [name for name in EVENT_COLUMNS if name not in events.columns]
    if missing:
        raise ReplayError(f"{source}: missing column(s) {', '.join(missing)}; expected events.parquet columns "
                          f"{', '.join(EVENT_COLUMNS)} (+ session_id, category, query, source_row)")
    events = events.copy()
    unknown = ~events["event_type"].isin(REPLAYED_EVENT_TYPES)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise ReplayError(f"{source}: row {row + 1} has event_type {events['event_type'].iloc[row]!r}; "
                          f"expected one of {', '.join(REPLAYED_EVENT_TYPES)}")
    for name in ("shop_id", "buyer_id"):
        if events[name].isna().any():
            row = int(np.flatnonzero(events[name].isna().to_numpy())[0])
            raise ReplayError(f"{source}: row {row + 1} has no {name}")
        events[name] = events[name].astype(str)
    if "source_row" not in events.columns:
        events["source_row"] = np.arange(1, len(events) + 1)  # the frame's order breaks ties in ts
    return events


def check_codes(codes: pd.DataFrame) -> pd.DataFrame:
    missing = [name for name in ("shop_id", "buyer_id", "code") if name not in codes.columns]
    if missing:
        raise ReplayError(f"codes: missing column(s) {', '.join(missing)}; expected shop_id, buyer_id, code")
    return codes


# ---------------------------------------------------------------------------------------------
# One buyer's events -> the intents the scripted buyer acts out


@dataclass
class Intent:
    """One thing the buyer does: an event, or a whole order (`items`: product_id -> units)."""

    kind: str  # an event type of REPLAYED_EVENT_TYPES (purchase: one order)
    product_id: str | None = None
    category: str | None = None
    query: str | None = None
    items: Counter = field(default_factory=Counter)
    session: str = ""  # the visit it belongs to (a repeated view in a new visit is kept)


@dataclass
class BuyerPlan:
    index: int  # its place in the replay (a themed replay gives buyer n theme n mod len(themes))
    shop_id: str
    buyer_id: str
    code: int
    intents: list[Intent]
    expected: Counter  # product_id -> purchased units (every purchase event, never shortened)
    n_events: int
    collapsed_views: int = 0
    dropped_events: int = 0

    @property
    def estimated_steps(self) -> int:
        return estimate_steps(self.intents)


def estimate_steps(intents: list[Intent]) -> int:
    total = 1  # the final stop
    for intent in intents:
        if intent.kind == "purchase":
            total += ESTIMATED_ORDER_STEPS + ESTIMATED_ITEM_STEPS * len(intent.items)
        else:
            total += ESTIMATED_STEPS.get(intent.kind, 2)
    return total


def intents_from_events(events: pd.DataFrame) -> list[Intent]:
    """One buyer's events, in time order, as intents; consecutive purchases of a session are one order."""
    intents: list[Intent] = []
    order_session = None  # the session of the order still open at the end of `intents`
    for row in events.itertuples(index=False):
        kind = row.event_type
        product = _text(row.product_id)
        session = _text(getattr(row, "session_id", None))
        if kind == "purchase":
            if intents and intents[-1].kind == "purchase" and order_session == session:
                intents[-1].items[product] += 1
            else:
                intents.append(Intent("purchase", items=Counter({product: 1}), session=session))
                order_session = session
            continue
        if kind == "checkout" and intents and intents[-1].kind == "purchase" and order_session == session:
            continue  # a checkout inside a run of purchases is part of that order
        order_session = None
        if kind == "add_to_wishlist":
            kind = "product_view"  # the store has no wishlist (see the module docstring)
        intents.append(Intent(kind, product_id=product, category=_text(getattr(row, "category", None)),
                              query=_text(getattr(row, "query", None)), session=session))
    return intents


def shorten(intents: list[Intent], max_steps: int) -> tuple[list[Intent], int, int]:
    """Fit a buyer into max_steps (estimated): (intents, views collapsed, events dropped)."""
    if estimate_steps(intents) <= max_steps:
        return intents, 0, 0
    collapsed: list[Intent] = []
    for intent in intents:
        previous = collapsed[-1] if collapsed else None
        if (intent.kind == "product_view" and previous is not None and previous.kind == "product_view"
                and previous.product_id == intent.product_id and previous.session == intent.session):
            continue
        collapsed.append(intent)
    n_collapsed = len(intents) - len(collapsed)
    dropped = 0
    # Oldest browsing first, then cart changes; purchases never.
    for kinds in (BROWSING, ("add_to_cart", "remove_from_cart", "checkout")):
        position = 0
        while estimate_steps(collapsed) > max_steps and position < len(collapsed):
            if collapsed[position].kind in kinds:
                del collapsed[position]
                dropped += 1
            else:
                position += 1
    return collapsed, n_collapsed, dropped


def plan_buyers(events: pd.DataFrame, codes: pd.DataFrame, *, max_buyers_per_shop: int | None,
                max_steps_per_buyer: int, seed: int) -> tuple[list[BuyerPlan], dict]:
    """The buyers to replay, shop by shop, and counts of the ones left out (with why).

    max_buyers_per_shop: sample this many buyers per shop (seeded), None for all of them.
    max_steps_per_buyer: the step budget each plan is shortened to fit (see `shorten`).
    """
    code_of = {(str(s), str(b)): int(c) for s, b, c in codes[["shop_id", "buyer_id", "code"]].itertuples(index=False)}
    events = events.sort_values(["shop_id", "buyer_id", "ts", "source_row"], kind="stable")
    plans: list[BuyerPlan] = []
    skipped = Counter()
    for shop_id, shop_events in events.groupby("shop_id", sort=True):
        buyers = list(shop_events.groupby("buyer_id", sort=True))
        if max_buyers_per_shop is not None and len(buyers) > max_buyers_per_shop:
            # Seeded per shop, so a shop's sample does not change when other shops are added.
            rng = np.random.default_rng([seed, int(stable_unit("replay-sample", str(shop_id)) * 2**32)])
            chosen = sorted(rng.choice(len(buyers), size=max_buyers_per_shop, replace=False))
            skipped["not_sampled"] += len(buyers) - len(chosen)
            buyers = [buyers[i] for i in chosen]
        for buyer_id, buyer_events in buyers:
            code = code_of.get((str(shop_id), str(buyer_id)))
            if code is None:
                skipped["no_code"] += 1
                continue
            intents = intents_from_events(buyer_events)
            expected = Counter(_text(p) for p in buyer_events.loc[buyer_events["event_type"] == "purchase", "product_id"])
            intents, n_collapsed, n_dropped = shorten(intents, max_steps_per_buyer)
            plans.append(BuyerPlan(len(plans), str(shop_id), str(buyer_id), code, intents, expected,
                                   len(buyer_events), n_collapsed, n_dropped))
    return plans, dict(skipped)


def _text(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    return str(value).strip()
