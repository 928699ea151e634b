"""A/B what-if runs: the same synthetic buyers shop at layout A and at layout B, compared pairwise.

One population is sampled from the shop's type mix (harness.sim.population), then each arm is an
ordinary simulation (harness.sim.simulate.run_simulation) of exactly those buyers, one arm after the
other, against:

- our mock store served twice from one catalog, once per variant, each on its own port with its
  own SQLite order log (`catalog=`), or
- two live store URLs (`store_url_a=`, `store_url_b=`).

Buyer i has the same code and the same seed in both arms, so a deterministic policy differs
between the arms only where the layouts differ: the outcomes are paired and compared with
harness.sim.paired (ΔCR with a paired bootstrap interval, McNemar's test, per-type effects).

A/A runs (aa=True) serve the same variant twice and give arm B the same codes but INDEPENDENT
buyer seeds (SeedSequence([seed, i, 2])): the two arms then differ only by chance, and the share
of A/A runs called significant is the test's false-positive rate, which should be about α.
run_aa_calibration repeats that and reports the rate with its Wilson interval.

Ground truth of a conversion is the store's own order log (an order under the buyer's tag
<run_id>/<arm>:<buyer_index>), not the agent's claim; trajectories are used only for live
stores, whose orders we cannot see. Output, in runs/<run_id>/:

    A/, B/            the two arms' run directories, as simulate writes them (+ store.sqlite)
    ab_summary.json   every figure: CRs, ΔCR and interval, McNemar b, c, p, per-type table,
                      n, α, seeds, variants, store-counted conversions per arm
    ab_effects.png    ΔCR overall and per type with their intervals
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from codebook.artifact import CodebookArtifact
from harness.sim.paired import DEFAULT_ALPHA, DEFAULT_BOOTSTRAP, PairedEffect, paired_effect, per_type_effects, wilson_interval
from harness.sim.population import SyntheticBuyer, sample_population
from harness.sim.simulate import (
    DB_FILES,
    ENGINES,
    SimulationConfig,
    default_run_id,
    run_simulation,
    serve_for_run,
    served_store_options,
)
from storefronts.orderlog import orders_by_buyer

ARMS = ("A", "B")
SUMMARY_FILE = "ab_summary.json"
PLOT_FILE = "ab_effects.png"
CALIBRATION_FILE = "aa_calibration.json"
CALIBRATION_PLOT_FILE = "aa_pvalues.png"


@dataclass
class ABConfig:
    """One A/B (or A/A) comparison; stored in ab_summary.json."""

    shop: str  # whose buyer-type mix is sampled (a key of the codebook's shop_mix.json)
    codebook_dir: Path
    catalog: Path | pd.DataFrame | None = None  # serve our mock store from this catalog (parquet or frame), once per arm
    catalog_shop: str | None = None  # shop id of the products in `catalog` (default: shop)
    engine: str = "mock"  # with a catalog: "mock" (our store) or "oscar" (django-oscar; variants: storefronts.oscar.VARIANTS)
    variant_a: str = "default"  # layout variant of arm A (a built-in name or a variant JSON path)
    variant_b: str = "worse"
    store_url_a: str | None = None  # live stores instead of `catalog`
    store_url_b: str | None = None
    buyers: int = 200
    seed: int = 0
    driver: str = "http"  # http | browser
    concurrency: int = 8
    max_steps: int = 40
    aa: bool = False  # A/A: arm B = arm A's variant, same codes, independent buyer seeds
    alpha: float = DEFAULT_ALPHA
    n_bootstrap: int = DEFAULT_BOOTSTRAP
    out_dir: Path = Path("runs")
    run_id: str | None = None  # default: UTC time and shop, with an "ab" suffix
    progress: bool = True

    def __post_init__(self) -> None:
        self.codebook_dir = Path(self.codebook_dir)
        self.out_dir = Path(self.out_dir)
        if isinstance(self.catalog, str):
            self.catalog = Path(self.catalog)
        if self.aa:
            self.variant_b = self.variant_a
            self.store_url_b = self.store_url_b or self.store_url_a
        live = self.store_url_a is not None or self.store_url_b is not None
        if (self.catalog is None) == (not live):
            raise ValueError("give either a catalog (our mock store, served once per arm) or store_url_a and store_url_b, not both")
        if live and not (self.store_url_a and self.store_url_b):
            raise ValueError("a live-store A/B run needs both store_url_a and store_url_b")
        if self.engine not in ENGINES or (live and self.engine != "mock"):
            raise ValueError(f"engine must be one of {', '.join(ENGINES)} and serves a catalog; got {self.engine!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        if self.buyers < 2:
            raise ValueError(f"an A/B run needs at least 2 buyers, got {self.buyers}")
        if self.run_id is None:
            self.run_id = default_run_id(self.shop) + ("-aa" if self.aa else "-ab")

    @property
    def run_dir(self) -> Path:
        return self.out_dir / str(self.run_id)

    @property
    def ours(self) -> bool:
        return self.catalog is not None

    def variant(self, arm: str) -> str:
        return self.variant_a if arm == "A" else self.variant_b


@dataclass
class ABResult:
    run_dir: Path
    summary: dict
    overall: PairedEffect
    per_type: dict[int, PairedEffect]


# ---------------------------------------------------------------------------------------------
# Populations of the two arms


def independent_seed(run_seed: int, buyer_index: int) -> int:
    """Arm B's seed for buyer i in an A/A run: independent of harness.sim.population.buyer_seed."""
    return int(np.random.SeedSequence([run_seed, buyer_index, 2]).generate_state(1)[0])


