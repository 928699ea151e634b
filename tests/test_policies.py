"""Baseline policies (agent/baselines.py) on real pages of the mock store.

The store serves a catalog built from the real REES46 log; the codebook artifact is a small
hand-written one in the documented shape (codebook/profiles.py), with one type that nearly always
buys and one that rarely does. The store is the built-in default variant, payment step included.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agent.actions import parse_action
from agent.baselines import (
    RandomPolicy,
    TypeProfileError,
    TypeProfilePolicy,
    fake_value_for,
    load_type_profiles,
)
from agent.page import parse
from agent.policy import BuyerTurn
from storefronts.fixtures import rees46_catalog

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REES46 = DATA / "rees46_multicategory_2019oct" / "2019-Oct_head17k.csv"
STORE_SHOP = "rees46"
HIGH, LOW, MIDDLE = 0, 1, 2



def real_catalog(products: int = 60) -> pd.DataFrame:
    """Products of the real REES46 log as a catalog (CATALOG_SCHEMA columns)."""
    if not REES46.is_file():
        pytest.skip(f"real data not found at {REES46}")
    return rees46_catalog(REES46, STORE_SHOP, products)


def write_codebook(directory: Path) -> Path:
    """A minimal codebook artifact: shop_mix.json and types.json as codebook/profiles.py writes them.

    Shops: "mixed" (all three types), "high" (only the buying type), "low" (only the rare buyer).
    """
    directory.mkdir(parents=True, exist_ok=True)
    mixes = {
        "mixed": [0.4, 0.4, 0.2],
        "high": [1.0, 0.0, 0.0],
        "low": [0.0, 1.0, 0.0],
    }
    shop_mix = {
        "codebook_size": 4,
        "shops": {shop: {"n_buyers": 100, "probs": probs + [0.0]} for shop, probs in mixes.items()},
    }
    types = {
        "codebook_size": 4,
        "overall_conversion_rate": 0.4,
        "types": [
            {"code": HIGH, "n_buyers": 40, "share": 0.4, "conversion_rate": 0.95, "cart_rate": 1.0,
             "median_product_views": 1, "median_events": 5,
             "top_categories": [{"category": "electronics.smartphone", "share": 0.6}], "summary": "buys often"},
            {"code": LOW, "n_buyers": 40, "share": 0.4, "conversion_rate": 0.02, "median_events": 1,
             "top_categories": [{"category": "appliances.environment.water_heater", "share": 0.5}],
             "summary": "rarely buys"},
            {"code": MIDDLE, "n_buyers": 20, "share": 0.2, "conversion_rate": 0.3, "median_events": 2,
             "top_categories": [], "summary": "typical buyer"},
            {"code": 3, "n_buyers": 0, "share": 0.0, "conversion_rate": None, "median_events": None,
             "top_categories": [], "profile": {}, "summary": "unused"},
        ],
    }
    (directory / "shop_mix.json").write_text(json.dumps(shop_mix))
    (directory / "types.json").write_text(json.dumps(types))
    return directory


@pytest.fixture(scope="module")
def codebook_dir(tmp_path_factory) -> Path:
    return write_codebook(tmp_path_factory.mktemp("codebook"))


@pytest.fixture(scope="module")
def store():
    from storefronts.server import serve_store

    with serve_store(real_catalog(), STORE_SHOP, variant="default") as running:
        yield running


class RecordingPolicy:
    """Wraps a policy and keeps every (turn, action line) it produced."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.seen: list[tuple[BuyerTurn, str]] = []

    def act(self, turns):
        lines = self.inner.act(turns)
        self.seen.extend(zip(turns, lines))
        return lines

    def forget(self, buyer_index):
        if hasattr(self.inner, "forget"):
            self.inner.forget(buyer_index)


