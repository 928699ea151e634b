"""harness.eval.demo: the demo's evaluation preset and the size of its A/B."""

from harness.eval.demo import AB_BUYERS_RANGE, AB_EXPECTED_CONVERSIONS, ab_buyers_for
from harness.eval.evaluate import EvaluateConfig


def test_the_ab_expects_enough_conversions_in_arm_a_within_its_floor_and_cap():
    low, high = AB_BUYERS_RANGE
    assert ab_buyers_for(0.114) == 176  # Tmall's largest training shop: about 20 buyers of buying types
    assert ab_buyers_for(0.114) * 0.114 >= AB_EXPECTED_CONVERSIONS
    assert ab_buyers_for(0.50) == low
    assert ab_buyers_for(0.01) == high
    assert ab_buyers_for(0.0) == high


def test_the_demo_evaluates_with_the_calibration_and_type_check_of_the_defaults(tmp_path):
    (tmp_path / "events.parquet").write_bytes(b"")
    (tmp_path / "catalog.parquet").write_bytes(b"")
    demo = EvaluateConfig.demo(tmp_path / "eval", input_dir=tmp_path)
    defaults = EvaluateConfig(out_dir=tmp_path / "eval", input_dir=tmp_path)
    assert demo.folds == 1 and demo.max_held_out_shops == 2
    assert demo.calibrate_temperatures == defaults.calibrate_temperatures != ()
    assert (demo.max_type_gap, demo.max_worst_type_gap) == (defaults.max_type_gap, defaults.max_worst_type_gap)
    assert (demo.agent_base, demo.sft_max_steps, demo.variant) == (defaults.agent_base, defaults.sft_max_steps, defaults.variant)
    assert "persona" in demo.policies and "type_profile" in demo.policies
