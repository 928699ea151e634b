"""Population sampling, run directories, batched deciding, and the simulation end to end:
the type-profile policy drives synthetic buyers through the real mock store in real Chromium,
and the store's own order log must agree with trajectories.jsonl buyer by buyer."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from agent.baselines import TypeProfilePolicy
from agent.policy import BuyerTurn
from codebook.artifact import CodebookArtifact, ShopMixError
from harness.sim.population import sample_population
from harness.sim.rundir import RunDir, RunDirError
from harness.sim.simulate import PolicyBatcher, simulate

from test_policies import HIGH, STORE_SHOP, real_catalog, write_codebook

TRAJECTORY_KEYS = {
    "run_id", "buyer_index", "buyer_tag", "code", "seed", "outcome", "terminate_reason", "detail",
    "n_steps", "duration_s", "steps", "attempts", "first_error",
}
STEP_KEYS = {"step", "url", "obs_sha1", "action", "element", "dialog", "latency_ms", "policy_ms", "error"}


@pytest.fixture(scope="module")
def codebook_dir(tmp_path_factory) -> Path:
    return write_codebook(tmp_path_factory.mktemp("codebook"))


@pytest.fixture(scope="module")
def store_variant():
    from storefronts.variants import Variant

    return Variant()  # the built-in default: address, delivery, payment (card fields), review


@pytest.fixture
def store(store_variant):
    """A fresh store (and order log) per test, so order counts belong to one run only."""
    from storefronts.server import serve_store

    with serve_store(real_catalog(), STORE_SHOP, variant=store_variant) as running:
        yield running


# --- population ------------------------------------------------------------------------------


def test_population_is_seeded_and_has_the_shops_mix_by_quota(codebook_dir):
    codebook = CodebookArtifact.load(codebook_dir)
    population = sample_population(codebook, "mixed", buyers=3000, seed=5)
    assert population == sample_population(codebook, "mixed", buyers=3000, seed=5)
    assert population != sample_population(codebook, "mixed", buyers=3000, seed=6)
    assert len({buyer.seed for buyer in population}) == len(population)
    counts = Counter(buyer.code for buyer in population)
    for code, share in codebook.shop_mix("mixed").items():
        assert abs(counts[code] - 3000 * share) < 1  # the quota, not a draw
    assert 3 not in counts  # probability 0 in the mix


def test_unknown_shop_is_a_clear_error(codebook_dir):
    with pytest.raises(ShopMixError, match=r"shop_mix\.json: no shop 'nope'; shops in this codebook: high, low, mixed"):
        CodebookArtifact.load(codebook_dir).shop_mix("nope")


# --- run directory ---------------------------------------------------------------------------


def test_run_dir_cuts_a_torn_last_line_and_refuses_to_overwrite(tmp_path):
    manifest = {"config": {"shop": "s", "seed": 1, "buyers": 3}}
    run = RunDir.open(tmp_path / "r", manifest)
    run.append_trajectory({"buyer_index": 0, "outcome": "left"})
    run.append_trajectory({"buyer_index": 2, "outcome": "converted"})
    with open(run.trajectories_path, "a") as handle:
        handle.write('{"buyer_index": 1, "outc')  # a crash in the middle of a write
    assert run.completed_buyers() == {0, 2}

    with pytest.raises(RunDirError, match="already holds a run"):
        RunDir.open(tmp_path / "r", manifest)
    with pytest.raises(RunDirError, match="seed: was 1, now 2"):
        RunDir.open(tmp_path / "r", {"config": {"shop": "s", "seed": 2, "buyers": 3}}, resume=True)

    resumed = RunDir.open(tmp_path / "r", manifest, resume=True)
    resumed.append_trajectory({"buyer_index": 1, "outcome": "left"})
    lines = resumed.trajectories_path.read_text().splitlines()
    assert [json.loads(line)["buyer_index"] for line in lines] == [0, 2, 1]


def test_a_run_is_resumed_only_by_the_policy_that_made_it(tmp_path):
    config = {"shop": "s", "seed": 1, "buyers": 3, "policy": "runs/x/agent"}
    made = {"name": "runs/x/agent", "temperature": 0.5, "seed": 1, "weights": "a1b2c3d4e5f6a7b8"}
    RunDir.open(tmp_path / "r", {"config": config, "policy": made}).append_trajectory({"buyer_index": 0, "outcome": "left"})

    # Retrained in place: the same path and settings, other weights.
    retrained = {**made, "weights": "0000000000000000"}
    with pytest.raises(RunDirError, match="made by the policy .*a1b2c3d4e5f6a7b8.*0000000000000000"):
        RunDir.open(tmp_path / "r", {"config": config, "policy": retrained}, resume=True)
    with pytest.raises(RunDirError, match="made by the policy"):
        RunDir.open(tmp_path / "r", {"config": config, "policy": {**made, "temperature": 1.0}}, resume=True)
    RunDir.open(tmp_path / "r", {"config": config, "policy": made}, resume=True)

    # A manifest written before weights were recorded resumes with any weights.
    old = {key: value for key, value in made.items() if key != "weights"}
    RunDir.open(tmp_path / "old", {"config": config, "policy": old})
    RunDir.open(tmp_path / "old", {"config": config, "policy": retrained}, resume=True)


# --- batching --------------------------------------------------------------------------------


class CountingPolicy:
    name = "counting"

    def __init__(self):
        self.batches: list[list[int]] = []

    def act(self, turns):
        self.batches.append([turn.buyer_index for turn in turns])
        return ["stop"] * len(turns)


def test_batcher_serves_all_waiting_buyers_in_one_call_and_never_strands_a_lone_one():
    async def scenario():
        policy = CountingPolicy()
        # A long max wait: the first round must close because everyone is waiting, not by time.
        batcher = PolicyBatcher(policy, max_wait_s=30.0)
        serving = asyncio.create_task(batcher.run())
        for _ in range(5):
            batcher.buyer_started()
        answers = await asyncio.wait_for(
            asyncio.gather(*(batcher.decide(BuyerTurn(i, 0, f"page {i}")) for i in range(5))), timeout=20
        )
        assert answers == ["stop"] * 5
        # Two buyers in flight, one waiting: a short max wait lets it through alone.
        for _ in range(3):
            batcher.buyer_finished()
        batcher.max_wait_s = 0.05
        lone = await asyncio.wait_for(batcher.decide(BuyerTurn(7, 0, "page 7")), timeout=20)
        serving.cancel()
        return policy.batches, lone

    batches, lone = asyncio.run(scenario())
    assert batches == [[0, 1, 2, 3, 4], [7]]
    assert lone == "stop"


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.browser
def test_end_to_end_in_chromium_store_orders_match_trajectories(store, codebook_dir, tmp_path):
    from storefronts.orderlog import read_events, read_orders

    result = simulate(
        store.url, "mixed", codebook_dir, TypeProfilePolicy.from_codebook(codebook_dir),
        buyers=20, concurrency=4, driver="browser", max_steps=30, seed=1, out_dir=tmp_path, run_id="e2e",
        store_db=store.db_path, our_store=True, variant=store.variant.name, settle_ms=0, progress=False,
    )
    run_dir = tmp_path / "e2e"
    lines = (run_dir / "trajectories.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(record["buyer_index"] for record in records) == list(range(20))

    for record in records:
        assert set(record) == TRAJECTORY_KEYS
        assert record["buyer_tag"] == f"e2e:{record['buyer_index']}"
        assert record["outcome"] in ("converted", "left", "max_steps"), record["terminate_reason"]
        assert record["n_steps"] == len(record["steps"]) >= 1
        for step in record["steps"]:
            assert set(step) == STEP_KEYS
            assert re.fullmatch(r"[0-9a-f]{40}", step["obs_sha1"])
            assert step["url"].startswith(store.url)
            if re.match(r"(click|type|select) \[", step["action"]) and step["error"] is None:
                assert step["element"]["role"] and step["element"]["name"], step   # auditable without the page

    # The store's own count, buyer by buyer.
    orders = Counter(order["buyer_tag"] for order in read_orders(store.db_path))
    converted = {f"e2e:{r['buyer_index']}": 1 for r in records if r["outcome"] == "converted"}
    assert dict(orders) == converted
    assert 0 < len(converted) < 20
    assert {event["buyer_tag"] for event in read_events(store.db_path)} == {f"e2e:{i}" for i in range(20)}
    for record in records:
        if record["outcome"] == "converted":
            assert record["detail"]["order_id"]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary["completed"] == 20 and summary["converted"] == len(converted)
    assert sum(row["buyers"] for row in summary["per_type"].values()) == 20
    assert summary["per_type"][str(HIGH)]["real_conversion_rate"] == 0.95
    assert summary["store_counted"]["agreement"] == 1.0
    assert summary["store_counted"]["disagreeing_buyer_indices"] == []
    assert summary["throughput"]["steps_this_session"] == sum(r["n_steps"] for r in records)

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["store"] == {"url": store.url, "variant": "default", "ours": True}
    assert [b["seed"] for b in manifest["seeds"]["buyers"]] == [r.seed for r in sample_population(CodebookArtifact.load(codebook_dir), "mixed", 20, 1)]
    assert manifest["config"]["policy"] == "type-profile" and manifest["config"]["concurrency"] == 4
    assert "git_revision" in manifest and manifest["versions"]["playwright"]


def test_resume_runs_exactly_the_missing_buyers_after_a_torn_line(store, codebook_dir, tmp_path):
    def run(run_dir: Path, resume: bool):
        return simulate(
            store.url, "mixed", codebook_dir, TypeProfilePolicy.from_codebook(codebook_dir),
            buyers=10, concurrency=3, driver="http", max_steps=30, seed=2, out_dir=run_dir.parent,
            run_id=run_dir.name, resume=resume, progress=False, our_store=True,
        )

    full = run(tmp_path / "full", resume=False)
    complete = {r["buyer_index"]: r for r in full.trajectories}
    assert sorted(complete) == list(range(10))

    # The same run as a crash would leave it: six buyers written, the seventh torn mid-line.
    crashed = tmp_path / "crashed" / "full"  # same run id, so the same buyer tags and seeds
    shutil.copytree(tmp_path / "full", crashed)
    lines = (crashed / "trajectories.jsonl").read_text().splitlines(keepends=True)
    (crashed / "trajectories.jsonl").write_text("".join(lines[:6]) + lines[6][: len(lines[6]) // 2])
    (crashed / "summary.json").unlink()
    written = {json.loads(line)["buyer_index"] for line in lines[:6]}

    resumed = run(crashed, resume=True)
    assert resumed.summary["throughput"]["buyers_this_session"] == 4
    after = [json.loads(line) for line in (crashed / "trajectories.jsonl").read_text().splitlines()]
    assert [r["buyer_index"] for r in after[:6]] == [json.loads(line)["buyer_index"] for line in lines[:6]]
    assert {r["buyer_index"] for r in after[6:]} == set(range(10)) - written
    assert len(after) == 10 and resumed.summary["completed"] == 10
    # The re-run buyers did exactly what they did the first time (same seeds, same store pages).
    for record in after[6:]:
        assert [s["action"] for s in record["steps"]] == [s["action"] for s in complete[record["buyer_index"]]["steps"]]

    # Nothing left to do: a second resume runs no buyer.
    again = run(crashed, resume=True)
    assert again.summary["throughput"]["buyers_this_session"] == 0 and again.summary["completed"] == 10


def test_cli_serves_the_mock_store_and_counts_its_orders(codebook_dir, tmp_path, store_variant):
    import typer
    from click.testing import CliRunner

    import harness.cli.simulate  # noqa: F401  (registers the command)
    from harness.cli.app import app as typer_app
    from storefronts.variants import variant_to_dict

    app = typer.main.get_group(typer_app)  # as `simpersona`, however many commands are registered yet

    catalog_path = tmp_path / "catalog.parquet"
    real_catalog().to_parquet(catalog_path)
    variant_path = tmp_path / "variant.json"
    variant_path.write_text(json.dumps(variant_to_dict(store_variant)))
    args = [
        "simulate", "--catalog", str(catalog_path), "--catalog-shop", STORE_SHOP, "--variant", str(variant_path),
        "--shop", "high", "--codebook", str(codebook_dir), "--policy", "type-profile", "--buyers", "3",
        "--concurrency", "3", "--driver", "http", "--max-steps", "30", "--seed", "0", "--out", str(tmp_path / "runs"),
        "--run-id", "cli",
    ]
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads((tmp_path / "runs" / "cli" / "summary.json").read_text())
    assert summary["completed"] == 3 and summary["converted"] >= 1
    assert summary["store_counted"]["orders"] == summary["converted"]
    assert summary["store_counted"]["agreement"] == 1.0
    assert (tmp_path / "runs" / "cli" / "store.sqlite").is_file()
    assert "store-counted orders" in outcome.output

    def unwrapped(output: str) -> str:  # rich wraps messages in a box
        return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())

    bad = CliRunner().invoke(app, args[:1] + ["--shop", "high", "--codebook", str(codebook_dir)])
    assert bad.exit_code != 0 and "exactly one of --store URL or --catalog PATH" in unwrapped(bad.output)
    unknown_shop = CliRunner().invoke(app, [*args[:-1], "cli-2"] + ["--shop", "nope"])
    assert unknown_shop.exit_code == 1 and "no shop 'nope'" in unwrapped(unknown_shop.output)


class BrokenPolicy:
    """Answers garbage to buyer 0 and raises for buyer 1."""

    name = "broken"

    def act(self, turns):
        if any(turn.buyer_index == 1 for turn in turns):
            raise RuntimeError("model server went away")
        return ["fly to the moon"] * len(turns)


def test_bad_actions_and_policy_failures_are_recorded_not_fatal(store, codebook_dir, tmp_path):
    result = simulate(
        store.url, "mixed", codebook_dir, BrokenPolicy(), buyers=2, concurrency=1, driver="http", max_steps=3,
        out_dir=tmp_path, run_id="broken", our_store=True, progress=False,
    )
    by_index = {record["buyer_index"]: record for record in result.trajectories}
    garbled = by_index[0]
    assert garbled["outcome"] == "max_steps" and garbled["n_steps"] == 3
    assert all("unknown action 'fly'" in step["error"] for step in garbled["steps"])
    failed = by_index[1]
    assert failed["outcome"] == "error"
    assert failed["terminate_reason"] == "RuntimeError: model server went away"
    assert result.summary["outcomes"] == {"converted": 0, "left": 0, "max_steps": 1, "error": 1}
