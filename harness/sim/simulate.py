"""Population simulation: N synthetic buyers of a shop's type mix shop at a store, C at a time.

(Over 500 lines: one run's loop, its retries, clean stop and resume share the run's state; the
drivers, the run dir and the policies live in their own modules.)

One process drives every buyer with asyncio. Each buyer gets its own isolated session (a browser
context, or an HTTP client with its own cookies), and every request it sends carries the header
X-SimPersona-Buyer: <run_id>:<buyer_index>, so a store of ours counts orders per synthetic buyer.

Deciding is batched: a buyer whose observation is ready hands its turn to the PolicyBatcher and
waits. The batcher calls policy.act once for every buyer then waiting, as soon as all buyers in
flight are waiting or `max_batch_wait_ms` after the first one started waiting (so a lone buyer is
never stuck behind slow pages). A model policy thus runs one batched forward pass per round.

Each finished buyer is appended to runs/<run_id>/trajectories.jsonl at once (harness.sim.rundir), so
a crash loses only the buyers in flight and `resume=True` runs exactly the missing ones.

Faults, and what counts as one (see also tests/test_resilience.py):
- What the store shows is part of the page. An HTTP 500 page, or Chromium's own error page for a
  connection the store dropped, is an observation like any other: the buyer reads it and acts
  (goes back, retries, leaves). The driver turns a failed action into an error in the next
  observation, never an exception.
- Anything that escapes the driver or the policy as an exception is an infrastructure error: a
  crashed browser or context, a connection the HTTP driver could not read, a policy or model
  endpoint that raised. That attempt ends with outcome "error" and is rerun once from scratch with
  the same seed, at the back of the queue (a dead browser is relaunched by the pool on the next
  session). The record written is the last attempt's, with `attempts` (1 or 2) and `first_error`
  (the first attempt's terminate_reason, or null).
- SIGINT/SIGTERM stop a run cleanly: buyers in flight are cancelled and not written, the browser
  is closed, and summary.json is written with "complete": false and "interrupted": "SIGINT". A
  second signal gets the default behaviour (Ctrl-C twice kills the process).
- `resume=True` repairs trajectories.jsonl (damaged lines to trajectories.rejected.jsonl), then
  runs every buyer with no record and every buyer whose latest record has outcome "error", and
  appends their new records; a later line for a buyer supersedes an earlier one
  (harness.sim.rundir.latest_per_buyer). A deterministic policy therefore ends with the same
  per-buyer outcomes and the same summary as an uninterrupted run.

Line shape of trajectories.jsonl (one JSON object per synthetic buyer):

    {"run_id": str, "buyer_index": int, "buyer_tag": "<run_id>:<buyer_index>", "code": int,
     "seed": int, "outcome": "converted" | "left" | "max_steps" | "error",
     "terminate_reason": str, "detail": {...},  # e.g. the order id the store confirmed
     "n_steps": int, "duration_s": float,
     "attempts": 1 | 2, "first_error": str | null,  # 2: the first attempt hit an infrastructure error
     "steps": [{"step": int, "url": str, "obs_sha1": str, "action": str,
                "element": {"role": str, "name": str} | null, "dialog": str | null,
                "latency_ms": float, "policy_ms": float, "error": str | null}, ...]}
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import threading
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.actions import ActionError, parse_action
from agent.page import parse as parse_page
from agent.policy import BuyerTurn, Policy
from harness.drivers import check_driver, open_pool
from harness.drivers.observation import COVERED_ERROR
from codebook.artifact import CodebookArtifact, ShopMixError
from harness.sim.policies import PolicySpec, build_policy, close_policy, policy_record
from harness.sim.population import SyntheticBuyer, sample_population
from harness.sim.rundir import RunDir, command_line, git_revision, package_versions

log = logging.getLogger("simpersona.simulate")

OUTCOMES = ("converted", "left", "max_steps", "error")


@dataclass
class SimulationConfig:
    """Everything a simulation run needs besides the policy; stored in manifest.json."""

    store_url: str
    shop: str
    codebook_dir: Path
    policy: str = ""  # the policy's name, filled in by run_simulation
    buyers: int = 20
    concurrency: int = 4
    driver: str = "browser"  # browser | http
    max_steps: int = 40
    seed: int = 0
    out_dir: Path = Path("runs")
    run_id: str | None = None  # default: UTC time and shop
    resume: bool = False
    max_batch_wait_ms: float = 25.0
    store_db: Path | None = None  # the store's SQLite order log, when the store is ours
    variant: str | None = None  # the store's layout variant, when known
    allow_hosts: tuple[str, ...] = ()  # hosts besides the store's own that buyers may visit
    rate_limit_per_s: float | None = None  # requests per second per host; None: the guard's default
    respect_robots: bool = True
    our_store: bool = False  # True for our mock store: orders are placed, not intercepted
    # An operator's staging shop (or the Oscar store we serve): checkouts are submitted, not
    # intercepted, on the allow-listed hosts only; the manifest's safety settings record it.
    place_orders: bool = False
    settle_ms: int | None = None  # browser: wait after each page load; None: the driver's default
    shard: tuple[int, int] | None = None  # (index, count): run only buyers with buyer_index % count == index
    progress: bool = True
    retry_errors: bool = True  # rerun a buyer once when its attempt ends in an infrastructure error
    # One attempt at one buyer may take this long before it is an infrastructure error (a page that
    # never answers after a browser crash must not hold the run forever); None: max_steps x 30 s.
    buyer_timeout_s: float | None = None
    handle_signals: bool = True  # SIGINT/SIGTERM stop the run cleanly (main thread only)

    def __post_init__(self) -> None:
        self.codebook_dir = Path(self.codebook_dir)
        self.out_dir = Path(self.out_dir)
        self.store_db = Path(self.store_db) if self.store_db else None
        self.driver = check_driver(self.driver)
        for key in ("buyers", "concurrency", "max_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        if urlparse(self.store_url).scheme not in ("http", "https"):
            raise ValueError(f"store URL must start with http:// or https://, got {self.store_url!r}")
        if self.run_id is None:
            self.run_id = default_run_id(self.shop)

    @property
    def run_dir(self) -> Path:
        return self.out_dir / str(self.run_id)


def in_shard(buyer: SyntheticBuyer, shard: tuple[int, int] | None) -> bool:
    """Whether this buyer belongs to the shard (index, count); every buyer when shard is None."""
    if shard is None:
        return True
    index, count = shard
    return buyer.buyer_index % count == index


def default_run_id(shop: str) -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{shop}"


@dataclass
class SimulationResult:
    run_dir: Path
    summary: dict
    trajectories: list[dict] = field(repr=False, default_factory=list)  # one (the latest) record per buyer
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when a signal stopped the run


# ---------------------------------------------------------------------------------------------
# Batched deciding


class PolicyBatcher:
    """Collects the turns of waiting buyers and answers them with one policy.act call per round."""

    def __init__(self, policy: Policy, max_wait_s: float):
        self.policy = policy
        self.max_wait_s = max_wait_s
        self.batch_sizes: list[int] = []
        self._waiting: list[tuple[BuyerTurn, asyncio.Future]] = []
        self._in_flight = 0
        self._changed = asyncio.Event()

    def buyer_started(self) -> None:
        self._in_flight += 1

    def buyer_finished(self) -> None:
        self._in_flight -= 1
        self._changed.set()  # the round may now be complete without this buyer

    async def decide(self, turn: BuyerTurn) -> str:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((turn, future))
        self._changed.set()
        return await future

    async def run(self) -> None:
        """Serve rounds until cancelled."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            if not self._waiting:
                continue
            deadline = time.monotonic() + self.max_wait_s
            while len(self._waiting) < self._in_flight and (left := deadline - time.monotonic()) > 0:
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except asyncio.TimeoutError:
                    break
                self._changed.clear()
            batch, self._waiting = self._waiting, []
            await self._answer(batch)

    async def _answer(self, batch: list[tuple[BuyerTurn, asyncio.Future]]) -> None:
        turns = [turn for turn, _ in batch]
        self.batch_sizes.append(len(turns))
        try:
            # In a worker thread: a model's forward pass must not freeze the pages in flight.
            lines = await asyncio.to_thread(self.policy.act, turns)
            if len(lines) != len(turns):
                raise RuntimeError(f"policy {self.policy.name!r} returned {len(lines)} actions for {len(turns)} turns")
        except Exception as exc:  # every waiting buyer ends with this error; the run goes on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), line in zip(batch, lines):
            if not future.done():
                future.set_result(line)


