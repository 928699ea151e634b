"""`simpersona make-traces`: act out real buyers' sessions in the mock store and record SFT traces.

For every real buyer × shop of events.parquet (DESIGN.md, "File formats") a scripted buyer drives
a real driver session (Chromium via harness.drivers.browser, or harness.drivers.http_driver for big
runs) through the mock store built from that shop's catalog. The work is split in three:

    harness/eval/replay_plan.py      which buyers are replayed and what each does (BuyerPlan)
    harness/eval/scripted_buyer.py   one plan acted out in one driver session (ScriptedBuyer)
    this module                      the run: stores per shop, buyers in parallel, traces.jsonl,
                                     the exactness check and replay_report.json

Themes (`ReplayConfig.themes`, `make-traces --themes`): buyer n of the run is replayed on theme
n mod len(themes), each (shop, theme) in a store of its own, so the same real decisions are recorded
on pages that word and arrange the shop differently; each trace names its layout.

One trace per buyer × shop goes to traces.jsonl (agent.traces.Trace), appended and flushed as each
buyer finishes; a trace's `converted` says whether the replay placed at least one order (with an
exact replay: whether the real buyer purchased).

Replay exactness. Each buyer's requests carry the tag `<replay_run_id>:<digest of shop and buyer>`,
so the store's order log (storefronts.orderlog.read_orders) tells buyers apart, and a buyer's trace
shows the same order numbers in every replay that includes it. A buyer is exact when the multiset
product_id -> units over the store's orders for its tag equals product_id -> number of real
purchase events. replay_report.json lists every buyer that is not exact with the missing and
extra units and the reason (never averaged away).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.traces import Trace
from codebook.schema import INGEST_META_FILE
from harness.drivers import check_driver, open_pool
from harness.eval.replay_plan import BuyerPlan, ReplayError, check_codes, check_events, load_frame, plan_buyers
from harness.eval.scripted_buyer import BuyerResult, run_buyer
from harness.eval.tasks import GOAL_BUYER_PREFIX, goal_set
from storefronts.catalog import StoreCatalog
from storefronts.orderlog import read_orders
from storefronts.variants import load_variant

TRACES_FILE = "traces.jsonl"
REPORT_FILE = "replay_report.json"


# ---------------------------------------------------------------------------------------------
# Configuration and report (the API `evaluate` calls)


@dataclass
class ReplayConfig:
    driver: str = "browser"          # browser | http
    concurrency: int = 4
    variant: str = "default"
    themes: tuple[str, ...] = ()               # when set: buyers spread over these layouts instead of `variant`
    shops: tuple[str, ...] | None = None       # None: every shop with events
    max_buyers_per_shop: int | None = None     # sample (seeded) when set
    max_steps_per_buyer: int = 60
    seed: int = 0
    progress: bool = True
    # Goal sessions added to each replayed shop (harness.eval.tasks): buyers of `goal_code` told to
    # buy one product, so the agent also learns to follow a task ("Goal: buy <title>").
    goal_buyers_per_shop: int = 0
    goal_code: int | None = None

    def __post_init__(self) -> None:
        self.driver = check_driver(self.driver)
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_steps_per_buyer < 1:
            raise ValueError(f"max_steps_per_buyer must be at least 1, got {self.max_steps_per_buyer}")
        if self.max_buyers_per_shop is not None and self.max_buyers_per_shop < 1:
            raise ValueError(f"max_buyers_per_shop must be at least 1 or None, got {self.max_buyers_per_shop}")
        if self.shops is not None:
            self.shops = tuple(str(shop) for shop in self.shops)
        if self.goal_buyers_per_shop < 0 or (self.goal_buyers_per_shop and self.goal_code is None):
            raise ValueError("goal sessions need goal_buyers_per_shop >= 1 and the goal_code their buyers carry")
        self.themes = tuple(self.themes)
        for theme in self.themes:
            load_variant(theme)  # a misspelt theme fails here, naming itself

    def layout_of(self, plan: BuyerPlan) -> str:
        """The store layout this buyer is replayed on."""
        return self.themes[plan.index % len(self.themes)] if self.themes else self.variant


@dataclass
class ReplayReport:
    traces_path: Path
    report_path: Path
    n_buyers: int
    n_exact: int
    mismatches: list[dict]
    details: dict = field(default_factory=dict)  # everything else written to replay_report.json

    def exact_fraction(self) -> float:
        return self.n_exact / self.n_buyers if self.n_buyers else 0.0

    def to_dict(self) -> dict:
        return {
            "traces_path": str(self.traces_path),
            "report_path": str(self.report_path),
            "n_buyers": self.n_buyers,
            "n_exact": self.n_exact,
            "exact_fraction": round(self.exact_fraction(), 6),
            "mismatches": self.mismatches,
            **self.details,
        }


# ---------------------------------------------------------------------------------------------
# Running


def make_traces(events, catalog, codes, out_dir, config: ReplayConfig = ReplayConfig()) -> ReplayReport:
    """Replay every planned buyer and write traces.jsonl, replay_report.json and one store
    order log per shop (replay_store_<shop>.sqlite) into out_dir; see the module docstring."""
    return asyncio.run(replay(events, catalog, codes, out_dir, config))


async def replay(events, catalog, codes, out_dir, config: ReplayConfig = ReplayConfig(), pool=None,
                 run_id: str | None = None) -> ReplayReport:
    """make_traces for callers that already run an event loop.

    pool: an open driver pool (BrowserPool / HttpPool) to use instead of opening one for
        config.driver; the caller closes it (tests share one browser between runs).
    run_id: the first half of every buyer tag; default "replay" (every replay has its own order
    logs, and a fixed tag gives each buyer the same order ids, so the same buyers write the same traces).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    events_frame = check_events(load_frame(events, "events"), str(events) if not isinstance(events, pd.DataFrame) else "events")
    catalog_frame = load_frame(catalog, "catalog")
    codes = check_codes(codes)
    if config.shops is not None:
        present = set(events_frame["shop_id"].unique())
        unknown = [shop for shop in config.shops if shop not in present]
        if unknown:
            raise ReplayError(f"shop(s) {', '.join(unknown)} have no events; shops with events include "
                              f"{', '.join(sorted(present)[:10])}")
        events_frame = events_frame[events_frame["shop_id"].isin(config.shops)]
    plans, skipped = plan_buyers(events_frame, codes, max_buyers_per_shop=config.max_buyers_per_shop,
                                 max_steps_per_buyer=config.max_steps_per_buyer, seed=config.seed)
    plans, goals = with_goal_sessions(plans, catalog_frame, config)
    run_id = run_id or "replay"

    # A fresh replay: earlier traces and order logs in out_dir would mix with this run's.
    traces_path = out_dir / TRACES_FILE
    traces_path.unlink(missing_ok=True)
    by_store: dict[tuple[str, str], list[BuyerPlan]] = {}
    for plan in plans:
        by_store.setdefault((plan.shop_id, config.layout_of(plan)), []).append(plan)
    db_paths = {key: store_db_path(out_dir, key[0], key[1] if config.themes else None) for key in by_store}
    for db_path in db_paths.values():
        db_path.unlink(missing_ok=True)

    started = time.perf_counter()
    results: list[BuyerResult] = []
    comparisons: list[dict] = []
    with traces_path.open("a", encoding="utf-8") as traces_file, _progress_bar(config.progress) as progress:
        task = progress.add_task("replay", total=len(plans), exact=0)
        counts = Counter()
        async with (nullcontext(pool) if pool is not None else make_pool(config)) as pool:
            # A few shops at once, so logs with many small shops still keep `concurrency` buyers busy.
            shop_slots = asyncio.Semaphore(config.concurrency)

            async def one_store(key: tuple[str, str], shop_plans: list[BuyerPlan]) -> None:
                async with shop_slots:
                    shop_results = await replay_shop(pool, key[0], key[1], shop_plans, catalog_frame, db_paths[key],
                                                     run_id, traces_file, progress, task, goals)
                results.extend(shop_results)
                store_comparisons = compare_orders(shop_results, db_paths[key])
                comparisons.extend(store_comparisons)
                counts["exact"] += sum(c["exact"] for c in store_comparisons)
                progress.update(task, exact=counts["exact"])

            await asyncio.gather(*(one_store(key, shop_plans) for key, shop_plans in by_store.items()))
    elapsed = time.perf_counter() - started
    return write_report(out_dir, run_id, config, plans, results, comparisons, skipped, elapsed, catalog_note(events))


