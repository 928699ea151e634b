"""Held-out evaluation: do synthetic buyers convert like the real buyers of shops never trained on?

(Over 500 lines: the evaluation's steps share one config and one work-dir layout and are read in
the order they run; policies, reports and verdicts live in their own modules.)

`evaluate(EvaluateConfig(...))` runs the whole loop, one step after another, each writing its file
into `out_dir`, so a rerun skips the steps already done (resumable):

    shop_split.json                    training vs held-out shops (harness.eval.split)
    features_<all|browse_only>.parquet buyer features of every buyer (codebook.features)
    <protocol>/codebook/               codebook trained on TRAINING shops' rows only
    <protocol>/codes.parquet           every buyer's code (training and held-out), one forward pass
    replays/                           each training buyer any fold chose, replayed once (harness.eval.shared_replays)
    <protocol>/traces/                 the fold's training buyers' traces, with its codes (harness.eval.replay)
    <protocol>/agent/                  persona agent;  <protocol>/agent_no_persona/: the baseline agent
    <protocol>/calibration.json        sampling temperature chosen on training shops (when asked)
    <protocol>/sim/<policy>/<shop>/    one simulation run per held-out shop and policy (harness.sim.simulate)
    <protocol>/results.json            per shop and policy: simulated vs real conversion, type mixes
    <protocol>/phases.json             seconds per step, buyers/min of each simulation (harness.eval.phases)
    summary.json, report.html          every figure, and the report (harness.eval.report)

With --folds K > 1 (the default on a real log) every eligible shop is held out once: fold k keeps
shop_split_fold<k>.json beside the features and its own fold<k>/<protocol>/ steps, and summary.json
pools the folds (harness.eval.folds). With --seeds S > 1 each seed's folds live under seed<s>/, with
the seed's own summary.json and report.html; the top ones show the first seed and the spread over seeds.

Protocols: "paper" builds types from all features (codes carry purchase information), "strict"
from browse-only features (codebook.features browse_only=True; no purchase information).

Policies compared on the same shops with the same synthetic populations:
    persona       the persona agent (LLMPolicy), sampling its actions
    neutral       the same agent with every buyer given the neutral token (token ablation)
    no_persona    an agent trained on the same traces with every code mapped to one token
    mismatched    the persona agent with each buyer shown ANOTHER type's token (drawn from the
                  training buyers' type mix without the buyer's own type): if the token carries the
                  behaviour, this row falls behind persona
    type_profile  agent.baselines.TypeProfilePolicy from the training-shop codebook
    global_rate   no simulation: the training buyers' overall conversion rate for every shop
A reference row comes with every protocol, whatever the baselines:
    type_oracle   no simulation: each type at its training buyers' conversion rate, weighted by the
                  held-out shop's real type mix; what an agent that plays every type exactly reaches,
                  so the gap between it and persona is the agent's, the rest the types' own

Conversion of a simulated buyer is STORE-COUNTED: the buyer has an order in the store's SQLite
order log (summary["store_counted"]), not what the agent believes it did.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from agent.traces import Trace, read_traces
from codebook.artifact import CodebookArtifact
from storefronts.catalog import stable_unit
from storefronts.variants import load_variant, training_themes
from harness.sim.policies import PolicySpec, build_policy, made_by, policy_record
from harness.sim.population import SyntheticBuyer, population_from_mix
from harness.sim.rundir import RunDir, RunDirError
from harness.sim.paired import wilson_interval
from harness.eval.metrics import (
    BEHAVIOUR_MEASURES,
    alignment_term,
    behaviour_figures,
    behaviour_summary,
    buyers_against_type,
    buyers_needed,
    conversion_gap,
    correlations,
    intervals_overlap,
    mix_jsd,
    summarize_policy,
    type_oracle_rate,
)
from harness.eval.nav_base import BASES, DEFAULT_STAGE2_LR, ensure_nav_base
from harness.eval.phases import PhaseTimes
from harness.eval.shared_replays import SharedReplays, replay_settings, write_atomically
from harness.eval.split import (
    SPLIT_FILE,
    ShopSplit,
    SplitConfig,
    buyers_per_shop,
    make_or_load_split,
)

PROTOCOLS = ("paper", "strict")
LLM_POLICIES = ("persona", "neutral", "no_persona", "mismatched")
BASELINES = ("no_persona", "neutral", "mismatched", "type_profile", "global_rate")
RETRAIN_STARTS = ("rejected", "base")
FEATURE_FILES = {"paper": "features_all.parquet", "strict": "features_browse_only.parquet"}
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.json"
CALIBRATION_FILE = "calibration.json"


@dataclass
class EvaluateConfig:
    """Every option of one held-out evaluation. The defaults are the configuration behind the
    published figures (docs/results.md; seeds 0-3 of its five-fold Tmall figures were trained before
    the cart page was a decision step, agent.sft.SFTConfig.cart_page_decides): on 2 cores, about 20 min per fold of the Tmall log
    (5 folds, 137 shops), of which the persona and the mismatched simulations take 6 min each,
    and 9 more when the fold's agent is retrained."""

    out_dir: Path
    # input: events.parquet + catalog.parquet, given one by one or as an ingested run dir
    events: Path | None = None
    catalog: Path | None = None
    input_dir: Path | None = None
    protocol: str = "paper"  # paper | strict | both
    # split
    held_out_fraction: float = 0.2
    min_buyers: int = 50  # only shops with at least this many buyers can be held out
    max_held_out_shops: int | None = 3  # with folds = 1
    # K > 1: every eligible shop is held out once, in K merchant-disjoint folds, each fold learning
    # its codebook, traces and agent from all other shops (harness.eval.folds); 1: one held-out split
    folds: int = 5
    seeds: int = 1  # S > 1: the whole evaluation again with seeds seed .. seed + S - 1; mean ± sd
    # synthetic buyers per held-out shop; None: enough that the simulated rate's standard error
    # is under a tenth of the real rate (N >= 100 (1 - p) / p), capped at max_buyers_per_shop
    buyers_per_shop: int | None = None
    max_buyers_per_shop: int = 100  # Tmall: 13,700 buyers per policy over its 137 eligible shops
    min_buyers_per_shop: int = 50
    driver: str = "http"  # http | browser
    # The store layout of every replay and simulation. "saved_details": buyers are signed in and
    # check out with a saved address and wallet (Tmall's buyers do), so the agent has to learn the
    # decisions, not a form's typing; "default" asks every buyer to type an address and a card.
    variant: str = "saved_details"
    browser_check: bool = True  # also run one held-out shop with the browser driver (see fold_config)
    browser_buyers: int = 40  # cap on that shop's browser-driven buyers
    # Transfer: the persona agent's populations of the largest held-out shops of each fold also
    # shop other stores: "oscar" (django-oscar, storefronts/oscar, a store nobody here wrote) or a
    # mock-store theme or variant by name (e.g. the held-out themes atelier, nordhaus, quickmart).
    transfer_stores: tuple[str, ...] = ()
    transfer_shops: int = 1  # per fold
    # codebook
    codebook_size: int = 16
    codebook_epochs: int = 8
    embedding: str = "hashed"
    # traces and agent
    # nav: the cached navigation base (harness.eval.nav_base: a tiny model that already shops the
    # mock store); tiny: a random tiny model with a tokenizer trained on these traces; smollm2; a model dir
    agent_base: str = "nav"
    # Replay the training buyers over `variant` and the training themes (storefronts/variants/themes)
    # instead of `variant` alone, so the agent meets other wording, overlays and checkouts (use with
    # the "nav-themes" base); the held-out shops are still simulated on `variant`.
    trace_themes: bool = False
    # The random tiny model's size (agent_base="tiny"): big enough to read which element to click
    tiny_hidden_size: int = 128
    tiny_layers: int = 4
    traces_per_code: int = 60  # training buyers replayed per code (random within the code)
    traces_per_shop: int = 50  # cap on replayed buyers per training shop
    trace_max_steps: int = 24  # the replay shortens longer buyers (browsing first, purchases kept)
    sft_single_stage: bool = False  # skip the persona-token warm-up (a random tiny model has nothing to keep)
    sft_stage1_epochs: int = 1
    sft_stage2_epochs: int = 2
    sft_stage1_lr: float = 5e-2
    sft_stage2_lr: float | None = None  # None: 1e-2 for the random tiny model, 1e-3 on the nav base, 5e-5 otherwise
    sft_batch_size: int = 16
    sft_max_steps: int | None = 150  # cap on optimiser steps per stage; enough on the navigation base
    sft_max_length: int = 512  # the navigation base's (harness.eval.nav_base); prompts are cut to fit
    sft_rename_shops: bool = False  # each epoch, every trace in a renamed shop (agent.sft.SFTConfig)
    # How the agent computes, in training and in the simulations (agent.models.compute_dtypes).
    agent_precision: str = "auto"
    # The agents SAMPLE their actions (rates follow the learned frequencies) at this temperature;
    # None: the one the agent dir records (agent/persona.py), which the calibration below writes.
    temperature: float | None = None
    # Persona guidance of the agents in the calibration and the simulations (agent.generate
    # GenerationSettings.guidance; 1: off), written into the agent dir beside the temperature. On
    # training shops it brought the agents' type gap down: the synthetic demo's from 0.072 to 0.008,
    # Tmall's seed-5 folds to 0.000-0.006, where two of five agents failed the check unguided.
    guidance: float = 2.0
    # Candidate temperatures tried on a few TRAINING shops (never held-out ones, never ones replayed
    # into the traces) before the held-out runs. The one under which the agent's conversion per type
    # comes closest to its traces' (agent_code_check over all calibration buyers: hundreds of buyers,
    # where a shop-level alignment of five shops rests on a few dozen purchases) is written into the
    # agent dir (and calibration.json). A small model's probabilities are blurred, and every extra
    # product view is another chance to buy (T < 1); on pages it has never seen it may also hold
    # back from a purchase its type would make (T > 1).
    calibrate_temperatures: tuple[float, ...] = (1.0, 0.5)
    # Under guidance, each temperature is also tried at each of these plausibility bars (agent.generate
    # GenerationSettings.guidance_plausibility). The calibration keeps the candidate nearest its
    # traces' conversion per type AND the real buyers' share who view a product (calibration_gap):
    # on Tmall's training shops, guidance pushing every token lost 13-30 % of the buyers before a
    # product view in three folds of five; on the synthetic demo's, the bar cost the type gap
    # 0.008 -> 0.048 with no viewers to save (docs/results.md, the persona agent).
    calibrate_plausibilities: tuple[float, ...] = (0.0, 0.1)
    calibration_shops: int = 5
    calibration_buyers: int = 100  # cap per calibration shop (the N rule below, with this cap)
    # A shop with one real purchase has a rate known to +-100 %: its alignment is mostly noise and
    # can decide the temperature alone. Shops with at least this many purchases come first.
    calibration_min_purchases: int = 5
    # An agent further than this from its traces' conversion per type (buyer-weighted mean |gap| on
    # the calibration buyers beyond the sampling gap, at its chosen temperature: type_gap) is trained
    # again (checked_persona_agent). On Tmall (seeds 0-2) the agents that followed their
    # types sat at 0.000-0.012 and scored 0.84-0.93 on their held-out shops; two kept at 0.044
    # scored 0.54 and 0.56. None: never.
    max_type_gap: float | None = 0.025
    # A small type the agent does not follow hardly moves that mean (type 13 of seed 0's fold 4:
    # 2 of 14 buyers bought where all its traces bought, mean gap 0.044). An agent is also trained
    # again when one type's traces' conversion lies further than this outside the Wilson 95 %
    # interval of the agent's (worst_type): at most 0.21 for the agents that followed their types,
    # 0.38-0.85 for the ones that did not (seeds 0-2). None: never.
    max_worst_type_gap: float | None = 0.25
    # Both checks weigh a type by its buyers, and the buying types are small: an agent that buys with
    # a type whose traces never buy (Tmall seed 4, fold 2: 9 of 68 such buyers) stays within them and
    # doubled its held-out shops' rates. Under the paper protocol an agent is also trained again when
    # its calibration conversion gap (metrics.conversion_gap: the share of the traces' conversions
    # it loses or puts in other types) exceeds this: 0.000-0.060 for the eight kept agents of seed 4's
    # two runs that scored 0.865-0.921 held out, 0.154 and 0.217 for the two that scored 0.748 and
    # 0.293 (the limit was set after seeing them; seed 5 tested it). Not under the strict protocol,
    # whose types buy at 17-68 %: there agents at 0.10-0.29 reached their type oracle. None: never.
    max_conversion_gap: float | None = 0.10
    # Each retraining doubles the SFT steps of the one before (150, 300, 600): the last is kept.
    max_retrains: int = 2
    # Where a retraining starts: "rejected" goes on training the rejected agent for the steps it
    # lacks (150 more, then 300 more), "base" trains a new agent from the base with all of them.
    # Both end at the same number of steps; going on costs half of the SFT time (Tmall seed 4: 3.4
    # instead of 6.9 min per retraining) and scored the same (0.907 against 0.905).
    retrain_from: str = "rejected"
    # simulation
    # Each simulated baseline is another simulation of every held-out shop (type_profile: 5 min per
    # Tmall fold, neutral as long as the persona's) and no_persona another SFT: ask with --baselines.
    baselines: tuple[str, ...] = ("mismatched", "global_rate")
    concurrency: int = 16
    max_steps: int = 30
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.input_dir is not None:
            self.input_dir = Path(self.input_dir)
            self.events = self.events or self.input_dir / "events.parquet"
            self.catalog = self.catalog or self.input_dir / "catalog.parquet"
        if self.events is None or self.catalog is None:
            raise ValueError("give events and catalog (parquet files from `simpersona ingest`) or input_dir")
        self.events, self.catalog = Path(self.events), Path(self.catalog)
        for name, path in (("events", self.events), ("catalog", self.catalog)):
            if not path.is_file():
                raise FileNotFoundError(f"{name} file {path} not found (expected {name}.parquet from `simpersona ingest`)")
        if self.protocol not in (*PROTOCOLS, "both"):
            raise ValueError(f"protocol must be paper, strict or both; got {self.protocol!r}")
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
        if self.driver not in ("http", "browser"):
            raise ValueError(f"driver must be http or browser; got {self.driver!r}")
        self.transfer_stores = tuple(self.transfer_stores)
        for store in self.transfer_stores:
            if store != "oscar":
                load_variant(store)  # a misspelt theme fails here, naming itself
        if self.trace_themes and self.agent_base == "nav":
            raise ValueError("trace_themes: the 'nav' base never met the themes; use agent_base='nav-themes'")
        self.baselines = tuple(self.baselines)
        if self.folds < 1 or self.seeds < 1:
            raise ValueError(f"folds and seeds must be at least 1, got folds={self.folds}, seeds={self.seeds}")
        self.calibrate_temperatures = tuple(float(t) for t in self.calibrate_temperatures)
        if self.max_retrains < 0:
            raise ValueError(f"max_retrains must be >= 0, got {self.max_retrains}")
        if self.retrain_from not in RETRAIN_STARTS:
            raise ValueError(f"retrain_from must be one of {RETRAIN_STARTS}, got {self.retrain_from!r}")
        if self.guidance <= 0:
            raise ValueError(f"persona guidance must be > 0 (1: off), got {self.guidance}")
        if any(t <= 0 for t in self.calibrate_temperatures):
            raise ValueError(f"calibration temperatures must be > 0 (sampling), got {self.calibrate_temperatures}")
        self.calibrate_plausibilities = tuple(float(p) for p in self.calibrate_plausibilities)
        if not self.calibrate_plausibilities or any(not 0 <= p < 1 for p in self.calibrate_plausibilities):
            raise ValueError(f"calibration plausibility bars must lie in [0, 1), got {self.calibrate_plausibilities}")
        from agent.models import PRECISIONS

        if self.agent_precision not in PRECISIONS:
            raise ValueError(f"agent_precision must be one of {PRECISIONS}, got {self.agent_precision!r}")

    @property
    def protocols(self) -> tuple[str, ...]:
        return PROTOCOLS if self.protocol == "both" else (self.protocol,)

    @property
    def policies(self) -> tuple[str, ...]:
        """The policies that simulate (global_rate needs no simulation)."""
        return ("persona",) + tuple(p for p in self.baselines if p != "global_rate")

    @classmethod
    def demo(cls, out_dir: Path, **options) -> EvaluateConfig:
        """The demo's evaluation: these defaults (temperature calibrated on training shops, the
        agent's type check) on one split of two held-out shops, with 25 calibration buyers per
        shop, a 10-buyer browser check, no retraining and no mismatched row, so that `make demo`
        stays within its 15 minutes; an agent that fails the check is kept and the run says so."""
        preset = dict(folds=1, max_held_out_shops=2, calibration_buyers=25, browser_buyers=10,
                      max_retrains=0, baselines=("type_profile", "global_rate"))
        preset.update(options)
        return cls(out_dir=out_dir, **preset)

    @classmethod
    def fast(cls, out_dir: Path, **options) -> EvaluateConfig:
        """A small preset for smoke runs (`evaluate --fast`): a few held-out shops, capped buyers,
        few traces, no calibration."""
        preset = dict(
            folds=1, max_held_out_shops=2, max_buyers_per_shop=40, browser_buyers=20, traces_per_code=12, traces_per_shop=10,
            sft_stage1_epochs=1, sft_stage2_epochs=4, sft_max_steps=150,
            max_steps=30, baselines=("type_profile", "global_rate"), calibrate_temperatures=(),
        )
        preset.update(options)
        return cls(out_dir=out_dir, **preset)