# ---------------------------------------------------------------------------------------------
# One buyer


def observation_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


async def run_buyer(session, buyer: SyntheticBuyer, batcher: PolicyBatcher, config: SimulationConfig, episode: dict) -> None:
    """Drive one buyer in its open session until it converts, leaves or runs out of steps.

    Fills `episode` as it goes (steps, then outcome), so a crash mid-episode keeps the steps taken.
    """
    steps, history = episode["steps"], []
    await session.goto(config.store_url)
    for step_index in range(config.max_steps):
        observation = await session.observe()
        asked = time.perf_counter()
        turn = BuyerTurn(buyer.buyer_index, buyer.code, observation.text, list(history), buyer.seed, buyer.goal)
        line = await batcher.decide(turn)
        started = time.perf_counter()
        result = await _execute(session, line)
        finished = time.perf_counter()
        page = parse_page(observation.text)
        steps.append(
            {
                "step": step_index,
                "url": observation.url,
                "obs_sha1": observation_hash(observation.text),
                "action": line,
                "element": acted_element(page, line),  # who can audit "click [76]" without the page?
                "dialog": page.dialog,  # the name of a dialog (overlay) open on the page, else None
                "latency_ms": round((finished - started) * 1000, 2),  # executing the action, page load included
                "policy_ms": round((started - asked) * 1000, 2),  # waiting for the batch and deciding
                "error": result.error,
            }
        )
        history.append(line)
        if result.converted:
            episode.update(outcome="converted", terminate_reason="order confirmed", detail=dict(result.detail or {}))
            return
        if result.done:
            episode.update(outcome="left", terminate_reason=_leave_reason(line, result), detail=dict(result.detail or {}))
            return
    episode.update(outcome="max_steps", terminate_reason=f"reached max_steps={config.max_steps}")