def with_goal_sessions(plans: list[BuyerPlan], catalog_frame: pd.DataFrame, config: ReplayConfig):
    """The plans with config.goal_buyers_per_shop goal sessions per shop after them, and
    (shop, buyer_id) -> goal words for their traces."""
    if not config.goal_buyers_per_shop or not plans:
        return plans, {}
    shops = sorted({plan.shop_id for plan in plans})
    goals = goal_set(catalog_frame, shops, config.goal_buyers_per_shop, config.goal_code, config.seed)
    goal_plans, _ = plan_buyers(check_events(goals.events, "goal sessions"), goals.codes, max_buyers_per_shop=None,
                                max_steps_per_buyer=config.max_steps_per_buyer, seed=config.seed)
    for plan in goal_plans:
        plan.index += len(plans)
    return plans + goal_plans, goals.goals


def store_db_path(out_dir: Path, shop: str, theme: str | None = None) -> Path:
    """replay_store_<shop>.sqlite, or replay_store_<shop>_<theme>.sqlite in a themed replay."""
    safe = re.sub(r"[^\w.-]", "_", shop)[:80]
    if theme:
        safe += "_" + re.sub(r"[^\w.-]", "_", theme)[:40]
    return out_dir / f"replay_store_{safe}.sqlite"


def make_pool(config: ReplayConfig):
    return open_pool(config.driver, config.concurrency)


