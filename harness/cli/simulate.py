"""`simpersona simulate`: run a population of synthetic buyers against a store.

Either point it at a running store (--store URL), or give it a catalog (--catalog PATH) and it
serves our mock store itself for the run, so the store's own order log can confirm every
conversion buyer by buyer (summary.json, "store_counted").

    simpersona simulate --shop S --codebook DIR --catalog catalog.parquet --policy AGENT_DIR
    simpersona simulate --shop S --codebook DIR --store http://… --policy http://host:8000/v1 --agent-dir AGENT_DIR

--policy is random, type-profile, an agent dir or an endpoint serving one (harness.sim.policies);
an agent samples at the temperature its agent dir records unless --temperature is given, and is
refused before anything runs when --codebook is not the codebook it was trained for.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import typer
from rich.console import Console

from codebook.artifact import CodebookArtifact
from harness.cli.app import app
from harness.cli.defaults import default_of
from harness.drivers import Driver
from harness.sim.policies import DEFAULT_POLICY, POLICY_CHOICES, PolicySpec, check_policy
from harness.sim.rundir import RunDir, RunDirError
from harness.sim.simulate import DB_FILES, ENGINES, SimulationConfig

INTERRUPT_SIGNALS = {"SIGINT": 2, "SIGTERM": 15}  # exit status 128 + signal number, as shells expect
POLICY_HELP = f"Which policy drives the buyers: {POLICY_CHOICES}."
AGENT_DIR_HELP = "With an endpoint --policy: the agent dir it serves (tokenizer, persona.json)."
TEMPERATURE_HELP = "Sampling temperature of an agent (default: the one its agent dir records; 0: greedy)."
GUIDANCE_HELP = ("Persona guidance of an agent: each step's log-probabilities pushed away from the neutral token's "
                 "by this factor (default: the one its agent dir records; 1: off).")


def _default(name: str):
    return default_of(SimulationConfig, name)


@app.command()
def simulate(
    shop: str = typer.Option(..., "--shop", help="Shop id whose buyer-type mix is sampled (a key of shop_mix.json)."),
    codebook: Path = typer.Option(..., "--codebook", exists=True, file_okay=False, help="Codebook artifact directory."),
    store: str = typer.Option(None, "--store", help="URL of the store to shop at."),
    catalog: Path = typer.Option(
        None, "--catalog", exists=True, dir_okay=False, help="Serve our mock store from this catalog.parquet instead of --store."
    ),
    catalog_shop: str = typer.Option(None, "--catalog-shop", help="Shop id of the products to serve from --catalog (default: --shop)."),
    variant: str = typer.Option(None, "--variant", help="Layout variant of the mock store (with --catalog), or a label for --store."),
    engine: str = typer.Option("mock", "--engine", help="With --catalog: mock (our store) or oscar (django-oscar, a shop nobody here wrote)."),
    store_db: Path = typer.Option(None, "--store-db", exists=True, dir_okay=False,
                                  help="With --store: the store's database (a `serve-store` order log or Oscar's), to count its orders per buyer."),
    place_orders: bool = typer.Option(False, "--place-orders", help="With --store: submit checkouts instead of intercepting them (a staging shop you own; allow-listed hosts only)."),
    policy: str = typer.Option(DEFAULT_POLICY, "--policy", help=POLICY_HELP),
    agent_dir: Path = typer.Option(None, "--agent-dir", file_okay=False, help=AGENT_DIR_HELP),
    temperature: float = typer.Option(None, "--temperature", min=0.0, help=TEMPERATURE_HELP),
    guidance: float = typer.Option(None, "--guidance", help=GUIDANCE_HELP),
    buyers: int = typer.Option(_default("buyers"), "--buyers", min=1, help="Number of synthetic buyers."),
    concurrency: int = typer.Option(_default("concurrency"), "--concurrency", min=1, help="Buyers shopping at the same time."),
    driver: Driver = typer.Option(Driver(_default("driver")), "--driver", help="browser: headless Chromium; http: plain HTTP, no JavaScript."),
    max_steps: int = typer.Option(_default("max_steps"), "--max-steps", min=1, help="Actions per buyer before the episode is cut."),
    seed: int = typer.Option(_default("seed"), "--seed", help="Seed of the population (codes and per-buyer seeds) and of an agent's sampling."),
    out: Path = typer.Option(_default("out_dir"), "--out", help="Directory that holds run directories."),
    run_id: str = typer.Option(None, "--run-id", help="Name of the run directory (default: time and shop)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out/--run-id: run the buyers it lacks and those that ended in an error; repair damaged lines."),
    allow_host: list[str] = typer.Option([], "--allow-host", help="Another host buyers may visit (repeatable)."),
    rate_limit: float = typer.Option(None, "--rate-limit", help="Requests per second per host on a live store."),
    ignore_robots: bool = typer.Option(False, "--ignore-robots", help="Do not honour robots.txt (only for stores you own)."),
    error_rate: float = typer.Option(0.0, "--error-rate", help="With --catalog: share of store requests answered HTTP 500."),
    drop_rate: float = typer.Option(0.0, "--drop-rate", help="With --catalog: share of store connections dropped mid-response."),
    delay_ms: int = typer.Option(0, "--delay-ms", help="With --catalog: delay added to store responses (see --slow-rate)."),
    slow_rate: float = typer.Option(1.0, "--slow-rate", help="With --catalog: share of store requests that get --delay-ms."),
    fault_seed: int = typer.Option(0, "--fault-seed", help="With --catalog: seed choosing which store requests fail."),
    settle_ms: int = typer.Option(_default("settle_ms"), "--settle-ms", min=0, help="Browser: wait after each page load (default: the driver's)."),
    ray: str = typer.Option(
        None, "--ray", help="Shard the buyers over a Ray cluster: 'auto' (a running one, else a local one) or its ADDRESS."
    ),
    shards: int = typer.Option(None, "--shards", min=1, help="With --ray: number of shards (default: one per cluster CPU)."),
) -> None:
    """Simulate a population of a shop's buyer types shopping at a store."""
    from harness.sim.simulate import default_run_id

    if (store is None) == (catalog is None):
        raise typer.BadParameter("give exactly one of --store URL or --catalog PATH", param_hint="--store/--catalog")
    if engine not in ENGINES:
        raise typer.BadParameter(f"--engine must be one of {', '.join(ENGINES)}; got {engine!r}", param_hint="--engine")
    if catalog is not None and (store_db is not None or place_orders):
        raise typer.BadParameter("--store-db and --place-orders go with --store; with --catalog the store is ours",
                                 param_hint="--store-db/--place-orders")
    if resume and run_id is None:
        raise typer.BadParameter("--resume needs the --run-id of the run to continue", param_hint="--run-id")
    faults = _faults(error_rate, drop_rate, delay_ms, slow_rate, fault_seed, serving_ours=catalog is not None)
    if shards is not None and ray is None:
        raise typer.BadParameter("--shards needs --ray auto|ADDRESS", param_hint="--shards")
    console = Console()
    try:
        artifact = CodebookArtifact.load(codebook)
        spec = PolicySpec(policy, agent_dir=agent_dir, temperature=temperature, guidance=guidance, seed=seed)
        check_policy(spec, artifact)  # before a store is served or a buyer runs
        _run(
            console,
            spec,
            artifact,
            store=store,
            catalog=catalog,
            catalog_shop=catalog_shop or shop,
            variant=variant,
            engine=engine,
            faults=faults,
            scale=_scale_config(ray, shards),
            shop=shop,
            out_dir=out,
            run_id=run_id or default_run_id(shop),
            buyers=buyers,
            concurrency=concurrency,
            driver=driver.value,
            max_steps=max_steps,
            seed=seed,
            resume=resume,
            allow_hosts=tuple(allow_host),
            rate_limit_per_s=rate_limit,
            respect_robots=not ignore_robots,
            settle_ms=settle_ms,
            store_db=store_db,
            place_orders=place_orders,
        )
    except (ValueError, RunDirError) as error:  # bad input: say which file or option, no traceback
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None


