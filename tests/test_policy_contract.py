"""One persona-policy contract (harness/sim/policies.py) for simulate, ab, evaluate and Ray shards.

Real components throughout: the mock store on real REES46 products, the http driver, a local Ray
cluster, and an agent dir written by `simpersona train-agent --codebook`: a tiny randomly
initialised model fine-tuned for a few seconds on random clicks through this store, so that its
sampled actions are valid and vary with the seed and the temperature. Checked:
- simulate, ab (both arms), evaluate's persona row and two Ray shards give the same actions for
  the same buyer seeds and agent dir (every path samples at the agent dir's temperature);
- an agent is refused with another codebook, by every command, before any buyer runs;
- the temperature a calibration writes into the agent dir is what simulate and ab sample at.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from agent.persona import CodebookMismatchError, PersonaMap, Sampling
from agent.baselines import RandomPolicy
from agent.traces import Step, Trace, write_traces
from codebook.artifact import CodebookArtifact
from harness.cli import app
from harness.eval.evaluate import EvaluateConfig, record_calibrated_temperature, row_policy
from harness.sim.ab import ABConfig, run_ab
from harness.sim.policies import PolicySpec, build_policy, check_policy
from harness.sim.scale import ScaleConfig, run_sharded
from harness.sim.simulate import SimulationConfig, run_simulation, simulate

from test_policies import STORE_SHOP, real_catalog, write_codebook

torch.set_num_threads(1)  # the machine is shared
SEED = 11
# One buyer in flight: every policy call is a batch of one, whichever path runs it.
RUN = dict(buyers=3, concurrency=1, driver="http", max_steps=5, seed=SEED, progress=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """An evaluation protocol dir's layout: codebook/ and agent/ side by side."""
    work = tmp_path_factory.mktemp("work")
    write_codebook(work / "codebook")
    return work


class RecordingRandomPolicy:
    """RandomPolicy that keeps every buyer's (observation, action) steps, as traces to learn from."""

    name = "random"

    def __init__(self):
        self.inner, self.steps = RandomPolicy(), {}

    def act(self, turns):
        lines = self.inner.act(turns)
        for turn, line in zip(turns, lines):
            self.steps.setdefault((turn.buyer_index, turn.code), []).append(Step(turn.observation, line))
        return lines


@pytest.fixture(scope="module")
def agent_dir(work, store, tmp_path_factory) -> Path:
    recorder = RecordingRandomPolicy()
    simulate(store.url, "mixed", work / "codebook", recorder, out_dir=tmp_path_factory.mktemp("random"), run_id="random",
             store_db=store.db_path, our_store=True, buyers=8, concurrency=2, driver="http", max_steps=6, seed=1,
             progress=False)
    traces = [Trace(STORE_SHOP, f"buyer{index}", code, steps, converted=False)
              for (index, code), steps in recorder.steps.items()]
    result = CliRunner().invoke(app, [
        "train-agent", "--traces", str(write_traces(traces, work / "traces.jsonl")), "--out", str(work / "agent"),
        "--base", "tiny", "--codebook", str(work / "codebook"), "--single-stage", "--stage2-epochs", "20",
        "--stage2-lr", "1e-2", "--batch-size", "8", "--max-length", "1024",
    ])
    assert result.exit_code == 0, result.output
    return work / "agent"


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("catalog") / "catalog.parquet"
    real_catalog().to_parquet(path)
    return path


@pytest.fixture(scope="module")
def store(catalog_file):
    """One store on one port for every path: the page URL is part of what the agent reads."""
    from storefronts.server import serve_store

    with serve_store(catalog_file, STORE_SHOP, variant="default", port=_free_port()) as running:
        yield running


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=80 * 1024 * 1024)
    yield
    ray.shutdown()


def _actions(trajectories: list[dict]) -> list[tuple]:
    return [(r["buyer_index"], r["code"], r["seed"], [s["action"] for s in r["steps"]])
            for r in sorted(trajectories, key=lambda record: record["buyer_index"])]


def _sim_config(store, codebook: CodebookArtifact, out: Path, run_id: str) -> SimulationConfig:
    return SimulationConfig(store_url=store.url, shop="mixed", codebook_dir=codebook.path, out_dir=out, run_id=run_id,
                            store_db=store.db_path, our_store=True, **RUN)