def arm_populations(config: ABConfig, codebook: CodebookArtifact) -> dict[str, list[SyntheticBuyer]]:
    """The buyers of each arm: identical for A/B; for A/A the same codes with independent seeds."""
    population = sample_population(codebook, config.shop, config.buyers, config.seed)
    if not config.aa:
        return {"A": population, "B": population}
    reseeded = [replace(buyer, seed=independent_seed(config.seed, buyer.buyer_index)) for buyer in population]
    return {"A": population, "B": reseeded}


# ---------------------------------------------------------------------------------------------
# Stores


def serve_arm_stores(config: ABConfig, stack: ExitStack, db_dir: Path) -> dict[str, object]:
    """The store once per arm (own port, own order database in db_dir/<arm>/): our mock store in
    each arm's layout, or django-oscar in each arm's Oscar variant."""
    from storefronts.catalog import StoreCatalog

    shop = config.catalog_shop or config.shop
    # Our store: the catalog parsed once, served twice. Oscar loads it into its own database per arm.
    catalog = StoreCatalog.load(config.catalog, shop) if config.engine == "mock" else config.catalog
    return {arm: stack.enter_context(serve_for_run(catalog, shop, db_dir / arm / DB_FILES[config.engine], engine=config.engine,
                                                   variant=config.variant(arm)))
            for arm in ARMS}


# ---------------------------------------------------------------------------------------------
# The run


async def run_ab(config: ABConfig, policy, stores: dict[str, object] | None = None, plot: bool = True,
                 codebook: CodebookArtifact | None = None) -> ABResult:
    """Run both arms one after the other, then compare them; writes ab_summary.json (+ the plot).

    stores: already running mock stores per arm ({"A": RunningStore, "B": ...}) to use instead of
        serving new ones (the A/A calibration keeps two stores up across its repeats).
    codebook: the artifact at config.codebook_dir, already loaded (loaded here when not given).
    """
    if codebook is None:
        codebook = CodebookArtifact.load(config.codebook_dir)
    populations = arm_populations(config, codebook)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if stores is None and config.ours:
            stores = serve_arm_stores(config, stack, config.run_dir)
        arms = {}
        for arm in ARMS:
            arms[arm] = await run_simulation(arm_config(config, arm, stores), policy, population=populations[arm],
                                             codebook=codebook)
        store_orders = {arm: orders_by_buyer(stores[arm].db_path, f"{config.run_id}/{arm}") for arm in ARMS} if stores else None
    return finish_ab(config, populations, arms, store_orders, getattr(policy, "name", type(policy).__name__), plot)