# ---------------------------------------------------------------------------------------------
# Steps


def real_conversion(events: Path) -> pd.DataFrame:
    """Per shop: distinct buyers, buyers with a purchase, and their share (the real rate)."""
    import duckdb

    with duckdb.connect() as con:
        frame = con.execute(
            """SELECT CAST(shop_id AS VARCHAR) AS shop_id, count(DISTINCT buyer_id) AS buyers,
                      count(DISTINCT CASE WHEN event_type = 'purchase' THEN buyer_id END) AS converted
               FROM read_parquet(?) GROUP BY 1""",
            [str(events)],
        ).df()
    frame["conversion_rate"] = frame["converted"] / frame["buyers"]
    return frame.set_index("shop_id")


def build_protocol_features(config: EvaluateConfig, protocol: str, console: Console) -> Path:
    return protocol_features(config.events, config.catalog, config.out_dir, protocol, config.embedding,
                             config.progress, console)


def protocol_features(events: Path, catalog: Path, out_dir: Path, protocol: str, embedding: str, progress: bool,
                      console: Console) -> Path:
    """out_dir's feature file of every buyer for the protocol (browse-only for strict), built once."""
    from codebook.features import build_features

    path = out_dir / FEATURE_FILES[protocol]
    if not path.is_file():
        console.print(f"[bold]features[/] ({protocol}: {'browse-only' if protocol == 'strict' else 'all'} features)")
        build_features(events, catalog, path, browse_only=protocol == "strict", embedding=embedding, progress=progress)
    return path


def training_rate(split: ShopSplit, real: pd.DataFrame) -> float:
    """The training shops' buyers' overall conversion rate (the global-rate row and the oracle's fallback)."""
    training = real.loc[real.index.isin(set(split.training))]
    return float(training["converted"].sum() / training["buyers"].sum())


