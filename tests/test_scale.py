"""Sharding a population over a local Ray cluster (harness/sim/scale.py).

The same population, seeds and deterministic policy (TypeProfilePolicy, seeded per buyer) must
give the same per-buyer outcomes and actions whether one process runs every buyer or two Ray
workers each run a shard, and the merged run directory must read like a single-process one:
trajectories ordered by buyer_index, summary over all buyers, the store's own order log agreeing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.persona import PersonaMap
from harness.sim.policies import PolicySpec
from harness.sim.scale import ScaleConfig, run_sharded
from harness.sim.simulate import SimulationConfig, simulate

from test_policies import STORE_SHOP, real_catalog, write_codebook

ray = pytest.importorskip("ray")
SHARD_KEYS = ("buyer_index", "buyer_tag", "code", "seed", "outcome", "n_steps")


@pytest.fixture(scope="module")
def local_ray():
    """Two CPUs: two shards run side by side. Reused by run_sharded (it joins, it does not restart)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=80 * 1024 * 1024)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def codebook_dir(tmp_path_factory) -> Path:
    return write_codebook(tmp_path_factory.mktemp("codebook"))


@pytest.fixture(scope="module")
def store():
    from storefronts.server import serve_store

    with serve_store(real_catalog(), STORE_SHOP, variant="default") as running:
        yield running


def _config(store, codebook_dir, out, run_id, driver="http", buyers=8, **options) -> SimulationConfig:
    return SimulationConfig(store_url=store.url, shop="mixed", codebook_dir=codebook_dir, buyers=buyers,
                            concurrency=3, driver=driver, max_steps=25, seed=11, out_dir=out, run_id=run_id,
                            store_db=store.db_path, our_store=True, progress=False, **options)


def _per_buyer(trajectories: list[dict]) -> list[tuple]:
    return [(*(record[key] for key in SHARD_KEYS if key != "buyer_tag"), [s["action"] for s in record["steps"]])
            for record in trajectories]