def run_http(store, codebook_dir, policy, tmp_path, shop="mixed", buyers=6, seed=0, run_id="run"):
    from harness.sim.simulate import simulate

    return simulate(
        store.url, shop, codebook_dir, policy, buyers=buyers, concurrency=3, driver="http", max_steps=30,
        seed=seed, out_dir=tmp_path, run_id=run_id, store_db=store.db_path, our_store=True, progress=False,
    )


def ids_in(observation: str) -> set[int]:
    return {int(i) for i in re.findall(r"^\s*\[(\d+)\]", observation, flags=re.MULTILINE)}


# ---------------------------------------------------------------------------------------------


def test_type_profiles_read_fields_and_fallbacks(codebook_dir):
    profiles = load_type_profiles(codebook_dir)
    assert sorted(profiles) == [HIGH, LOW, MIDDLE]  # the unused code has no conversion rate
    high, low = profiles[HIGH], profiles[LOW]
    assert (high.conversion_rate, high.cart_rate, high.median_product_views) == (0.95, 1.0, 1.0)
    assert high.purchase_given_cart == pytest.approx(0.95)
    assert high.top_categories == ("electronics.smartphone",)
    # No cart_rate: half of the carts are assumed to convert; no median_product_views: median_events.
    assert low.cart_rate == pytest.approx(0.04)
    assert low.purchase_given_cart == pytest.approx(0.5)
    assert low.median_product_views == 1.0


def test_type_profiles_reject_bad_rates_naming_file_and_code(tmp_path):
    (tmp_path / "types.json").write_text(json.dumps({"types": [{"code": 7, "conversion_rate": 1.5}]}))
    with pytest.raises(TypeProfileError, match=r"types\.json: code 7: 'conversion_rate' must lie in \[0, 1\]"):
        load_type_profiles(tmp_path)
    with pytest.raises(TypeProfileError, match="missing: not a codebook artifact directory"):
        load_type_profiles(tmp_path / "missing")


def test_funnel_plans_reproduce_the_real_conversion_rate(codebook_dir):
    policy = TypeProfilePolicy.from_codebook(codebook_dir)
    for code, rate in ((HIGH, 0.95), (LOW, 0.02), (MIDDLE, 0.3)):
        plans = [policy.plan_for(code, seed) for seed in range(3000)]
        buys = np.mean([plan.buys for plan in plans])
        tolerance = 4 * np.sqrt(rate * (1 - rate) / len(plans)) + 1e-3
        assert abs(buys - rate) < tolerance, (code, buys, rate)
        assert all(1 <= plan.views_before_decision <= policy.max_views for plan in plans)
        assert all(plan.adds_to_cart or not plan.buys for plan in plans)
    assert policy.plan_for(MIDDLE, 11) == policy.plan_for(MIDDLE, 11)


def test_fake_form_values_follow_the_labels():
    assert fake_value_for("Name on card") == "Test Buyer"
    assert fake_value_for("Card number").isdigit()
    assert fake_value_for("Expiry date") == "12/30"
    assert fake_value_for("Security code") == "123"
    assert fake_value_for("Postcode") == "10115"
    assert "@" in fake_value_for("Email address")
    assert fake_value_for("Search products") is None


@pytest.mark.parametrize("make_policy", [lambda cb: RandomPolicy(), TypeProfilePolicy.from_codebook], ids=["random", "type-profile"])
def test_policies_answer_every_turn_with_a_valid_action_on_real_pages(store, codebook_dir, tmp_path, make_policy):
    policy = RecordingPolicy(make_policy(codebook_dir))
    result = run_http(store, codebook_dir, policy, tmp_path, buyers=6)
    assert result.summary["completed"] == 6
    assert sum(record["n_steps"] for record in result.trajectories) == len(policy.seen)
    kinds = set()
    for turn, line in policy.seen:
        action = parse_action(line)  # raises on a malformed line
        kinds.add(action.verb)
        if action.element_id is not None:
            assert action.element_id in ids_in(turn.observation), (line, turn.observation)
    assert "click" in kinds


