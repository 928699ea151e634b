"""Surviving faults: a flaky store and a killed Chromium, a policy endpoint that fails, SIGINT in
the middle of `simpersona simulate` and --resume, and trajectories.jsonl damaged by a power cut.

Everything real: the mock store over HTTP (with injected 500s), headless Chromium, the CLI in a
subprocess, the type-profile policy (seeded per buyer, so a rerun buyer repeats itself).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from agent.baselines import TypeProfilePolicy
from harness.sim.rundir import REJECTED_FILE, RunDir, latest_per_buyer
from harness.sim.simulate import OUTCOMES, SimulationConfig, run_simulation, simulate
from storefronts.faults import Faults

from test_policies import STORE_SHOP, real_catalog, write_codebook

REPO = Path(__file__).resolve().parents[1]
SIMPERSONA = REPO / ".venv" / "bin" / "simpersona"


@pytest.fixture(scope="module")
def codebook_dir(tmp_path_factory) -> Path:
    return write_codebook(tmp_path_factory.mktemp("codebook"))


@pytest.fixture
def store():
    from storefronts.server import serve_store

    with serve_store(real_catalog(), STORE_SHOP, variant="default") as running:
        yield running


def lines_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines() if line.strip()]


def browser_processes() -> list[psutil.Process]:
    """The Chromium browser processes (not renderers or helpers) started by this test process."""
    found = []
    for process in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "chrom" in process.name() and not any(arg.startswith("--type=") for arg in process.cmdline()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


# --- a flaky store and a killed browser ---------------------------------------------------------


@pytest.mark.browser
def test_500s_and_a_killed_browser_every_buyer_accounted_and_retried_once(codebook_dir, tmp_path):
    from storefronts.server import serve_store

    buyers, kill_after = 8, 2
    faults = Faults(error_rate=0.10, seed=7)
    killed: list[int] = []

    async def kill_browser_when_buyers_written(trajectories: Path) -> None:
        while not trajectories.exists() or len(trajectories.read_text().splitlines()) < kill_after:
            await asyncio.sleep(0.05)
        for process in browser_processes():
            killed.append(process.pid)
            process.kill()

    async def scenario(store):
        config = SimulationConfig(
            store_url=store.url, shop="mixed", codebook_dir=codebook_dir, buyers=buyers, concurrency=4,
            driver="browser", max_steps=30, seed=3, out_dir=tmp_path, run_id="flaky", settle_ms=0,
            our_store=True, store_db=store.db_path, progress=False, buyer_timeout_s=90,
        )
        killer = asyncio.create_task(kill_browser_when_buyers_written(config.run_dir / "trajectories.jsonl"))
        try:
            return await run_simulation(config, TypeProfilePolicy.from_codebook(codebook_dir))
        finally:
            killer.cancel()

    with serve_store(real_catalog(), STORE_SHOP, variant="default", faults=faults) as store:
        result = asyncio.run(scenario(store))

    assert killed, "no Chromium browser process was found to kill"
    records = lines_of(tmp_path / "flaky")
    # Every buyer accounted for, once, with an outcome and a reason.
    assert sorted(r["buyer_index"] for r in records) == list(range(buyers))
    for record in records:
        assert record["outcome"] in OUTCOMES and record["terminate_reason"], record
        assert record["attempts"] in (1, 2)
        assert (record["attempts"] == 2) == (record["first_error"] is not None)
    # The store really failed requests; a 500 page is part of the page, not an infrastructure error.
    assert 1 <= faults.injected["errors"] < 0.35 * faults.injected["requests"]
    # The buyers in flight when the browser died were rerun once, in a relaunched browser, and finished.
    retried = [r for r in records if r["attempts"] == 2]
    assert retried, "no buyer was retried after the browser was killed"
    for record in retried:
        assert record["outcome"] != "error", record["terminate_reason"]
    assert result.summary["outcomes"]["error"] == 0
    assert result.summary["faults_this_session"]["browser_relaunches"] >= 1
    assert result.summary["retried_buyers"] == len(retried)
    assert result.summary["complete"] is True and result.interrupted is None
    assert sum(result.summary["outcomes"].values()) == buyers


# --- a policy endpoint that fails ----------------------------------------------------------------


class FlakyEndpoint:
    """The type-profile policy behind an endpoint that fails: always for the `down` buyers, and the
    first time only for the `blip` buyers. A failing call fails its whole batch, as a real one would."""

    def __init__(self, codebook_dir: Path, down: set[int], blip: set[int]):
        self.inner = TypeProfilePolicy.from_codebook(codebook_dir)
        self.name = self.inner.name
        self.down, self.blip = set(down), set(blip)

    def act(self, turns):
        asked = {turn.buyer_index for turn in turns}
        if asked & self.down:
            raise ConnectionError(f"endpoint unavailable (HTTP 503) for buyers {sorted(asked & self.down)}")
        if asked & self.blip:
            self.blip -= asked
            raise TimeoutError("endpoint timed out")
        return self.inner.act(turns)

    def forget(self, buyer_index):
        self.inner.forget(buyer_index)


def test_policy_failures_become_errors_with_reasons_and_resume_completes_them(store, codebook_dir, tmp_path):
    def run(policy, resume):
        return simulate(
            store.url, "mixed", codebook_dir, policy, buyers=8, concurrency=1, driver="http", max_steps=30,
            seed=4, out_dir=tmp_path, run_id="endpoint", resume=resume, our_store=True, progress=False,
        )

    first = run(FlakyEndpoint(codebook_dir, down={2, 5}, blip={3}), resume=False)
    by_index = {r["buyer_index"]: r for r in first.trajectories}
    assert sorted(by_index) == list(range(8))  # the run went on past the failures
    for index in (2, 5):
        assert by_index[index]["outcome"] == "error"
        assert by_index[index]["terminate_reason"].startswith("ConnectionError: endpoint unavailable (HTTP 503)")
        assert by_index[index]["attempts"] == 2 and "HTTP 503" in by_index[index]["first_error"]
    assert by_index[3]["outcome"] != "error" and by_index[3]["attempts"] == 2
    assert by_index[3]["first_error"] == "TimeoutError: endpoint timed out"
    assert first.summary["outcomes"]["error"] == 2 and first.summary["complete"] is True

    # The endpoint is back: a resume reruns exactly the two buyers that ended in error.
    resumed = run(FlakyEndpoint(codebook_dir, down=set(), blip=set()), resume=True)
    lines = lines_of(tmp_path / "endpoint")
    assert len(lines) == 10 and sorted(r["buyer_index"] for r in lines[8:]) == [2, 5]
    assert resumed.summary["throughput"]["buyers_this_session"] == 2
    assert resumed.summary["outcomes"]["error"] == 0 and resumed.summary["completed"] == 8
    latest = {r["buyer_index"]: r for r in latest_per_buyer(lines)}
    assert all(r["outcome"] != "error" for r in latest.values())
    assert latest[2]["attempts"] == latest[5]["attempts"] == 1 and latest[3]["attempts"] == 2
    # The reference: the same population with a healthy endpoint from the start.
    clean = simulate(
        store.url, "mixed", codebook_dir, TypeProfilePolicy.from_codebook(codebook_dir), buyers=8, concurrency=1,
        driver="http", max_steps=30, seed=4, out_dir=tmp_path, run_id="clean", our_store=True, progress=False,
    )
    assert {i: r["outcome"] for i, r in latest.items()} == {r["buyer_index"]: r["outcome"] for r in clean.trajectories}


# --- a damaged trajectories.jsonl ---------------------------------------------------------------


def test_torn_last_line_and_corrupted_middle_lines_are_moved_aside_and_valid_lines_kept(tmp_path):
    manifest = {"config": {"shop": "s", "seed": 1, "buyers": 6}}
    run = RunDir.open(tmp_path / "r", manifest)
    for index in range(4):
        run.append_trajectory({"buyer_index": index, "outcome": "left", "steps": []})
    good = run.trajectories_path.read_bytes().splitlines(keepends=True)
    damaged = (
        good[0]
        + b"\x00" * 40 + b"\n"                      # a block of NULs a power cut left behind
        + good[1]
        + b'{"buyer_index": 9, "outc\xff\xfe garbage\n'  # garbage, not even UTF-8
        + b'["a", "list"]\n'                         # valid JSON, but no trajectory record
        + good[2] + good[3]
        + b'{"buyer_index": 4, "outcome": "conv'     # torn last line
    )
    run.trajectories_path.write_bytes(damaged)

    resumed = RunDir.open(tmp_path / "r", manifest, resume=True)
    assert [r["buyer_index"] for r in resumed.read_trajectories()] == [0, 1, 2, 3]
    assert resumed.trajectories_path.read_bytes() == b"".join(good)
    rejected = [json.loads(line) for line in (tmp_path / "r" / REJECTED_FILE).read_text().splitlines()]
    assert [(entry["line"], entry["reason"].split(" (")[0]) for entry in rejected] == [
        (2, "NUL bytes"),
        (4, "not UTF-8 text"),
        (5, "not a JSON object but list"),
        (8, "torn last line, the write was cut off"),
    ]
    assert rejected[3]["text"] == '{"buyer_index": 4, "outcome": "conv'
    assert rejected[0]["text"] == "\x00" * 40 and all(entry["found_utc"] for entry in rejected)
    assert resumed.rejected_this_session == [{k: v for k, v in e.items() if k != "found_utc"} for e in rejected]
    # A sound file is left alone.
    assert RunDir.open(tmp_path / "r", manifest, resume=True).rejected_this_session == []


def test_reading_a_run_with_a_bad_middle_line_names_the_line_and_the_fix(tmp_path):
    from harness.sim.rundir import RunDirError

    run = RunDir.open(tmp_path / "r", {"config": {}})
    run.append_trajectory({"buyer_index": 0, "outcome": "left"})
    with open(run.trajectories_path, "ab") as handle:
        handle.write(b"\x00\x00\x00\n")
    run.append_trajectory({"buyer_index": 1, "outcome": "left"})
    with pytest.raises(RunDirError, match=r"trajectories\.jsonl: line 2 is NUL bytes .*resume the run"):
        run.read_trajectories()


def test_resume_reruns_the_buyers_of_damaged_lines(store, codebook_dir, tmp_path):
    def run(out: Path, resume: bool):
        return simulate(
            store.url, "mixed", codebook_dir, TypeProfilePolicy.from_codebook(codebook_dir), buyers=8,
            concurrency=2, driver="http", max_steps=30, seed=6, out_dir=out, run_id="damaged", resume=resume,
            our_store=True, progress=False,
        )

    full = run(tmp_path / "a", resume=False)
    path = tmp_path / "a" / "damaged" / "trajectories.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    bad = {json.loads(lines[2])["buyer_index"], json.loads(lines[7])["buyer_index"]}
    # Line 3 turned to NULs (its newline too, so they run into line 4), line 8 torn mid-write.
    path.write_bytes(b"".join(lines[:2]) + b"\x00" * len(lines[2]) + b"".join(lines[3:7]) + lines[7][:50])

    resumed = run(tmp_path / "a", resume=True)
    assert resumed.summary["throughput"]["buyers_this_session"] == 2
    assert resumed.summary["faults_this_session"]["rejected_lines"] == 2
    after = lines_of(tmp_path / "a" / "damaged")
    assert len(after) == 8 and {r["buyer_index"] for r in after[6:]} == bad
    assert {r["buyer_index"]: r["outcome"] for r in after} == {r["buyer_index"]: r["outcome"] for r in full.trajectories}
    assert len((tmp_path / "a" / "damaged" / REJECTED_FILE).read_text().splitlines()) == 2


# --- SIGINT and --resume -------------------------------------------------------------------------


def cli_args(catalog: Path, codebook: Path, out: Path, run_id: str, buyers: int) -> list[str]:
    return [
        "simulate", "--catalog", str(catalog), "--catalog-shop", STORE_SHOP, "--shop", "mixed",
        "--codebook", str(codebook), "--policy", "type-profile", "--buyers", str(buyers), "--concurrency", "3",
        "--driver", "browser", "--settle-ms", "0", "--max-steps", "30", "--seed", "8", "--out", str(out),
        "--run-id", run_id,
    ]


def conversion_figures(summary: dict) -> dict:
    keys = ("buyers", "completed", "converted", "conversion_rate", "real_conversion_rate", "conversion_gap",
            "outcomes", "per_type", "complete", "missing_buyers")
    return {key: summary[key] for key in keys}


@pytest.mark.browser
def test_sigint_stops_cleanly_and_resume_matches_an_uninterrupted_run(codebook_dir, tmp_path):
    buyers, stop_after = 6, 2
    catalog = tmp_path / "catalog.parquet"
    real_catalog().to_parquet(catalog)
    out = tmp_path / "runs"
    run_dir = out / "stopped"
    env = {**os.environ, "COLUMNS": "200"}

    process = subprocess.Popen(
        [str(SIMPERSONA), *cli_args(catalog, codebook_dir, out, "stopped", buyers)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    trajectories = run_dir / "trajectories.jsonl"
    deadline = time.monotonic() + 120
    while not (trajectories.exists() and len(trajectories.read_text().splitlines()) >= stop_after):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, f"the run wrote no {stop_after} buyers within 120 s"
        time.sleep(0.05)
    children = psutil.Process(process.pid).children(recursive=True)  # Playwright's driver, Chromium
    assert any("chrom" in child.name() for child in children)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "stopped by SIGINT" in output and "--resume --run-id stopped" in output

    written = lines_of(run_dir)
    assert stop_after <= len(written) < buyers, "the signal came too late to leave buyers unfinished"
    assert len({r["buyer_index"] for r in written}) == len(written)
    partial = json.loads((run_dir / "summary.json").read_text())
    assert partial["complete"] is False and partial["interrupted"] == "SIGINT"
    assert partial["completed"] == len(written) and partial["missing_buyers"] == buyers - len(written)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(manifest["seeds"]["buyers"]) == buyers
    assert still_running(children) == []  # the browser was closed, not left behind

    resumed = subprocess.run(
        [str(SIMPERSONA), *cli_args(catalog, codebook_dir, out, "stopped", buyers), "--resume"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = lines_of(run_dir)
    assert after[: len(written)] == written  # the finished buyers were kept as they were
    assert sorted(r["buyer_index"] for r in after) == list(range(buyers))  # no duplicates, none missing
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["throughput"]["buyers_this_session"] == buyers - len(written)

    # The same run without the interruption.
    reference = subprocess.run(
        [str(SIMPERSONA), *cli_args(catalog, codebook_dir, out, "uninterrupted", buyers)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert reference.returncode == 0, reference.stdout + reference.stderr
    expected = {r["buyer_index"]: r for r in lines_of(out / "uninterrupted")}
    for record in after:
        twin = expected[record["buyer_index"]]
        assert (record["outcome"], record["terminate_reason"]) == (twin["outcome"], twin["terminate_reason"])
        assert [s["action"] for s in record["steps"]] == [s["action"] for s in twin["steps"]], (
            [(s["action"], s.get("error")) for s in record["steps"]], [(s["action"], s.get("error")) for s in twin["steps"]])
    assert conversion_figures(summary) == conversion_figures(json.loads((out / "uninterrupted" / "summary.json").read_text()))
    assert summary["complete"] is True


def still_running(processes: list[psutil.Process]) -> list[int]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process.pid)
        except psutil.NoSuchProcess:
            continue
    return alive