def train_protocol_codebook(config: EvaluateConfig, features: Path, split: ShopSplit, work: Path, console: Console) -> Path:
    """The codebook sees TRAINING shops' rows only; then every buyer gets its code."""
    from codebook.train import TrainConfig, load_codebook, read_features, train_codebook

    codebook_dir, codes_path = work / "codebook", work / "codes.parquet"
    frame, columns, meta = read_features(features)
    frame["shop_id"] = frame["shop_id"].astype(str)
    training = frame["shop_id"].isin(set(split.training))
    if not (codebook_dir / "types.json").is_file():
        console.print(f"[bold]codebook[/] on {int(training.sum()):,} training buyers (K={config.codebook_size})")
        train_config = TrainConfig(codebook_size=config.codebook_size, epochs=config.codebook_epochs,
                                   seed=config.seed, progress=config.progress)
        train_codebook(frame[training].reset_index(drop=True), codebook_dir, train_config, columns=columns,
                       meta={**meta, "training_shops_only": True, "split": str(config.out_dir / SPLIT_FILE)})
    if not codes_path.is_file():
        codes = load_codebook(codebook_dir).assign(frame)
        out = frame[["shop_id", "buyer_id"]].assign(code=codes, split=np.where(training, "training", "held_out"))
        if "converted" in frame:
            out["converted"] = frame["converted"].astype(bool)
        out.to_parquet(codes_path, index=False)
    return codebook_dir


def select_trace_buyers(codes: pd.DataFrame, per_code: int, per_shop: int, seed: int) -> pd.DataFrame:
    """Training buyers to replay: at most `per_shop` of a shop, then at most `per_code` of a code,
    each drawn at random, so a code's share of converting traces estimates its real conversion.

    The draw orders buyers by a key fixed per buyer and seed, so the folds of a seed mostly choose
    the same buyers of a shop they all train on, and replay each of them once (SharedReplays)."""
    training = codes[codes["split"] == "training"]
    keys = [stable_unit("trace-buyer", str(seed), str(shop), str(buyer))
            for shop, buyer in training[["shop_id", "buyer_id"]].itertuples(index=False)]
    shuffled = training.iloc[np.argsort(keys, kind="stable")]  # head() below then takes a random subset
    chosen = shuffled.groupby("shop_id").head(per_shop).groupby("code").head(per_code)
    return chosen.sort_values(["shop_id", "buyer_id"]).reset_index(drop=True)


REPLAY_DIR = "replay"  # in a fold's traces/: the replay of the buyers no earlier fold had chosen


async def make_protocol_traces(config: EvaluateConfig, work: Path, console: Console) -> Path:
    """The fold's traces.jsonl: its chosen training buyers, replayed once per evaluation (SharedReplays)
    and given the fold's codes; a themed replay (trace_themes) is the fold's own."""
    traces_dir = work / "traces"
    done = traces_dir / "traces.jsonl"
    if done.is_file():
        return done
    chosen = select_trace_buyers(pd.read_parquet(work / "codes.parquet"), config.traces_per_code,
                                 config.traces_per_shop, config.seed)
    if config.trace_themes:
        traces = await replay_trace_buyers(config, chosen, traces_dir / REPLAY_DIR, console)
    else:
        shared = SharedReplays(config.out_dir / "replays",
                               replay_settings(config.events, config.catalog, config.variant, config.trace_max_steps))
        missing = shared.missing(chosen)
        if len(missing) < len(chosen):
            console.print(f"[bold]traces[/]: {len(chosen) - len(missing):,} of {len(chosen):,} training buyers "
                          f"were replayed before (another fold, seed or protocol)")
        if len(missing):
            shared.add(await replay_trace_buyers(config, missing, traces_dir / REPLAY_DIR, console))
        traces = shared.for_fold(chosen)
    write_atomically(done, "".join(trace.to_json() + "\n" for trace in traces))
    return done


async def replay_trace_buyers(config: EvaluateConfig, chosen: pd.DataFrame, out: Path, console: Console) -> list[Trace]:
    from harness.eval.replay import ReplayConfig, replay

    shops = tuple(sorted(chosen["shop_id"].unique()))
    console.print(f"[bold]traces[/]: replaying {len(chosen):,} training buyers of {len(shops):,} shops")
    report = await replay(config.events, config.catalog, chosen[["shop_id", "buyer_id", "code"]], out,
                          # Buyers are chosen above: the replay's own per-shop sampling stays off.
                          ReplayConfig(driver="http", concurrency=config.concurrency, shops=shops, variant=config.variant,
                                       themes=(config.variant, *training_themes()) if config.trace_themes else (),
                                       max_steps_per_buyer=config.trace_max_steps, seed=config.seed,
                                       progress=config.progress))
    return read_traces(report.traces_path)


def train_protocol_agent(config: EvaluateConfig, traces_path: Path, out: Path, one_code: bool, console: Console,
                         continue_from: Path | None = None, retrain: int = 0) -> Path:
    """The persona agent, or (one_code) the no-persona agent: every trace's code mapped to 0.
    Its persona.json records the protocol's codebook and the traces (agent/persona.py).
    continue_from: an agent dir to train further (agent.sft.continue_agent) instead of the base;
    retrain: how many agents were set aside before this one."""
    from agent.models import load_local
    from agent.persona import PersonaMap, TraceSource
    from agent.sft import SFTConfig, continue_agent, save_agent, train_agent
    from agent.traces import read_traces, trace_texts

    if (out / "persona.json").is_file():
        return out
    traces = read_traces(traces_path)
    if one_code:
        traces = [replace(trace, code=0) for trace in traces]
    console.print(f"[bold]agent[/] ({'no persona' if one_code else 'persona'}): {len(traces):,} traces, "
                  f"{sum(len(t.steps) for t in traces):,} steps, base {config.agent_base!r}")
    tiny = config.agent_base == "tiny" or config.agent_base in BASES
    sft = SFTConfig(
        num_codes=1 if one_code else config.codebook_size, single_stage=config.sft_single_stage, stage1_epochs=config.sft_stage1_epochs,
        stage2_epochs=config.sft_stage2_epochs, stage1_lr=config.sft_stage1_lr,
        stage2_lr=config.sft_stage2_lr or DEFAULT_STAGE2_LR.get(config.agent_base, 5e-5), batch_size=config.sft_batch_size,
        max_length=config.sft_max_length, rename_shops=config.sft_rename_shops,
        stage1_max_steps=config.sft_max_steps, stage2_max_steps=config.sft_max_steps,
        # A retraining draws other batches than the agent it goes on from.
        init_noise_scale=1.0 if tiny else 0.1, seed=config.seed + retrain, precision=config.agent_precision,
    )
    if continue_from is None:
        base, anchors = load_agent_base(config, trace_texts(traces), console)
        result = train_agent(traces, base, sft, anchors=anchors)
    else:
        console.print(f"[bold]agent[/]: going on from {continue_from.name}")
        result = continue_agent(traces, load_local(continue_from, device=sft.device), PersonaMap.load(continue_from), sft)
    codebook = CodebookArtifact.load(out.parent / "codebook")
    result.persona_map = result.persona_map.trained_for(codebook.identity, TraceSource.of(traces_path, len(traces)))
    save_agent(result, out, sft, {"traces": str(traces_path), "base_spec": config.agent_base, "one_code": one_code,
                                  "continued_from": str(continue_from) if continue_from else None})
    return out


def load_agent_base(config: EvaluateConfig, texts: list[str], console: Console):
    """The base model, and the persona rows it already reads when its directory has them."""
    from agent.models import TinyModelConfig, load_base, load_local, load_tiny
    from agent.persona import PersonaAnchors
    if config.agent_base in BASES:
        directory = ensure_nav_base(BASES[config.agent_base], console=console, progress=config.progress)
        return load_local(directory), PersonaAnchors.load(directory)
    if config.agent_base != "tiny":
        anchors = PersonaAnchors.load(config.agent_base) if Path(config.agent_base).is_dir() else None
        return load_base(config.agent_base, texts), anchors
    size = TinyModelConfig.of_width(config.tiny_hidden_size, config.tiny_layers, config.seed)
    return load_tiny(texts, size), None


@dataclass
class OneCodePolicy:
    """Runs the no-persona agent: every buyer is shown the one code that agent was trained with."""

    inner: object
    name: str = "no_persona"

    def act(self, turns):
        return self.inner.act([replace(turn, code=0) for turn in turns])

    def forget(self, buyer_index: int) -> None:
        forget = getattr(self.inner, "forget", None)
        if forget is not None:
            forget(buyer_index)


@dataclass
class MismatchedPolicy:
    """Runs the persona agent with each buyer shown another type's token: one code per buyer, drawn
    (by the buyer's own seed) from the training buyers' type mix without the buyer's own code."""

    inner: object
    training_mix: dict[int, float]
    name: str = "mismatched"

    def other_code(self, turn) -> int:
        others = sorted(code for code, share in self.training_mix.items() if code != turn.code and share > 0)
        if not others:
            return turn.code
        weights = np.array([self.training_mix[code] for code in others])
        return int(np.random.default_rng([turn.seed, turn.code]).choice(others, p=weights / weights.sum()))

    def act(self, turns):
        return self.inner.act([replace(turn, code=self.other_code(turn)) for turn in turns])

    def forget(self, buyer_index: int) -> None:
        forget = getattr(self.inner, "forget", None)
        if forget is not None:
            forget(buyer_index)


AGENT_DIRS = {"persona": "agent", "neutral": "agent", "no_persona": "agent_no_persona", "mismatched": "agent"}


def agent_temperature(work: Path, config: EvaluateConfig) -> float:
    """The persona agent's sampling temperature: --temperature, else the one its dir records."""
    from agent.persona import PersonaMap

    return config.temperature if config.temperature is not None else PersonaMap.load(work / "agent").sampling.temperature