def acted_element(page, line: str) -> dict | None:
    """{"role", "name"} of the element an action line targets, as the observation listed it."""
    try:
        element_id = parse_action(line).element_id
    except ActionError:
        return None
    element = next((e for e in page.elements if e.element_id == element_id), None) if element_id is not None else None
    return None if element is None else {"role": element.role, "name": element.name}


async def _execute(session, line: str):
    """Run one action line. A malformed line goes to the driver as text: it answers with an error
    outcome and shows the error in the next observation, so a bad action never ends the buyer."""
    try:
        action = parse_action(line)
    except ActionError:
        return await session.act(line)
    return await session.act(action)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _leave_reason(line: str, result) -> str:
    if line.strip().lower() == "stop":
        return "buyer stopped"
    return (result.detail or {}).get("reason") or result.error or "session ended"


async def _drive_buyer(pool, guard, buyer, batcher, config, is_stopping=None) -> dict:
    """One attempt at one buyer, as its trajectory record.

    is_stopping: says whether the run is being stopped (a signal, or its caller cancelled it); a
    cancellation then ends the buyer unwritten. Any other cancellation reaching the buyer came from
    a library under it (a dead browser connection) and is an infrastructure error. Default: the
    current task is being cancelled.
    """
    tag = f"{config.run_id}:{buyer.buyer_index}"
    started = time.perf_counter()
    episode = {"outcome": "error", "terminate_reason": "", "detail": {}, "steps": []}
    batcher.buyer_started()
    limit = config.buyer_timeout_s if config.buyer_timeout_s is not None else 30.0 * config.max_steps
    watchdog = None
    try:
        async with asyncio.timeout(limit) as watchdog:
            async with pool.session(tag, guard) as session:
                await run_buyer(session, buyer, batcher, config, episode)
    except Exception as exc:  # one broken buyer must not end the run; its record says why
        if isinstance(exc, TimeoutError) and watchdog is not None and watchdog.expired():
            reason = f"TimeoutError: the buyer took longer than {limit:.0f} s (buyer_timeout_s)"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        episode.update(outcome="error", terminate_reason=reason)
    except asyncio.CancelledError as exc:
        if (is_stopping or _being_cancelled)():  # the buyer is unfinished, not failed
            raise
        # Not ours to honour: an infrastructure error like any other, not a reason to lose the buyer.
        task = asyncio.current_task()
        while task is not None and task.cancelling():
            task.uncancel()
        log.warning("buyer %s: a cancellation came from under it (%r); recorded as an error", tag, exc)
        episode.update(outcome="error", terminate_reason=f"CancelledError: {exc or 'an operation was cancelled under the buyer'}")
    finally:
        batcher.buyer_finished()
        forget = getattr(batcher.policy, "forget", None)
        if forget is not None:
            forget(buyer.buyer_index)
    return {
        "run_id": config.run_id,
        "buyer_index": buyer.buyer_index,
        "buyer_tag": tag,
        "code": buyer.code,
        "seed": buyer.seed,
        "outcome": episode["outcome"],
        "terminate_reason": episode["terminate_reason"],
        "detail": episode["detail"],
        "n_steps": len(episode["steps"]),
        "duration_s": round(time.perf_counter() - started, 3),
        "steps": episode["steps"],
    }


