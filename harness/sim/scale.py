"""Scale out: one population split into shards over a Ray cluster, merged into one run directory.

Past one machine (DESIGN.md, "Runs at scale"), the population is sampled ONCE on the driver and
every Ray task runs the buyers of one shard: those with buyer_index % shards == shard. Each task
builds its own policy with harness.sim.policies.build_policy from a PolicySpec (a name, an agent
dir or an endpoint URL, never a live object; checked against the codebook on the driver first),
opens its own browser pool, and runs

    asyncio.run(run_simulation(shard_config, policy, population=population))

into runs/<run_id>/shards/<i>/ (a complete run directory of its own: manifest, trajectories,
summary). The driver then merges the shards into runs/<run_id>/:

    trajectories.jsonl  every buyer of every shard, ordered by buyer_index
    summary.json        recomputed over all buyers (conversion per type, store-counted orders),
                        throughput summed over shards, endpoint latency percentiles over all requests
    manifest.json       the run's config and population, plus "shards": how many, where, which dirs

Buyer tags stay "<run_id>:<buyer_index>" in every shard, so a store's order log reads the same as
for a single-process run, and the same seeds with a deterministic policy give the same outcomes.

Resuming (`resume=True`) resumes every shard in its own directory and merges again.
The workers must import this package and reach the store (and endpoint): on a local cluster that
is automatic; on a remote one, install simpersona on every node and give a store URL they can reach.
--concurrency is per shard: a run has shards x concurrency buyers in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from codebook.artifact import CodebookArtifact
from harness.sim.policies import PolicySpec, build_policy, check_policy, close_policy, policy_record
from harness.sim.population import SyntheticBuyer, sample_population
from harness.sim.rundir import RunDir, RunDirError
from harness.sim.simulate import SimulationConfig, SimulationResult, build_manifest, run_simulation, summarize

SHARDS_DIR = "shards"


# ---------------------------------------------------------------------------------------------
# Policy statistics


def policy_stats(policy) -> dict | None:
    """The policy's own statistics for summary.json: an endpoint's request latencies, when it has one."""
    stats = getattr(getattr(policy, "backend", None), "request_stats", None)
    return None if stats is None else stats.as_dict()


def record_policy_stats(run_dir: Path, policy) -> dict | None:
    """Add the policy's statistics to an existing summary.json (key "policy_stats")."""
    stats = policy_stats(policy)
    if stats is not None:
        run = RunDir(run_dir)
        summary = json.loads(run.summary_path.read_text())
        summary["policy_stats"] = stats
        run.write_summary(summary)
    return stats


# ---------------------------------------------------------------------------------------------
# Cluster and shards


@dataclass(frozen=True)
class ScaleConfig:
    """How to reach Ray and how to cut the population."""

    address: str = "auto"  # "auto": a running cluster (RAY_ADDRESS, `ray start`) or a new local one; else its address
    shards: int | None = None  # default: one shard per CPU the cluster has, at most one per buyer
    cpus_per_shard: float = 1.0  # Ray resources each shard task reserves
    local_cpus: int | None = None  # CPUs of a local cluster this run starts (None: all of the machine's)


@dataclass
class ShardConfig(SimulationConfig):
    """A SimulationConfig whose run directory is runs/<run_id>/shards/<i>/, run id (and tags) unchanged."""

    shard_dir: Path | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.shard_dir) if self.shard_dir is not None else super().run_dir


def connect(scale: ScaleConfig):
    """Join (or start) the Ray cluster; returns True when this call started the connection."""
    import ray

    if ray.is_initialized():
        return False
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if scale.address == "auto":
        ray.init(num_cpus=scale.local_cpus, **options)  # finds a running cluster, else starts a local one
    else:
        ray.init(address=scale.address, **options)
    return True


