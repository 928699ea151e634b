"""harness.eval.evaluate: metrics on hand-made numbers, and a small end-to-end run on a Tmall subset
(real data, real stores, real replay, a real tiny agent, the http and browser drivers)."""

import json
import math
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from harness.eval.evaluate import (
    BASELINES,
    STRATUM_EVENTS,
    EvaluateConfig,
    MismatchedPolicy,
    agent_code_check,
    behaviour_columns,
    behaviour_measures,
    calibration_gap,
    calibration_shop_ids,
    candidate_key,
    evaluate,
    fold_config,
    real_buyers,
    rejection_reason,
    row_spec,
    run_buyers,
    select_trace_buyers,
    stratum_shares,
    traced_shops,
    type_gap,
    with_funnel_flags,
    worst_type,
)
from harness.eval.folds import rejected_gaps, seed_spread
from harness.eval.phases import PhaseTimes, pooled_phases
from harness.eval.metrics import (
    BEHAVIOUR_MEASURES,
    alignment_term,
    behaviour_figures,
    behaviour_summary,
    bootstrap_interval,
    buyers_needed,
    conversion_alignment,
    conversion_gap,
    correlations,
    expected_alignment_at,
    expected_rate_gap,
    intervals_overlap,
    mix_jsd,
    sampling_ceiling,
    strata_alignment,
    type_oracle_rate,
)
from agent.policy import BuyerTurn
from codebook.artifact import CodebookArtifact
from harness.eval.split import ShopSplit, SplitConfig
from harness.eval.verdicts import evaluation_verdicts
from harness.sim.paired import wilson_interval
from harness.sim.population import population_from_mix, quota_counts
from tmall_data import ingested_tmall_brands


# --- metrics on hand-made numbers ------------------------------------------------------------


def test_alignment():
    assert alignment_term(0.10, 0.10) == 1.0
    assert alignment_term(0.12, 0.10) == pytest.approx(0.8)
    assert alignment_term(0.05, 0.10) == pytest.approx(0.5)
    assert alignment_term(0.35, 0.10) == 0.0  # the error is capped at 100 %
    assert alignment_term(0.0, 0.0) == 1.0 and alignment_term(0.01, 0.0) == 0.0
    assert conversion_alignment([0.12, 0.05, 0.35], [0.10, 0.10, 0.10]) == pytest.approx((0.8 + 0.5 + 0.0) / 3)
    assert conversion_alignment([], []) is None


def test_type_oracle_weights_each_type_rate_by_the_shop_mix():
    rates = {0: 0.0, 1: 0.5, 2: 1.0}
    assert type_oracle_rate({0: 0.5, 1: 0.5}, rates, fallback=0.1) == pytest.approx(0.25)
    assert type_oracle_rate({2: 0.2, 0: 0.8}, rates, fallback=0.1) == pytest.approx(0.2)
    # A code without training buyers counts at the fallback (the global rate), not at zero.
    assert type_oracle_rate({1: 0.5, 7: 0.5}, rates, fallback=0.1) == pytest.approx(0.3)


def test_correlations():
    perfect = correlations([0.1, 0.2, 0.3, 0.4], [0.2, 0.4, 0.6, 0.8])
    assert perfect["pearson"] == pytest.approx(1.0) and perfect["spearman"] == pytest.approx(1.0)
    # Monotone but not linear: Spearman 1, Pearson below 1. By hand: deviations from the means
    # (-3, -2, -1, 6) and (-1.5, -0.5, 0.5, 1.5): r = 14 / sqrt(50 * 5).
    curved = correlations([1.0, 2.0, 3.0, 10.0], [1.0, 2.0, 3.0, 4.0])
    assert curved["spearman"] == pytest.approx(1.0) and curved["pearson"] == pytest.approx(14 / math.sqrt(250))
    reversed_ = correlations([3.0, 2.0, 1.0], [1.0, 2.0, 3.0])
    assert reversed_["pearson"] == pytest.approx(-1.0)
    assert correlations([0.1, 0.2], [0.1, 0.2])["pearson"] is None  # too few shops
    assert correlations([0.1, 0.1, 0.1], [0.1, 0.2, 0.3])["pearson"] is None  # constant side


def test_jsd():
    assert mix_jsd([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert mix_jsd([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)  # disjoint: 1 bit
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4); JSD = 1/2 KL(p||m) + 1/2 KL(q||m) in bits.
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25))
    assert mix_jsd([1.0, 0.0], [0.5, 0.5]) == pytest.approx(expected)
    # Dict mixes with different codes are aligned on the code.
    assert mix_jsd({0: 1.0}, {3: 1.0}, size=4) == pytest.approx(1.0)
    assert mix_jsd({2: 0.5, 5: 0.5}, {5: 0.5, 2: 0.5}) == pytest.approx(0.0)


def test_wilson_and_buyers_needed():
    low, high = wilson_interval(10, 100)
    assert low == pytest.approx(0.0552, abs=1e-3) and high == pytest.approx(0.1744, abs=1e-3)
    assert intervals_overlap((0.1, 0.2), (0.19, 0.3)) and not intervals_overlap((0.1, 0.2), (0.21, 0.3))
    assert buyers_needed(0.5, cap=10_000) == 100
    assert buyers_needed(0.0785, cap=10_000) == math.ceil(100 * 0.9215 / 0.0785)
    assert buyers_needed(0.01, cap=500) == 500 and buyers_needed(0.0, cap=300) == 300
    assert buyers_needed(0.9, cap=500, floor=50) == 50


def test_quota_reproduces_the_mix_exactly_by_largest_remainder():
    assert quota_counts({3: 0.25, 7: 0.75}, 2000) == {3: 500, 7: 1500}
    # 10 x (0.34, 0.33, 0.33) = 3.4, 3.3, 3.3: floors 3+3+3, the one left goes to the largest remainder.
    assert quota_counts({0: 0.34, 1: 0.33, 2: 0.33}, 10) == {0: 4, 1: 3, 2: 3}
    assert quota_counts({0: 0.5, 1: 0.5}, 3) == {0: 2, 1: 1}  # a tie goes to the smaller code
    assert quota_counts({0: 0.999, 1: 0.001}, 5) == {0: 5}  # a code whose quota rounds to 0 gets none
    population = population_from_mix({3: 0.25, 7: 0.75}, 2000, seed=1, shop="a")
    assert population == population_from_mix({3: 0.25, 7: 0.75}, 2000, seed=1, shop="a")
    assert Counter(b.code for b in population) == {3: 500, 7: 1500}