def row_spec(name: str, work: Path, config: EvaluateConfig) -> PolicySpec:
    """The PolicySpec of a simulating row (persona, neutral, no_persona, type_profile)."""
    if name == "type_profile":
        return PolicySpec("type-profile", label=name)
    if name not in AGENT_DIRS:
        raise ValueError(f"no simulating policy called {name!r}")
    temperature = config.temperature
    if name == "no_persona":
        # The baseline agent samples like the persona agent it is compared with (calibrated or not).
        temperature = agent_temperature(work, config)
    # Guidance scales the persona token's difference from the neutral one: nothing for the neutral row.
    guidance = 1.0 if name == "neutral" else config.guidance
    return PolicySpec(str(work / AGENT_DIRS[name]), temperature=temperature, guidance=guidance, seed=config.seed,
                      neutral=name == "neutral", precision=config.agent_precision, label=name)


def row_policy(name: str, work: Path, config: EvaluateConfig, codebook: CodebookArtifact):
    """The live policy of a simulating row, built like every command builds one (build_policy)."""
    policy = build_policy(row_spec(name, work, config), codebook)
    if name == "mismatched":
        codes = pd.read_parquet(work / "codes.parquet")
        mix = codes.loc[codes["split"] == "training", "code"].value_counts(normalize=True)
        return MismatchedPolicy(policy, {int(code): float(share) for code, share in mix.items()})
    return OneCodePolicy(policy) if name == "no_persona" else policy


# ---------------------------------------------------------------------------------------------
# Simulating one held-out shop


class EvaluationInterrupted(Exception):
    """A signal stopped a simulation; what was written is kept and the same command resumes."""

    def __init__(self, signal_name: str, where: str):
        super().__init__(f"stopped by {signal_name} during {where}")
        self.signal_name = signal_name


@dataclass
class ShopPlan:
    shop: str
    real_buyers: int
    real_converted: int
    real_mix: dict[int, float]
    population: list[SyntheticBuyer] = field(repr=False)

    @property
    def real_rate(self) -> float:
        return self.real_converted / self.real_buyers

    @property
    def sampled_mix(self) -> dict[int, float]:
        codes = pd.Series([b.code for b in self.population]).value_counts(normalize=True)
        return {int(c): float(s) for c, s in codes.items()}


async def simulate_shop(config: EvaluateConfig, work: Path, codebook: CodebookArtifact, policy_name: str, policy,
                        plan: ShopPlan, driver: str, run_group: str, pool=None, engine: str = "mock") -> dict:
    """Run (or resume, or reuse) one held-out shop's simulation on our mock store (in
    config.variant) or on django-oscar (engine="oscar"); returns its summary."""
    from harness.sim.simulate import SimulationConfig, run_simulation, served_store_options

    run_root = work / "sim" / run_group
    run_dir = run_root / plan.shop
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("completed") == len(plan.population) and summary.get("store_counted"):
            recorded = json.loads(RunDir(run_dir).manifest_path.read_text()).get("policy")
            if not made_by(recorded, policy):  # a finished run is reused only by the policy that made it
                raise RunDirError(f"{run_dir} was simulated by {recorded}, this evaluation's {policy_name} is "
                                  f"{policy_record(policy)}; move that run away to simulate it again")
            return summary
    with serve_engine(config, plan.shop, engine, run_dir.parent) as served:
        sim = SimulationConfig(
            shop=plan.shop, codebook_dir=work / "codebook", buyers=len(plan.population),
            concurrency=config.concurrency, driver=driver, max_steps=config.max_steps, seed=config.seed,
            out_dir=run_root, run_id=plan.shop, resume=RunDir(run_dir).manifest_path.is_file(),
            progress=config.progress, **served_store_options(served),
        )
        result = await run_simulation(sim, policy, pool=pool, population=plan.population, codebook=codebook)
    if result.interrupted:
        # A signal stopped the shop's buyers: no figure is written from a part of them.
        raise EvaluationInterrupted(result.interrupted, f"shop {plan.shop} ({run_group})")
    return result.summary


def serve_engine(config: EvaluateConfig, shop: str, engine: str, folder: Path):
    """The store a held-out shop's simulation runs on, its order database in `folder`: the mock
    store in config.variant ("mock"), django-oscar ("oscar"), or the mock store in a named theme."""
    from harness.sim.simulate import serve_for_run

    if engine == "oscar":
        return serve_for_run(config.catalog, shop, folder / f"{shop}.oscar.db", engine="oscar")
    return serve_for_run(config.catalog, shop, folder / f"{shop}.store.db", variant=config.variant if engine == "mock" else engine)


def shop_row(policy: str, plan: ShopPlan, summary: dict, driver: str) -> dict:
    """One line of results.json: the shop's simulated (store-counted) and real conversion."""
    counted = summary["store_counted"]
    completed = summary["completed"]
    converted = counted["buyers_with_orders"]
    simulated = converted / completed if completed else 0.0
    return {
        "policy": policy, "shop": plan.shop, "driver": driver,
        "sim_buyers": completed, "sim_converted": converted, "cr_sim": simulated,
        "cr_sim_ci": wilson_interval(converted, completed),
        "real_buyers": plan.real_buyers, "real_converted": plan.real_converted, "cr_real": plan.real_rate,
        "cr_real_ci": wilson_interval(plan.real_converted, plan.real_buyers),
        "alignment": alignment_term(simulated, plan.real_rate),
        "agent_said_converted": summary["converted"],
        "store_agreement": counted["agreement"],
        "outcomes": summary["outcomes"], "step_errors": summary["step_errors"],
    }


def reference_row(policy: str, plan: ShopPlan, rate: float) -> dict:
    """A results.json line for a rate that needs no simulation (global_rate, type_oracle)."""
    return {"policy": policy, "shop": plan.shop, "driver": None, "cr_sim": rate,
            "cr_real": plan.real_rate, "real_buyers": plan.real_buyers, "real_converted": plan.real_converted,
            "cr_real_ci": wilson_interval(plan.real_converted, plan.real_buyers),
            "alignment": alignment_term(rate, plan.real_rate)}


def plan_shops(config: EvaluateConfig, shops: list[str], codes: pd.DataFrame, real: pd.DataFrame) -> list[ShopPlan]:
    plans = []
    for shop in shops:
        members = codes[codes["shop_id"] == shop]
        mix = members["code"].value_counts(normalize=True)
        real_buyers, real_converted = int(real.loc[shop, "buyers"]), int(real.loc[shop, "converted"])
        n = config.buyers_per_shop or buyers_needed(real_converted / real_buyers, config.max_buyers_per_shop,
                                                    config.min_buyers_per_shop)
        population = population_from_mix({int(c): float(s) for c, s in mix.items()}, n, config.seed, shop)
        plans.append(ShopPlan(shop, real_buyers, real_converted, {int(c): float(s) for c, s in mix.items()}, population))
    return plans


STRATUM_EVENTS = {"viewed": "product_view", "carted": "add_to_cart", "checkout": "checkout", "purchased": "purchase"}
# Per buyer, the count of each event type that both a real log and our store's event log record.
BUYER_COUNTS = {"page_views": "page_view", "product_views": "product_view", "searches": "search",
                "cart_adds": "add_to_cart", "cart_removals": "remove_from_cart", "checkouts": "checkout",
                "purchases": "purchase"}
FUNNEL_FLAGS = ("carted", "checkout", "purchased")


def with_funnel_flags(buyers: pd.DataFrame) -> pd.DataFrame:
    return buyers.assign(carted=buyers["cart_adds"] > 0, checkout=buyers["checkouts"] > 0,
                         purchased=buyers["purchases"] > 0)


def behaviour_columns(buyers: pd.DataFrame, recorded: frozenset[str]) -> pd.DataFrame:
    """The measures of harness.eval.metrics.BEHAVIOUR_MEASURES per buyer, counting only what the
    real log records: events = the recorded types' counts added up; outcome = the furthest
    recorded stage the visit reached."""
    logged = [column for column, kind in BUYER_COUNTS.items() if kind in recorded]
    outcome = pd.Series("none", index=buyers.index, dtype=object)
    for stage, flag in (("viewed", buyers["product_views"] > 0), ("carted", buyers["carted"]),
                        ("checkout", buyers["checkout"]), ("purchased", buyers["purchased"])):
        if STRATUM_EVENTS[stage] in recorded:
            outcome = outcome.mask(flag.astype(bool), stage)
    return pd.DataFrame({"product_views": buyers["product_views"], "cart_adds": buyers["cart_adds"],
                         "events": buyers[logged].sum(axis=1) if logged else 0, "outcome": outcome})


def behaviour_measures(recorded: frozenset[str]) -> tuple[str, ...]:
    """The measures a log can score: cart adds only where it records them."""
    return tuple(m for m in BEHAVIOUR_MEASURES if m != "cart_adds" or "add_to_cart" in recorded)


def simulated_buyers(run_root: Path, shop: str) -> pd.DataFrame:
    """One row per synthetic buyer of a shop's run: code, steps, and from the store's own event log
    and orders the counts of each logged event type (purchase = orders) and the funnel flags."""
    from storefronts.orderlog import read_events, read_orders

    trajectories, db = run_root / shop / "trajectories.jsonl", run_root / f"{shop}.store.db"
    if not trajectories.is_file() or not db.is_file():
        return pd.DataFrame(columns=["code", "steps", *BUYER_COUNTS, *FUNNEL_FLAGS])
    events = pd.DataFrame(read_events(db), columns=["buyer_tag", "event_type"])
    counts = pd.crosstab(events["buyer_tag"], events["event_type"]) if len(events) else pd.DataFrame()
    count = lambda tag, kind: int(counts.at[tag, kind]) if tag in counts.index and kind in counts.columns else 0
    orders = pd.Series([order["buyer_tag"] for order in read_orders(db)], dtype=object).value_counts()
    rows = []
    for record in RunDir(trajectories.parent).latest_records():
        tag = record["buyer_tag"]
        row = {"code": record["code"], "steps": record["n_steps"],
               **{column: count(tag, kind) for column, kind in BUYER_COUNTS.items() if kind != "purchase"},
               "purchases": int(orders.get(tag, 0))}
        rows.append(row)
    return with_funnel_flags(pd.DataFrame(rows, columns=["code", "steps", *BUYER_COUNTS]))


