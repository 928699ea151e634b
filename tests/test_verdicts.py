"""harness.eval.verdicts: plain sentences over hand-made summaries."""

from harness.eval.metrics import buyers_against_type
from harness.eval.verdicts import (
    ab_verdicts,
    against_type_text,
    alignment_verdicts,
    collapse_verdicts,
    evaluation_verdicts,
    pure_type_verdicts,
    simulation_verdicts,
    strict_verdicts,
    type_check_verdicts,
)


def ab_summary(conversion_a: float, conversion_b: float, p_value: float, n: int = 80, ci=(-0.05, 0.05),
               max_steps: int = 0) -> dict:
    arms = {arm: {"outcomes": {"converted": 0, "left": n - max_steps, "max_steps": max_steps, "error": 0}}
            for arm in ("A", "B")}
    return {"n": n, "alpha": 0.05, "variants": {"A": "saved_details", "B": "worse_saved_details"},
            "conversion_a": conversion_a, "conversion_b": conversion_b, "delta": conversion_b - conversion_a,
            "ci": list(ci), "p_value": p_value, "arms": arms}


def test_ab_where_nobody_converted_tells_nothing():
    lines = ab_verdicts(ab_summary(0.0, 0.0, 1.0, ci=(0.0, 0.0)))
    assert lines[0].startswith("A/B tells nothing: nobody converted in either arm")
    assert "0/80 converted in A (saved_details), 0/80 in B" in lines[0]
    assert not any("no significant difference" in line for line in lines)


def test_ab_with_almost_no_conversions_tells_almost_nothing():
    lines = ab_verdicts(ab_summary(2 / 80, 1 / 80, 1.0))
    assert lines[0].startswith("A/B tells almost nothing: only 3 conversions over both arms")
    assert not any("no significant difference" in line for line in lines)


def test_ab_with_enough_conversions_reports_the_test():
    worse = ab_verdicts(ab_summary(0.30, 0.10, 0.001, ci=(-0.3, -0.1)))
    assert worse == ["A/B: B converts worse than A: ΔCR -0.200 (CI -0.300 … -0.100), McNemar p = 0.001; "
                     "24/80 converted in A (saved_details), 8/80 in B (worse_saved_details)"]
    same = ab_verdicts(ab_summary(0.30, 0.28, 0.6))
    assert same[0].startswith("A/B: no significant difference at α = 0.05: ΔCR -0.020")


def test_ab_arm_where_nobody_converted_says_the_effect_may_be_the_agents():
    lines = ab_verdicts(ab_summary(39 / 80, 0.0, 1.8e-12, ci=(-0.6, -0.375)))
    assert lines[0].startswith("A/B: B converts worse than A")
    assert lines[1].startswith("A/B arm B: nobody converted on worse_saved_details although 39 did")
    assert len(ab_verdicts(ab_summary(0.30, 0.10, 0.001))) == 1  # both arms convert: no such line


def test_ab_arm_with_most_buyers_lost_says_so():
    lines = ab_verdicts(ab_summary(0.0, 0.0, 1.0, max_steps=51))
    assert "A/B arm A: 51 of 80 buyers ended at max-steps: the agent does not find its way through the store" in lines
    assert len([line for line in lines if "max-steps" in line]) == 2
    assert not any("max-steps" in line for line in ab_verdicts(ab_summary(0.0, 0.0, 1.0, max_steps=40)))


def protocol(persona_alignment: float, rows: list[dict]) -> dict:
    return {"policies": {"persona": {"alignment": persona_alignment}, "type_profile": {"alignment": 0.826},
                         "global_rate": {"alignment": 0.759}, "type_oracle": {"alignment": 0.99}},
            "shops": rows}


def shop_row(shop: str, converted: int, max_steps: int, buyers: int = 40, real_converted: int = 11,
             policy: str = "persona") -> dict:
    return {"policy": policy, "shop": shop, "sim_buyers": buyers, "sim_converted": converted, "cr_real": 0.284,
            "real_converted": real_converted, "outcomes": {"converted": converted, "max_steps": max_steps}}


def test_agent_behind_the_baselines():
    lines = alignment_verdicts(protocol(0.0, []))
    assert lines == ["the persona agent is BEHIND the global_rate baseline on alignment (0.000 vs 0.759)",
                     "the persona agent is BEHIND the type_profile baseline on alignment (0.000 vs 0.826)"]