async def replay_shop(pool, shop: str, layout: str, plans: list[BuyerPlan], catalog_frame: pd.DataFrame,
                      db_path: Path, run_id: str, traces_file, progress, task, goals: dict | None = None) -> list[BuyerResult]:
    """Serve the shop's store in `layout` and replay its buyers, `concurrency` at a time (the pool's slots)."""
    from harness.drivers.safety import SiteGuard
    from storefronts.server import serve_store

    try:
        shop_catalog = StoreCatalog.load(catalog_frame, shop)
    except ValueError as error:  # no products for the shop: every buyer fails with this reason
        results = [BuyerResult(plan, buyer_tag(run_id, plan), [], [], 0, error=str(error)) for plan in plans]
        progress.update(task, advance=len(plans))
        return results
    store_context = serve_store(shop_catalog, shop, variant=layout, db_path=db_path)
    store = await asyncio.to_thread(store_context.__enter__)
    try:
        guard = SiteGuard(allow_hosts=[urlsplit(store.url).netloc], our_store=True, rate_limit_per_s=None,
                          respect_robots=False)

        async def one_buyer(plan: BuyerPlan) -> BuyerResult:
            result = await run_buyer(pool, guard, store.url, shop_catalog, plan, buyer_tag(run_id, plan))
            if result.error is None:
                trace = Trace(plan.shop_id, plan.buyer_id, plan.code, result.steps, result.orders_confirmed > 0,
                              variant=layout, goal=(goals or {}).get((plan.shop_id, plan.buyer_id), ""))
                traces_file.write(trace.to_json() + "\n")
                traces_file.flush()
            progress.update(task, advance=1)
            return result

        return list(await asyncio.gather(*(one_buyer(plan) for plan in plans)))
    finally:
        await asyncio.to_thread(store_context.__exit__, None, None, None)


def buyer_tag(run_id: str, plan: BuyerPlan) -> str:
    # A digest, not the ids themselves: a store keeps only a few characters of a tag.
    digest = hashlib.blake2b(f"{plan.shop_id}\x1f{plan.buyer_id}".encode(), digest_size=8).hexdigest()
    return f"{run_id}:{digest}"


def catalog_note(events_source) -> dict:
    """What ingest.json next to events.parquet says about where titles and products come from."""
    if isinstance(events_source, pd.DataFrame):
        return {"note": "events given as a DataFrame: no ingest.json to read the catalog note from"}
    meta_path = Path(events_source).parent / INGEST_META_FILE
    if not meta_path.is_file():
        return {"note": f"no {INGEST_META_FILE} next to {events_source}"}
    meta = json.loads(meta_path.read_text())
    return {key: meta.get(key) for key in ("format", "catalog_note", "title_source", "shop_note", "ts_resolution")}