def test_two_ray_shards_match_the_single_process_run(local_ray, store, codebook_dir, tmp_path):
    from agent.baselines import TypeProfilePolicy

    single = simulate(store.url, "mixed", codebook_dir, TypeProfilePolicy.from_codebook(codebook_dir), buyers=8,
                      concurrency=3, driver="http", max_steps=25, seed=11, out_dir=tmp_path, run_id="single",
                      store_db=store.db_path, our_store=True, progress=False)
    config = _config(store, codebook_dir, tmp_path, "sharded")
    sharded = run_sharded(config, PolicySpec("type-profile"), ScaleConfig(shards=2))

    # Same buyers, same outcomes, same actions step by step.
    assert _per_buyer(sharded.trajectories) == _per_buyer(sorted(single.trajectories, key=lambda r: r["buyer_index"]))
    assert {r["outcome"] for r in sharded.trajectories} - {"error"}, "the run did nothing but fail"
    assert sharded.summary["converted"] > 0 and sharded.summary["outcomes"]["error"] == 0

    # One run directory: trajectories ordered by buyer_index with the run's own tags.
    run_dir = tmp_path / "sharded"
    lines = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    assert [r["buyer_index"] for r in lines] == list(range(8))
    assert all(r["buyer_tag"] == f"sharded:{r['buyer_index']}" and r["run_id"] == "sharded" for r in lines)

    # Each shard dir holds exactly its own buyers.
    for index in range(2):
        shard_lines = (run_dir / "shards" / str(index) / "trajectories.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["buyer_index"] for line in shard_lines) == list(range(index, 8, 2))

    # The summary is recomputed over all buyers and agrees with the single run and the store.
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("completed", "converted", "conversion_rate", "outcomes", "per_type"):
        assert summary[key] == single.summary[key], key
    assert summary["throughput"]["shards"] == 2 and summary["throughput"]["buyers_this_session"] == 8
    assert summary["store_counted"]["agreement"] == 1.0
    assert summary["store_counted"]["orders"] == single.summary["store_counted"]["orders"] == summary["converted"]
    assert [s["completed"] for s in summary["shards"]] == [4, 4]

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["shards"]["count"] == 2 and manifest["shards"]["dirs"] == ["shards/0", "shards/1"]
    assert len(manifest["seeds"]["buyers"]) == 8 and manifest["config"]["policy"] == "type-profile"


def test_resume_completes_a_shard_that_lost_buyers(local_ray, store, codebook_dir, tmp_path):
    config = _config(store, codebook_dir, tmp_path, "resumed", buyers=8)
    spec = PolicySpec("type-profile")
    first = run_sharded(config, spec, ScaleConfig(shards=2))
    # Shard 1 crashed after its first buyer: its file keeps one line and a torn second one.
    shard_file = tmp_path / "resumed" / "shards" / "1" / "trajectories.jsonl"
    kept = shard_file.read_text().splitlines()[0]
    shard_file.write_text(kept + "\n" + '{"buyer_index": 3, "outc')

    with pytest.raises(Exception, match="already holds a run"):
        run_sharded(_config(store, codebook_dir, tmp_path, "resumed", buyers=8), spec, ScaleConfig(shards=2))
    resumed = run_sharded(_config(store, codebook_dir, tmp_path, "resumed", buyers=8, resume=True), spec,
                          ScaleConfig(shards=2))
    assert _per_buyer(resumed.trajectories) == _per_buyer(first.trajectories)
    assert resumed.summary["throughput"]["buyers_this_session"] == 3  # shard 1 ran 1, 5, 7 minus the kept one
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert len(manifest["resumes"]) == 1


@pytest.mark.browser
@pytest.mark.slow
def test_browser_shards_match_single_process(local_ray, store, codebook_dir, tmp_path):
    """Each shard opens its own Chromium; outcomes agree with one process driving both buyers."""
    from agent.baselines import TypeProfilePolicy

    if shutil.which("chromium") is None and not Path("/usr/bin/chromium").exists():
        pytest.skip("Chromium not installed")
    options = dict(buyers=2, concurrency=1, driver="browser", max_steps=25, seed=11, out_dir=tmp_path,
                   store_db=store.db_path, our_store=True, progress=False, settle_ms=50)
    single = simulate(store.url, "high", codebook_dir, TypeProfilePolicy.from_codebook(codebook_dir),
                      run_id="browser-single", **options)
    config = SimulationConfig(store_url=store.url, shop="high", codebook_dir=codebook_dir, run_id="browser-sharded", **options)
    sharded = run_sharded(config, PolicySpec("type-profile"), ScaleConfig(shards=2))
    assert _per_buyer(sharded.trajectories) == _per_buyer(sorted(single.trajectories, key=lambda r: r["buyer_index"]))
    assert sharded.summary["converted"] > 0
    assert sharded.summary["store_counted"]["agreement"] == 1.0


def test_a_shard_that_fails_as_a_whole_is_named(local_ray, store, codebook_dir, tmp_path):
    from harness.sim.scale import ShardError

    # persona.json passes the driver's check; the model it describes is missing, which only the worker finds.
    not_an_agent = tmp_path / "empty-agent-dir"
    not_an_agent.mkdir()
    PersonaMap.for_codes(4).save(not_an_agent)
    with pytest.raises(ShardError, match=r"shard 0 of 1 failed: FileNotFoundError: .*empty-agent-dir: not a Hugging Face"):
        run_sharded(_config(store, codebook_dir, tmp_path, "broken", buyers=1), PolicySpec(str(not_an_agent)),
                    ScaleConfig(shards=1))


def test_cli_simulate_with_ray(local_ray, codebook_dir, tmp_path):
    """`simpersona simulate --ray auto --shards 2` serves the mock store, shards, merges."""
    import pandas as pd
    from typer.testing import CliRunner

    from harness.cli import app

    catalog = tmp_path / "catalog.parquet"
    real_catalog().to_parquet(catalog)
    result = CliRunner().invoke(app, [
        "simulate", "--shop", "mixed", "--codebook", str(codebook_dir), "--catalog", str(catalog),
        "--catalog-shop", STORE_SHOP, "--buyers", "4", "--concurrency", "2", "--driver", "http",
        "--max-steps", "25", "--seed", "11", "--out", str(tmp_path / "runs"), "--run-id", "cli",
        "--ray", "auto", "--shards", "2",
    ])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "cli"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] == 4 and summary["throughput"]["shards"] == 2
    assert summary["store_counted"]["agreement"] == 1.0
    assert sorted(p.name for p in (run_dir / "shards").iterdir()) == ["0", "1"]
    assert pd.read_parquet(catalog).shape[0] > 0