def test_agent_ahead_of_the_baselines_but_not_compared_with_the_oracle():
    lines = alignment_verdicts(protocol(0.9, []))
    assert lines == ["the persona agent (0.900) is ahead of global_rate 0.759, type_profile 0.826 on alignment"]
    assert alignment_verdicts({"policies": {"type_profile": {"alignment": 0.8}}}) == []


def test_agent_level_with_a_baseline_is_neither_ahead_nor_behind():
    level = {"policies": {"persona": {"alignment": 0.9002}, "type_profile": {"alignment": 0.9}}}
    assert alignment_verdicts(level) == ["the persona agent (0.900) is level with type_profile on alignment"]


def test_pure_types_make_the_type_profile_a_ceiling_and_count_the_buyers_against_their_type():
    per_code = {"2": {"agent_buyers": 6, "agent_conversion": 0.5, "agent_abandoned_cart_rate": 1 / 3, "trace_conversion": 1.0},
                "4": {"agent_buyers": 38, "agent_conversion": 1 / 38, "agent_abandoned_cart_rate": 0.0, "trace_conversion": 0.0},
                "8": {"agent_buyers": 3, "agent_conversion": 0.0, "trace_conversion": None}}
    counts = buyers_against_type({"per_code": per_code})
    assert counts == {"buyers": 44, "missed": 3, "left_a_cart": 2, "bought": 1}
    result = {"policies": {"type_profile": {"alignment": 0.92}}, "agent_check": {"per_code": per_code, "against_type": counts}}
    assert pure_type_verdicts(result) == [
        "every type converts at 0 % or 100 % in its traces, so the type_profile baseline buys for exactly the buyers "
        "of buying types: an agent that follows its types can tie it, not pass it; the persona agent acted against "
        "its type for 4 of 44 held-out buyers: 3 of buying types bought nothing (2 left a cart), 1 of a type that "
        "never buys bought"]
    # Five folds: every fold's buyers added up, whether or not the type_profile row ran.
    folds = {"policies": {}, "folds": [{"against_type": counts}, {"against_type": {**counts, "missed": 0, "left_a_cart": 0}}]}
    assert pure_type_verdicts(folds)[0].endswith("acted against its type for 5 of 88 held-out buyers: 3 of buying types "
                                                 "bought nothing (2 left a cart), 2 of a type that never buys bought")
    assert pure_type_verdicts({"folds": [{"against_type": counts}, {"against_type": None}]}) == []
    # A type that converts in between has no buyer against it; rows without cart figures leave the carts out.
    mixed = {**per_code, "5": {"agent_buyers": 4, "agent_conversion": 0.5, "trace_conversion": 0.4}}
    assert buyers_against_type({"per_code": mixed}) is None
    no_carts = {code: {k: v for k, v in row.items() if k != "agent_abandoned_cart_rate"} for code, row in per_code.items()}
    assert against_type_text(buyers_against_type({"per_code": no_carts})) == (
        "4 of 44: 3 of buying types bought nothing, 1 of a type that never buys bought")
    assert pure_type_verdicts({"policies": {}, "agent_check": {"per_code": mixed, "against_type": None}}) == []
    assert pure_type_verdicts({"agent_check": {"per_code": per_code}}) == pure_type_verdicts(result)  # an older results.json


def test_an_agent_kept_although_it_fails_its_type_check_is_named_before_its_alignment():
    reason = "its conversion per type is 0.152 from its traces' on the calibration buyers (limit 0.025)"
    result = {**protocol(0.736, []), "calibration": {"type_gap": 0.152, "kept_although": reason}}
    assert type_check_verdicts(result) == [
        "the persona agent was kept although it fails its type check on the training shops' calibration buyers: "
        + reason + "; its held-out conversion per type need not follow its traces"]
    assert evaluation_verdicts({"protocols": {"paper": result}})[0] == type_check_verdicts(result)[0]
    assert type_check_verdicts({**result, "calibration": {"type_gap": 0.01}}) == []
    assert type_check_verdicts(protocol(0.9, [])) == []