# ---------------------------------------------------------------------------------------------
# Exactness and the report


def ordered_units(orders: list[dict]) -> dict[str, Counter]:
    """buyer tag -> product_id -> units over all of the tag's orders."""
    units: dict[str, Counter] = {}
    for order in orders:
        bought = units.setdefault(order["buyer_tag"], Counter())
        for item in order["items"]:
            bought[str(item["product_id"])] += int(item["quantity"])
    return units


def compare_orders(results: list[BuyerResult], db_path: Path) -> list[dict]:
    """One comparison per buyer: the store's orders under its tag against its real purchases."""
    replayed = ordered_units(read_orders(db_path)) if db_path.is_file() else {}
    comparisons = []
    for result in results:
        plan = result.plan
        got = replayed.get(result.tag, Counter())
        expected = plan.expected
        missing = expected - got
        extra = got - expected
        reasons = [f"{f['event']} {f['product_id']}: {f['reason']}" for f in result.failures
                   if f["event"] in ("purchase", "add_to_cart", "remove_from_cart", "checkout")]
        if result.error:
            reasons.insert(0, result.error)
        comparisons.append({
            "shop_id": plan.shop_id, "buyer_id": plan.buyer_id, "buyer_tag": result.tag,
            "exact": not missing and not extra and result.error is None,
            "expected": dict(expected), "replayed": dict(got), "missing": dict(missing), "extra": dict(extra),
            "reason": "; ".join(reasons) if (missing or extra or result.error) else "",
            "steps": len(result.steps), "failures": result.failures,
        })
    return comparisons


def write_report(out_dir: Path, run_id: str, config: ReplayConfig, plans: list[BuyerPlan], results: list[BuyerResult],
                 comparisons: list[dict], skipped: dict, elapsed: float, note: dict) -> ReplayReport:
    mismatches = [c for c in comparisons if not c["exact"]]
    steps = np.array([len(r.steps) for r in results if r.error is None] or [0])
    shortened = [p for p in plans if p.collapsed_views or p.dropped_events]
    failures = Counter(f["event"] for r in results for f in r.failures)
    details = {
        "run_id": run_id,
        "config": {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(config).items()},
        "quantity_rule": "one purchase event = one unit; consecutive purchase events of one session are one "
                         "order; exact = product_id -> units over the store's orders equals product_id -> "
                         "number of real purchase events, buyer by buyer",
        "n_shops": len({p.shop_id for p in plans}),
        "n_goal_sessions": sum(p.buyer_id.startswith(GOAL_BUYER_PREFIX) for p in plans),
        "n_skipped": skipped,
        "n_traces_written": sum(r.error is None for r in results),
        "n_driver_errors": sum(r.error is not None for r in results),
        "n_buyers_with_purchases": sum(bool(p.expected) for p in plans),
        "n_purchase_units": int(sum(sum(p.expected.values()) for p in plans)),
        "n_orders_confirmed": sum(r.orders_confirmed for r in results),
        "steps": {"total": int(steps.sum()), "mean": round(float(steps.mean()), 2),
                  "median": float(np.median(steps)), "max": int(steps.max()),
                  "over_budget": int(sum(len(r.steps) > config.max_steps_per_buyer for r in results))},
        "shortened": {"buyers": len(shortened), "views_collapsed": sum(p.collapsed_views for p in plans),
                      "events_dropped": sum(p.dropped_events for p in plans),
                      "events_in_log": sum(p.n_events for p in plans)},
        "failed_events": dict(failures),
        "wishlist_note": "the store has no wishlist: add_to_wishlist events are replayed as product views",
        "catalog": note,
        "seconds": round(elapsed, 2),
        "buyers_per_minute": round(60 * len(plans) / elapsed, 1) if elapsed > 0 else None,
        "buyers": [{k: c[k] for k in ("shop_id", "buyer_id", "buyer_tag", "exact", "steps")} for c in comparisons],
    }
    report = ReplayReport(out_dir / TRACES_FILE, out_dir / REPORT_FILE, len(plans),
                          sum(c["exact"] for c in comparisons), mismatches, details)
    report.report_path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    return report


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]make-traces"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("buyers  {task.fields[exact]} exact"),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    )