def _faults(error_rate: float, drop_rate: float, delay_ms: int, slow_rate: float, seed: int, serving_ours: bool):
    """The mock store's fault injection from the command line; None when no fault is asked for."""
    from storefronts.faults import Faults

    try:
        faults = Faults(error_rate=error_rate, delay_ms=delay_ms, drop_rate=drop_rate, slow_rate=slow_rate, seed=seed)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--error-rate/--drop-rate/--delay-ms/--slow-rate") from None
    if not faults.active:
        return None
    if not serving_ours:
        raise typer.BadParameter("fault injection needs our mock store: use --catalog, not --store", param_hint="--error-rate")
    return faults


def _run(console, spec: PolicySpec, codebook: CodebookArtifact, *, store, catalog, catalog_shop, variant, shop,
         out_dir, run_id, engine="mock", faults=None, scale=None, **options) -> None:
    """Serve the mock store or Oscar if asked, run the simulation (sharded over Ray when scale is
    given), print the summary."""
    from harness.sim.simulate import served_store_options, simulate

    if catalog is None:
        serving = nullcontext(None)
    else:
        serving = _serve(catalog, catalog_shop, engine, variant, out_dir, run_id, faults)
    with serving as served:
        if served is not None:
            options.update(served_store_options(served))
            store = options.pop("store_url")
        elif variant:
            options["variant"] = variant
        if scale is not None:
            config = SimulationConfig(store_url=store, shop=shop, codebook_dir=codebook.path, out_dir=out_dir,
                                      run_id=run_id, **options)
            result = _simulate_sharded(config, spec, scale, codebook)
        else:
            result = simulate(store, shop, codebook, spec, out_dir=out_dir, run_id=run_id, **options)
    _print_summary(console, result.run_dir, result.summary)
    interrupted = getattr(result, "interrupted", None)  # a sharded run's result may not say
    if interrupted:
        # The buyers in flight were not written; a resume runs exactly the missing ones.
        console.print(
            f"[yellow]stopped by {interrupted}[/yellow]: {result.summary['completed']} of "
            f"{result.summary['buyers']} buyers written; continue with --resume --run-id {run_id}"
        )
        raise typer.Exit(128 + INTERRUPT_SIGNALS.get(interrupted, 2))