def test_two_shops_with_the_same_mix_get_independent_buyers():
    mix = {3: 0.25, 7: 0.75}
    first, second = population_from_mix(mix, 400, seed=1, shop="1001"), population_from_mix(mix, 400, seed=1, shop="1002")
    assert Counter(b.code for b in first) == Counter(b.code for b in second)  # the same composition
    assert not {b.seed for b in first} & {b.seed for b in second}  # but no buyer seed shared
    same_code = np.mean([a.code == b.code for a, b in zip(first, second)])
    assert 0.5 < same_code < 0.75  # independent orders agree on 0.25^2 + 0.75^2 = 62.5 % of positions


def test_bootstrap_interval_brackets_the_mean_over_shops():
    values = [0.2, 0.9, 0.5, 0.7, 0.4, 0.8, 0.6, 0.3]
    low, high = bootstrap_interval(values, seed=1)
    assert low < np.mean(values) < high and 0.2 <= low and high <= 0.9
    assert bootstrap_interval(values, seed=1) == [low, high]  # seeded
    assert bootstrap_interval([0.5, 0.5, 0.5]) == [0.5, 0.5] and bootstrap_interval([]) is None


def test_sampling_ceiling_is_what_binomial_noise_alone_allows():
    # N = 1, p = 0.5: the simulated rate is 0 or 1, each 50 % off in relative terms: 0.0 either way.
    assert expected_alignment_at(0.5, 1) == pytest.approx(0.0)
    # N = 2, p = 0.5: K = 1 (prob 0.5) scores 1, K = 0 or 2 score 0.
    assert expected_alignment_at(0.5, 2) == pytest.approx(0.5)
    assert expected_alignment_at(0.08, 300) < expected_alignment_at(0.08, 1000) < expected_alignment_at(0.08, 20000) < 1
    assert sampling_ceiling([0.5, 0.5], [1, 2]) == pytest.approx(0.25)


def test_the_type_check_counts_only_the_gap_that_sampling_does_not_explain():
    # Types that convert at 0 % or 100 % never stray by chance; at 50 % one buyer is always 0.5 off.
    assert expected_rate_gap(0.0, 40) == expected_rate_gap(1.0, 40) == 0.0
    assert expected_rate_gap(0.5, 1) == pytest.approx(0.5)
    assert expected_rate_gap(0.5, 2) == pytest.approx(0.25)
    assert expected_rate_gap(0.3, 10_000) == pytest.approx(math.sqrt(2 / math.pi * 0.3 * 0.7 / 10_000), rel=0.02)
    traces = {"0": {"traces": 10, "conversion_rate": 0.0}, "1": {"traces": 10, "conversion_rate": 0.5}}
    agent = {"types": {"0": {"buyers": 3, "conversion_rate": 0.0}, "1": {"buyers": 1, "conversion_rate": 1.0}}}
    check = agent_code_check(traces, agent)
    assert check["weighted_mean_abs_gap"] == pytest.approx(0.5 / 4) and check["sampling_gap"] == pytest.approx(0.5 / 4)
    assert type_gap(check) == pytest.approx(0.0)  # one buyer of a 50 % type converting is no evidence of blur
    blurred = agent_code_check(traces, {"types": {**agent["types"], "0": {"buyers": 3, "conversion_rate": 1 / 3}}})
    assert type_gap(blurred) == pytest.approx(1 / 4)


def test_the_conversion_gap_weighs_a_type_by_its_conversions_not_its_buyers():
    # 450 buyers who never buy, matched exactly; 50 of a type whose traces buy 40 %, converting 10 %.
    traces = {"never": {"traces": 60, "conversion_rate": 0.0}, "buys": {"traces": 60, "conversion_rate": 0.4}}
    agent = {"types": {"never": {"buyers": 450, "conversion_rate": 0.0}, "buys": {"buyers": 50, "conversion_rate": 0.1}}}
    check = agent_code_check(traces, agent)
    assert type_gap(check) < 0.025  # 50 × 0.3 / 500 less sampling: within the type check's limit
    chance = 50 * expected_rate_gap(0.4, 50)
    assert conversion_gap(check) == pytest.approx((50 * 0.3 - chance) / (50 * 0.4))  # 0.65 of its conversions lost
    exact = agent_code_check(traces, {"types": {**agent["types"], "buys": {"buyers": 50, "conversion_rate": 0.4}}})
    assert conversion_gap(exact) == pytest.approx(-chance / 20)  # as close as sampling allows: at most 0
    assert conversion_gap(agent_code_check({"never": traces["never"]}, agent)) is None  # no traced conversion


def test_the_calibration_keeps_the_candidate_nearest_the_traces_per_type_and_the_real_product_views(tmp_path):
    traces = {"buys": {"traces": 60, "conversion_rate": 1.0}, "leaves": {"traces": 60, "conversion_rate": 0.0}}
    def candidate(leaves_converting: float, viewed: float, real_viewed: float | None = 0.997) -> dict:
        agent = {"types": {"buys": {"buyers": 20, "conversion_rate": 1.0},
                           "leaves": {"buyers": 80, "conversion_rate": leaves_converting}}}
        return {"type_check": agent_code_check(traces, agent), "strata": {"viewed": {"sim": viewed, "real": real_viewed}}}
    # Guidance pushing every token: every type followed, a quarter of the buyers gone before a product.
    pushed, barred = candidate(0.0, 0.74), candidate(0.05, 0.99)
    assert type_gap(pushed["type_check"]) < type_gap(barred["type_check"])
    assert min([pushed, barred], key=calibration_gap) is barred
    assert calibration_gap(barred) == pytest.approx(0.8 * 0.05 + 0.007)
    # A log that records no product views leaves the type gap alone to decide.
    assert min([candidate(0.0, 0.74, None), candidate(0.05, 0.99, None)], key=calibration_gap)["strata"]["viewed"]["sim"] == 0.74
    assert candidate_key(0.5, 0.0) == "0.5" and candidate_key(1.0, 0.1) == "1 p0.1"
    with pytest.raises(ValueError, match=r"plausibility bars must lie in \[0, 1\)"):
        config_on_empty_input(tmp_path, calibrate_plausibilities=(0.0, 1.0))


def test_the_fold_table_names_the_chosen_bar_and_its_product_views_on_the_training_shops():
    from harness.eval.folds import fold_line

    check = agent_code_check({"0": {"traces": 5, "conversion_rate": 0.0}}, {"types": {"0": {"buyers": 9, "conversion_rate": 0.0}}})
    viewed = lambda sim: {"viewed": {"sim": sim, "real": 0.997}}
    calibration = {"chosen": 0.5, "chosen_plausibility": 0.1, "type_gap": 0.0,
                   "tried": {"0.5": {"type_check": check, "strata": viewed(0.742)},
                             "0.5 p0.1": {"type_check": check, "strata": viewed(0.998)}}}
    line = fold_line(0, {"policies": {}, "held_out_shops": ["1"], "temperature": 0.5, "calibration": calibration})
    assert (line["plausibility"], line["calibration_viewed"]) == (0.1, "0.998 / 0.997")