def test_random_policy_is_deterministic_per_seed(store, codebook_dir, tmp_path):
    recorder = RecordingPolicy(RandomPolicy())
    run_http(store, codebook_dir, recorder, tmp_path, buyers=3)
    turns = [turn for turn, _ in recorder.seen]
    first = RandomPolicy().act(turns)
    assert first == RandomPolicy().act(turns) == [line for _, line in recorder.seen]
    reseeded = [BuyerTurn(t.buyer_index, t.code, t.observation, t.history, t.seed + 1) for t in turns]
    assert RandomPolicy().act(reseeded) != first


def test_type_profile_runs_are_reproducible_from_the_seed(store, codebook_dir, tmp_path):
    def actions(run_id, seed):
        result = run_http(store, codebook_dir, TypeProfilePolicy.from_codebook(codebook_dir), tmp_path,
                          buyers=5, seed=seed, run_id=run_id)
        return {r["buyer_index"]: [s["action"] for s in r["steps"]] for r in result.trajectories}

    first = actions("a", seed=3)
    assert actions("b", seed=3) == first
    assert actions("c", seed=4) != first


def test_high_conversion_type_converts_more_than_low_conversion_type(store, codebook_dir, tmp_path):
    from storefronts.orderlog import read_orders

    high = run_http(store, codebook_dir, TypeProfilePolicy.from_codebook(codebook_dir), tmp_path,
                    shop="high", buyers=8, run_id="high")
    low = run_http(store, codebook_dir, TypeProfilePolicy.from_codebook(codebook_dir), tmp_path,
                   shop="low", buyers=8, run_id="low")
    assert high.summary["per_type"].keys() == {str(HIGH)}
    assert low.summary["per_type"].keys() == {str(LOW)}
    assert high.summary["converted"] > low.summary["converted"]
    assert high.summary["converted"] >= 5  # 95 % real conversion: the funnel must be passable
    tags = [order["buyer_tag"] for order in read_orders(store.db_path)]
    assert sum(tag.startswith("high:") for tag in tags) == high.summary["converted"]
    assert sum(tag.startswith("low:") for tag in tags) == low.summary["converted"]


def test_observation_elements_are_read_by_role_and_name():
    text = "\n".join(
        [
            "URL: http://shop.test/p/1",
            "Title: Kettle",
            "Elements:",
            '[1] link "Cart, 1 item"',
            '[4] button "Add to basket" — Kettle 12.99 EUR',
            '[9] combobox "Country" options: "Choose…" | "Germany"',
        ]
    )
    elements = parse(text).elements
    assert [(e.element_id, e.role, e.name) for e in elements] == [
        (1, "link", "Cart, 1 item"),
        (4, "button", "Add to basket"),
        (9, "combobox", "Country"),
    ]


def test_a_type_that_views_several_products_first_still_decides_in_a_shop_with_one_product(tmp_path):
    """Each Tmall brand's store has one product: coming back to it is another view (as the logs
    count views), so a type that views several products before deciding still decides and buys
    within the step budget instead of circling until max_steps."""
    from storefronts.server import serve_store

    directory = write_codebook(tmp_path / "codebook")
    types = json.loads((directory / "types.json").read_text())
    types["types"][HIGH].update(conversion_rate=1.0, median_product_views=4)
    (directory / "types.json").write_text(json.dumps(types))
    policy = TypeProfilePolicy.from_codebook(directory)
    with serve_store(real_catalog(products=1), STORE_SHOP, variant="default") as one_product:
        result = run_http(one_product, directory, policy, tmp_path, shop="high", buyers=6, run_id="one")
    views = [policy.plan_for(HIGH, record["seed"]).views_before_decision for record in result.trajectories]
    assert max(views) > 1  # the plans call for returns to the one product
    assert result.summary["converted"] == 6, result.summary["outcomes"]
