"""Benchmark: the http driver's page work, with and without its two shortcuts (not a test).

The same population (shop mix and seed, so the same buyers doing the same things) is simulated on
the mock store with the type-profile policy, so nearly all the time goes to pages, in four modes
that take turns round after round (this machine's speed drifts by tens of percent over minutes):

    socket, own parse      every request over TCP, every buyer parses and walks every page (baseline)
    socket, shared         buyers who get the same HTML share one parse and walk of it
    in-process, own parse  requests go to the app of the store this process serves, no socket
    in-process, shared     both (the default)

It prints buyers/min per mode, each mode's ratio to the baseline, and whether every mode produced
the same trajectories (every buyer's actions) and the same store-counted orders: the shortcuts
may change the speed, never what a buyer does.

    .venv/bin/python benchmarks/bench_http_driver.py [--buyers 120] [--rounds 2] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent.baselines import TypeProfilePolicy  # noqa: E402
from bench_simulate import REES46, SHOP, real_catalog, write_codebook  # noqa: E402
from harness.drivers.http_driver import DEFAULT_SHARED_PAGES, HttpPool  # noqa: E402
from harness.sim.simulate import SimulationConfig, run_simulation  # noqa: E402
from storefronts.orderlog import orders_by_buyer  # noqa: E402
from storefronts.server import serve_store  # noqa: E402

MODES = {   # name: HttpPool options
    "socket, own parse": {"in_process": False, "shared_pages": 0},
    "socket, shared": {"in_process": False, "shared_pages": DEFAULT_SHARED_PAGES},
    "in-process, own parse": {"in_process": True, "shared_pages": 0},
    "in-process, shared": {"in_process": True, "shared_pages": DEFAULT_SHARED_PAGES},
}
BASELINE = "socket, own parse"


async def simulate(store, codebook: Path, out: Path, run_id: str, buyers: int, concurrency: int, options: dict) -> dict:
    """One run in one mode: its seconds, every buyer's actions and the orders the store counted."""
    config = SimulationConfig(
        store_url=store.url, shop=SHOP, codebook_dir=codebook, buyers=buyers, concurrency=concurrency,
        driver="http", max_steps=30, seed=0, out_dir=out, run_id=run_id, store_db=store.db_path,
        our_store=True, variant=store.variant.name, progress=False)
    policy = TypeProfilePolicy.from_codebook(codebook)
    async with HttpPool(max_concurrency=concurrency, **options) as pool:
        started = time.perf_counter()
        result = await run_simulation(config, policy, pool)
        seconds = time.perf_counter() - started
    actions = {record["buyer_index"]: [step.get("action") for step in record["steps"]] for record in result.trajectories}
    orders = dict(orders_by_buyer(store.db_path, run_id))
    return {"seconds": seconds, "actions": actions, "orders": orders, "converted": sum(1 for n in orders.values() if n)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buyers", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if not REES46.is_file():
        sys.exit(f"real data not found at {REES46}")
    work = Path(tempfile.mkdtemp(prefix="bench-http-driver-"))
    runs: dict[str, list[dict]] = {name: [] for name in MODES}
    try:
        codebook = write_codebook(work / "codebook")
        with serve_store(real_catalog(), SHOP, db_path=work / "store.sqlite") as store:
            for round_index in range(args.rounds):
                order = list(MODES) if round_index % 2 == 0 else list(reversed(MODES))
                for name in order:
                    run_id = f"{name.replace(', ', '-').replace(' ', '_')}-{round_index}"
                    runs[name].append(asyncio.run(simulate(store, codebook, work / "runs", run_id, args.buyers,
                                                           args.concurrency, MODES[name])))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rates = {name: 60 * args.buyers * len(done) / sum(run["seconds"] for run in done) for name, done in runs.items()}
    for name, done in runs.items():
        rounds = ", ".join(f"{run['seconds']:.1f} s" for run in done)
        print(f"{name:22}: {rates[name]:7.1f} buyers/min  {rates[name] / rates[BASELINE]:5.2f}x  "
              f"(rounds: {rounds}; converted {done[0]['converted']})")
    first = runs[BASELINE][0]
    same_actions = all(run["actions"] == first["actions"] for done in runs.values() for run in done)
    same_orders = all(run["orders"] == first["orders"] for done in runs.values() for run in done)
    print(f"same actions, buyer by buyer: {same_actions}; same store-counted orders: {same_orders} "
          f"({args.buyers} buyers, concurrency {args.concurrency}, {args.rounds} rounds)")
    if not (same_actions and same_orders):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