def _serve(catalog: Path, shop: str, engine: str, variant: str | None, out: Path, run_id: str, faults=None):
    """The store this run serves itself; its database lives in the run directory, so a resumed run
    keeps counting into the same one."""
    from harness.sim.simulate import serve_for_run

    return serve_for_run(catalog, shop, out / run_id / DB_FILES[engine], engine=engine, variant=variant, faults=faults)


def _print_summary(console: Console, run_dir: Path, summary: dict) -> None:
    rate = summary["conversion_rate"]
    real = summary["real_conversion_rate"]
    console.print(f"[bold]run[/bold] {run_dir}")
    policy = json.loads(RunDir(run_dir).manifest_path.read_text()).get("policy") or {}
    if "temperature" in policy:
        guided = f" under persona guidance {policy['guidance']:g}" if "guidance" in policy else ""
        console.print(f"policy {policy['name']}, sampling at T={policy['temperature']:g}{guided} (seed {policy['seed']})")
    console.print(
        f"buyers {summary['completed']}/{summary['buyers']}  converted {summary['converted']}"
        + (f"  rate {rate:.1%}" if rate is not None else "")
        + (f"  real {real:.1%}" if real is not None else "")
    )
    outcomes = summary.get("outcomes") or {}
    console.print("outcomes " + "  ".join(f"{name} {n}" for name, n in outcomes.items())
                  + f"  retried {summary.get('retried_buyers', 0)}"
                  + ("" if summary.get("complete", True) else "  [yellow](partial run)[/yellow]"))
    for code, row in summary["per_type"].items():
        real_type = row["real_conversion_rate"]
        console.print(
            f"  type {code:>3}: {row['converted']}/{row['buyers']} = {row['conversion_rate']:.1%}"
            + (f"  (real {real_type:.1%})" if real_type is not None else "")
        )
    store_counted = summary.get("store_counted")
    if store_counted:
        console.print(
            f"store-counted orders {store_counted['orders']}, agreement with trajectories "
            f"{store_counted['agreement']:.1%}"
        )
    audit = summary.get("audit") or {}
    if audit.get("interceptions") or audit.get("blocked_requests_this_session") or audit.get("steps_with_overlay"):
        blocked = ", ".join(f"{host} {n}" for host, n in list(audit["blocked_by_host"].items())[:3])
        console.print(f"audit: {audit['interceptions']} payments intercepted, "
                      f"{audit['blocked_requests_this_session']} requests blocked" + (f" ({blocked})" if blocked else "")
                      + f", {audit['covered_element_errors']} clicks on covered elements, "
                      f"{audit['buyers_meeting_overlays']} buyers met an overlay")


def _scale_config(address: str | None, shards: int | None):
    from harness.sim.scale import ScaleConfig

    return None if address is None else ScaleConfig(address=address, shards=shards)


def _simulate_sharded(config: SimulationConfig, spec: PolicySpec, scale, codebook: CodebookArtifact):
    """The run split into shards on Ray, each building the policy itself, merged into one run
    directory (harness.sim.scale)."""
    from harness.sim.scale import run_sharded

    return run_sharded(config, spec, scale, codebook=codebook)