# ---------------------------------------------------------------------------------------------
# The run


ENGINES = ("mock", "oscar")  # the stores a run can serve itself
DB_FILES = {"mock": "store.sqlite", "oscar": "oscar.sqlite"}  # a served store's order database in its run dir


def serve_for_run(catalog, shop: str, db_path: Path, engine: str = "mock", variant: str | None = None, faults=None):
    """A store served for one run, its order database at `db_path`: our mock store in `variant` (a
    layout or theme) or django-oscar (a shop nobody here wrote). A context manager; use
    served_store_options on what it yields."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    if engine == "oscar":
        from storefronts.oscar import serve_oscar

        if faults is not None:
            raise ValueError("fault injection is a feature of our mock store; Oscar runs as it is (--engine mock)")
        return serve_oscar(catalog, shop, db_path=db_path, variant=variant or "default")
    from storefronts.server import serve_store

    return serve_store(catalog, shop, variant=variant or "default", db_path=db_path, faults=faults)


def served_store_options(served) -> dict:
    """SimulationConfig fields for a store this process serves. Our mock store: orders are placed,
    no rate limit. Oscar, a store nobody here wrote: guarded as one (allow-list, redirects checked,
    pay controls recognised), except that its checkouts are submitted so Oscar counts the orders."""
    from storefronts.server import RunningStore

    if isinstance(served, RunningStore):
        return {"store_url": served.url, "store_db": served.db_path, "our_store": True, "variant": served.variant.name}
    return {"store_url": served.url, "store_db": served.db_path, "place_orders": True, "rate_limit_per_s": 0,
            "variant": f"oscar-{served.variant}"}


def make_pool(config: SimulationConfig):
    return open_pool(config.driver, config.concurrency, settle_ms=config.settle_ms)


def make_guard(config: SimulationConfig):
    from harness.drivers.safety import SiteGuard

    store_host = urlparse(config.store_url).netloc
    options = {"respect_robots": config.respect_robots, "our_store": config.our_store,
               "place_orders": config.place_orders}
    if config.rate_limit_per_s is not None:
        options["rate_limit_per_s"] = config.rate_limit_per_s
    elif config.our_store:
        options["rate_limit_per_s"] = None  # our own store on localhost: no need to be polite
    return SiteGuard(allow_hosts=[store_host, *config.allow_hosts], **options)


async def run_simulation(
    config: SimulationConfig,
    policy: Policy,
    pool=None,
    population: list[SyntheticBuyer] | None = None,
    codebook: CodebookArtifact | None = None,
) -> SimulationResult:
    """Run (or resume) a simulation; returns the run directory and its summary.

    pool: an already open DriverPool to use instead of opening make_pool(config) for this run
        (benchmarks share one browser between runs); the caller closes it.
    population: the buyers to run, instead of sampling config.buyers from the shop's mix in the
        codebook (held-out shops have no entry there; A/B arms share one population). Recorded in
        the manifest like a sampled one, so a resume must pass the same population.
    codebook: the artifact at config.codebook_dir, already loaded; loaded here when the population
        is to be sampled. A run given its population and no codebook has no real rates to compare.
    """
    config.policy = getattr(policy, "name", type(policy).__name__)
    if codebook is None and population is None:
        codebook = CodebookArtifact.load(config.codebook_dir)
    if population is None:
        population = sample_population(codebook, config.shop, config.buyers, config.seed)
    elif len(population) != config.buyers:
        raise ValueError(f"config.buyers is {config.buyers} but the population given has {len(population)} buyers")
    manifest = build_manifest(config, population, codebook, policy_record(policy))
    run = RunDir.open(config.run_dir, manifest, resume=config.resume)
    finished_before = run.latest_records() if config.resume else []
    # A resume reruns the buyers with no record and those whose record is an infrastructure error.
    done = {record["buyer_index"] for record in finished_before if record["outcome"] != "error"}
    todo = [buyer for buyer in population if buyer.buyer_index not in done and in_shard(buyer, config.shard)]

    batcher = PolicyBatcher(policy, config.max_batch_wait_ms / 1000)
    # (buyer, the first attempt's error or None): a retried buyer goes to the back of the queue.
    queue: asyncio.Queue[tuple[SyntheticBuyer, str | None]] = asyncio.Queue()
    for buyer in todo:
        queue.put_nowait((buyer, None))
    counts = Counter(converted=sum(r["outcome"] == "converted" for r in finished_before if r["buyer_index"] in done))
    stop: dict = {"signal": None, "workers": []}
    relaunches = None
    guard = make_guard(config)
    started = time.perf_counter()

    run_task = asyncio.current_task()

    def is_stopping() -> bool:
        return stop["signal"] is not None or (run_task is not None and run_task.cancelling() > 0)

    def on_signal(name: str) -> None:
        stop["signal"] = name
        for worker_task in stop["workers"]:
            worker_task.cancel()  # buyers in flight end here, unwritten; resume reruns them

    with _progress_bar(config.progress) as progress:
        task = progress.add_task("buyers", total=len(population), completed=len(done), converted=counts["converted"], rate=0.0)

        async def worker(pool, guard) -> None:
            while not queue.empty() and stop["signal"] is None:
                buyer, first_error = queue.get_nowait()
                record = await _drive_buyer(pool, guard, buyer, batcher, config, is_stopping)
                if record["outcome"] == "error" and first_error is None and config.retry_errors:
                    counts["retried"] += 1
                    queue.put_nowait((buyer, record["terminate_reason"]))
                    continue
                record.update(attempts=1 if first_error is None else 2, first_error=first_error)
                run.append_trajectory(record)
                counts["steps"] += record["n_steps"]
                counts["written"] += 1
                counts["converted"] += record["outcome"] == "converted"
                counts["recovered"] += first_error is not None and record["outcome"] != "error"
                rate = counts["steps"] / max(time.perf_counter() - started, 1e-9)
                progress.update(task, advance=1, converted=counts["converted"], rate=rate)

        with stop_on_signals(on_signal, enabled=config.handle_signals):
            serving = asyncio.create_task(batcher.run())
            try:
                if todo:
                    async with (nullcontext(pool) if pool is not None else make_pool(config)) as open_pool:
                        relaunches_before = getattr(open_pool, "relaunches", None)
                        if stop["signal"] is None:
                            stop["workers"] = [
                                asyncio.create_task(worker(open_pool, guard))
                                for _ in range(min(config.concurrency, len(todo)))
                            ]
                            outcomes = await asyncio.gather(*stop["workers"], return_exceptions=True)
                            failures = [o for o in outcomes if isinstance(o, BaseException)
                                        and not isinstance(o, asyncio.CancelledError)]
                            if failures:
                                raise failures[0]
                        if relaunches_before is not None:
                            relaunches = getattr(open_pool, "relaunches") - relaunches_before
            finally:
                serving.cancel()
                await asyncio.gather(serving, return_exceptions=True)

    elapsed = time.perf_counter() - started
    trajectories = run.latest_records()
    session = {
        "interrupted": stop["signal"],
        "retried": counts["retried"],
        "recovered_by_retry": counts["recovered"],
        "browser_relaunches": relaunches,
        "rejected_lines": len(run.rejected_this_session),
    }
    summary = summarize(
        trajectories, config, population, codebook, elapsed, counts["steps"], counts["written"], batcher.batch_sizes,
        session=session, blocked_by_host=guard.blocked_by_host(),
    )
    if stop["signal"] is None and summary["missing_buyers"]:
        log.warning("%d buyers of %s have no record; a resume runs them", summary["missing_buyers"], run.path)
    run.write_summary(summary)
    return SimulationResult(run.path, summary, trajectories, interrupted=stop["signal"])


# ---------------------------------------------------------------------------------------------
# Stopping on SIGINT / SIGTERM


class _SignalStops:
    """The stop callbacks of the runs in progress on each event loop.

    Several runs may share one loop (say, the two arms of an A/B test): a signal stops all of
    them, and the loop's handlers are removed when the last run ends.
    """

    signals = (signal.SIGINT, signal.SIGTERM)
    callbacks: dict[asyncio.AbstractEventLoop, list] = {}
    previous: dict[asyncio.AbstractEventLoop, dict] = {}  # the Python-level handlers to put back

    @classmethod
    def add(cls, loop: asyncio.AbstractEventLoop, callback) -> bool:
        callbacks = cls.callbacks.setdefault(loop, [])
        if not callbacks:
            cls.previous[loop] = {sig: signal.getsignal(sig) for sig in cls.signals}
            try:
                for sig in cls.signals:
                    loop.add_signal_handler(sig, cls._fire, loop, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no Unix signals
                cls._remove_handlers(loop)
                del cls.callbacks[loop]
                return False
        callbacks.append(callback)
        return True

    @classmethod
    def discard(cls, loop: asyncio.AbstractEventLoop, callback) -> None:
        callbacks = cls.callbacks.get(loop)
        if callbacks is None or callback not in callbacks:
            return
        callbacks.remove(callback)
        if not callbacks:
            cls._remove_handlers(loop)
            del cls.callbacks[loop]

    @classmethod
    def _fire(cls, loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
        # One clean stop per signal: the handlers go, so a second Ctrl-C interrupts as usual.
        cls._remove_handlers(loop)
        for callback in cls.callbacks.get(loop, []):
            callback(signal.Signals(sig).name)

    @classmethod
    def _remove_handlers(cls, loop: asyncio.AbstractEventLoop) -> None:
        previous = cls.previous.pop(loop, {})
        for sig in cls.signals:
            try:
                loop.remove_signal_handler(sig)
                if previous.get(sig) is not None:
                    signal.signal(sig, previous[sig])  # e.g. asyncio.run's own Ctrl-C handler
            except (NotImplementedError, RuntimeError, ValueError):
                pass


@contextmanager
def stop_on_signals(callback, enabled: bool = True):
    """Within the block, SIGINT and SIGTERM call callback(signal name) instead of ending the process."""
    loop = asyncio.get_running_loop()
    added = enabled and threading.current_thread() is threading.main_thread() and _SignalStops.add(loop, callback)
    try:
        yield
    finally:
        if added:
            _SignalStops.discard(loop, callback)


def simulate(
    store_url: str,
    shop: str,
    codebook: CodebookArtifact | str | Path,
    policy: Policy | PolicySpec | str,
    **options,
) -> SimulationResult:
    """Synchronous entry point; `options` are the other SimulationConfig fields (buyers, driver, …).

    codebook: the codebook artifact, loaded (codebook.artifact) or its directory.
    policy: a live policy, or what build_policy builds one from: a PolicySpec, or its name alone
    (random | type-profile | AGENT_DIR | http(s)://ENDPOINT).
    """
    if not isinstance(codebook, CodebookArtifact):
        codebook = CodebookArtifact.load(codebook)
    config = SimulationConfig(store_url=store_url, shop=shop, codebook_dir=codebook.path, **options)
    if isinstance(policy, (PolicySpec, str)):
        spec = policy if isinstance(policy, PolicySpec) else PolicySpec(policy, seed=config.seed)
        built = build_policy(spec, codebook)
        try:
            return asyncio.run(run_simulation(config, built, codebook=codebook))
        finally:
            close_policy(built)
    return asyncio.run(run_simulation(config, policy, codebook=codebook))


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]simulate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("buyers  {task.fields[converted]} converted  {task.fields[rate]:.1f} steps/s"),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    )


def build_manifest(config: SimulationConfig, population: list[SyntheticBuyer], codebook: CodebookArtifact | None = None,
                   policy: dict | None = None) -> dict:
    """manifest.json; `policy` is policy_record(policy): its name and, for an agent, how it samples."""
    return {
        "run_id": config.run_id,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "config": {key: _plain(value) for key, value in asdict(config).items()},
        "codebook": None if codebook is None else asdict(codebook.identity),
        "policy": policy,
        "seeds": {
            "run_seed": config.seed,
            "buyers": [{"buyer_index": b.buyer_index, "code": b.code, "seed": b.seed, **({"goal": b.goal} if b.goal else {})}
                       for b in population],
        },
        "versions": package_versions(),
        "store": {"url": config.store_url, "variant": config.variant, "ours": config.our_store},
        "safety": make_guard(config).settings(),
        "git_revision": git_revision(),
    }


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# ---------------------------------------------------------------------------------------------
# Summary


def summarize(
    trajectories: list[dict],
    config: SimulationConfig,
    population: list[SyntheticBuyer],
    codebook: CodebookArtifact | None,
    elapsed_s: float,
    steps_this_session: int,
    buyers_this_session: int,
    batch_sizes: list[int],
    *,
    session: dict | None = None,
    blocked_by_host: dict[str, int] | None = None,
) -> dict:
    """summary.json: conversion overall and per type, against the real rates, plus throughput.

    trajectories: one record per buyer (the latest line of each). session: what this run session
    went through (interruption, retries, browser relaunches, damaged lines repaired).
    blocked_by_host: the requests the site guard refused this session, per host.
    "complete" is true when every buyer of the population (of the shard) has a record and no
    signal stopped the session; buyers whose record is an error still count, a resume reruns them.
    """
    session = dict(session or {})
    completed = len(trajectories)
    expected = {buyer.buyer_index for buyer in population if in_shard(buyer, config.shard)}
    recorded = {record["buyer_index"] for record in trajectories}
    outcomes = Counter(record["outcome"] for record in trajectories)
    real_rates = codebook.real_conversion_rates() if codebook is not None else {}
    per_type: dict[str, dict] = {}
    for code in sorted({record["code"] for record in trajectories}):
        members = [record for record in trajectories if record["code"] == code]
        converted = sum(record["outcome"] == "converted" for record in members)
        per_type[str(code)] = {
            "buyers": len(members),
            "converted": converted,
            "conversion_rate": converted / len(members),
            "real_conversion_rate": real_rates.get(code),
        }
    mix = _type_mix(codebook, config.shop, population)
    known = {code: p for code, p in mix.items() if code in real_rates}
    real_overall = (
        sum(p * real_rates[code] for code, p in known.items()) / sum(known.values()) if known else None
    )
    simulated = outcomes["converted"] / completed if completed else None
    return {
        "run_id": config.run_id,
        "shop": config.shop,
        "policy": config.policy,
        "driver": config.driver,
        "store_url": config.store_url,
        "variant": config.variant,
        "buyers": config.buyers,
        "completed": completed,
        "converted": outcomes["converted"],
        "conversion_rate": simulated,
        "real_conversion_rate": real_overall,
        "conversion_gap": None if simulated is None or real_overall is None else simulated - real_overall,
        "outcomes": {name: outcomes[name] for name in OUTCOMES},
        "complete": session.get("interrupted") is None and expected <= recorded,
        "interrupted": session.get("interrupted"),
        "missing_buyers": len(expected - recorded),
        "retried_buyers": sum(record.get("attempts", 1) > 1 for record in trajectories),
        "faults_this_session": {key: value for key, value in session.items() if key != "interrupted"},
        "audit": audit(trajectories, blocked_by_host or {}),
        "step_errors": sum(step["error"] is not None for record in trajectories for step in record["steps"]),
        "per_type": per_type,
        "throughput": {
            "buyers_this_session": buyers_this_session,
            "steps_this_session": steps_this_session,
            "wall_s": round(elapsed_s, 3),
            "steps_per_s": steps_this_session / elapsed_s if elapsed_s > 0 else None,
            "buyers_per_min": 60 * buyers_this_session / elapsed_s if elapsed_s > 0 else None,
            "policy_calls": len(batch_sizes),
            "mean_batch_size": sum(batch_sizes) / len(batch_sizes) if batch_sizes else None,
            "max_batch_size": max(batch_sizes, default=None),
            "concurrency": config.concurrency,
        },
        "store_counted": store_counted_conversions(config.store_db, config.run_id, trajectories)
        if config.store_db
        else None,
    }


def audit(trajectories: list[dict], blocked_by_host: dict[str, int]) -> dict:
    """What a user checks before trusting a run on a store we do not run: every intercepted
    conversion (control, page, product, total) and what got in the buyers' way."""
    intercepted = [{"buyer_index": r["buyer_index"], **r["detail"]} for r in trajectories
                   if r["outcome"] == "converted" and r["detail"].get("intercepted")]
    steps = [step for r in trajectories for step in r["steps"]]
    return {
        "interceptions": len(intercepted),
        "intercepted": intercepted,
        "blocked_requests_this_session": sum(blocked_by_host.values()),
        "blocked_by_host": blocked_by_host,
        "covered_element_errors": sum(bool(step["error"] and COVERED_ERROR.search(step["error"])) for step in steps),
        "steps_with_overlay": sum(step.get("dialog") is not None for step in steps),
        "buyers_meeting_overlays": sum(any(step.get("dialog") is not None for step in r["steps"]) for r in trajectories),
        "overlays": dict(Counter(step["dialog"] or "(unnamed)" for step in steps if step.get("dialog") is not None)),
    }


def _type_mix(codebook: CodebookArtifact | None, shop: str, population: list[SyntheticBuyer]) -> dict[int, float]:
    """The shop's type mix in the codebook; for a shop it never saw (or no codebook), the population's own."""
    if codebook is not None:
        try:
            return codebook.shop_mix(shop)
        except ShopMixError:
            pass
    drawn = Counter(buyer.code for buyer in population)
    return {code: n / len(population) for code, n in drawn.items()}


def store_counted_conversions(db_path: Path, run_id: str, trajectories: list[dict]) -> dict:
    """Orders the store itself logged per buyer tag of this run, and their agreement with the trajectories."""
    from storefronts.orderlog import orders_by_buyer as read_orders_by_buyer

    orders_by_buyer = read_orders_by_buyer(db_path, run_id)
    converted = {record["buyer_index"] for record in trajectories if record["outcome"] == "converted"}
    recorded = {record["buyer_index"] for record in trajectories}
    ordered = set(orders_by_buyer)
    disagreeing = sorted((converted ^ ordered) & recorded)
    return {
        "db_path": str(db_path),
        "orders": sum(orders_by_buyer.values()),
        "buyers_with_orders": len(ordered & recorded),
        "agreeing_buyers": len(recorded) - len(disagreeing),
        "agreement": (len(recorded) - len(disagreeing)) / len(recorded) if recorded else None,
        "disagreeing_buyer_indices": disagreeing,
        "buyers_with_several_orders": sorted(i for i, n in orders_by_buyer.items() if n > 1),
        "orders_without_trajectory": sorted(ordered - recorded),
    }