def test_collapsed_agent():
    rows = [shop_row("s1", 0, 30), shop_row("s2", 0, 21), shop_row("s1", 0, 40, policy="type_profile")]
    lines = collapse_verdicts(protocol(0.0, rows))
    assert lines == [
        "the persona agent collapsed in shop s1: 0 of 40 buyers converted (real rate 28.4 %)",
        "the persona agent collapsed in shop s2: 0 of 40 buyers converted (real rate 28.4 %)",
        "the persona agent collapsed over the held-out shops: 51 of 80 buyers ended at max-steps: "
        "the agent does not find its way through the store",
    ]


def test_healthy_agent_and_a_shop_without_real_purchases_are_not_collapse():
    rows = [shop_row("s1", 12, 3), shop_row("s2", 0, 2, real_converted=0)]
    assert collapse_verdicts(protocol(0.9, rows)) == []


def test_no_conversion_at_a_rate_that_n_buyers_cannot_tell_from_zero_is_not_collapse():
    rare = {**shop_row("s3", 0, 0, buyers=100, real_converted=2), "cr_real": 0.02}  # 0/100 allows up to 3.7 %
    assert collapse_verdicts(protocol(0.9, [rare])) == []
    assert collapse_verdicts(protocol(0.9, [{**rare, "cr_real": 0.10}]))[0].startswith("the persona agent collapsed in shop s3")


def test_evaluation_verdicts_name_the_protocol_when_there_are_several():
    collapsed = protocol(0.0, [shop_row("s1", 0, 5)])
    one = evaluation_verdicts({"protocols": {"paper": collapsed}})
    assert one[0].startswith("the persona agent collapsed in shop s1")
    both = evaluation_verdicts({"protocols": {"paper": collapsed, "strict": protocol(0.9, [shop_row("s1", 9, 0)])}})
    assert both[0].startswith("paper: the persona agent collapsed in shop s1")
    assert both[-1].startswith("strict: the persona agent (0.900) is ahead")


def test_strict_protocol_is_judged_against_its_type_oracle():
    strict = {"protocol": "strict", "persona_vs_oracle": 0.420 / 0.425,
              "policies": {"persona": {"alignment": 0.420}, "type_oracle": {"alignment": 0.425},
                           "global_rate": {"alignment": 0.445}}}
    assert strict_verdicts(strict) == [
        "the persona agent reaches 0.988 of its type oracle's alignment (0.420 vs 0.425): it meets the strict "
        "protocol's goal of 0.95",
        "the type oracle itself trails the global_rate (0.425 vs 0.445): browse-only types do not tell these shops "
        "apart better than the average rate, so no simulation built on them is expected to pass it"]
    short = {**strict, "persona_vs_oracle": 0.337 / 0.436,
             "policies": {"persona": {"alignment": 0.337}, "type_oracle": {"alignment": 0.436},
                          "global_rate": {"alignment": 0.356}}}
    assert strict_verdicts(short) == ["the persona agent reaches 0.773 of its type oracle's alignment (0.337 vs "
                                      "0.436): it falls short of the strict protocol's goal of 0.95"]
    assert strict_verdicts({**strict, "protocol": "paper"}) == []
    assert evaluation_verdicts({"protocols": {"strict": strict}})[-1].startswith("the type oracle itself trails")


def test_simulation_verdicts():
    collapsed = {"completed": 40, "converted": 0, "real_conversion_rate": 0.3,
                 "outcomes": {"converted": 0, "left": 10, "max_steps": 30, "error": 0}}
    assert simulation_verdicts(collapsed) == [
        "the agent collapsed: 0 of 40 buyers converted (real rate of these types 30.0 %)",
        "30 of 40 buyers ended at max-steps: the agent does not find its way through the store",
    ]
    healthy = {"completed": 40, "converted": 12, "real_conversion_rate": 0.3,
               "outcomes": {"converted": 12, "left": 25, "max_steps": 3, "error": 0}}
    assert simulation_verdicts(healthy) == []


def test_the_ab_command_says_a_run_without_conversions_tells_nothing():
    from harness.sim.ab import verdict
    from harness.sim.paired import paired_effect

    nobody = paired_effect([0] * 40, [0] * 40)
    assert verdict(nobody, 0.05, conversions=0) == "tells nothing: nobody converted in either arm"
    assert verdict(paired_effect([1, 1] + [0] * 38, [0] * 40), 0.05, conversions=2).startswith("tells almost nothing")
    strong = paired_effect([1] * 30 + [0] * 10, [0] * 40)
    assert verdict(strong, 0.05, conversions=30) == "B converts worse than A"