def arm_config(config: ABConfig, arm: str, stores: dict | None) -> SimulationConfig:
    served = served_store_options(stores[arm]) if stores else {
        "store_url": config.store_url_a if arm == "A" else config.store_url_b, "variant": config.variant(arm)}
    return SimulationConfig(
        shop=config.shop,
        codebook_dir=config.codebook_dir,
        buyers=config.buyers,
        concurrency=config.concurrency,
        driver=config.driver,
        max_steps=config.max_steps,
        seed=config.seed,
        out_dir=config.out_dir,
        run_id=f"{config.run_id}/{arm}",
        progress=config.progress,
        **served,
    )


def paired_outcomes(config: ABConfig, populations: dict, arms: dict, store_orders: dict | None) -> pd.DataFrame:
    """One row per buyer: index, code, seeds, outcome in A and B (1 = converted) by store and by trajectory."""
    rows = []
    latest = {arm: {record["buyer_index"]: record for record in arms[arm].trajectories} for arm in ARMS}
    for buyer_a, buyer_b in zip(populations["A"], populations["B"]):
        i = buyer_a.buyer_index
        row = {"buyer_index": i, "code": buyer_a.code, "seed_a": buyer_a.seed, "seed_b": buyer_b.seed}
        for arm in ARMS:
            record = latest[arm].get(i)
            if record is None:
                raise RuntimeError(f"arm {arm} of {config.run_dir} has no trajectory for buyer {i}; resume or rerun it")
            row[f"claimed_{arm}"] = int(record["outcome"] == "converted")
            row[f"outcome_{arm}"] = record["outcome"]
            row[f"store_{arm}"] = int(store_orders[arm].get(i, 0) > 0) if store_orders else None
        rows.append(row)
    return pd.DataFrame(rows)


