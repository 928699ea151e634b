"""The folds of an evaluation replay each training buyer once (harness.eval.shared_replays):
real replays through the mock store over the HTTP driver, on a small synthetic log."""

from __future__ import annotations

import pandas as pd
import pytest
from rich.console import Console

from agent.traces import read_traces
from harness.eval.evaluate import EvaluateConfig, make_protocol_traces, select_trace_buyers
from harness.eval.nav_base import NavBaseConfig, make_world
from harness.eval.shared_replays import SharedReplays, SharedReplaysError, replay_settings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    events, catalog, codes, _ = make_world(NavBaseConfig(shops=3, buyers_per_shop=8, products_per_shop=20),
                                           tmp_path_factory.mktemp("world"))
    return events, catalog, codes


def fold_work(root, codes: pd.DataFrame, held_out: str, code_shift: int):
    """A fold's protocol dir with its codes.parquet: `held_out` out, its own code numbering."""
    work = root / f"held_out_{held_out}" / "paper"
    work.mkdir(parents=True)
    split = ["held_out" if shop == held_out else "training" for shop in codes["shop_id"]]
    codes.assign(split=split, code=(codes["code"] + code_shift) % 4).to_parquet(work / "codes.parquet")
    return work


async def test_folds_replay_a_buyer_once_and_give_its_trace_their_own_code(tmp_path, world):
    events, catalog, codes = world
    shops = sorted(codes["shop_id"].unique())
    config = EvaluateConfig(out_dir=tmp_path, events=events, catalog=catalog, traces_per_shop=5, traces_per_code=50,
                            concurrency=4, progress=False)
    quiet = Console(quiet=True)
    first = fold_work(tmp_path, codes, shops[0], 0)
    second = fold_work(tmp_path, codes, shops[2], 1)

    first_traces = read_traces(await make_protocol_traces(config, first, quiet))
    replays = SharedReplays(tmp_path / "replays", replay_settings(events, catalog, config.variant, config.trace_max_steps))
    assert len(replays.traces) == len(first_traces) == 10
    second_traces = read_traces(await make_protocol_traces(config, second, quiet))

    # The shop both folds train on gives the same five buyers; only the other five were replayed again.
    both = {(t.shop_id, t.buyer_id) for t in first_traces} & {(t.shop_id, t.buyer_id) for t in second_traces}
    assert {shop for shop, _ in both} == {shops[1]} and len(both) == 5
    assert len(read_traces(second / "traces" / "replay" / "traces.jsonl")) == 5
    assert len(SharedReplays(tmp_path / "replays", replays.settings).traces) == 15
    # Each fold's trace of a shared buyer carries that fold's code, and the same pages and actions.
    by_buyer = {(t.shop_id, t.buyer_id): t for t in first_traces}
    fold_codes = pd.read_parquet(second / "codes.parquet").set_index(["shop_id", "buyer_id"])["code"]
    for trace in second_traces:
        assert trace.code == fold_codes[(trace.shop_id, trace.buyer_id)]
        if (trace.shop_id, trace.buyer_id) in by_buyer:
            assert trace.code == (by_buyer[(trace.shop_id, trace.buyer_id)].code + 1) % 4
            assert trace.steps == by_buyer[(trace.shop_id, trace.buyer_id)].steps


async def test_a_buyer_replayed_alone_writes_the_trace_a_shared_replay_kept(tmp_path, world):
    # The buyer tag names the buyer, so a converting buyer's order numbers do not depend on which
    # other buyers were replayed with it.
    from harness.eval.replay import ReplayConfig, replay

    events, catalog, codes = world
    settings = ReplayConfig(driver="http", concurrency=4, max_steps_per_buyer=24, progress=False)
    together = read_traces((await replay(events, catalog, codes, tmp_path / "all", settings)).traces_path)
    converting = next(t for t in sorted(together, key=lambda t: (t.shop_id, t.buyer_id)) if t.converted)
    alone_codes = codes[(codes["shop_id"] == converting.shop_id) & (codes["buyer_id"] == converting.buyer_id)]
    alone = read_traces((await replay(events, catalog, alone_codes, tmp_path / "one", settings)).traces_path)
    assert alone[0].steps == converting.steps and "SP" in "".join(step.observation for step in alone[0].steps)


def test_replays_made_under_other_settings_are_refused_naming_the_setting(tmp_path, world):
    events, catalog, codes = world
    kept = SharedReplays(tmp_path, replay_settings(events, catalog, "default", 24))
    kept.add([])
    with pytest.raises(SharedReplaysError, match="max_steps_per_buyer = 24, this evaluation's is 30"):
        SharedReplays(tmp_path, replay_settings(events, catalog, "default", 30))


def test_trace_buyers_of_a_shop_do_not_depend_on_the_other_shops_of_the_fold():
    codes = pd.DataFrame({"shop_id": ["a"] * 20 + ["b"] * 20 + ["c"] * 20, "buyer_id": [str(i) for i in range(60)],
                          "code": [0, 1, 2] * 20})
    fold_a_out = select_trace_buyers(codes.assign(split=["held_out"] * 20 + ["training"] * 40), 100, 6, seed=3)
    fold_c_out = select_trace_buyers(codes.assign(split=["training"] * 40 + ["held_out"] * 20), 100, 6, seed=3)
    shop_b = [fold[fold["shop_id"] == "b"].reset_index(drop=True) for fold in (fold_a_out, fold_c_out)]
    assert len(shop_b[0]) == 6 and shop_b[0].equals(shop_b[1])
    other_seed = select_trace_buyers(codes.assign(split=["held_out"] * 20 + ["training"] * 40), 100, 6, seed=4)
    assert set(other_seed["buyer_id"]) != set(fold_a_out["buyer_id"])