def test_buyers_who_act_against_their_type_are_counted_and_shown_per_fold():
    from harness.eval.evaluate import per_type_behaviour
    from harness.eval.folds import fold_line
    from harness.eval.report import folds_part

    # Type 1's traces always buy: one of its buyers carted and left, one never carted. Type 0's never buy: one bought.
    frame = pd.DataFrame({"code": [1, 1, 1, 1, 0, 0], "steps": [7, 7, 3, 2, 2, 9], "product_views": [1, 1, 1, 1, 1, 3],
                          "carted": [True, True, True, False, False, True],
                          "purchased": [True, True, False, False, False, True]})
    behaviour = per_type_behaviour(frame)
    assert (behaviour["types"]["1"]["abandoned_cart_rate"], behaviour["types"]["0"]["abandoned_cart_rate"]) == (0.25, 0.0)
    traces = {"1": {"traces": 60, "conversion_rate": 1.0}, "0": {"traces": 60, "conversion_rate": 0.0}}
    check = agent_code_check(traces, behaviour)
    assert check["against_type"] == {"buyers": 6, "missed": 2, "left_a_cart": 1, "bought": 1}
    line = fold_line(0, {"policies": {}, "held_out_shops": ["1"], "agent_check": check})
    assert "3 of 6: 2 of buying types bought nothing (1 left a cart), 1 of a type that never buys bought" in folds_part([line])
    # A type that buys half the time: no buyer is against it, and the column stays empty.
    mixed = agent_code_check({**traces, "1": {"traces": 60, "conversion_rate": 0.5}}, behaviour)
    assert mixed["against_type"] is None and fold_line(0, {"policies": {}, "held_out_shops": ["1"], "agent_check": mixed})["against_type"] is None


def test_a_calibration_made_under_another_guidance_is_not_resumed(tmp_path):
    import asyncio

    from harness.eval.evaluate import CALIBRATION_FILE, calibrate_temperature

    work = tmp_path / "paper"
    work.mkdir()
    (work / CALIBRATION_FILE).write_text(json.dumps({"shops": ["1"], "chosen": 0.5, "guidance": 1.0, "tried": {}}))
    config = config_on_empty_input(tmp_path)  # guidance 2
    with pytest.raises(ValueError, match=r"calibrated under persona guidance 1, this evaluation samples under 2: "
                                         r"use another --out, or finish it with --guidance 1"):
        asyncio.run(calibrate_temperature(config, work, None, None, None, None, None, None))


def config_on_empty_input(tmp_path, **options) -> EvaluateConfig:
    for name in ("events.parquet", "catalog.parquet"):
        (tmp_path / name).touch()  # the config only checks that they exist
    return EvaluateConfig(out_dir=tmp_path / "eval", input_dir=tmp_path, **options)


def calibrated_at_half(check: dict) -> dict:
    """A calibration.json that chose T = 0.5, where the agent's type check came out as `check`."""
    return {"chosen": 0.5, "tried": {"0.5": {"type_check": check}}}


def test_an_agent_that_drops_one_small_type_is_rejected_though_its_mean_gap_is_small(tmp_path):
    traces = {"big": {"traces": 60, "conversion_rate": 0.0}, "lost": {"traces": 60, "conversion_rate": 1.0},
              "tiny": {"traces": 60, "conversion_rate": 1.0}}
    agent = {"types": {"big": {"buyers": 800, "conversion_rate": 0.0}, "lost": {"buyers": 14, "conversion_rate": 2 / 14},
                       "tiny": {"buyers": 1, "conversion_rate": 0.0}}}
    check = agent_code_check(traces, agent)
    worst = worst_type(check)
    assert worst["code"] == "lost" and (worst["agent_converted"], worst["agent_buyers"]) == (2, 14)
    assert worst["gap"] == pytest.approx(1 - wilson_interval(2, 14)[1]) and worst["gap"] > 0.5
    assert worst_type({"per_code": {"tiny": {**check["per_code"]["tiny"]}}})["gap"] < 0.25  # 0 of 1 is no evidence
    calibration = {**calibrated_at_half(check), "type_gap": type_gap(check)}
    config = config_on_empty_input(tmp_path)
    assert calibration["type_gap"] < config.max_type_gap  # the mean over buyers hides the lost type
    assert "type lost converts 2 of 14" in rejection_reason(calibration, config, "paper")
    assert rejection_reason(calibration, replace(config, max_worst_type_gap=None, max_conversion_gap=None), "paper") is None
    mean_only = replace(config, max_type_gap=0.0, max_worst_type_gap=None, max_conversion_gap=None)
    assert "per type is" in rejection_reason(calibration, mean_only, "paper")
    # A calibration file written before type_gap was stored is judged from its check alike.
    older = {key: value for key, value in calibration.items() if key != "type_gap"}
    assert rejection_reason(older, mean_only, "paper") == rejection_reason(calibration, mean_only, "paper")


def test_an_agent_that_buys_with_a_type_that_never_buys_is_rejected_by_its_conversion_gap(tmp_path):
    # Tmall seed 4, fold 2: one of the never-buying types converted 9 of its 68 calibration buyers.
    traces = {"never": {"traces": 60, "conversion_rate": 0.0}, "leaks": {"traces": 60, "conversion_rate": 0.0},
              "buys": {"traces": 60, "conversion_rate": 1.0}}
    agent = {"types": {"never": {"buyers": 382, "conversion_rate": 0.0}, "leaks": {"buyers": 68, "conversion_rate": 9 / 68},
                       "buys": {"buyers": 50, "conversion_rate": 1.0}}}
    check = agent_code_check(traces, agent)
    calibration = calibrated_at_half(check)
    config = config_on_empty_input(tmp_path)
    assert type_gap(check) < config.max_type_gap and worst_type(check)["gap"] < config.max_worst_type_gap
    assert conversion_gap(check) == pytest.approx(9 / 50)  # 9 conversions put where the traces have none
    assert "misplaces 18% of its traces' conversions" in rejection_reason(calibration, config, "paper")
    assert rejection_reason(calibration, config, "strict") is None  # strict types buy at 17-68 %: not judged so
    assert rejection_reason(calibration, replace(config, max_conversion_gap=None), "paper") is None
    exact = calibrated_at_half(agent_code_check(
        traces, {"types": {**agent["types"], "leaks": {"buyers": 68, "conversion_rate": 0.0}}}))
    assert rejection_reason(exact, config, "paper") is None
    set_aside = {**calibration, "type_gap": type_gap(check), "worst_type": worst_type(check)}
    assert rejected_gaps(set_aside) == "0.018 / 0.07 / 0.18"  # the report's "rejected agents" cell


