"""Goal-oriented tasks (harness/eval/tasks.py, `simpersona tasks`): the goal reaches the prompt and
the traces, goal sessions replay into traces that buy the target, and a task counts as done only
when the store's own orders hold the target product.

Real components: the mock store (a held-out theme with cookie dialog and required options) served
over HTTP, the scripted buyer, the http driver, the simulation loop and the store's order log. The
policy that "knows the way" plays back the scripted goal traces by the goal text it is handed, so
a success proves that the goal travelled from the task to the policy and that the store counted the
target; played back with the wrong goal's actions, it buys another product and scores nothing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from agent.llm_policy import LLMPolicy
from agent.models import TinyModelConfig, load_tiny
from agent.policy import BuyerTurn
from agent.prompt import build_messages, buy_goal, is_valid
from agent.traces import Step, Trace, parse_trace, rename_shop
from codebook.artifact import CodebookArtifact
from harness.cli import app
from harness.eval.replay import ReplayConfig, replay
from harness.eval.tasks import (TasksConfig, buying_code, compare_policies, goal_set, policy_summary,
                                run_policy_tasks, sample_tasks)
from storefronts.catalog import StoreCatalog

from test_policies import HIGH, write_codebook

torch.set_num_threads(1)
SHOP = "s1"
THEME = "atelier"  # held out from training themes: cookie dialog, size to choose, its own wording
CATALOG = pd.DataFrame({
    "shop_id": [SHOP] * 8,
    "product_id": [f"p{i}" for i in range(8)],
    "title": ["Espresso Cups", "Kettle 1.7 L", "Tea Towel", "Linen Apron", "Oak Board", "Salt Mill", "Milk Jug", "Egg Timer"],
    "category": ["kitchen"] * 4 + ["home"] * 4,
    "brand": ["Acme", "Acme", "Linen Co", "Linen Co", "Oakworks", "Acme", "Acme", "Oakworks"],
    "price": [24.0, 39.5, 8.25, 19.0, 31.0, 14.5, 12.0, 6.0],
})


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("catalog") / "catalog.parquet"
    CATALOG.to_parquet(path)
    return path


@pytest.fixture(scope="module")
def codebook(tmp_path_factory) -> CodebookArtifact:
    return CodebookArtifact.load(write_codebook(tmp_path_factory.mktemp("codebook")))


def test_tasks_are_seeded_distinct_targets_of_the_shop():
    catalog = StoreCatalog.load(CATALOG, SHOP)
    tasks = sample_tasks(catalog, 8, seed=3)
    assert [t.product_id for t in tasks] == [t.product_id for t in sample_tasks(catalog, 8, seed=3)]
    assert len({t.product_id for t in tasks}) == 8  # without replacement while the catalog lasts
    assert [t.product_id for t in tasks] != [t.product_id for t in sample_tasks(catalog, 8, seed=4)]
    assert len(sample_tasks(catalog, 20, seed=3)) == 20
    assert all(t.goal == buy_goal(catalog.by_id[t.product_id].title) for t in tasks)
    with pytest.raises(ValueError, match="at least 1"):
        sample_tasks(catalog, 0, seed=3)


def test_the_goal_is_one_line_next_to_the_persona_token_and_travels_with_traces():
    user = build_messages("<persona_1>", "URL: /\nElements:\n[1] link \"Tea Towel\"", [], goal=buy_goal("Tea Towel"))[1]["content"]
    assert user.endswith('\nGoal: buy "Tea Towel"\nShopper: <persona_1>')
    assert "Goal:" not in build_messages("<persona_1>", "URL: /", [])[1]["content"]  # a free buyer has none
    trace = Trace("123", "b", 1, [Step("URL: http://127.0.0.1/shop/123", "stop")], False, "pixel", buy_goal("Tea Towel"))
    assert parse_trace(json.loads(trace.to_json()), "t:1") == trace
    assert parse_trace({k: v for k, v in json.loads(trace.to_json()).items() if k != "goal"}, "t:1").goal == ""
    renamed = rename_shop(trace, __import__("random").Random(0))
    assert (renamed.goal, renamed.variant) == (trace.goal, trace.variant) and renamed.shop_id != "123"
    with pytest.raises(ValueError, match="'goal' should be str"):
        parse_trace({**json.loads(trace.to_json()), "goal": 3}, "t:1")


def test_buying_code_is_the_type_whose_real_buyers_convert_most(codebook):
    assert buying_code(codebook) == HIGH


class PlaybackPolicy:
    """Plays the scripted goal trace whose goal it is handed (or, `wrong`, another task's)."""

    def __init__(self, traces: list[Trace], wrong: bool = False):
        goals = [trace.goal for trace in traces]
        self.by_goal = {goal: traces[(index + wrong) % len(traces)] for index, goal in enumerate(goals)}
        self.name = "wrong-goal" if wrong else "knows-the-way"
        self.goals_seen: set[str] = set()

    def act(self, turns: list[BuyerTurn]) -> list[str]:
        self.goals_seen |= {turn.goal for turn in turns}
        steps = [self.by_goal[turn.goal].steps for turn in turns]
        return [s[len(t.history)].action if len(t.history) < len(s) else "stop" for s, t in zip(steps, turns)]


@pytest.mark.slow
def test_a_task_succeeds_only_when_the_stores_orders_hold_the_target(catalog_file, codebook, tmp_path):
    real = pd.DataFrame({"shop_id": SHOP, "buyer_id": "real-1", "session_id": "v1", "event_type": ["product_view"],
                         "ts": [pd.Timestamp("2024-01-01", tz="UTC")], "product_id": "p3", "category": "kitchen",
                         "price": 19.0, "query": None})
    codes = pd.DataFrame({"shop_id": [SHOP], "buyer_id": ["real-1"], "code": [1]})
    report = asyncio.run(replay(real, catalog_file, codes, tmp_path / "traces",
                                ReplayConfig(driver="http", variant=THEME, concurrency=2, progress=False, seed=5,
                                             goal_buyers_per_shop=4, goal_code=HIGH)))
    assert report.n_exact == 5 and report.details["n_goal_sessions"] == 4, report.mismatches
    from agent.traces import read_traces

    traces = read_traces(report.traces_path)
    free = [t for t in traces if not t.goal]
    traces = [t for t in traces if t.goal]
    assert [t.buyer_id for t in free] == ["real-1"] and len(traces) == 4
    assert all(t.goal.startswith("buy ") and t.converted and t.code == HIGH for t in traces)
    assert goal_set(catalog_file, [SHOP], per_shop=4, code=HIGH, seed=5).goals == {(SHOP, t.buyer_id): t.goal for t in traces}

    config = TasksConfig(catalog=catalog_file, shop=SHOP, variant=THEME, tasks=4, max_steps=40, seed=5, driver="http",
                         concurrency=2, out_dir=tmp_path, run_id="tasks", progress=False)
    tasks = sample_tasks(StoreCatalog.load(catalog_file, SHOP), 4, seed=5)
    knows = PlaybackPolicy(traces)
    right = asyncio.run(run_policy_tasks(config, tasks, knows, "knows-the-way", codebook))
    wrong = asyncio.run(run_policy_tasks(config, tasks, PlaybackPolicy(traces, wrong=True), "wrong-goal", codebook))
    assert knows.goals_seen == {task.goal for task in tasks}
    assert [o.success for o in right] == [True] * 4 and not any(o.ordered_other for o in right)
    assert [o.success for o in wrong] == [False] * 4 and all(o.ordered_other and o.claimed for o in wrong)
    summary = policy_summary(right)
    assert summary["success_rate"] == 1.0 and summary["claims_confirmed_by_store"] == 4
    assert policy_summary(wrong)["ordered_another_product"] == 4
    effect = compare_policies(right, wrong)
    assert effect["delta"] == -1.0 and effect["mcnemar"]["only_a"] == 4


def test_zero_shot_baseline_prompts_without_persona_tokens_and_answers_in_the_grammar():
    texts = ['URL: /\nElements:\n[1] link "Tea Towel"\n[2] searchbox "Search"', "click [1]", 'type [2] "Tea Towel"']
    policy = LLMPolicy.zero_shot(load_tiny(texts * 5, TinyModelConfig.of_width(32, 1, 0, vocab_size=300)))
    turn = BuyerTurn(0, 2, texts[0], [], seed=1, goal=buy_goal("Tea Towel"))
    prompt = policy.prompts([turn])[0]
    assert 'Goal: buy "Tea Towel"' in prompt and "<persona" not in prompt
    assert policy.generation.temperature == 0.0
    assert is_valid(policy.act([turn])[0], texts[0])


@pytest.mark.slow
def test_cli_compares_two_policies_on_the_same_tasks(catalog_file, codebook, tmp_path):
    args = ["tasks", "--catalog", str(catalog_file), "--shop", SHOP, "--codebook", str(codebook.path), "--policy", "random",
            "--policy", "type-profile", "--n", "3", "--max-steps", "6", "--driver", "http", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / f"tasks-{SHOP}-mock" / "tasks.json").read_text())
    assert set(record["policies"]) == {"random", "type-profile"} and record["code"] == HIGH
    assert all(len(found["per_task"]) == 3 for found in record["policies"].values())
    assert "type-profile vs random" in record["comparisons"]
    assert "bought the target" in result.output
    bad = CliRunner().invoke(app, [*args[:-2], "--out", str(tmp_path), "--engine", "shopify"])
    assert bad.exit_code != 0 and "--engine must be one of mock, oscar" in bad.output
    twice = CliRunner().invoke(app, [*args, "--policy", "random"])
    assert twice.exit_code == 1 and "the same policy twice" in twice.output