def real_buyers(events: Path, shops: list[str]) -> pd.DataFrame:
    """One row per real buyer of the shops, by shop and buyer (the behaviour floors resample these
    rows with a fixed seed, so their order must not change between runs): the counts of each event
    type the store also logs, and the funnel flags."""
    import duckdb

    counts = ", ".join(f"count(*) FILTER (WHERE e.event_type = '{kind}') AS {column}" for column, kind in BUYER_COUNTS.items())
    with duckdb.connect() as con:
        con.register("wanted", pd.DataFrame({"shop_id": [str(s) for s in shops]}))
        frame = con.execute(
            f"""SELECT CAST(e.shop_id AS VARCHAR) AS shop_id, CAST(e.buyer_id AS VARCHAR) AS buyer_id, {counts}
                FROM read_parquet(?) e JOIN wanted w ON CAST(e.shop_id AS VARCHAR) = w.shop_id
                GROUP BY 1, 2 ORDER BY 1, 2""",
            [str(events)],
        ).df()
    return with_funnel_flags(frame)


def recorded_event_types(events: Path) -> frozenset[str]:
    import duckdb

    with duckdb.connect() as con:
        return frozenset(row[0] for row in con.execute("SELECT DISTINCT event_type FROM read_parquet(?)", [str(events)]).fetchall())


def stratum_shares(buyers: pd.DataFrame) -> dict[str, float]:
    """The share of the buyers who reached each funnel stratum."""
    reached = {"viewed": buyers["product_views"] > 0, "carted": buyers["carted"], "checkout": buyers["checkout"],
               "purchased": buyers["purchased"]}
    return {name: float(flags.astype(bool).mean()) if len(buyers) else 0.0 for name, flags in reached.items()}


def funnel_strata(simulated: pd.DataFrame, real: pd.DataFrame, recorded: frozenset[str]) -> dict[str, dict]:
    """Per funnel stratum, the share of simulated and of real buyers who reached it (real: None where
    the real log never records that event)."""
    sim_shares, real_shares = stratum_shares(simulated), stratum_shares(real)
    return {name: {"sim": sim_shares[name], "real": real_shares[name] if STRATUM_EVENTS[name] in recorded else None}
            for name in STRATUM_EVENTS}


def with_funnel_figures(row: dict, simulated: pd.DataFrame, real: pd.DataFrame, recorded: frozenset[str], seed: int) -> dict:
    """A simulated shop row, plus its funnel strata (simulated vs real share; None where the real log
    never records that event) and its behaviour distances with their noise floors."""
    strata = funnel_strata(simulated, real, recorded)
    behaviour = behaviour_figures(behaviour_columns(simulated, recorded), behaviour_columns(real, recorded),
                                  behaviour_measures(recorded), seed)
    return {**row, "strata": strata, "behaviour": behaviour}


def run_buyers(work: Path, run_group: str, shops: list[str]) -> pd.DataFrame:
    """simulated_buyers of every shop's run in one frame."""
    return pd.concat([simulated_buyers(work / "sim" / run_group, shop) for shop in shops], ignore_index=True)


def per_type_distances(simulated: pd.DataFrame, codes: pd.DataFrame, real_frame: pd.DataFrame,
                       recorded: frozenset[str], seed: int, min_buyers: int = 10) -> dict:
    """Per code, pooled over the held-out shops: the behaviour distances of the simulated buyers
    (run_buyers) of that type to the real buyers the codebook assigned to it (codes with >=
    min_buyers on both sides)."""
    assigned = codes[codes["split"] == "held_out"].astype({"shop_id": str, "buyer_id": str})[["shop_id", "buyer_id", "code"]]
    real = real_frame.merge(assigned, on=["shop_id", "buyer_id"])
    measures, entries = behaviour_measures(recorded), {}
    for code in sorted(set(simulated["code"]) & set(real["code"])):
        mine_sim, mine_real = simulated[simulated["code"] == code], real[real["code"] == code]
        if min(len(mine_sim), len(mine_real)) >= min_buyers:
            entries[str(code)] = {"sim_buyers": len(mine_sim), "real_buyers": len(mine_real),
                                  **behaviour_figures(behaviour_columns(mine_sim, recorded),
                                                      behaviour_columns(mine_real, recorded), measures, seed)}
    return {"codes": entries, "summary": behaviour_summary(list(entries.values()))}


def per_type_behaviour(frame: pd.DataFrame) -> dict:
    """Per code, pooled over the shops' runs (run_buyers): buyers, mean steps, mean product views,
    cart rate and the share who carted and left without buying (from the store's own event log),
    conversion; Kruskal–Wallis of each across codes."""
    from codebook.metrics import kruskal_across_types

    if frame.empty:
        return {"types": {}, "kruskal": {}}
    frame = frame.rename(columns={"purchased": "converted"})
    types = {
        str(code): {"buyers": len(g), "mean_steps": float(g["steps"].mean()),
                    "mean_product_views": float(g["product_views"].mean()),
                    "viewed_rate": float((g["product_views"] > 0).mean()), "cart_rate": float(g["carted"].mean()),
                    "abandoned_cart_rate": float((g["carted"].astype(bool) & ~g["converted"].astype(bool)).mean()),
                    "conversion_rate": float(g["converted"].mean())}
        for code, g in frame.groupby("code")
    }
    codes = frame["code"].to_numpy()
    kruskal = {name: kruskal_across_types(frame[column].to_numpy(dtype=float), codes)
               for name, column in (("steps", "steps"), ("product_views", "product_views"), ("cart", "carted"),
                                    ("conversion", "converted"))}
    return {"types": types, "kruskal": kruskal}


def real_type_funnels(events: Path, codes: pd.DataFrame, shops: list[str]) -> dict:
    """Per code, pooled over the given shops' REAL buyers (real_buyers): the share who viewed a
    product, carted, purchased; the real counterpart of per_type_behaviour (same shops, same stages)."""
    buyers = codes.loc[codes["shop_id"].astype(str).isin(set(shops)), ["shop_id", "buyer_id", "code"]].astype(
        {"shop_id": str, "buyer_id": str})
    if buyers.empty:
        return {}
    funnels = real_buyers(events, shops).astype({"shop_id": str, "buyer_id": str})
    frame = buyers.merge(funnels, on=["shop_id", "buyer_id"], how="left").fillna(
        {"product_views": 0, "carted": False, "purchased": False})
    return {str(code): {"buyers": len(g), "viewed_rate": float((g["product_views"] > 0).mean()),
                        "cart_rate": float(g["carted"].astype(bool).mean()),
                        "conversion_rate": float(g["purchased"].astype(bool).mean())}
            for code, g in frame.groupby("code")}


def trace_code_rates(traces_path: Path) -> dict[str, dict]:
    from agent.traces import read_traces

    frame = pd.DataFrame([{"code": t.code, "converted": t.converted} for t in read_traces(traces_path)])
    return {str(code): {"traces": len(g), "conversion_rate": float(g["converted"].mean())}
            for code, g in frame.groupby("code")}


def agent_code_check(trace_rates: dict, behaviour: dict) -> dict:
    """Per code: the agent's store-counted conversion (pooled over held-out shops) next to the
    conversion of that code's training traces; the agent should reproduce the latter. The gap
    (buyer-weighted mean |agent − traces|) comes with the gap that buyers converting exactly at the
    traces' rates would show by chance (sampling_gap); metrics.conversion_gap weighs the same differences
    by what they do to conversion; with types that convert at 0 % or 100 %, the buyers against their type."""
    from harness.eval.metrics import expected_rate_gap

    rows, agent, traced, weights, chance = {}, [], [], [], []
    for code, entry in behaviour.get("types", {}).items():
        trace = trace_rates.get(code)
        rows[code] = {"agent_buyers": entry["buyers"], "agent_conversion": entry["conversion_rate"],
                      "agent_abandoned_cart_rate": entry.get("abandoned_cart_rate"),
                      "trace_count": trace["traces"] if trace else 0,
                      "trace_conversion": trace["conversion_rate"] if trace else None}
        if trace:
            agent.append(entry["conversion_rate"]), traced.append(trace["conversion_rate"]), weights.append(entry["buyers"])
            chance.append(expected_rate_gap(trace["conversion_rate"], entry["buyers"]))
    gap = float(np.average(np.abs(np.array(agent) - np.array(traced)), weights=weights)) if agent else None
    sampling_gap = float(np.average(chance, weights=weights)) if agent else None
    return {"per_code": rows, "weighted_mean_abs_gap": gap, "sampling_gap": sampling_gap, **correlations(agent, traced),
            "against_type": buyers_against_type({"per_code": rows})}


# ---------------------------------------------------------------------------------------------
# The pipeline