def test_the_agent_dir_records_its_codebook_traces_and_sampling(work, agent_dir):
    persona_map = PersonaMap.load(agent_dir)
    codebook = CodebookArtifact.load(work / "codebook")
    assert (persona_map.codebook.k, persona_map.codebook.content_hash) == (4, codebook.content_hash)
    assert persona_map.num_codes == 4  # K from --codebook, though the traces use codes 0..2 only
    assert persona_map.traces.count == 8 and persona_map.traces.path == str((work / "traces.jsonl").resolve())
    assert persona_map.sampling == Sampling()  # not calibrated yet: the documented default


def test_a_run_records_which_weights_made_it(work, agent_dir, tmp_path):
    from agent.models import weights_digest
    from harness.sim.policies import policy_record

    codebook = CodebookArtifact.load(work / "codebook")
    record = policy_record(build_policy(PolicySpec(str(agent_dir)), codebook))
    assert record["weights"] == weights_digest(agent_dir) and len(record["weights"]) == 16
    retrained = tmp_path / "retrained"
    shutil.copytree(agent_dir, retrained)
    from safetensors.torch import load_file, save_file

    tensors = load_file(retrained / "model.safetensors")
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1.0  # other weights; name, temperature and seed stay the same
    save_file(tensors, retrained / "model.safetensors", metadata={"format": "pt"})
    assert policy_record(build_policy(PolicySpec(str(retrained)), codebook))["weights"] != record["weights"]


# A calibrated temperature other than the default, so that every path is seen to read it from the
# agent dir; the agent still writes valid actions at it, so sampling (not the greedy retry) decides.
CALIBRATED_TEMPERATURE = 1.2


@pytest.mark.slow
def test_simulate_ab_evaluate_and_ray_shards_act_alike(work, agent_dir, store, local_ray, tmp_path):
    calibrated = tmp_path / "work"
    shutil.copytree(work / "codebook", calibrated / "codebook")
    shutil.copytree(agent_dir, calibrated / "agent")
    record_calibrated_temperature(calibrated / "agent", {"shops": ["1001"], "chosen": CALIBRATED_TEMPERATURE})
    work, agent_dir = calibrated, calibrated / "agent"
    codebook = CodebookArtifact.load(work / "codebook")
    spec = PolicySpec(str(agent_dir), seed=SEED)  # what `simulate` and `ab` build from --policy and --seed

    simulated = simulate(store.url, "mixed", codebook, spec, out_dir=tmp_path, run_id="simulate",
                         store_db=store.db_path, our_store=True, **RUN)

    ab_config = ABConfig(shop="mixed", codebook_dir=codebook.path, store_url_a=store.url, store_url_b=store.url,
                         buyers=RUN["buyers"], seed=SEED, driver="http", concurrency=1, max_steps=RUN["max_steps"],
                         out_dir=tmp_path, run_id="ab", progress=False)
    ab = asyncio.run(run_ab(ab_config, build_policy(spec, codebook), stores={"A": store, "B": store},
                            plot=False, codebook=codebook))

    for name in ("events.parquet", "catalog.parquet"):  # EvaluateConfig checks its inputs exist
        (tmp_path / name).touch()
    evaluation = EvaluateConfig(out_dir=tmp_path / "evaluation", input_dir=tmp_path, seed=SEED)
    persona_row = row_policy("persona", work, evaluation, codebook)
    evaluated = asyncio.run(run_simulation(_sim_config(store, codebook, tmp_path, "evaluate"), persona_row,
                                           codebook=codebook))

    sharded = run_sharded(_sim_config(store, codebook, tmp_path, "ray"), spec, ScaleConfig(shards=2), codebook=codebook)

    expected = _actions(simulated.trajectories)
    assert all(len(actions) > 0 for *_, actions in expected), "a buyer took no step"
    assert {r["outcome"] for r in simulated.trajectories} <= {"converted", "left", "max_steps"}
    assert ab.summary["n"] == RUN["buyers"]
    for name, trajectories in (("ab A", _arm(tmp_path / "ab" / "A")), ("ab B", _arm(tmp_path / "ab" / "B")),
                               ("evaluate", evaluated.trajectories), ("ray", sharded.trajectories)):
        assert _actions(trajectories) == expected, name
    manifests = [tmp_path / run / "manifest.json" for run in ("simulate", "ab/A", "evaluate", "ray")]
    temperatures = {json.loads(path.read_text())["policy"]["temperature"] for path in manifests}
    assert temperatures == {CALIBRATED_TEMPERATURE}  # every path sampled at the agent dir's temperature
    # The comparison has teeth: greedy decoding, or another sampling seed, acts otherwise.
    for other in (replace(spec, temperature=0.0), replace(spec, seed=SEED + 1)):
        run = simulate(store.url, "mixed", codebook, other, out_dir=tmp_path, run_id=f"other-{other.seed}-{other.temperature}",
                       store_db=store.db_path, our_store=True, **RUN)
        assert _actions(run.trajectories) != expected, other