def shard_count(scale: ScaleConfig, buyers: int) -> int:
    import ray

    wanted = scale.shards or max(1, int(ray.cluster_resources().get("CPU", 1) // scale.cpus_per_shard))
    return max(1, min(wanted, buyers))


def shard_config(config: SimulationConfig, index: int, count: int) -> ShardConfig:
    fields = {name: getattr(config, name) for name in config.__dataclass_fields__ if name != "policy"}
    # Absolute paths: a Ray worker may run in another directory than the driver.
    fields.update(shard=(index, count), shard_dir=config.run_dir.resolve() / SHARDS_DIR / str(index), progress=False,
                  codebook_dir=config.codebook_dir.resolve(), out_dir=config.out_dir.resolve(),
                  store_db=None if config.store_db is None else config.store_db.resolve())
    if "handle_signals" in fields:
        fields["handle_signals"] = False  # Ray stops its workers; the driver's Ctrl-C ends the run
    return ShardConfig(**fields)


def run_shard(config: ShardConfig, spec: PolicySpec, population: list[SyntheticBuyer], codebook: CodebookArtifact) -> dict:
    """One shard, in a Ray worker: build the policy, run the shard's buyers, hand back the records."""
    policy = build_policy(spec, codebook)
    try:
        result = asyncio.run(run_simulation(config, policy, population=population, codebook=codebook))
    finally:
        close_policy(policy)
    stats = getattr(getattr(policy, "backend", None), "request_stats", None)
    return {
        "shard": list(config.shard),
        "run_dir": str(result.run_dir),
        "node": os.uname().nodename,
        "summary": result.summary,
        "policy": policy_record(policy),
        "trajectories": result.trajectories,  # via Ray, so the driver needs no shared filesystem
        "request_stats": None if stats is None else stats.to_state(),
    }


# ---------------------------------------------------------------------------------------------
# The sharded run


def run_sharded(
    config: SimulationConfig,
    spec: PolicySpec,
    scale: ScaleConfig = ScaleConfig(),
    population: list[SyntheticBuyer] | None = None,
    codebook: CodebookArtifact | None = None,
) -> SimulationResult:
    """Run config's population sharded over Ray and merge the shards into config.run_dir.

    codebook: the artifact at config.codebook_dir, already loaded (loaded here when not given).
    The policy spec is checked against it here, on the driver, before any worker starts.
    """
    import ray

    if codebook is None:
        codebook = CodebookArtifact.load(config.codebook_dir)
    check_policy(spec, codebook)
    spec = spec.resolved()
    if population is None:
        population = sample_population(codebook, config.shop, config.buyers, config.seed)
    elif len(population) != config.buyers:
        raise ValueError(f"config.buyers is {config.buyers} but the population given has {len(population)} buyers")
    run = RunDir(config.run_dir)
    if not config.resume and run.trajectories_path.is_file() and run.trajectories_path.stat().st_size > 0:
        raise RunDirError(f"{run.path} already holds a run; pass resume to continue it or choose another run id")

    started_ray = connect(scale)
    try:
        count = shard_count(scale, len(population))
        configs = [shard_config(config, index, count) for index in range(count)]
        task = ray.remote(run_shard).options(num_cpus=scale.cpus_per_shard, max_retries=0)
        population_ref, codebook_ref = ray.put(population), ray.put(codebook)
        started = time.perf_counter()
        pending = {task.remote(shard, spec, population_ref, codebook_ref): shard.shard[0] for shard in configs}
        results = _wait_for_shards(pending, config.progress)
        elapsed = time.perf_counter() - started
    finally:
        if started_ray:
            ray.shutdown()
    return merge_shards(config, population, results, elapsed, scale, codebook)


class ShardError(RuntimeError):
    """A shard's task failed as a whole (not one buyer: those are recorded as errors and the shard goes on)."""


def _wait_for_shards(pending: dict, show_progress: bool) -> list[dict]:
    """Collect shard results as they finish; a failed shard stops the run, naming the shard.

    The shards already finished keep their directories, so `resume` reruns only what is missing.
    """
    import ray

    results, waiting = [], list(pending)
    with Progress(TextColumn("[bold]shards"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not show_progress) as progress:
        bar = progress.add_task("shards", total=len(waiting))
        while waiting:
            [done], waiting = ray.wait(waiting, num_returns=1)
            try:
                results.append(ray.get(done))
            except ray.exceptions.RayError as error:
                for ref in waiting:
                    ray.cancel(ref, force=True)
                cause = getattr(error, "cause", None) or error  # the worker's own exception, when Ray kept it
                raise ShardError(f"shard {pending[done]} of {len(pending)} failed: {type(cause).__name__}: {cause}") from error
            progress.advance(bar)
    return sorted(results, key=lambda result: result["shard"][0])


def merge_shards(
    config: SimulationConfig, population: list[SyntheticBuyer], results: list[dict], elapsed_s: float, scale: ScaleConfig,
    codebook: CodebookArtifact,
) -> SimulationResult:
    """Write runs/<run_id>/ from the shard results: trajectories by buyer_index, summary over all."""
    records: dict[int, dict] = {}
    for result in results:
        for record in result["trajectories"]:
            records[record["buyer_index"]] = record  # a resumed shard's later record of a buyer wins
    trajectories = [records[index] for index in sorted(records)]
    summaries = [result["summary"] for result in results]
    config.policy = summaries[0]["policy"] if summaries else config.policy

    manifest = build_manifest(config, population, codebook, results[0]["policy"] if results else None)
    manifest["shards"] = {
        "count": len(results),
        "ray_address": scale.address,
        "dirs": [str(Path(SHARDS_DIR) / str(result["shard"][0])) for result in results],
        "nodes": [result["node"] for result in results],
    }
    run = RunDir.open(config.run_dir, manifest, resume=config.resume)
    _rewrite_trajectories(run, trajectories)

    throughput_parts = [summary["throughput"] for summary in summaries]
    steps = sum(part["steps_this_session"] for part in throughput_parts)
    buyers_now = sum(part["buyers_this_session"] for part in throughput_parts)
    summary = summarize(trajectories, config, population, codebook, elapsed_s, steps, buyers_now, [],
                        session=_merged_session(summaries), blocked_by_host=_merged_blocked(summaries))
    calls = sum(part["policy_calls"] for part in throughput_parts)
    summary["throughput"].update(
        policy_calls=calls,
        mean_batch_size=sum((part["mean_batch_size"] or 0) * part["policy_calls"] for part in throughput_parts) / calls
        if calls else None,
        max_batch_size=max((part["max_batch_size"] or 0 for part in throughput_parts), default=None),
        shards=len(results),
        concurrency_per_shard=config.concurrency,
    )
    stats = [result["request_stats"] for result in results if result.get("request_stats")]
    if stats:
        from agent.models import RequestStats

        summary["policy_stats"] = RequestStats.merged(stats).as_dict()
    summary["shards"] = [
        {"shard": result["shard"][0], "node": result["node"], "completed": result["summary"]["completed"],
         "converted": result["summary"]["converted"], "buyers_per_min": result["summary"]["throughput"]["buyers_per_min"]}
        for result in results
    ]
    run.write_summary(summary)
    return SimulationResult(run.path, summary, trajectories)


def _merged_blocked(summaries: list[dict]) -> dict[str, int]:
    """The requests each shard's site guard refused, per host, added up."""
    blocked: Counter = Counter()
    for summary in summaries:
        blocked.update((summary.get("audit") or {}).get("blocked_by_host") or {})
    return dict(blocked.most_common())


def _merged_session(summaries: list[dict]) -> dict:
    """What the shards' sessions went through, summed (retries, relaunches, repaired lines)."""
    session: dict = {"interrupted": next((s["interrupted"] for s in summaries if s.get("interrupted")), None)}
    for summary in summaries:
        for key, value in (summary.get("faults_this_session") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                session[key] = session.get(key, 0) + value
    return session


def _rewrite_trajectories(run: RunDir, trajectories: list[dict]) -> None:
    """The merged file is derived from the shards, so it is rewritten whole (write, then rename)."""
    partial = run.trajectories_path.with_suffix(".jsonl.partial")
    with open(partial, "w", encoding="utf-8") as handle:
        for record in trajectories:
            handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, run.trajectories_path)