async def run_protocol(config: EvaluateConfig, protocol: str, split: ShopSplit, real: pd.DataFrame, console: Console,
                       root: Path | None = None) -> dict:
    """One protocol on one split, its steps in `root`/<protocol> (the evaluation dir, or a fold's dir)."""
    work = (root or config.out_dir) / protocol
    work.mkdir(parents=True, exist_ok=True)
    phases = PhaseTimes.load(work)
    with phases.phase("features"):
        features = build_protocol_features(config, protocol, console)
    with phases.phase("codebook"):
        train_protocol_codebook(config, features, split, work, console)
    codes = pd.read_parquet(work / "codes.parquet")
    plans = plan_shops(config, split.held_out, codes, real)
    needs_agent = any(p in LLM_POLICIES for p in config.policies)
    with phases.phase("traces"):
        traces_path = await make_protocol_traces(config, work, console) if needs_agent else None
    codebook = CodebookArtifact.load(work / "codebook")
    calibration = await checked_persona_agent(config, work, protocol, split, codes, real, traces_path, codebook,
                                              phases, console) if needs_agent else None
    if "no_persona" in config.policies:
        with phases.phase("agent no_persona"):
            train_protocol_agent(config, traces_path, work / "agent_no_persona", True, console)

    rows: list[dict] = []
    real_frame, recorded = real_buyers(config.events, [p.shop for p in plans]), recorded_event_types(config.events)
    persona_frames = []  # the persona's simulated buyers per shop, read once for the per-type figures
    for policy_name in config.policies:
        with phases.phase(f"simulate {policy_name}", buyers=sum(len(p.population) for p in plans)):
            policy = row_policy(policy_name, work, config, codebook)
            for plan in plans:
                console.print(f"[bold]{protocol}[/] · {policy_name} · shop {plan.shop}: {len(plan.population)} buyers "
                              f"(real rate {plan.real_rate:.1%} of {plan.real_buyers})")
                summary = await simulate_shop(config, work, codebook, policy_name, policy, plan, config.driver, policy_name)
                row = shop_row(policy_name, plan, summary, config.driver)
                simulated = simulated_buyers(work / "sim" / policy_name, plan.shop)
                if policy_name == "persona":
                    persona_frames.append(simulated)
                rows.append(with_funnel_figures(row, simulated, real_frame[real_frame["shop_id"] == plan.shop],
                                                recorded, config.seed))
    training_codes = codes[codes["split"] == "training"]
    global_rate = training_rate(split, real)
    if "global_rate" in config.baselines:
        rows += [reference_row("global_rate", plan, global_rate) for plan in plans]
    code_rates = training_codes.groupby("code")["converted"].mean().to_dict()
    rows += [reference_row("type_oracle", plan, type_oracle_rate(plan.real_mix, code_rates, global_rate)) for plan in plans]

    with phases.phase("browser check"):
        browser = await browser_check(config, work, codebook, plans) if config.browser_check and config.driver != "browser" and plans else None
    with phases.phase("transfer"):
        transfer = {store: await transfer_check(config, work, codebook, plans, rows, store, console)
                    for store in config.transfer_stores} if plans else {}
    persona_buyers = pd.concat(persona_frames, ignore_index=True) if persona_frames else pd.DataFrame()
    behaviour = per_type_behaviour(persona_buyers)
    size = config.codebook_size
    mixes = {p.shop: {"real": p.real_mix, "sampled": p.sampled_mix, "jsd": mix_jsd(p.sampled_mix, p.real_mix, size)} for p in plans}
    held_out = codes[codes["split"] == "held_out"]
    result = {
        "protocol": protocol,
        # Held-out shops are not held-out people: the share of their buyers who also shop in training shops.
        "people_overlap": float(held_out["buyer_id"].isin(set(training_codes["buyer_id"])).mean()) if len(held_out) else None,
        "held_out_shops": [p.shop for p in plans],
        "buyers_per_shop": {p.shop: len(p.population) for p in plans},
        "training_buyers": len(training_codes),
        "training_conversion_rate": global_rate,
        **policy_figures(rows, config.seed),
        "type_mix": {"mean_jsd": float(np.mean([m["jsd"] for m in mixes.values()])) if mixes else None, "shops": mixes},
        "per_type": behaviour,
        "type_distances": per_type_distances(persona_buyers, codes, real_frame, recorded, config.seed) if plans else None,
        "real_per_type": real_type_funnels(config.events, codes, [p.shop for p in plans]),
        "agent_check": agent_code_check(trace_code_rates(traces_path), behaviour) if traces_path else None,
        "browser_check": browser,
        "transfer": transfer,
        "calibration": calibration,
        "temperature": agent_temperature(work, config) if needs_agent else None,
        "guidance": config.guidance if needs_agent else None,
        "shops": rows,
        "phases": phases.summary(),
    }
    (work / RESULTS_FILE).write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    return result


def policy_figures(rows: list[dict], seed: int) -> dict:
    """Per policy over the shops of `rows`: the conversion figures, the funnel strata and the views
    distance; the sampling ceiling of the persona rows; the persona / type-oracle ratio."""
    from harness.eval.metrics import sampling_ceiling, strata_alignment

    names = list(dict.fromkeys(r["policy"] for r in rows))
    mine = {name: [r for r in rows if r["policy"] == name] for name in names}
    policies = {name: summarize_policy(mine[name], seed) for name in names}
    persona = mine.get("persona") or []
    oracle = policies.get("type_oracle", {}).get("alignment")
    return {
        "policies": policies,
        "strata": {name: strata_alignment(mine[name]) for name in names if any(r.get("strata") for r in mine[name])},
        "distances": {name: behaviour_summary([r["behaviour"] for r in mine[name] if r.get("behaviour")])
                      for name in names if any(r.get("behaviour") for r in mine[name])},
        "sampling_ceiling": sampling_ceiling([r["cr_real"] for r in persona], [r["sim_buyers"] for r in persona]),
        "persona_vs_oracle": (policies["persona"]["alignment"] / oracle) if persona and oracle else None,
    }


async def checked_persona_agent(config: EvaluateConfig, work: Path, protocol: str, split: ShopSplit, codes: pd.DataFrame,
                                real: pd.DataFrame, traces_path: Path, codebook: CodebookArtifact, phases: PhaseTimes,
                                console: Console) -> dict | None:
    """Train the persona agent and calibrate its temperature. An agent that does not follow its
    types on the calibration buyers at its best temperature (rejection_reason) is set aside
    (agent_rejected/, with its calibration runs) and trained to twice the SFT steps (further, or
    anew: config.retrain_from), up to config.max_retrains times; the last one trained is kept, and
    calibration.json lists the others."""
    attempt = agents_set_aside(work)
    with phases.phase("agent"):
        if attempt and config.retrain_from == "rejected":
            # The rejected agent had 2**(attempt-1) times the steps: as many again make 2**attempt.
            train_protocol_agent(retrain_config(config, attempt - 1), traces_path, work / "agent", False, console,
                                 continue_from=work / set_aside_paths(attempt)["agent"], retrain=attempt)
        else:
            train_protocol_agent(retrain_config(config, attempt), traces_path, work / "agent", False, console)
    with phases.phase("calibration"):
        calibration = await calibrate_temperature(config, work, split, codes, real, traces_path, codebook, console)
    if calibration is None:
        return calibration
    reason = rejection_reason(calibration, config, protocol)
    if reason is not None and attempt >= config.max_retrains:
        console.print(f"[bold red]agent kept[/] after {attempt} retrainings although {reason}")
        calibration["kept_although"] = reason  # the report's verdicts say it (harness.eval.verdicts)
    if reason is None or attempt >= config.max_retrains:
        return with_rejected_agents(work, calibration, config, protocol, attempt)
    again = "it further" if config.retrain_from == "rejected" else "a new one from the base"
    console.print(f"[bold red]agent rejected[/]: {reason}; training {again}, to twice the SFT steps in all")
    for name, aside in set_aside_paths(attempt + 1).items():
        (work / name).rename(work / aside)
    return await checked_persona_agent(config, work, protocol, split, codes, real, traces_path, codebook, phases,
                                       console)


def rejection_reason(calibration: dict, config: EvaluateConfig, protocol: str) -> str | None:
    """Why the calibrated agent does not follow its types, or None when it does: its mean gap per
    type (type_gap), its worst type (worst_type) or, under the paper protocol, its conversion gap
    beyond the config's limits."""
    check = chosen_check(calibration)
    gap, worst, misplaced = type_gap(check), worst_type(check), conversion_gap(check)
    if config.max_type_gap is not None and gap > config.max_type_gap:
        return (f"its conversion per type is {gap:.3f} from its traces' on the calibration buyers "
                f"(limit {config.max_type_gap})")
    if config.max_worst_type_gap is not None and worst and worst["gap"] > config.max_worst_type_gap:
        return (f"type {worst['code']} converts {worst['agent_converted']} of {worst['agent_buyers']} calibration buyers "
                f"against its traces' {worst['trace_conversion']:.0%} (interval {worst['gap']:.3f} away; "
                f"limit {config.max_worst_type_gap})")
    if protocol == "paper" and config.max_conversion_gap is not None and misplaced is not None \
            and misplaced > config.max_conversion_gap:
        return (f"it loses or misplaces {misplaced:.0%} of its traces' conversions on the calibration buyers "
                f"(conversion gap {misplaced:.3f}, limit {config.max_conversion_gap})")
    return None


def with_rejected_agents(work: Path, calibration: dict, config: EvaluateConfig, protocol: str, rejected: int) -> dict:
    """The kept agent's calibration.json, plus what each of the `rejected` agents before it measured."""
    if len(calibration.get("rejected", [])) != rejected:
        calibration["rejected"] = [rejected_agent_record(work, config, protocol, attempt) for attempt in range(1, rejected + 1)]
        (work / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=1, default=_json_default) + "\n")
    return calibration


def rejected_agent_record(work: Path, config: EvaluateConfig, protocol: str, attempt: int) -> dict:
    """Gaps, reason, SFT budget and calibration figures of the `attempt`-th agent set aside."""
    rejected = json.loads((work / set_aside_paths(attempt)[CALIBRATION_FILE]).read_text())
    trained = retrain_config(config, attempt - 1)
    return {"type_gap": chosen_type_gap(rejected), "worst_type": worst_type(chosen_check(rejected)),
            "reason": rejection_reason(rejected, config, protocol), "sft_max_steps": trained.sft_max_steps,
            "sft_epochs": [trained.sft_stage1_epochs, trained.sft_stage2_epochs], "chosen": rejected["chosen"],
            "tried": {t: {k: v for k, v in r.items() if k != "rows"} for t, r in rejected["tried"].items()}}


