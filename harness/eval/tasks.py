"""Goal-oriented tasks: a buyer is told to buy one product, and the store's own order log says
whether it did (PAPER.md's task benchmark: the purchase of the target item within 20 steps).

    simpersona tasks --catalog catalog.parquet --shop S --codebook DIR --policy AGENT_DIR \\
                     --policy smollm2-zero-shot --engine mock|oscar [--variant THEME] --n 100

A task set is drawn from the shop's catalog with a seed (`sample_tasks`): task i is "buy <title>"
(agent.prompt.buy_goal) for a product drawn without replacement. Every policy gets the same tasks,
the same buyer seeds and a fresh copy of the store; a task succeeds when the store's orders for
that buyer hold the target product (storefronts.orderlog.products_by_buyer: our order log or
Oscar's own tables), never because the agent said so. The first policy is compared with each
other one task by task: success rates with Wilson intervals, the paired difference with a bootstrap
interval and McNemar's test (harness.sim.paired).

Goal traces teach the agent to follow a task: `goal_events` writes each task as a real-looking
session (view the product, add it, buy it) that the scripted buyer replays like any real buyer
(harness.eval.replay), so the trace shows how to reach the product from the store's home (its link,
else a search for its title) and check out on that layout; `attach_goals` puts the task's words
on each trace.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from agent.prompt import buy_goal
from agent.traces import Trace
from storefronts.catalog import StoreCatalog

DEFAULT_TASKS = 100
DEFAULT_TASK_STEPS = 20  # the paper's budget: a purchase of the target within 20 steps
GOAL_BUYER_PREFIX = "goal-"  # buyer ids of goal sessions, never those of a real log
RESULTS_FILE = "tasks.json"


@dataclass(frozen=True)
class Task:
    index: int
    product_id: str
    title: str  # as the store shows it (StoreCatalog gives every product a distinct title)

    @property
    def goal(self) -> str:
        return buy_goal(self.title)


def sample_tasks(catalog: StoreCatalog, count: int, seed: int) -> list[Task]:
    """`count` target products of the shop, drawn with the seed and the shop's id (without
    replacement while the catalog lasts)."""
    if count < 1:
        raise ValueError(f"the number of tasks must be at least 1, got {count}")
    rng = np.random.default_rng([seed, *catalog.shop_id.encode()])
    products = catalog.products
    chosen = [int(i) for i in rng.permutation(len(products))]
    while len(chosen) < count:
        chosen += [int(i) for i in rng.permutation(len(products))]
    return [Task(index, products[i].product_id, products[i].title) for index, i in enumerate(chosen[:count])]


# --- goal traces -----------------------------------------------------------------------------


def goal_buyer_id(shop: str, task: Task) -> str:
    return f"{GOAL_BUYER_PREFIX}{shop}-{task.index}"


def goal_events(shop: str, tasks: list[Task], catalog: StoreCatalog) -> pd.DataFrame:
    """events.parquet rows of one session per task: view the target, add it to the cart, buy it."""
    start = pd.Timestamp("2020-01-01", tz="UTC")
    rows = []
    for task in tasks:
        product = catalog.by_id[task.product_id]
        buyer = goal_buyer_id(shop, task)
        for offset, event_type in enumerate(("product_view", "add_to_cart", "purchase")):
            rows.append({"shop_id": shop, "buyer_id": buyer, "session_id": buyer, "event_type": event_type,
                         "ts": start + pd.Timedelta(hours=task.index, minutes=offset),
                         "product_id": task.product_id, "category": product.category, "price": product.price,
                         "query": None})
    return pd.DataFrame(rows)


def attach_goals(traces: list[Trace], goals: dict[tuple[str, str], str]) -> list[Trace]:
    """Each goal buyer's trace with its task's words; real buyers' traces as they are."""
    for trace in traces:
        trace.goal = goals.get((trace.shop_id, trace.buyer_id), trace.goal)
    return traces