def finish_ab(config: ABConfig, populations, arms, store_orders, policy_name: str, plot: bool = True) -> ABResult:
    """The paired analysis of two finished arms: ab_summary.json and ab_effects.png."""
    table = paired_outcomes(config, populations, arms, store_orders)
    source = "store" if store_orders else "claimed"  # the store's order log is the ground truth
    a, b = table[f"{source}_A"].to_numpy(), table[f"{source}_B"].to_numpy()
    confidence = 1 - config.alpha
    overall = paired_effect(a, b, confidence, config.n_bootstrap, seed=config.seed)
    per_type = per_type_effects(table["code"].to_numpy(), a, b, confidence, config.n_bootstrap, seed=config.seed)
    summary = build_summary(config, table, arms, store_orders, overall, per_type, policy_name, source)
    (config.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    if plot:
        plot_effects(overall, per_type, config.run_dir / PLOT_FILE, title=_plot_title(config))
    return ABResult(config.run_dir, summary, overall, per_type)


# Fewer conversions than this over both arms and not even a one-sided split of them reaches
# p < 0.05: the A/B cannot tell the layouts apart, whatever they do.
MIN_AB_CONVERSIONS = 5


def verdict(effect: PairedEffect, alpha: float, conversions: int) -> str:
    """One line for the A/B; `conversions` counts converted buyers over both arms."""
    if conversions == 0:
        return "tells nothing: nobody converted in either arm"
    if conversions < MIN_AB_CONVERSIONS:
        return f"tells almost nothing: only {conversions} conversions over both arms"
    if effect.p_value >= alpha:
        return "no significant difference"
    return "B converts worse than A" if effect.delta < 0 else "B converts better than A"


def build_summary(config, table, arms, store_orders, overall, per_type, policy_name, source) -> dict:
    arm_figures = {}
    for arm in ARMS:
        summary = arms[arm].summary
        claimed = int(table[f"claimed_{arm}"].sum())
        counted = int(table[f"store_{arm}"].sum()) if store_orders else None
        arm_figures[arm] = {
            "run_dir": str(arms[arm].run_dir),
            "variant": config.variant(arm),
            "store_url": summary["store_url"],
            "conversion_rate": float(table[f"{source}_{arm}"].mean()),
            "converted_store_counted": counted,
            "converted_claimed": claimed,
            "store_orders": sum(store_orders[arm].values()) if store_orders else None,
            "claims_agree_with_store": None if counted is None else bool((table[f"claimed_{arm}"] == table[f"store_{arm}"]).all()),
            "outcomes": summary["outcomes"],
            "step_errors": summary["step_errors"],
            "wall_s": summary["throughput"]["wall_s"],
        }
    return {
        "run_id": config.run_id,
        "kind": "A/A" if config.aa else "A/B",
        "shop": config.shop,
        "policy": policy_name,
        "driver": config.driver,
        "variants": {"A": config.variant_a, "B": config.variant_b},
        "n": int(len(table)),
        "alpha": config.alpha,
        "confidence": 1 - config.alpha,
        "outcome_source": "store order log" if source == "store" else "trajectories (live store: orders not visible)",
        "conversion_a": overall.conversion_a,
        "conversion_b": overall.conversion_b,
        "delta": overall.delta,
        "ci": [overall.ci_low, overall.ci_high],
        "ci_method": f"paired percentile bootstrap over buyers, {config.n_bootstrap} resamples",
        "mcnemar": {
            "b_only_a_converted": overall.mcnemar.only_a,
            "c_only_b_converted": overall.mcnemar.only_b,
            "p_exact": overall.mcnemar.p_exact,
            "p_mid": overall.mcnemar.p_mid,
        },
        "p_value": overall.p_value,
        "p_value_method": "McNemar mid-p (two-sided) on the discordant pairs; p_exact is the exact binomial test",
        "significant": overall.p_value < config.alpha,
        "verdict": verdict(overall, config.alpha, int(table[f"{source}_A"].sum() + table[f"{source}_B"].sum())),
        "per_type": {str(code): _effect_row(effect) for code, effect in per_type.items()},
        "seeds": {
            "population_seed": config.seed,
            "arm_b_seeds": "independent: SeedSequence([seed, buyer_index, 2])" if config.aa else "same as arm A",
            "bootstrap_seed": config.seed,
        },
        "arms": arm_figures,
        "config": _plain_config(config),
    }


def _plain_config(config: ABConfig) -> dict:
    """The config as JSON values (a catalog given as a DataFrame is recorded as such)."""
    plain = {}
    for item in fields(config):
        value = getattr(config, item.name)
        if isinstance(value, pd.DataFrame):
            value = f"DataFrame ({len(value)} products)"
        plain[item.name] = str(value) if isinstance(value, Path) else value
    return plain


def _effect_row(effect: PairedEffect) -> dict:
    return {
        "n": effect.n,
        "conversion_a": effect.conversion_a,
        "conversion_b": effect.conversion_b,
        "delta": effect.delta,
        "ci": [effect.ci_low, effect.ci_high],
        "b_only_a_converted": effect.mcnemar.only_a,
        "c_only_b_converted": effect.mcnemar.only_b,
        "p_exact": effect.mcnemar.p_exact,
        "p_mid": effect.mcnemar.p_mid,
    }


def _plot_title(config: ABConfig) -> str:
    kind = "A/A" if config.aa else "A/B"
    return f"{kind} {config.shop}: B={config.variant_b} vs A={config.variant_a}"


# ---------------------------------------------------------------------------------------------
# Plots


def plot_effects(overall: PairedEffect, per_type: dict[int, PairedEffect], path: Path, title: str = "") -> Path:
    """ΔCR (B − A) with its interval: overall on top, then one row per buyer type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"all buyers (n={overall.n})"] + [f"type {code} (n={e.n})" for code, e in per_type.items()]
    effects = [overall, *per_type.values()]
    deltas = np.array([e.delta for e in effects])
    errors = np.array([[e.delta - e.ci_low for e in effects], [e.ci_high - e.delta for e in effects]])
    y = np.arange(len(effects))[::-1]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(effects)))
    colors = ["black"] + ["tab:blue"] * len(per_type)
    for row, delta, low, high, color in zip(y, deltas, errors[0], errors[1], colors):
        ax.errorbar(delta, row, xerr=[[low], [high]], fmt="o", color=color, capsize=4)
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, labels)
    ax.set_xlabel(f"ΔCR = CR_B − CR_A  ({overall.confidence:.0%} paired bootstrap interval)")
    ax.set_title(f"{title}\nMcNemar mid-p = {overall.p_value:.3g}" if title else f"McNemar mid-p = {overall.p_value:.3g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pvalue_histogram(p_values: list[float], alpha: float, path: Path, title: str = "") -> Path:
    """A/A p-values: roughly uniform on [0, 1] when the test is calibrated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(p_values, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    ax.axvline(alpha, color="red", linestyle="--", linewidth=1, label=f"α = {alpha}")
    ax.axhline(len(p_values) / 20, color="grey", linestyle=":", linewidth=1, label="uniform")
    ax.set_xlabel("McNemar mid-p of each A/A repeat")
    ax.set_ylabel("repeats")
    ax.set_title(title or f"A/A p-values over {len(p_values)} repeats", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# A/A calibration


async def run_aa_calibration(config: ABConfig, policy, repeats: int, on_repeat=None,
                             codebook: CodebookArtifact | None = None) -> dict:
    """Repeat A/A runs (seed, seed+1, …) and report the false-positive rate at config.alpha.

    The two mock stores stay up across repeats; repeat r writes runs/<run_id>/rep_<r>/ (A/, B/,
    ab_summary.json). on_repeat(r, result) is called after each repeat (progress display).
    Writes aa_calibration.json and aa_pvalues.png into runs/<run_id>/.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if codebook is None:
        codebook = CodebookArtifact.load(config.codebook_dir)
    base = replace(config, aa=True)
    base.run_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with ExitStack() as stack:
        stores = serve_arm_stores(base, stack, base.run_dir) if base.ours else None
        for repeat in range(repeats):
            one = replace(base, seed=base.seed + repeat, run_id=f"{base.run_id}/rep_{repeat:03d}", progress=False)
            result = await run_ab(one, policy, stores=stores, plot=False, codebook=codebook)
            results.append(result)
            # Written after every repeat, so a long calibration cut short still has its figures.
            calibration = calibration_summary(base, results) | {"complete": len(results) == repeats, "repeats_planned": repeats}
            (base.run_dir / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2))
            if on_repeat is not None:
                on_repeat(repeat, result)
    plot_pvalue_histogram(
        [r.overall.p_value for r in results], base.alpha, base.run_dir / CALIBRATION_PLOT_FILE,
        title=f"A/A {base.variant_a}: {repeats} repeats × {base.buyers} buyers, FPR {calibration['false_positive_rate']:.3f}",
    )
    return calibration


def calibration_summary(config: ABConfig, results: list[ABResult]) -> dict:
    p_mid = [r.overall.mcnemar.p_mid for r in results]
    p_exact = [r.overall.mcnemar.p_exact for r in results]
    hits_mid = sum(p < config.alpha for p in p_mid)
    hits_exact = sum(p < config.alpha for p in p_exact)
    covered = sum(r.overall.ci_low <= 0 <= r.overall.ci_high for r in results)
    counts, edges = np.histogram(p_mid, bins=np.linspace(0, 1, 11))
    return {
        "run_id": config.run_id,
        "variant": config.variant_a,
        "shop": config.shop,
        "driver": config.driver,
        "repeats": len(results),
        "buyers_per_repeat": config.buyers,
        "alpha": config.alpha,
        "seeds": [config.seed + r for r in range(len(results))],
        "false_positive_rate": hits_mid / len(results),
        "false_positive_rate_wilson_95": list(wilson_interval(hits_mid, len(results))),
        "false_positives": hits_mid,
        "p_value_method": "McNemar mid-p (two-sided)",
        "false_positive_rate_exact_test": hits_exact / len(results),
        "false_positive_rate_exact_test_wilson_95": list(wilson_interval(hits_exact, len(results))),
        "ci_coverage_of_zero": covered / len(results),
        "mean_conversion_a": float(np.mean([r.overall.conversion_a for r in results])),
        "mean_conversion_b": float(np.mean([r.overall.conversion_b for r in results])),
        "mean_discordant_pairs": float(np.mean([r.overall.mcnemar.only_a + r.overall.mcnemar.only_b for r in results])),
        "p_value_histogram": {"edges": edges.round(2).tolist(), "counts": counts.tolist()},
        "p_values_mid": p_mid,
        "p_values_exact": p_exact,
        "store_claims_agree": all(
            arm["claims_agree_with_store"] in (True, None) for r in results for arm in r.summary["arms"].values()
        ),
    }