def set_aside_paths(attempt: int) -> dict[str, str]:
    """Where the `attempt`-th rejected agent's dir, its runs (sim/: the calibration's, and any
    held-out run it made when a resume applies a stricter check) and calibration.json go
    (agent_rejected/, sim_rejected/, calibration_rejected.json, then *_rejected_2, ...)."""
    suffix = "" if attempt == 1 else f"_{attempt}"
    return {"agent": f"agent_rejected{suffix}", "sim": f"sim_rejected{suffix}",
            CALIBRATION_FILE: f"calibration_rejected{suffix}.json"}


def agents_set_aside(work: Path) -> int:
    attempt = 0
    while (work / set_aside_paths(attempt + 1)["agent"]).is_dir():
        attempt += 1
    return attempt


def retrain_config(config: EvaluateConfig, attempt: int) -> EvaluateConfig:
    """The SFT of the agent trained after `attempt` rejections: 2**attempt times the step cap, or
    the epochs where steps are not capped."""
    factor = 2 ** attempt
    if config.sft_max_steps:
        return replace(config, sft_max_steps=factor * config.sft_max_steps)
    return replace(config, sft_stage1_epochs=factor * config.sft_stage1_epochs,
                   sft_stage2_epochs=factor * config.sft_stage2_epochs)


def calibration_shop_ids(split: ShopSplit, real: pd.DataFrame, count: int, seed: int,
                         seen: frozenset[str] = frozenset(), min_purchases: int = 1) -> list[str]:
    """`count` TRAINING shops with at least one real purchase (alignment is undefined without) and
    none of whose buyers were replayed into the traces (`seen`): the agent has learned those shops'
    pages, so it is kinder to them than to a held-out shop and would pick too low a temperature.
    Only when every such shop was traced (a small log: the demo's ten training shops) are traced
    shops used, all of them traced; calibration.json says so.
    Eligible shops (>= min_buyers) come first, then shops with >= `min_purchases` purchases (a
    rate measured on fewer is mostly noise); within a group, sha256(f"{seed}:calibration:{shop}") order."""
    eligible = set(split.eligible)
    with_purchases = [shop for shop in split.training if shop in real.index and real.loc[shop, "converted"] > 0]
    candidates = [shop for shop in with_purchases if shop not in seen] or with_purchases
    digest = lambda shop: hashlib.sha256(f"{seed}:calibration:{shop}".encode()).hexdigest()
    order = lambda shop: (shop not in eligible, real.loc[shop, "converted"] < min_purchases, digest(shop))
    return sorted(candidates, key=order)[:count]


def traced_shops(traces_path: Path) -> frozenset[str]:
    """The shops whose buyers the agent was trained on."""
    from agent.traces import read_traces

    return frozenset(trace.shop_id for trace in read_traces(traces_path))


async def calibrate_temperature(config: EvaluateConfig, work: Path, split: ShopSplit, codes: pd.DataFrame,
                                real: pd.DataFrame, traces_path: Path, codebook: CodebookArtifact,
                                console: Console) -> dict | None:
    """Simulate calibration shops at each candidate temperature (and, under guidance, plausibility
    bar) with the persona agent; keep the one under which its conversion per type is closest to its
    traces' and its share of buyers who view a product closest to the real buyers' (calibration_gap),
    and write it into the agent dir, where every command that runs the agent reads it."""
    if not config.calibrate_temperatures:
        return None
    path = work / CALIBRATION_FILE
    if path.is_file():
        record = json.loads(path.read_text())
        recorded_guidance = record.get("guidance", 1.0)
        if recorded_guidance != config.guidance:
            raise ValueError(f"{path} was calibrated under persona guidance {recorded_guidance:g}, this "
                             f"evaluation samples under {config.guidance:g}: use another --out, or finish it with "
                             f"--guidance {recorded_guidance:g}")
        if "type_gap" in record:  # a record without the per-type check is made again (its runs are reused)
            record.setdefault("worst_type", worst_type(chosen_check(record)))
            record_calibrated_temperature(work / "agent", record)
            return record
    seen = traced_shops(traces_path)
    shops = calibration_shop_ids(split, real, config.calibration_shops, config.seed, seen,
                                 config.calibration_min_purchases)
    if not shops:
        console.print(f"calibration skipped: no training shop has a purchase; sampling at T={agent_temperature(work, config):g}")
        return None
    traced = sorted(set(shops) & seen)
    if traced:
        console.print(f"calibration on shops the agent was trained on ({len(traced)}): every training shop with a "
                      "purchase was replayed into the traces; the temperature may come out too low")
    plans = plan_shops(replace(config, max_buyers_per_shop=config.calibration_buyers), shops, codes, real)
    agent = row_policy("persona", work, config, codebook)  # loaded once; only how it samples changes
    trace_rates = trace_code_rates(traces_path)
    real_frame, recorded = real_buyers(config.events, shops), recorded_event_types(config.events)
    bars = config.calibrate_plausibilities if config.guidance != 1.0 else (0.0,)
    tried = {}
    for temperature, bar in itertools.product(config.calibrate_temperatures, bars):
        key = candidate_key(temperature, bar)
        policy = replace(agent, generation=replace(agent.generation, temperature=temperature, guidance_plausibility=bar))
        rows, run_group = [], f"calibration/T{key.replace(' ', '_')}"
        for plan in plans:
            console.print(f"[bold]calibration[/] · T={key} · training shop {plan.shop}: {len(plan.population)} buyers")
            summary = await simulate_shop(config, work, codebook, "persona", policy, plan, config.driver, run_group)
            rows.append(shop_row("persona", plan, summary, config.driver))
        simulated = run_buyers(work, run_group, shops)
        tried[key] = {"temperature": temperature, "guidance_plausibility": bar, **summarize_policy(rows),
                      "type_check": agent_code_check(trace_rates, per_type_behaviour(simulated)),
                      "strata": funnel_strata(simulated, real_frame, recorded), "rows": rows}
    best = min(tried.values(), key=calibration_gap)
    chosen, chosen_bar = best["temperature"], best["guidance_plausibility"]
    record = {"shops": shops, "chosen": chosen, "chosen_plausibility": chosen_bar, "guidance": config.guidance,
              "skipped_traced_shops": 0 if traced else len(seen), "traced_shops": traced, "tried": tried}
    record["type_gap"], record["worst_type"] = chosen_type_gap(record), worst_type(chosen_check(record))
    path.write_text(json.dumps(record, indent=1, default=_json_default) + "\n")
    record_calibrated_temperature(work / "agent", record)
    console.print(calibration_line(record))
    return record


def candidate_key(temperature: float, plausibility: float) -> str:
    """How calibration.json names a candidate: "0.5", or "0.5 p0.1" under a plausibility bar."""
    return f"{temperature:g}" + (f" p{plausibility:g}" if plausibility else "")


def calibration_gap(result: dict) -> float:
    """What the calibration minimises over its candidates: the type gap plus how far the share of
    buyers who view a product lies from the real buyers' (where the log records product views).
    A persona token can send a type away before its first product view, which conversion per type
    does not see: those buyers were not going to buy."""
    viewed = result["strata"]["viewed"]
    return type_gap(result["type_check"]) + (abs(viewed["sim"] - viewed["real"]) if viewed["real"] is not None else 0.0)


def calibration_line(record: dict) -> str:
    """What each candidate did on the training shops, and the one chosen."""
    tried = record["tried"].items()
    line = "calibration on training shops, |agent − traces| per type (shop alignment): " + ", ".join(
        f"T={t} {type_gap(r['type_check']):.3f} ({r['alignment']:.3f})" for t, r in tried)
    real_viewed = next(iter(record["tried"].values()))["strata"]["viewed"]["real"]
    if real_viewed is not None:
        line += f"; viewed a product: real {real_viewed:.2f}, " + ", ".join(
            f"T={t} {r['strata']['viewed']['sim']:.2f}" for t, r in tried)
    guided = f" under persona guidance {record['guidance']:g}" if record["guidance"] != 1.0 else ""
    bar = record.get("chosen_plausibility") or 0.0
    return line + f"; sampling at T={record['chosen']:g}{guided}" + (f", plausibility bar {bar:g}" if bar else "")


def chosen_candidate(calibration: dict) -> dict:
    """What the calibration measured for the candidate it chose."""
    return calibration["tried"][candidate_key(calibration["chosen"], calibration.get("chosen_plausibility") or 0.0)]


def chosen_check(calibration: dict) -> dict:
    """agent_code_check at the calibration's chosen candidate."""
    return chosen_candidate(calibration)["type_check"]


def chosen_type_gap(calibration: dict) -> float:
    return type_gap(chosen_check(calibration))


def chosen_conversion_gap(calibration: dict) -> float | None:
    return conversion_gap(chosen_check(calibration)) if calibration.get("tried") else None


def type_gap(check: dict) -> float:
    """agent_code_check's buyer-weighted mean |agent − traces| conversion per type beyond what
    sampling alone would leave (types that convert at 50 % stray by chance, at 0 % or 100 % never);
    no traced type: 1."""
    gap = check.get("weighted_mean_abs_gap")
    return 1.0 if gap is None else gap - check["sampling_gap"]


def worst_type(check: dict) -> dict | None:
    """The traced type the agent follows least: how far its traces' conversion lies outside the
    Wilson 95 % interval of the agent's conversion for that type (0 inside it). Sampling noise is
    in the interval: 2 of 14 buyers against traces that all bought is 0.60 off, 0 of 1 only 0.21."""
    worst = None
    for code, row in check["per_code"].items():
        if row["trace_conversion"] is None or not row["agent_buyers"]:
            continue
        converted = round(row["agent_conversion"] * row["agent_buyers"])
        low, high = wilson_interval(converted, row["agent_buyers"])
        gap = max(low - row["trace_conversion"], row["trace_conversion"] - high, 0.0)
        if worst is None or gap > worst["gap"]:
            worst = {"code": code, "gap": gap, "agent_converted": converted, "agent_buyers": row["agent_buyers"],
                     "trace_conversion": row["trace_conversion"]}
    return worst


