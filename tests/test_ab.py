"""A/B what-if runs end to end (harness/sim/ab.py): the type-profile policy drives the same synthetic
buyers through two real mock stores (REES46 products, http driver), and the store's own order logs
decide who converted."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.baselines import FrictionModel, TypeProfilePolicy
from codebook.artifact import CodebookArtifact
from harness.sim.ab import PLOT_FILE, SUMMARY_FILE, ABConfig, arm_populations, run_ab
from harness.cli import app
from storefronts.orderlog import read_orders

from test_policies import STORE_SHOP, real_catalog, write_codebook

BUYERS = 40


@pytest.fixture(scope="module")
def codebook_dir(tmp_path_factory) -> Path:
    return write_codebook(tmp_path_factory.mktemp("codebook"))


@pytest.fixture(scope="module")
def catalog():
    return real_catalog()


def ab_config(codebook_dir, catalog, out_dir, run_id, **options) -> ABConfig:
    return ABConfig(shop="mixed", codebook_dir=codebook_dir, catalog=catalog, catalog_shop=STORE_SHOP,
                    buyers=options.pop("buyers", BUYERS), driver="http", concurrency=4, max_steps=40,
                    out_dir=out_dir, run_id=run_id, progress=False, n_bootstrap=1000, **options)


@pytest.fixture(scope="module")
def default_vs_worse(codebook_dir, catalog, tmp_path_factory):
    config = ab_config(codebook_dir, catalog, tmp_path_factory.mktemp("ab"), "dw", variant_a="default", variant_b="worse")
    return config, asyncio.run(run_ab(config, TypeProfilePolicy.from_codebook(codebook_dir)))


def manifest_buyers(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "manifest.json").read_text())["seeds"]["buyers"]


def trajectories(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "trajectories.jsonl").read_text().splitlines()
    return {record["buyer_index"]: record for record in map(json.loads, lines)}


def test_both_arms_drive_the_same_buyers(default_vs_worse):
    config, result = default_vs_worse
    a, b = (manifest_buyers(config.run_dir / arm) for arm in "AB")
    assert a == b and len(a) == BUYERS
    assert len({buyer["code"] for buyer in a}) == 3  # the mixed shop's three types
    for arm in "AB":
        records = trajectories(config.run_dir / arm)
        assert sorted(records) == list(range(BUYERS))
        assert {i: (r["code"], r["seed"]) for i, r in records.items()} == {x["buyer_index"]: (x["code"], x["seed"]) for x in a}


def test_worse_layout_converts_less_and_loses_only_buyers_the_default_kept(default_vs_worse):
    config, result = default_vs_worse
    summary = result.summary
    assert summary["conversion_b"] < summary["conversion_a"]
    assert summary["delta"] == pytest.approx(summary["conversion_b"] - summary["conversion_a"])
    assert summary["ci"][0] <= summary["delta"] <= summary["ci"][1]
    mc = summary["mcnemar"]
    assert mc["b_only_a_converted"] >= 3 and mc["b_only_a_converted"] > mc["c_only_b_converted"]
    assert summary["verdict"] == ("B converts worse than A" if summary["p_value"] < config.alpha else "no significant difference")
    # Friction is coupled through each buyer's own patience draw, so among buyers whose every
    # request went through (a loaded machine may drop one), worse only loses buyers, and each lost
    # one gave up in worse's extra checkout steps after following the same plan as in A.
    default, worse = trajectories(config.run_dir / "A"), trajectories(config.run_dir / "B")
    clean = [i for i in default if not any(s["error"] for arm in (default, worse) for s in arm[i]["steps"])]
    assert len(clean) >= BUYERS // 2
    assert not [i for i in clean if worse[i]["outcome"] == "converted" and default[i]["outcome"] != "converted"]
    lost = [i for i in clean if default[i]["outcome"] == "converted" and worse[i]["outcome"] != "converted"]
    assert lost
    for i in lost:
        assert worse[i]["steps"][-1]["action"] == "stop"
        assert "/checkout/" in worse[i]["steps"][-1]["url"]


def test_store_order_logs_confirm_every_conversion(default_vs_worse):
    config, result = default_vs_worse
    for arm in "AB":
        tag_prefix = f"{config.run_id}/{arm}:"
        ordered = {int(o["buyer_tag"][len(tag_prefix):]) for o in read_orders(config.run_dir / arm / "store.sqlite")
                   if o["buyer_tag"].startswith(tag_prefix)}
        claimed = {i for i, r in trajectories(config.run_dir / arm).items() if r["outcome"] == "converted"}
        assert ordered == claimed and ordered
        figures = result.summary["arms"][arm]
        assert figures["converted_store_counted"] == figures["converted_claimed"] == len(ordered)
        assert figures["claims_agree_with_store"] is True
    assert result.summary["outcome_source"] == "store order log"


def test_summary_and_plot_are_written(default_vs_worse):
    config, result = default_vs_worse
    summary = json.loads((config.run_dir / SUMMARY_FILE).read_text())
    assert summary == json.loads(json.dumps(result.summary))
    for key in ("conversion_a", "conversion_b", "delta", "ci", "mcnemar", "p_value", "per_type", "n", "alpha", "seeds", "variants", "arms"):
        assert key in summary
    assert summary["variants"] == {"A": "default", "B": "worse"} and summary["n"] == BUYERS
    assert sum(row["n"] for row in summary["per_type"].values()) == BUYERS
    for row in summary["per_type"].values():
        assert row["ci"][0] <= row["delta"] <= row["ci"][1]
    png = (config.run_dir / PLOT_FILE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_same_variant_and_same_seeds_give_identical_outcomes(codebook_dir, catalog, tmp_path):
    config = ab_config(codebook_dir, catalog, tmp_path, "same", variant_a="default", variant_b="default", buyers=24)
    result = asyncio.run(run_ab(config, TypeProfilePolicy.from_codebook(codebook_dir)))
    a, b = trajectories(config.run_dir / "A"), trajectories(config.run_dir / "B")
    # A request the loaded machine dropped changes that buyer's path; every other buyer must
    # repeat itself action for action.
    clean = [i for i in a if not any(s["error"] for arm in (a, b) for s in arm[i]["steps"])]
    assert len(clean) >= 20
    for i in clean:
        assert [s["action"] for s in a[i]["steps"]] == [s["action"] for s in b[i]["steps"]]
        assert a[i]["outcome"] == b[i]["outcome"]
    if len(clean) == len(a):
        assert result.summary["mcnemar"]["b_only_a_converted"] == result.summary["mcnemar"]["c_only_b_converted"] == 0
        assert result.summary["delta"] == 0 and result.summary["p_value"] == 1.0
    assert result.summary["conversion_a"] > 0


def test_a_a_arms_share_codes_but_not_seeds(codebook_dir, catalog, tmp_path):
    config = ab_config(codebook_dir, catalog, tmp_path, "aa", variant_a="default", aa=True, buyers=200)
    assert config.variant_b == "default"
    arms = arm_populations(config, CodebookArtifact.load(codebook_dir))
    assert [x.code for x in arms["A"]] == [x.code for x in arms["B"]]
    assert not {x.seed for x in arms["A"]} & {x.seed for x in arms["B"]}
    # The plans drawn from independent seeds disagree for some buyers: the arms differ by chance.
    policy = TypeProfilePolicy.from_codebook(codebook_dir)
    buys = [(policy.plan_for(x.code, x.seed).buys, policy.plan_for(y.code, y.seed).buys) for x, y in zip(arms["A"], arms["B"])]
    assert any(p != q for p, q in buys)


def test_without_friction_the_worse_layout_costs_nothing(codebook_dir, catalog, tmp_path):
    """The effect above comes from the documented friction model, not from the store breaking."""
    from agent.baselines import NO_FRICTION

    config = ab_config(codebook_dir, catalog, tmp_path, "nf", variant_a="default", variant_b="worse", buyers=16)
    asyncio.run(run_ab(config, TypeProfilePolicy.from_codebook(codebook_dir, friction=NO_FRICTION)))
    a, b = trajectories(config.run_dir / "A"), trajectories(config.run_dir / "B")
    clean = [i for i in a if not any(s["error"] for arm in (a, b) for s in arm[i]["steps"])]
    assert len(clean) >= 12
    assert [a[i]["outcome"] for i in clean] == [b[i]["outcome"] for i in clean]
    assert any(a[i]["outcome"] == "converted" for i in clean)
    assert any(len(b[i]["steps"]) > len(a[i]["steps"]) for i in clean)  # worse's longer checkout was walked


def test_friction_model_rejects_bad_parameters():
    with pytest.raises(ValueError, match="checkout_step_abandonment must lie in"):
        FrictionModel(checkout_step_abandonment=1.5)
    friction = FrictionModel(checkout_step_abandonment=0.1, type_scale={2: 0.0})
    assert not friction.gives_up(0.05, 0.1, 0, code=1)  # no extra step: no friction
    assert friction.gives_up(0.05, 0.1, 1, code=1) and not friction.gives_up(0.15, 0.1, 1, code=1)
    assert friction.gives_up(0.15, 0.1, 2, code=1)  # 1 - 0.9² = 0.19
    assert not friction.gives_up(0.0, 0.1, 5, code=2)  # a type scaled to zero never gives up


def flat(output: str) -> str:
    """CLI output without rich's panel borders and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def test_cli_rejects_bad_arm_options(codebook_dir, tmp_path):
    runner = CliRunner()
    base = ["ab", "--shop", "mixed", "--codebook", str(codebook_dir)]
    result = runner.invoke(app, base + ["--store", "A=http://127.0.0.1:1/", "--variant", "C=worse"])
    assert result.exit_code != 0 and "expected A=<value> or B=<value>, got 'C=worse'" in flat(result.output)
    result = runner.invoke(app, base)
    assert result.exit_code != 0 and "give exactly one of --catalog PATH or --store" in flat(result.output)
    result = runner.invoke(app, base + ["--store", "A=http://127.0.0.1:1/"])
    assert result.exit_code == 1 and "needs both store_url_a and store_url_b" in flat(result.output)