def _arm(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]


def _other_codebook(directory: Path) -> Path:
    """The same shops and types, re-measured: another artifact, so another content hash."""
    write_codebook(directory)
    types = json.loads((directory / "types.json").read_text())
    types["types"][0]["conversion_rate"] = 0.9
    (directory / "types.json").write_text(json.dumps(types))
    return directory


def test_another_codebook_is_refused_before_any_buyer_runs(work, agent_dir, catalog_file, tmp_path):
    other_dir = _other_codebook(tmp_path / "other-codebook")
    other, trained_for = CodebookArtifact.load(other_dir), CodebookArtifact.load(work / "codebook")
    with pytest.raises(CodebookMismatchError) as refused:
        build_policy(PolicySpec(str(agent_dir)), other)
    message = str(refused.value)
    for named in (str(agent_dir), str(trained_for.path), trained_for.content_hash, str(other.path), other.content_hash):
        assert named in message

    runs = tmp_path / "runs"
    store = ["--catalog", str(catalog_file), "--catalog-shop", STORE_SHOP, "--driver", "http", "--out", str(runs)]
    for command in (["simulate", "--buyers", "2"], ["ab", "--buyers", "2"]):
        result = CliRunner().invoke(app, [*command, "--shop", "mixed", "--codebook", str(other_dir),
                                          "--policy", str(agent_dir), *store, "--run-id", command[0]])
        assert result.exit_code == 1, result.output
        assert "was trained for codebook" in " ".join(result.output.split()), result.output
    assert not runs.exists(), "a run directory was written: buyers ran before the check"

    # A Ray run is checked on the driver, before any worker starts.
    config = SimulationConfig(store_url="http://127.0.0.1:9/", shop="mixed", codebook_dir=other_dir, out_dir=runs,
                              run_id="ray", driver="http")
    with pytest.raises(CodebookMismatchError):
        run_sharded(config, PolicySpec(str(agent_dir)), ScaleConfig(shards=2), codebook=other)
    assert not runs.exists()

    # Another K is refused the same way.
    bigger = write_codebook(tmp_path / "k5")
    (bigger / "config.json").write_text(json.dumps({"model": {"codebook_size": 5}}))
    for name in ("shop_mix.json", "types.json"):
        record = json.loads((bigger / name).read_text())
        record["codebook_size"] = 5
        (bigger / name).write_text(json.dumps(record))
    with pytest.raises(CodebookMismatchError, match=r"\(K=4, sha256 .*\(K=5, sha256"):
        check_policy(PolicySpec(str(agent_dir)), CodebookArtifact.load(bigger))