def record_calibrated_temperature(agent_dir: Path, calibration: dict) -> None:
    """Write the calibration's temperature, and the guidance it was tried under, into the agent
    dir's persona.json (sampling): every later command samples the agent as it was calibrated."""
    from agent.persona import PersonaMap

    chosen_by = f"calibration on training shops {', '.join(map(str, calibration['shops']))} (closest conversion per type and product-view share)"
    guidance = calibration.get("guidance", 1.0)  # a record that names none was calibrated unguided
    bar = calibration.get("chosen_plausibility") or 0.0
    PersonaMap.load(agent_dir).with_sampling(calibration["chosen"], chosen_by, guidance, bar).save(agent_dir)


async def browser_check(config: EvaluateConfig, work: Path, codebook: CodebookArtifact, plans: list[ShopPlan]) -> dict:
    """The persona agent on one held-out shop (the largest) with the browser driver as well:
    the two store-counted rates should agree within their Wilson intervals."""
    plan = max(plans, key=lambda p: p.real_buyers)
    plan = replace(plan, population=plan.population[: config.browser_buyers])
    policy = row_policy("persona", work, config, codebook)
    browser = await simulate_shop(config, work, codebook, "persona", policy, plan, "browser", "persona_browser")
    http = await simulate_shop(config, work, codebook, "persona", policy, plan, config.driver, "persona_http_check")
    rows = {driver: shop_row("persona", plan, summary, driver) for driver, summary in (("browser", browser), (config.driver, http))}
    return {"shop": plan.shop, "buyers": len(plan.population),
            "browser": {k: rows["browser"][k] for k in ("cr_sim", "cr_sim_ci", "sim_converted", "sim_buyers")},
            "http": {k: rows[config.driver][k] for k in ("cr_sim", "cr_sim_ci", "sim_converted", "sim_buyers")},
            "agree": intervals_overlap(rows["browser"]["cr_sim_ci"], rows[config.driver]["cr_sim_ci"])}


async def transfer_check(config: EvaluateConfig, work: Path, codebook: CodebookArtifact, plans: list[ShopPlan],
                         rows: list[dict], engine: str, console: Console) -> dict:
    """The persona agent's populations of the largest held-out shops, same buyers and seeds, on
    another store as well (Oscar, or a mock-store theme): store-counted conversion on each, per
    shop and per type."""
    group = f"persona_{engine}"
    chosen = sorted(plans, key=lambda p: (-p.real_buyers, p.shop))[: config.transfer_shops]
    policy = row_policy("persona", work, config, codebook)
    on_mock = {row["shop"]: row for row in rows if row["policy"] == "persona"}
    shops, per_type = [], {}
    for plan in chosen:
        console.print(f"[bold]transfer[/] · persona · shop {plan.shop} on {engine}: {len(plan.population)} buyers")
        summary = await simulate_shop(config, work, codebook, "persona", policy, plan, config.driver, group, engine=engine)
        there = shop_row("persona", plan, summary, config.driver)
        shops.append({"shop": plan.shop, "buyers": there["sim_buyers"], "cr_real": plan.real_rate,
                      "cr_real_ci": there["cr_real_ci"], "cr_mock": on_mock[plan.shop]["cr_sim"],
                      "cr_mock_ci": on_mock[plan.shop]["cr_sim_ci"], "cr_transfer": there["cr_sim"],
                      "cr_transfer_ci": there["cr_sim_ci"], "store_agreement": there["store_agreement"],
                      "outcomes": there["outcomes"]})
        mock, transferred = conversions_by_code(work / "sim" / "persona", plan.shop), conversions_by_code(work / "sim" / group, plan.shop)
        for code, (buyers, converted) in mock.items():
            entry = per_type.setdefault(code, {"buyers": 0, "mock_converted": 0, "transfer_converted": 0})
            entry["buyers"] += buyers
            entry["mock_converted"] += converted
            entry["transfer_converted"] += transferred.get(code, (0, 0))[1]
    return {"shops": shops, "per_type": per_type}


def conversions_by_code(run_root: Path, shop: str) -> dict[str, tuple[int, int]]:
    """code -> (buyers, buyers with a store-counted order) of one shop's run, on any engine."""
    from storefronts.orderlog import orders_by_buyer

    trajectories = run_root / shop / "trajectories.jsonl"
    db = next((path for path in (run_root / f"{shop}.store.db", run_root / f"{shop}.oscar.db") if path.is_file()), None)
    if not trajectories.is_file() or db is None:
        return {}
    ordered = orders_by_buyer(db, shop)
    counts: dict[str, list[int]] = {}
    for record in RunDir(trajectories.parent).latest_records():  # one record per buyer, after a resume too
        entry = counts.setdefault(str(record["code"]), [0, 0])
        entry[0] += 1
        entry[1] += bool(ordered.get(record["buyer_index"]))
    return {code: (n, k) for code, (n, k) in counts.items()}


def evaluate(config: EvaluateConfig, console: Console | None = None) -> dict:
    """Run every step (skipping those already done) and write summary.json and report.html."""
    from harness.eval.folds import pool_folds, seed_spread

    console = console or Console(quiet=not config.progress)
    started = time.perf_counter()
    config.out_dir.mkdir(parents=True, exist_ok=True)
    splits = fold_splits(config)
    real = real_conversion(config.events)
    prepare_agent_base(config, console)
    pooled, seconds = {}, {}
    for seed in range(config.seed, config.seed + config.seeds):
        seed_started = time.perf_counter()
        by_protocol = {protocol: [] for protocol in config.protocols}
        for fold, split in enumerate(splits):
            if config.folds > 1:
                console.rule(f"seed {seed} · fold {fold + 1}/{config.folds}: {len(split.held_out)} held-out shops")
            for protocol in config.protocols:
                result = asyncio.run(run_protocol(fold_config(config, seed, fold), protocol, split, real, console,
                                                  fold_root(config, seed, fold)))
                by_protocol[protocol].append(result)
        pooled[seed] = {protocol: results[0] if len(results) == 1 else pool_folds(results, seed, policy_figures)
                        for protocol, results in by_protocol.items()}
        seconds[seed] = time.perf_counter() - seed_started
    if config.seeds > 1:  # each seed's own summary and report in seed<s>/, beside its folds
        for seed, protocols in pooled.items():
            write_summary(config.out_dir / f"seed{seed}", replace(config, seed=seed, seeds=1), splits, protocols,
                          seconds[seed])
    return write_summary(config.out_dir, config, splits, pooled[config.seed], time.perf_counter() - started,
                         seed_spread(pooled) if config.seeds > 1 else None)


def write_summary(directory: Path, config: EvaluateConfig, splits: list[ShopSplit], protocols: dict,
                  seconds: float, seeds: dict | None = None) -> dict:
    """summary.json and report.html of one evaluation (or of one of its seeds)."""
    from harness.eval.report import write_report

    summary = {
        "config": {k: _json_default(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "split": split_summary(splits),
        "protocols": protocols,
        "headline": headline(protocols),
        "seeds": seeds,
        "seconds": round(seconds, 1),
    }
    (directory / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=_json_default) + "\n")
    write_report(directory)
    return summary


def prepare_agent_base(config: EvaluateConfig, console: Console) -> None:
    """Build the navigation base (once per machine) before any fold starts: its build replays
    scripted buyers in event loops of its own, which cannot start inside a fold's."""
    if config.agent_base in BASES and any(policy in LLM_POLICIES for policy in config.policies):
        ensure_nav_base(BASES[config.agent_base], console=console, progress=config.progress)


def fold_splits(config: EvaluateConfig) -> list[ShopSplit]:
    """The held-out split, or one split per fold; saved beside the evaluation and reloaded on a rerun."""
    counts = buyers_per_shop(config.events)
    splits = []
    for fold in range(config.folds):
        path = config.out_dir / (SPLIT_FILE if config.folds == 1 else f"shop_split_fold{fold}.json")
        split = make_or_load_split(path, counts, SplitConfig(config.held_out_fraction, config.min_buyers,
                                                             config.max_held_out_shops if config.folds == 1 else None,
                                                             config.seed, config.folds, fold))
        if not split.held_out:
            raise ValueError(f"{config.events}: {len(split.eligible)} shops have at least min_buyers={config.min_buyers} "
                             f"buyers; {config.folds} folds need at least {config.folds}")
        splits.append(split)
    return splits  # seeded by the first seed only: every seed scores the same folds


def fold_config(config: EvaluateConfig, seed: int, fold: int) -> EvaluateConfig:
    """One (seed, fold)'s settings: the browser check runs in the first fold of the first seed only
    (it checks the driver, not the agent, and the pooled report shows that one)."""
    return replace(config, seed=seed, browser_check=config.browser_check and fold == 0 and seed == config.seed)


def fold_root(config: EvaluateConfig, seed: int, fold: int) -> Path:
    """Where one (seed, fold) keeps its steps: the evaluation dir itself for one split and one seed."""
    root = config.out_dir / (f"seed{seed}" if config.seeds > 1 else "")
    return root / f"fold{fold}" if config.folds > 1 else root


def split_summary(splits: list[ShopSplit]) -> dict:
    if len(splits) == 1:
        split = splits[0]
        return {"training": len(split.training), "held_out": split.held_out, "eligible": len(split.eligible)}
    training = sorted(len(split.training) for split in splits)
    return {"folds": len(splits), "training": f"{training[0]:,}–{training[-1]:,} per fold",
            "held_out": [shop for split in splits for shop in split.held_out], "eligible": len(splits[0].eligible),
            "held_out_per_fold": [len(split.held_out) for split in splits]}


def headline(protocols: dict) -> dict:
    return {p: {name: figures.get("alignment") for name, figures in r["policies"].items()} for p, r in protocols.items()}


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