def test_strata_leave_out_what_the_real_log_never_records():
    rows = [{"strata": {"viewed": {"sim": 0.9, "real": 1.0}, "carted": {"sim": 0.2, "real": 0.1},
                        "checkout": {"sim": 0.3, "real": None}, "purchased": {"sim": 0.1, "real": 0.1}}},
            {"strata": {"viewed": {"sim": 1.0, "real": 1.0}, "carted": {"sim": 0.0, "real": 0.0},
                        "checkout": {"sim": 0.2, "real": None}, "purchased": {"sim": 0.0, "real": 0.2}}},
            {"policy": "global_rate"}]  # a reference row has no strata
    strata = strata_alignment(rows)
    assert strata["checkout"] is None
    assert strata["viewed"] == {"shops": 2, "alignment": pytest.approx(0.95), "mean_sim": pytest.approx(0.95), "mean_real": 1.0}
    assert strata["carted"]["alignment"] == pytest.approx(0.5)  # 0.2 vs 0.1 is 100 % off; 0 vs 0 is exact
    assert strata["purchased"]["alignment"] == pytest.approx(0.5)


def buyers(product_views, cart_adds, purchases, checkouts=None):
    n = len(product_views)
    return with_funnel_flags(pd.DataFrame({
        "page_views": [1] * n, "product_views": product_views, "searches": [0] * n, "cart_adds": cart_adds,
        "cart_removals": [0] * n, "checkouts": checkouts or [0] * n, "purchases": purchases}))


def test_real_buyers_come_in_one_order_so_the_seeded_behaviour_floor_repeats(tmp_path):
    rng = np.random.default_rng(0)
    events = pd.DataFrame({"shop_id": rng.choice(["s2", "s1", "s3"], 3000), "buyer_id": rng.integers(0, 400, 3000).astype(str),
                           "event_type": rng.choice(["product_view", "add_to_cart", "purchase"], 3000)})
    events.to_parquet(tmp_path / "events.parquet")
    frame = real_buyers(tmp_path / "events.parquet", ["s3", "s1"])
    keys = list(zip(frame["shop_id"], frame["buyer_id"]))
    assert keys == sorted(keys) and {shop for shop, _ in keys} == {"s1", "s3"}
    assert frame.equals(real_buyers(tmp_path / "events.parquet", ["s1", "s3"]))


def test_behaviour_counts_only_what_the_real_log_records():
    frame = buyers([2, 0, 1], [1, 0, 0], [1, 0, 0])
    tmall_like = frozenset({"product_view", "add_to_cart", "purchase", "add_to_wishlist"})
    columns = behaviour_columns(frame, tmall_like)
    assert columns["events"].tolist() == [4, 0, 1]  # page views are not in this log: not counted
    assert columns["outcome"].tolist() == ["purchased", "none", "viewed"]
    views_only = behaviour_columns(frame, frozenset({"product_view", "purchase"}))
    assert views_only["events"].tolist() == [3, 0, 1] and behaviour_measures(frozenset({"product_view"})) == (
        "product_views", "events", "outcome")


def test_behaviour_distance_is_zero_for_the_same_buyers_and_its_floor_shrinks_with_more_of_them():
    real = behaviour_columns(buyers([0, 1, 1, 2, 3, 5, 8, 1, 1, 0, 2, 4], [0, 1, 0, 0, 1, 2, 0, 0, 0, 0, 1, 1],
                                    [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]), frozenset(STRATUM_EVENTS.values()))
    same = behaviour_figures(real, real, BEHAVIOUR_MEASURES, seed=0)
    assert all(same[m]["distance"] == pytest.approx(0.0) and same[m]["floor"] > 0 for m in BEHAVIOUR_MEASURES)
    many = behaviour_figures(real.sample(2000, replace=True, random_state=1), real, BEHAVIOUR_MEASURES, seed=0)
    assert all(many[m]["floor"] < same[m]["floor"] for m in BEHAVIOUR_MEASURES)
    never_buys = real.assign(outcome="viewed", cart_adds=0)
    far = behaviour_figures(never_buys, real, BEHAVIOUR_MEASURES, seed=0)
    assert far["outcome"]["ratio_to_floor"] > 1 and far["cart_adds"]["distance"] == pytest.approx(real["cart_adds"].mean())
    summary = behaviour_summary([same, far])
    assert summary["outcome"]["n"] == 2 and summary["outcome"]["distance"] == pytest.approx(far["outcome"]["distance"] / 2)


def test_mismatched_buyers_see_another_types_token_for_their_whole_visit():
    seen = []

    class Recorder:
        def act(self, turns):
            seen.extend(turn.code for turn in turns)
            return ["stop"] * len(turns)

    mix = {0: 0.7, 1: 0.2, 2: 0.1}
    policy = MismatchedPolicy(Recorder(), mix)
    turns = [BuyerTurn(buyer_index=i, code=i % 3, observation="", seed=1000 + i) for i in range(3000)]
    policy.act(turns)
    assert all(shown != turn.code for shown, turn in zip(seen, turns))
    assert [policy.other_code(turn) for turn in turns[:50]] == seen[:50]  # the same code at every step
    # A type-1 buyer is shown 0 or 2 in the proportion 0.7 : 0.1 of the training mix.
    shown_to_ones = Counter(shown for shown, turn in zip(seen, turns) if turn.code == 1)
    assert shown_to_ones[0] / (shown_to_ones[0] + shown_to_ones[2]) == pytest.approx(0.875, abs=0.04)
    assert policy.other_code(BuyerTurn(0, 5, "", seed=1)) in mix  # a code outside the mix still gets one