@dataclass
class GoalSet:
    """Goal sessions for several shops: the events to replay, the codes their buyers get, and
    (shop, buyer_id) -> goal words for attach_goals."""

    events: pd.DataFrame
    codes: pd.DataFrame
    goals: dict[tuple[str, str], str] = field(default_factory=dict)


def goal_set(catalog: str | Path | pd.DataFrame, shops: list[str], per_shop: int, code: int, seed: int) -> GoalSet:
    """`per_shop` goal sessions in each shop, every buyer with persona `code` (a buying type)."""
    frames, goals = [], {}
    for shop in shops:
        shop_catalog = StoreCatalog.load(catalog, shop)
        tasks = sample_tasks(shop_catalog, per_shop, seed)
        frames.append(goal_events(shop, tasks, shop_catalog))
        goals.update({(shop, goal_buyer_id(shop, task)): task.goal for task in tasks})
    events = pd.concat(frames, ignore_index=True)
    codes = events[["shop_id", "buyer_id"]].drop_duplicates().assign(code=code)
    return GoalSet(events, codes, goals)


# --- running and scoring tasks -------------------------------------------------------------------


@dataclass(frozen=True)
class TaskOutcome:
    index: int
    product_id: str
    success: bool  # the store's orders for this buyer hold the target product
    claimed: bool  # the run recorded a conversion (any order)
    ordered_other: bool  # the store holds an order of this buyer without the target
    steps: int
    outcome: str  # the run's outcome: converted | left | max_steps | error


def score_tasks(tasks: list[Task], trajectories: list[dict], bought: dict[int, dict]) -> list[TaskOutcome]:
    """One outcome per task from the run's trajectories (buyer_index = task index) and the store's
    products per buyer (storefronts.orderlog.products_by_buyer)."""
    by_buyer = {record["buyer_index"]: record for record in trajectories}
    outcomes = []
    for task in tasks:
        record = by_buyer.get(task.index, {})
        units = bought.get(task.index, {})
        success = units.get(task.product_id, 0) > 0
        outcomes.append(TaskOutcome(task.index, task.product_id, success, record.get("outcome") == "converted",
                                    bool(units) and not success, int(record.get("n_steps", 0)),
                                    record.get("outcome", "missing")))
    return outcomes


def policy_summary(outcomes: list[TaskOutcome]) -> dict:
    from harness.sim.paired import wilson_interval

    successes = sum(outcome.success for outcome in outcomes)
    won = [outcome.steps for outcome in outcomes if outcome.success]
    return {
        "tasks": len(outcomes), "successes": successes, "success_rate": successes / len(outcomes),
        "success_ci": wilson_interval(successes, len(outcomes)),
        "claimed_conversions": sum(outcome.claimed for outcome in outcomes),
        "claims_confirmed_by_store": sum(outcome.claimed == (outcome.success or outcome.ordered_other)
                                         for outcome in outcomes),
        "ordered_another_product": sum(outcome.ordered_other for outcome in outcomes),
        "median_steps_of_successes": float(np.median(won)) if won else None,
        "outcomes": pd.Series([outcome.outcome for outcome in outcomes]).value_counts().to_dict(),
    }


def compare_policies(first: list[TaskOutcome], other: list[TaskOutcome], seed: int = 0) -> dict:
    """The other policy against the first, task by task: Δ success (other − first) with a paired
    bootstrap interval and McNemar's test."""
    from harness.sim.paired import paired_effect

    a = [int(outcome.success) for outcome in first]
    b = [int(outcome.success) for outcome in other]
    return paired_effect(a, b, seed=seed).as_dict()


def buying_code(codebook) -> int:
    """The type whose real buyers convert most (ties: the more common type): who a task is given to."""
    rates = codebook.real_conversion_rates()
    if not rates:
        raise ValueError(f"{codebook.path}: types.json has no conversion rates; give the persona code with --code")
    return max(rates, key=lambda code: (rates[code], float(codebook.types[code].get("share", 0.0))))