def test_an_agent_dir_that_names_no_codebook_loads_with_a_warning(work, agent_dir, tmp_path, caplog):
    old = shutil.copytree(agent_dir, tmp_path / "old-agent")
    persona_map = PersonaMap.load(old)
    record = {"num_codes": persona_map.num_codes, "neutral": persona_map.neutral, "init": persona_map.init,
              "code_to_token": {str(code): token for code, token in persona_map.code_to_token.items()}}
    (old / "persona.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        check_policy(PolicySpec(str(old)), CodebookArtifact.load(_other_codebook(tmp_path / "any")))
    assert "records no codebook" in caplog.text and "nothing can be checked" in caplog.text


def test_the_calibrated_temperature_is_what_simulate_and_ab_sample_at(work, agent_dir, catalog_file, tmp_path):
    calibrated = shutil.copytree(agent_dir, tmp_path / "agent")
    record_calibrated_temperature(calibrated, {"shops": ["1001", "1002"], "chosen": 0.7})
    persona_map = PersonaMap.load(calibrated)
    assert persona_map.sampling == Sampling(0.7, "calibration on training shops 1001, 1002 (closest conversion per type and product-view share)")
    assert persona_map.codebook == PersonaMap.load(agent_dir).codebook  # the rest of persona.json is kept

    codebook = CodebookArtifact.load(work / "codebook")
    assert build_policy(PolicySpec(str(calibrated)), codebook).generation.temperature == 0.7
    endpoint = build_policy(PolicySpec("http://127.0.0.1:9/v1", agent_dir=calibrated), codebook)
    assert endpoint.generation.temperature == 0.7  # an endpoint serving the dir samples alike
    assert build_policy(PolicySpec(str(calibrated), temperature=0.3), codebook).generation.temperature == 0.3

    runs = tmp_path / "runs"
    common = ["--shop", "mixed", "--codebook", str(work / "codebook"), "--policy", str(calibrated), "--catalog",
              str(catalog_file), "--catalog-shop", STORE_SHOP, "--buyers", "2", "--concurrency", "1", "--driver", "http",
              "--max-steps", "2", "--out", str(runs)]
    for command, run_id, options, temperature in (("simulate", "sim", [], 0.7), ("ab", "ab", [], 0.7),
                                                  ("simulate", "override", ["--temperature", "0.3"], 0.3)):
        result = CliRunner().invoke(app, [command, *common, "--run-id", run_id, *options])
        assert result.exit_code == 0, result.output
        manifest = runs / run_id / ("A" if command == "ab" else "") / "manifest.json"
        assert json.loads(manifest.read_text())["policy"]["temperature"] == temperature, command


def test_the_calibrated_guidance_is_how_every_command_samples(work, agent_dir, catalog_file, tmp_path):
    guided = shutil.copytree(agent_dir, tmp_path / "agent")
    record_calibrated_temperature(guided, {"shops": ["1001"], "chosen": 0.5, "chosen_plausibility": 0.1, "guidance": 2.0})
    assert PersonaMap.load(guided).sampling.guidance == 2.0 and PersonaMap.load(guided).sampling.guidance_plausibility == 0.1
    codebook = CodebookArtifact.load(work / "codebook")
    generation = build_policy(PolicySpec(str(guided)), codebook).generation
    assert (generation.guidance, generation.guidance_plausibility) == (2.0, 0.1)
    assert build_policy(PolicySpec(str(guided), guidance=1.0), codebook).generation.guidance == 1.0
    # An endpoint returns answers only, not the neutral prompt's log-probabilities beside them.
    with pytest.raises(ValueError, match="persona guidance 2 .*an endpoint cannot"):
        build_policy(PolicySpec("http://127.0.0.1:9/v1", agent_dir=guided), codebook)
    assert build_policy(PolicySpec("http://127.0.0.1:9/v1", agent_dir=guided, guidance=1.0), codebook).generation.guidance == 1.0
    with pytest.raises(ValueError, match="persona guidance must be > 0"):
        check_policy(PolicySpec(str(guided), guidance=0.0), codebook)

    runs = tmp_path / "runs"
    common = ["--shop", "mixed", "--codebook", str(work / "codebook"), "--policy", str(guided), "--catalog",
              str(catalog_file), "--catalog-shop", STORE_SHOP, "--buyers", "2", "--concurrency", "1", "--driver", "http",
              "--max-steps", "2", "--out", str(runs)]
    for command, run_id, options, guidance in (("simulate", "sim", [], 2.0), ("ab", "ab", [], 2.0),
                                               ("simulate", "off", ["--guidance", "1"], None)):
        result = CliRunner().invoke(app, [command, *common, "--run-id", run_id, *options])
        assert result.exit_code == 0, result.output
        manifest = runs / run_id / ("A" if command == "ab" else "") / "manifest.json"
        recorded = json.loads(manifest.read_text())["policy"]
        assert recorded.get("guidance") == guidance, command
        # The plausibility bar changes how a guided agent samples: a guided run's resume checks it too.
        assert recorded.get("guidance_plausibility") == (0.1 if guidance else None)
        assert ("under persona guidance 2" in result.output) == (guidance is not None) or command == "ab", result.output


def test_policy_spec_errors_are_specific(work):
    codebook = CodebookArtifact.load(work / "codebook")
    with pytest.raises(ValueError, match=r"'nope' is none of these"):
        check_policy(PolicySpec("nope"), codebook)
    with pytest.raises(ValueError, match="needs --agent-dir"):
        check_policy(PolicySpec("http://127.0.0.1:9/"), codebook)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        check_policy(PolicySpec("random", temperature=-1.0), codebook)
    assert build_policy(PolicySpec("random"), codebook).name == "random"
    assert build_policy(PolicySpec("type-profile"), codebook).name == "type-profile"