def test_seed_spread_keeps_each_seeds_interval_and_the_report_shows_it(tmp_path):
    from harness.eval.report import seeds_part

    def pooled(persona: float, interval: list) -> dict:
        return {"paper": {"policies": {"persona": {"alignment": persona, "alignment_ci": interval},
                                       "global_rate": {"alignment": 0.5, "alignment_ci": [0.4, 0.6]}}}}

    spread = seed_spread({0: pooled(0.8, [0.7, 0.85]), 1: pooled(0.9, [0.85, 0.95])})
    assert spread["paper"]["persona"]["mean"] == pytest.approx(0.85)
    assert spread["paper"]["persona"]["sd"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert spread["paper"]["global_rate"]["sd"] == 0.0 and spread["paper"]["persona"]["per_seed"] == {"0": 0.8, "1": 0.9}
    assert spread["paper"]["persona"]["per_seed_ci"] == {"0": [0.7, 0.85], "1": [0.85, 0.95]}
    (tmp_path / "seed1").mkdir()
    (tmp_path / "seed1" / "report.html").write_text("<html></html>")
    shown = seeds_part(spread["paper"], tmp_path)
    assert "0.800 [0.700, 0.850]" in shown and "0.900 [0.850, 0.950]" in shown
    assert "tables of this report are seed 0's" in shown
    assert "<a href='seed1/report.html'>seed 1</a>" in shown and "seed0/report.html" not in shown  # only reports there
    del spread["paper"]["persona"]["per_seed_ci"]  # a summary written before intervals were kept
    assert "<td>0.800</td>" in seeds_part(spread["paper"], tmp_path)


def test_the_browser_check_runs_in_the_first_fold_of_the_first_seed_only(tmp_path):
    config = config_on_empty_input(tmp_path, folds=3, seeds=2, seed=4)
    checked = [(seed, fold) for seed in (4, 5) for fold in range(3) if fold_config(config, seed, fold).browser_check]
    assert checked == [(4, 0)] and fold_config(config, 5, 2).seed == 5
    assert not fold_config(replace(config, browser_check=False), 4, 0).browser_check


def test_the_agent_precision_reaches_every_simulating_row_and_is_checked(tmp_path):
    config = config_on_empty_input(tmp_path, agent_precision="bf16")
    specs = [row_spec(name, tmp_path, config) for name in ("persona", "mismatched", "neutral")]
    assert {spec.precision for spec in specs} == {"bf16"}
    assert row_spec("persona", tmp_path, config_on_empty_input(tmp_path)).precision == "auto"
    with pytest.raises(ValueError, match="agent_precision must be one of"):
        config_on_empty_input(tmp_path, agent_precision="fp16")


def test_persona_guidance_reaches_every_agent_row_but_the_neutral_one(tmp_path):
    config = config_on_empty_input(tmp_path, guidance=2.0)
    guidance = {name: row_spec(name, tmp_path, config).guidance for name in ("persona", "mismatched", "neutral")}
    # The neutral row's prompt is its own neutral prompt: guidance would change nothing but the cost.
    assert guidance == {"persona": 2.0, "mismatched": 2.0, "neutral": 1.0}
    assert config_on_empty_input(tmp_path).guidance == EvaluateConfig.demo(tmp_path / "demo", input_dir=tmp_path).guidance == 2.0
    with pytest.raises(ValueError, match="persona guidance must be > 0"):
        config_on_empty_input(tmp_path, guidance=0.0)


def test_phase_times_add_up_across_resumes_and_folds(tmp_path):
    first = PhaseTimes.load(tmp_path)
    with first.phase("simulate persona", buyers=120):
        time.sleep(0.05)
    resumed = PhaseTimes.load(tmp_path)  # a rerun adds to what the first run measured
    with resumed.phase("simulate persona", buyers=120):
        time.sleep(0.05)
    summary = resumed.summary()
    assert summary["seconds"]["simulate persona"] >= 0.1 and summary["buyers"] == {"simulate persona": 120}
    assert summary["buyers_per_minute"]["simulate persona"] == pytest.approx(
        60 * 120 / resumed.seconds["simulate persona"], rel=0.01)
    pooled = pooled_phases([summary, summary])
    assert pooled["buyers"]["simulate persona"] == 240
    assert pooled["total_seconds"] == pytest.approx(2 * summary["total_seconds"], abs=0.2)


def test_trace_buyers_come_from_training_shops_with_caps():
    codes = pd.DataFrame({"shop_id": ["a"] * 10 + ["b"] * 10 + ["h"] * 10, "buyer_id": [str(i) for i in range(30)],
                          "code": [0, 1] * 15, "split": ["training"] * 20 + ["held_out"] * 10})
    chosen = select_trace_buyers(codes, per_code=3, per_shop=4, seed=0)
    assert set(chosen["shop_id"]) <= {"a", "b"}
    assert chosen.groupby("code").size().max() <= 3 and chosen.groupby("shop_id").size().max() <= 4
    assert chosen.equals(select_trace_buyers(codes, per_code=3, per_shop=4, seed=0))


def test_calibration_shops_are_training_shops_with_purchases_eligible_first():
    split = ShopSplit(SplitConfig(), training=["a", "b", "c", "d"], held_out=["h"], eligible=["b", "c", "h"])
    real = pd.DataFrame({"buyers": [60, 80, 70, 9, 90], "converted": [3, 5, 0, 1, 7]}, index=["a", "b", "c", "d", "h"])
    shops = calibration_shop_ids(split, real, count=3, seed=0)
    assert shops[0] == "b"  # the only eligible training shop with a purchase
    assert set(shops) == {"a", "b", "d"}  # never the held-out shop, never a shop without purchases
    assert shops == calibration_shop_ids(split, real, count=3, seed=0)
    # a shop the agent was trained on is never a calibration shop: it flatters the agent
    assert calibration_shop_ids(split, real, count=3, seed=0, seen=frozenset({"b"})) == [s for s in shops if s != "b"]
    # ... unless every training shop with a purchase was traced (a small log): then those, in the same order
    assert calibration_shop_ids(split, real, count=3, seed=0, seen=frozenset({"a", "b", "d"})) == shops


def test_calibration_prefers_shops_whose_rate_rests_on_enough_purchases():
    shops = [f"s{i}" for i in range(8)]
    split = ShopSplit(SplitConfig(), training=shops, held_out=[], eligible=shops)
    purchases = [1, 6, 1, 1, 5, 1, 9, 2]
    real = pd.DataFrame({"buyers": [80] * 8, "converted": purchases}, index=shops)
    chosen = calibration_shop_ids(split, real, count=3, seed=0, min_purchases=5)
    assert set(chosen) == {"s1", "s4", "s6"}
    # too few such shops: the rest are filled from the others, in the seeded order
    chosen = calibration_shop_ids(split, real, count=5, seed=0, min_purchases=7)
    assert chosen[0] == "s6" and len(chosen) == 5


def test_traced_shops_reads_every_trace_line(tmp_path):
    path = tmp_path / "traces.jsonl"
    path.write_text('{"shop_id": "7", "buyer_id": "1", "code": 0, "steps": [], "converted": false}\n\n'
                    '{"shop_id": 12, "buyer_id": "2", "code": 1, "steps": [], "converted": true}\n')
    assert traced_shops(path) == frozenset({"7", "12"})


def test_cli_rejects_bad_calibration_candidates(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    for option, bad, expected in (("--calibrate-temperatures", "1,abc", "expected numbers like 1,0.7,0.5 or 'none'"),
                                  ("--calibrate-temperatures", "1,0", "must be > 0"),
                                  ("--calibrate-plausibilities", "0,x", "expected numbers like 0,0.1"),
                                  ("--calibrate-plausibilities", "0,1", "plausibility bars must lie in [0, 1)")):
        result = CliRunner().invoke(app, ["evaluate", "--out", str(tmp_path / "eval"), "--events", __file__,
                                          "--catalog", __file__, option, bad])
        assert result.exit_code != 0
        assert expected in " ".join(result.output.replace("│", " ").split()), result.output


# --- end to end on real data -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tmall_subset(tmp_path_factory):
    """Ingested Tmall log of a few brands: two with >= 50 buyers (held-out candidates), the rest training."""
    return ingested_tmall_brands(
        tmp_path_factory.mktemp("tmall_subset"),
        lambda visitors: list(visitors.index[20:22]) + list(visitors[(visitors >= 8) & (visitors < 30)].index[:25]),
    )


@pytest.mark.slow
@pytest.mark.browser
def test_end_to_end_on_a_tmall_subset(tmall_subset, tmp_path):
    out = tmp_path / "eval"
    config = EvaluateConfig(
        out_dir=out, input_dir=tmall_subset, protocol="paper", agent_base="tiny", held_out_fraction=0.5, min_buyers=50,
        folds=1, max_held_out_shops=1, buyers_per_shop=6, browser_buyers=3, codebook_size=4, codebook_epochs=2,
        embedding="hashed", traces_per_code=3, traces_per_shop=3, trace_max_steps=12, sft_stage1_epochs=1,
        sft_stage2_epochs=1, sft_max_steps=3, max_steps=4, concurrency=4, progress=False,
        calibrate_temperatures=(1.0, 0.5), calibration_shops=1, calibration_buyers=4, baselines=BASELINES, guidance=2.0,
    )
    summary = evaluate(config)

    split = json.loads((out / "shop_split.json").read_text())
    assert split["n_held_out"] == 1 and split["held_out"][0] not in split["training"]
    result = summary["protocols"]["paper"]
    assert set(result["policies"]) == {"persona", "no_persona", "neutral", "mismatched", "type_profile", "global_rate",
                                       "type_oracle"}
    for figures in result["policies"].values():
        assert figures["shops"] == 1 and 0.0 <= figures["alignment"] <= 1.0
    shop = split["held_out"][0]
    events = pd.read_parquet(tmall_subset / "events.parquet").astype({"shop_id": str})
    mine = events[events["shop_id"] == shop]
    real_rate = mine.loc[mine["event_type"] == "purchase", "buyer_id"].nunique() / mine["buyer_id"].nunique()
    for row in result["shops"]:
        assert row["cr_real"] == pytest.approx(real_rate)
        if row["policy"] not in ("global_rate", "type_oracle"):
            assert row["sim_buyers"] == 6 and row["store_agreement"] == 1.0
    # The oracle: the shop's real type mix, each type at its training buyers' conversion rate.
    codes = pd.read_parquet(out / "paper" / "codes.parquet")
    code_rates = codes[codes["split"] == "training"].groupby("code")["converted"].mean()
    mine_codes = codes[codes["shop_id"] == shop]["code"]
    oracle = next(row for row in result["shops"] if row["policy"] == "type_oracle")
    assert oracle["cr_sim"] == pytest.approx(mine_codes.map(code_rates).mean())
    assert result["type_mix"]["mean_jsd"] >= 0.0 and shop in result["type_mix"]["shops"]
    assert result["browser_check"]["browser"]["sim_buyers"] == 3
    assert "agree" in result["browser_check"]
    assert result["agent_check"]["per_code"]
    # The temperature is chosen on a training shop, and the held-out runs sample at it.
    calibration = json.loads((out / "paper" / "calibration.json").read_text())
    assert calibration["shops"] and set(calibration["shops"]) <= set(split["training"])
    assert not set(calibration["shops"]) & traced_shops(out / "paper" / "traces" / "traces.jsonl")
    # Under guidance, each temperature is tried with and without the plausibility bar.
    assert set(calibration["tried"]) == {"1", "0.5", "1 p0.1", "0.5 p0.1"} and calibration["chosen"] in (1.0, 0.5)
    chosen = calibration["tried"][candidate_key(calibration["chosen"], calibration["chosen_plausibility"])]
    assert chosen == min(calibration["tried"].values(), key=calibration_gap)
    assert result["temperature"] == calibration["chosen"]
    # Beside conversion per type, each candidate's share of buyers who viewed a product at all.
    shown = events[events["shop_id"].isin(calibration["shops"])]
    buyers = lambda frame: len(frame[["shop_id", "buyer_id"]].drop_duplicates())
    real_viewed = buyers(shown[shown["event_type"] == "product_view"]) / buyers(shown)
    assert all(tried["strata"]["viewed"]["real"] == pytest.approx(real_viewed) for tried in calibration["tried"].values())
    assert {t: tried["strata"]["viewed"]["sim"] for t, tried in calibration["tried"].items()} == {
        key: stratum_shares(run_buyers(out / "paper", f"calibration/T{key.replace(' ', '_')}", calibration["shops"]))["viewed"]
        for key in calibration["tried"]}
    # ... and written into the agent dir, which also names the codebook and traces it was trained on.
    persona = json.loads((out / "paper" / "agent" / "persona.json").read_text())
    assert persona["sampling"]["temperature"] == calibration["chosen"]
    assert persona["sampling"]["guidance_plausibility"] == calibration["chosen_plausibility"]
    # The calibration and the agent rows sample under the evaluation's persona guidance, as will any
    # later command that runs the agent dir.
    assert calibration["guidance"] == persona["sampling"]["guidance"] == result["guidance"] == 2.0
    manifests = {name: json.loads((out / "paper" / "sim" / name / shop / "manifest.json").read_text())["policy"]
                 for name in ("persona", "neutral")}
    assert {name: policy.get("guidance") for name, policy in manifests.items()} == {"persona": 2.0, "neutral": None}
    assert manifests["persona"].get("guidance_plausibility", 0.0) == calibration["chosen_plausibility"]
    assert persona["codebook"]["content_hash"] == CodebookArtifact.load(out / "paper" / "codebook").content_hash
    assert persona["traces"]["path"] == str((out / "paper" / "traces" / "traces.jsonl").resolve())
    assert (out / "paper" / "codebook" / "types.json").is_file()
    # The codebook never saw the held-out shop.
    mix = json.loads((out / "paper" / "codebook" / "shop_mix.json").read_text())
    assert shop not in mix.get("shops", mix)
    assert (out / "report.html").is_file() and list((out / "plots").glob("*.png"))
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["headline"]["paper"]["persona"] == result["policies"]["persona"]["alignment"]

    # Resumable: a second call reuses every step's file and gives the same figures.
    again = evaluate(config)
    assert again["protocols"]["paper"]["policies"] == result["policies"]


@pytest.mark.slow
@pytest.mark.parametrize("retrain_from", ["rejected", "base"])
def test_an_agent_that_blurs_its_types_is_set_aside_and_trained_again_with_twice_the_steps(tmall_subset, tmp_path, retrain_from):
    config = EvaluateConfig(retrain_from=retrain_from,
        out_dir=tmp_path / "eval", input_dir=tmall_subset, protocol="paper", agent_base="tiny", min_buyers=50, folds=1,
        max_held_out_shops=1, buyers_per_shop=4, browser_check=False, codebook_size=4, codebook_epochs=2,
        traces_per_code=3, traces_per_shop=3, trace_max_steps=8, sft_max_steps=2, max_steps=4, concurrency=4,
        progress=False, calibrate_temperatures=(1.0, 0.5), calibration_shops=1, calibration_buyers=4,
        baselines=("global_rate",), guidance=1.0,  # unguided: two candidates per agent suffice here
        max_type_gap=-1.0,  # every agent is over a negative limit
    )
    summary = evaluate(config)

    work = tmp_path / "eval" / "paper"
    calibration = json.loads((work / "calibration.json").read_text())
    rejected = calibration["rejected"]
    assert [agent["sft_max_steps"] for agent in rejected] == [2, 4] and set(rejected[0]["tried"]) == {"1", "0.5"}
    assert rejected[0]["type_gap"] == type_gap(min(rejected[0]["tried"].values(), key=calibration_gap)["type_check"])
    assert "per type is" in rejected[0]["reason"]
    for aside in ("agent_rejected", "agent_rejected_2"):
        assert (work / aside / "persona.json").is_file()
    assert (work / "sim_rejected" / "calibration").is_dir() and (work / "sim_rejected_2" / "calibration").is_dir()
    training = lambda agent: json.loads((work / agent / "training.json").read_text())
    steps = lambda agent: training(agent)["config"]["stage2_max_steps"]
    started = lambda agent: training(agent)["continued_from"]
    if retrain_from == "base":
        assert (steps("agent_rejected"), steps("agent_rejected_2"), steps("agent")) == (2, 4, 8)
        assert (started("agent_rejected_2"), started("agent")) == (None, None)
    else:  # each goes on from the one before for the steps it lacks: 2, 2 + 2, 4 + 4 in all
        assert (steps("agent_rejected"), steps("agent_rejected_2"), steps("agent")) == (2, 2, 4)
        assert (started("agent_rejected_2"), started("agent")) == (str(work / "agent_rejected"), str(work / "agent_rejected_2"))
        assert training("agent")["config"]["seed"] not in (training("agent_rejected_2")["config"]["seed"], config.seed)
    # Two retrainings at most: the third agent is kept although it is over the limit too, and it
    # simulates the held-out shop at its own calibrated temperature.
    assert summary["protocols"]["paper"]["temperature"] == calibration["chosen"]
    assert json.loads((work / "agent" / "persona.json").read_text())["sampling"]["temperature"] == calibration["chosen"]
    # ... and the report's verdicts say the kept agent fails its type check.
    kept = summary["protocols"]["paper"]["calibration"]["kept_although"]
    assert "per type is" in kept and any(kept in line for line in evaluation_verdicts(summary))
    # A rerun reuses every agent and gives the same figures.
    again = evaluate(config)
    assert again["protocols"]["paper"]["policies"] == summary["protocols"]["paper"]["policies"]
    assert json.loads((work / "calibration.json").read_text())["rejected"] == rejected


@pytest.mark.slow
def test_a_machine_without_the_navigation_base_builds_it_before_the_first_fold(tmall_subset, tmp_path, monkeypatch):
    from harness.eval import evaluate as evaluation
    from harness.eval.nav_base import NavBaseConfig, nav_base_dir

    micro = NavBaseConfig(shops=2, buyers_per_shop=6, variants=("saved_details",), steps=2, hidden_size=32, layers=1,
                          vocab_size=512, max_length=256)
    monkeypatch.setenv("SIMPERSONA_CACHE", str(tmp_path / "cache"))  # a fresh machine: nothing cached
    monkeypatch.setitem(evaluation.BASES, "nav", micro)
    config = EvaluateConfig(
        out_dir=tmp_path / "eval", input_dir=tmall_subset, protocol="paper", agent_base="nav", min_buyers=50, folds=1,
        max_held_out_shops=1, buyers_per_shop=3, browser_check=False, codebook_size=4, codebook_epochs=2,
        traces_per_code=2, traces_per_shop=2, trace_max_steps=8, sft_max_steps=2, sft_max_length=256, max_steps=3,
        concurrency=3, progress=False, calibrate_temperatures=(), baselines=("global_rate",),
    )
    summary = evaluate(config)
    assert (nav_base_dir(micro) / "recipe.json").is_file()
    assert summary["protocols"]["paper"]["policies"]["persona"]["shops"] == 1


@pytest.mark.slow
def test_folds_score_every_eligible_shop_once_with_intervals_strata_and_a_mismatched_row(tmall_subset, tmp_path):
    out = tmp_path / "folds"
    config = EvaluateConfig(
        out_dir=out, input_dir=tmall_subset, protocol="paper", agent_base="tiny", min_buyers=50, folds=2,
        buyers_per_shop=6, browser_check=False, codebook_size=4, codebook_epochs=2, traces_per_code=3, traces_per_shop=3,
        trace_max_steps=12, sft_max_steps=3, max_steps=4, concurrency=4, progress=False, calibrate_temperatures=(),
        baselines=("mismatched", "global_rate"),
    )
    summary = evaluate(config)

    folds = [json.loads((out / f"shop_split_fold{k}.json").read_text()) for k in range(2)]
    eligible = folds[0]["eligible"]
    assert len(eligible) == 2 and sorted(f["held_out"][0] for f in folds) == sorted(eligible)
    for k, fold in enumerate(folds):  # each fold's codebook never saw its held-out shop
        mix = json.loads((out / f"fold{k}" / "paper" / "codebook" / "shop_mix.json").read_text())
        assert fold["held_out"][0] not in mix.get("shops", mix)
    result = summary["protocols"]["paper"]
    assert sorted(result["held_out_shops"]) == sorted(eligible) and len(result["folds"]) == 2
    assert set(result["policies"]) == {"persona", "mismatched", "global_rate", "type_oracle"}
    for figures in result["policies"].values():
        assert figures["shops"] == 2 and figures["alignment_ci"][0] <= figures["alignment"] <= figures["alignment_ci"][1]
    assert {row["fold"] for row in result["shops"]} == {0, 1}
    assert 0.0 <= result["sampling_ceiling"] <= 1.0 and 0.0 <= result["people_overlap"] <= 1.0
    strata = result["strata"]["persona"]
    assert strata["checkout"] is None  # the Tmall log records no checkout events: not scored
    assert strata["viewed"]["shops"] == 2 and strata["viewed"]["mean_real"] > 0
    distances = result["distances"]["persona"]  # per shop, each against its noise floor
    assert set(distances) >= {"product_views", "events", "outcome"} and distances["outcome"]["floor"] >= 0
    assert result["type_distances"] is None or set(result["type_distances"]) == {"codes", "summary"}
    phases = result["phases"]  # both folds' steps added up, both policies' buyers counted
    assert phases["buyers"] == {"simulate persona": 12, "simulate mismatched": 12}
    assert phases["seconds"]["agent"] > 0 and phases["buyers_per_minute"]["simulate persona"] > 0
    report = (out / "report.html").read_text()
    assert "Per fold" in report and "Funnel strata" in report and "95 % bootstrap over shops" in report
    assert "Time per step" in report

    again = evaluate(config)  # resumable: every fold's steps are reused
    assert again["protocols"]["paper"]["policies"] == result["policies"]
    assert again["protocols"]["paper"]["phases"]["seconds"]["agent"] == pytest.approx(phases["seconds"]["agent"], abs=1.0)


@pytest.mark.slow
def test_each_seed_gets_its_own_summary_and_report_and_two_seeds_compare_shop_by_shop(tmall_subset, tmp_path):
    from harness.eval.compare import compare_evaluations

    out = tmp_path / "seeds"
    config = EvaluateConfig(
        out_dir=out, input_dir=tmall_subset, protocol="paper", agent_base="tiny", min_buyers=50, folds=2, seeds=2, seed=3,
        buyers_per_shop=4, browser_check=False, codebook_size=4, codebook_epochs=2, traces_per_code=2, traces_per_shop=2,
        trace_max_steps=8, sft_max_steps=2, max_steps=3, concurrency=4, progress=False, calibrate_temperatures=(),
        baselines=("global_rate",),
    )
    summary = evaluate(config)

    spread = summary["seeds"]["paper"]["persona"]
    for seed in ("3", "4"):
        own = json.loads((out / f"seed{seed}" / "summary.json").read_text())
        persona = own["protocols"]["paper"]["policies"]["persona"]
        assert own["config"]["seed"] == int(seed) and own["seeds"] is None and len(own["protocols"]["paper"]["folds"]) == 2
        assert spread["per_seed"][seed] == persona["alignment"] and spread["per_seed_ci"][seed] == persona["alignment_ci"]
        assert "Per fold" in (out / f"seed{seed}" / "report.html").read_text()
    first_seed = json.loads((out / "seed3" / "summary.json").read_text())["protocols"]
    assert json.loads((out / "summary.json").read_text())["protocols"] == first_seed  # the top one shows the first seed
    paired = compare_evaluations(out / "seed3", out / "seed4")["paper"]
    assert paired["persona"]["shops"] == 2
    assert paired["persona"]["difference"] == pytest.approx(spread["per_seed"]["4"] - spread["per_seed"]["3"])
    assert paired["global_rate"]["difference"] == 0.0  # no simulation: the same in every seed


@pytest.mark.slow
def test_themed_traces_and_the_same_buyers_on_oscar(tmall_subset, tmp_path):
    pytest.importorskip("storefronts.oscar")
    from agent.traces import read_traces
    from storefronts.variants import training_themes

    out = tmp_path / "transfer"
    config = EvaluateConfig(
        out_dir=out, input_dir=tmall_subset, protocol="paper", agent_base="tiny", min_buyers=50, folds=2,
        buyers_per_shop=6, browser_check=False, codebook_size=4, codebook_epochs=2, traces_per_code=3, traces_per_shop=3,
        trace_max_steps=12, sft_max_steps=3, max_steps=4, concurrency=4, progress=False, calibrate_temperatures=(),
        baselines=(), trace_themes=True, transfer_stores=("oscar", "atelier"), transfer_shops=1,
    )
    summary = evaluate(config)

    traces = read_traces(out / "fold0" / "paper" / "traces" / "traces.jsonl")
    assert {trace.variant for trace in traces} <= {"saved_details", *training_themes()} and len({t.variant for t in traces}) > 1
    assert set(summary["protocols"]["paper"]["transfer"]) == {"oscar", "atelier"}
    transfer = summary["protocols"]["paper"]["transfer"]["oscar"]
    assert len(transfer["shops"]) == 2  # one per fold
    persona = {row["shop"]: row for row in summary["protocols"]["paper"]["shops"] if row["policy"] == "persona"}
    for shop in transfer["shops"]:
        assert shop["buyers"] == 6 and shop["store_agreement"] == 1.0  # Oscar's orders = what the buyers claimed
        assert shop["cr_mock"] == persona[shop["shop"]]["cr_sim"]
    assert all((out / f"fold{k}" / "paper" / "sim" / "persona_oscar").is_dir() for k in (0, 1))
    assert sum(entry["buyers"] for entry in transfer["per_type"].values()) == 12
    assert len(summary["protocols"]["paper"]["transfer"]["atelier"]["shops"]) == 2
    report = (out / "report.html").read_text()
    assert "on the mock store and on oscar" in report and "on the mock store and on atelier" in report
    with pytest.raises(ValueError, match="nav-themes"):
        EvaluateConfig(out_dir=out, input_dir=tmall_subset, trace_themes=True, agent_base="nav")
    with pytest.raises(ValueError, match="neither a built-in variant"):
        EvaluateConfig(out_dir=out, input_dir=tmall_subset, transfer_stores=("atelir",))


@pytest.mark.slow
def test_a_signal_during_a_shop_stops_the_evaluation_and_the_same_command_resumes(tmall_subset, tmp_path):
    import signal
    import subprocess
    from pathlib import Path

    simpersona = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "simpersona"
    out = tmp_path / "stopped"
    command = [str(simpersona), "evaluate", "--input", str(tmall_subset), "--out", str(out), "--agent-base", "tiny",
               "--folds", "1", "--max-held-out", "1", "--buyers-per-shop", "80", "--codebook-size", "4",
               "--traces-per-code", "3", "--sft-max-steps", "2", "--baselines", "global_rate",
               "--calibrate-temperatures", "none", "--no-browser-check"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not any(len(path.read_text().splitlines()) >= 5 for path in out.glob("paper/sim/persona/*/trajectories.jsonl")):
        assert process.poll() is None, process.communicate()[0][-2000:]
        assert time.monotonic() < deadline, "no held-out buyer finished within 600 s"
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    text = process.communicate(timeout=120)[0]
    assert process.returncode == 130, text[-2000:]
    assert "stopped by SIGINT during shop" in text and not (out / "summary.json").exists()

    finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    persona = next(row for row in json.loads((out / "summary.json").read_text())["protocols"]["paper"]["shops"]
                   if row["policy"] == "persona")
    assert persona["sim_buyers"] == 80 and persona["store_agreement"] == 1.0
