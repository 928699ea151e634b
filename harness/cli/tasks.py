"""`simpersona tasks`: the goal-oriented task benchmark (harness/eval/tasks.py).

    simpersona tasks --catalog catalog.parquet --shop S --codebook DIR --engine oscar \\
                     --policy AGENT_DIR --policy smollm2-zero-shot --n 100

Each --policy runs the same seeded tasks ("buy <title>") on a fresh copy of the store; success is
read from the store's own orders. The first policy is compared with every other one, task by task.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from codebook.artifact import CodebookArtifact
from harness.cli.app import app
from harness.cli.defaults import default_of
from harness.drivers import Driver
from harness.eval.tasks import TasksConfig
from harness.sim.policies import POLICY_CHOICES, PolicySpec, check_policy
from harness.sim.simulate import ENGINES


def _default(name: str):
    return default_of(TasksConfig, name)


@app.command()
def tasks(
    catalog: Path = typer.Option(..., "--catalog", exists=True, dir_okay=False, help="catalog.parquet the store is served from."),
    shop: str = typer.Option(..., "--shop", help="Shop id whose products are served and become the tasks' targets."),
    codebook: Path = typer.Option(..., "--codebook", exists=True, file_okay=False, help="Codebook artifact directory (the agents' types)."),
    policy: list[str] = typer.Option(..., "--policy", help=f"Repeatable; the first is compared with each other one: {POLICY_CHOICES}."),
    engine: str = typer.Option(_default("engine"), "--engine", help="mock (our store) or oscar (django-oscar, a shop nobody here wrote)."),
    variant: str = typer.Option(None, "--variant", help="The mock store's layout or theme (e.g. a held-out theme: atelier); Oscar's template variant."),
    n: int = typer.Option(_default("tasks"), "--n", min=1, help="Number of tasks (target products, drawn with --seed)."),
    code: int = typer.Option(None, "--code", min=0, help="Persona code every task buyer carries (default: the type whose real buyers convert most)."),
    max_steps: int = typer.Option(_default("max_steps"), "--max-steps", min=1, help="Steps a buyer has to place the order."),
    temperature: float = typer.Option(None, "--temperature", min=0.0, help="Sampling temperature of the agents (default: the one each records)."),
    driver: Driver = typer.Option(Driver(_default("driver")), "--driver", help="browser: headless Chromium; http: plain HTTP, no JavaScript."),
    concurrency: int = typer.Option(_default("concurrency"), "--concurrency", min=1, help="Buyers shopping at the same time."),
    seed: int = typer.Option(_default("seed"), "--seed", help="Seed of the tasks, the buyers and the agents' sampling."),
    out: Path = typer.Option(_default("out_dir"), "--out", help="Directory that holds task runs."),
    run_id: str = typer.Option(None, "--run-id", help="Name of the run directory (default: shop, engine and variant); an existing one resumes."),
) -> None:
    """Give buyers a product to buy and count, from the store's orders, how many bought it."""
    from harness.eval.tasks import run_tasks

    if engine not in ENGINES:
        raise typer.BadParameter(f"--engine must be one of {', '.join(ENGINES)}; got {engine!r}", param_hint="--engine")
    console = Console()
    try:
        artifact = CodebookArtifact.load(codebook)
        specs = _specs(policy, temperature, seed)
        for spec in specs:
            check_policy(spec, artifact)  # before a store is served or a buyer runs
        config = TasksConfig(catalog=catalog, shop=shop, engine=engine, variant=variant, tasks=n, max_steps=max_steps,
                             code=code, seed=seed, driver=driver.value, concurrency=concurrency, out_dir=out,
                             run_id=run_id or "-".join(filter(None, (f"tasks-{shop}", engine, variant))))
        record = run_tasks(config, specs, artifact)
    except ValueError as error:  # bad input: say which file or option, no traceback
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
    _print(console, config, record)


def _specs(policies: list[str], temperature: float | None, seed: int) -> list[PolicySpec]:
    """One spec per --policy, each with a distinct label (two agent dirs are told apart by folder name)."""
    specs = [PolicySpec(name, temperature=temperature, seed=seed) for name in policies]
    labels = [spec.name for spec in specs]
    if len(set(labels)) < len(labels):
        specs = [PolicySpec(spec.policy, temperature=temperature, seed=seed,
                            label=Path(spec.policy).name if spec.is_agent else spec.policy) for spec in specs]
    if len({spec.name for spec in specs}) < len(specs):
        raise ValueError(f"--policy names the same policy twice: {', '.join(policies)}")
    return specs


def _print(console: Console, config: TasksConfig, record: dict) -> None:
    table = Table(title=f"tasks on shop {config.shop} ({config.engine}{', ' + config.variant if config.variant else ''}), "
                        f"persona code {record['code']}, {config.max_steps} steps")
    for column in ("policy", "bought the target", "95 % interval", "claimed = store", "other product", "median steps"):
        table.add_column(column)
    for name, found in record["policies"].items():
        low, high = found["success_ci"]
        steps = found["median_steps_of_successes"]
        table.add_row(name, f"{found['successes']}/{found['tasks']} = {found['success_rate']:.0%}", f"{low:.0%} … {high:.0%}",
                      f"{found['claims_confirmed_by_store']}/{found['tasks']}", str(found["ordered_another_product"]),
                      "—" if steps is None else f"{steps:g}")
    console.print(table)
    for name, effect in record["comparisons"].items():
        console.print(f"{name}: Δ success {effect['delta']:+.0%} (95 % CI {effect['ci_low']:+.0%} … {effect['ci_high']:+.0%}), "
                      f"McNemar mid-p {effect['p_value']:.3g} ({effect['mcnemar']['only_a']} tasks only the first bought, "
                      f"{effect['mcnemar']['only_b']} only the other)")
    console.print(f"results: {config.run_dir / 'tasks.json'}")