@dataclass
class TasksConfig:
    """One task benchmark: which store, how many tasks, how each buyer runs."""

    catalog: Path
    shop: str
    engine: str = "mock"            # mock (our store) | oscar (django-oscar)
    variant: str | None = None      # the mock store's layout or theme; Oscar's template variant
    tasks: int = DEFAULT_TASKS
    max_steps: int = DEFAULT_TASK_STEPS
    code: int | None = None         # persona code every task buyer carries; None: buying_code(codebook)
    seed: int = 0
    driver: str = "browser"         # browser | http
    concurrency: int = 8
    # A buyer's whole episode, policy time included: a 135M zero-shot baseline answering a batch of
    # buyers on two CPU cores takes minutes per step, which the simulation's default would call a hang.
    buyer_timeout_s: float = 3600.0
    out_dir: Path = Path("runs/tasks")
    run_id: str = "tasks"
    progress: bool = True

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.run_id


def task_population(tasks: list[Task], code: int, seed: int, shop: str):
    from harness.sim.population import SyntheticBuyer, buyer_seed

    return [SyntheticBuyer(task.index, code, buyer_seed(seed, task.index, shop), goal=task.goal) for task in tasks]


async def run_policy_tasks(config: TasksConfig, tasks: list[Task], policy, label: str, codebook) -> list[TaskOutcome]:
    """Every task once with `policy`, on a fresh store of its own; scored by that store's orders."""
    from harness.sim.rundir import RunDir
    from harness.sim.simulate import SimulationConfig, run_simulation, serve_for_run, served_store_options
    from storefronts.orderlog import products_by_buyer

    code = config.code if config.code is not None else buying_code(codebook)
    db_file = f"{label}.{'oscar' if config.engine == 'oscar' else 'store'}.sqlite"
    with serve_for_run(config.catalog, config.shop, config.run_dir / db_file, engine=config.engine,
                       variant=config.variant) as served:
        sim = SimulationConfig(shop=config.shop, codebook_dir=codebook.path, buyers=len(tasks), concurrency=config.concurrency, driver=config.driver,
                               max_steps=config.max_steps, seed=config.seed, out_dir=config.run_dir, run_id=label,
                               buyer_timeout_s=config.buyer_timeout_s,
                               resume=RunDir(config.run_dir / label).manifest_path.is_file(), progress=config.progress,
                               **served_store_options(served))
        result = await run_simulation(sim, policy, population=task_population(tasks, code, config.seed, config.shop),
                                      codebook=codebook)
        bought = products_by_buyer(served.db_path, label)
    if result.interrupted:
        raise KeyboardInterrupt(f"stopped by {result.interrupted}; the same command resumes")
    return score_tasks(tasks, result.trajectories, bought)


def run_tasks(config: TasksConfig, specs: list, codebook) -> dict:
    """The benchmark: tasks drawn once, every policy on them, the first compared with the others.
    Writes and returns tasks.json (per policy: summary and per-task outcomes; comparisons)."""
    import asyncio

    from harness.sim.policies import build_policy, close_policy

    if config.code is None:
        config = replace(config, code=buying_code(codebook))
    catalog = StoreCatalog.load(config.catalog, config.shop)
    tasks = sample_tasks(catalog, config.tasks, config.seed)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, list[TaskOutcome]] = {}
    for spec in specs:
        policy = build_policy(spec, codebook)
        try:
            outcomes[spec.name] = asyncio.run(run_policy_tasks(config, tasks, policy, spec.name, codebook))
        finally:
            close_policy(policy)
    first, *others = list(outcomes)
    record = {
        "config": {key: str(value) if isinstance(value, Path) else value for key, value in asdict(config).items()},
        "code": config.code,
        "tasks": [asdict(task) for task in tasks],
        "policies": {name: {**policy_summary(found), "per_task": found} for name, found in outcomes.items()},
        "comparisons": {f"{other} vs {first}": compare_policies(outcomes[first], outcomes[other], config.seed)
                        for other in others},
    }
    write_results(config.run_dir, record)
    return record


def write_results(out: Path, record: dict) -> Path:
    path = out / RESULTS_FILE
    path.write_text(json.dumps(record, indent=2, default=_plain) + "\n")
    return path


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, TaskOutcome):
        return asdict(value)
    return str(value)
