"""The navigation base: a tiny model that already knows how to shop the mock store, built once and cached.

A tiny model trained from scratch on one dataset's hundred replayed buyers learns neither how to
get through a store (reach a product, add it, go through every checkout step) nor what its type
decides. The base learns the first from a synthetic world of its own, so each dataset's SFT only
has to teach what its persona tokens decide (PAPER.md's two stages: token warm-up on a competent
backbone, then a short full fine-tune).

The recipe (`NavBaseConfig`, every option named):

    1. world     a synthetic clickstream log (codebook.synthetic) with its own seed: shops, catalogs
                 and buyers that no dataset has
    2. traces    its buyers replayed by scripted buyers (harness.eval.replay, http driver), each
                 share of buyers on another store layout (`variants`), so no one page's ids are learned;
                 with them `goal_buyers_per_shop` buyers of `goal_type` per shop, each told to buy one
                 product (harness.eval.tasks: "Goal: buy <title>" in the prompt), so the base also
                 follows a task
    3. model     a byte-level BPE tokenizer trained on those pages and the action grammar, and a
                 randomly initialised tiny Qwen3 (agent.models.load_tiny)
    4. SFT       one stage of full fine-tuning with each buyer's planted type as its persona token,
                 so the backbone learns to read a type token at the start of the prompt; the type
                 rows then leave the vocabulary for persona_anchors.safetensors: the base keeps
                 step 3's vocabulary, every dataset adds its own persona tokens, and each starts at
                 the type row that explains its traces best (agent.sft.start_from_anchors)

`ensure_nav_base(config)` returns the cached directory (a plain model directory: agent.models.load_local
reads it), building it first when missing. The cache key is a hash of the recipe, so a changed
recipe is a new base. Its `recipe.json` records the config, the trace counts, the final loss and
the build time.
"""

from __future__ import annotations

import asyncio
import copy
import fcntl
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
from rich.console import Console

from storefronts import cache_dir

RECIPE_VERSION = 5  # bump when the recipe changes in a way its config does not show
RECIPE_FILE = "recipe.json"


def cache_root() -> Path:
    """~/.cache/simpersona/models, or $SIMPERSONA_CACHE/models."""
    return cache_dir("models")


@dataclass(frozen=True)
class NavBaseConfig:
    # 1. world
    world_seed: int = 1013  # not the demo log's seed (codebook.synthetic's default): other shops and buyers
    shops: int = 8
    buyers_per_shop: int = 100  # every buyer is replayed
    products_per_shop: int = 120
    # 2. traces
    # The "worse" layouts stay out: they are what the demo's A/B compares against, so the agent meets
    # that layout's extra steps and moved buttons as a buyer would, for the first time.
    variants: tuple[str, ...] = ("saved_details", "default", "list")
    trace_max_steps: int = 24
    goal_buyers_per_shop: int = 0
    goal_type: str = "decisive_buyer"  # the planted type whose token goal buyers carry: finds a product and pays
    # 3. model
    hidden_size: int = 128
    layers: int = 4
    vocab_size: int = 1024
    # 4. SFT
    steps: int = 1200
    lr: float = 3e-3
    batch_size: int = 16
    max_length: int = 512  # tokens; covers the longest mock-store pages (prompts are cut to fit at inference alike)
    seed: int = 0

    def key(self) -> str:
        fields = asdict(self)
        if not self.goal_buyers_per_shop:  # a recipe without goal sessions keeps the key it had before they existed
            del fields["goal_buyers_per_shop"], fields["goal_type"]
        recipe = json.dumps({"version": RECIPE_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def themed_config(config: NavBaseConfig = NavBaseConfig()) -> NavBaseConfig:
    """The recipe with its buyers also dealt over the training themes (storefronts/variants/themes;
    the held-out themes stay out), so the base meets the ways real shops word and arrange pages, and
    with goal sessions, so it also follows a task (`simpersona tasks`)."""
    from storefronts.variants import training_themes

    return replace(config, variants=(*config.variants, *training_themes()), goal_buyers_per_shop=40)


BASES = {"nav": NavBaseConfig(), "nav-themes": themed_config()}  # what `train-agent --base` may name
# The stage-2 learning rate of a dataset's SFT on each base (evaluate and train-agent); other bases: agent.sft's default.
DEFAULT_STAGE2_LR = {"tiny": 1e-2, "nav": 1e-3, "nav-themes": 1e-3}


def nav_base_dir(config: NavBaseConfig = NavBaseConfig()) -> Path:
    return cache_root() / f"nav-base-{config.key()}"


def ensure_nav_base(config: NavBaseConfig = NavBaseConfig(), console: Console | None = None, progress: bool = True) -> Path:
    """The cached base directory, built first when missing (once per recipe and machine)."""
    out = nav_base_dir(config)
    if (out / RECIPE_FILE).is_file():
        return out
    console = console or Console()
    out.parent.mkdir(parents=True, exist_ok=True)
    # One builder per base: a second process (another evaluate, a test run) waits for the first
    # instead of wiping its scratch directory, then finds the base built.
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        if not _try_lock(lock):
            console.print(f"[bold]navigation base[/]: another process is building {out}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / RECIPE_FILE).is_file():
            return out
        console.print(f"[bold]navigation base[/]: not cached yet, building it once into {out} "
                      f"({config.shops * config.buyers_per_shop} scripted buyers, {config.steps} SFT steps; about 20 min on 2 cores)")
        return build_nav_base(config, out, console, progress)


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def build_nav_base(config: NavBaseConfig, out: Path, console: Console, progress: bool = True) -> Path:
    """Steps 1 to 4 of the recipe, in a scratch directory next to `out`, moved into place at the end
    (an interrupted build leaves no half base behind)."""
    started = time.perf_counter()
    scratch = out.with_name(out.name + ".building")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    events, catalog, codes, type_names = make_world(config, scratch / "world")
    traces = replay_world(config, events, catalog, codes, type_names, scratch / "traces", progress)
    console.print(f"navigation base: {len(traces):,} traces, {sum(len(t.steps) for t in traces):,} steps "
                  f"on {len(config.variants)} layouts; training {config.steps} steps")
    final_loss = train_base(config, traces, type_names, scratch / "model")
    record = {"config": asdict(config), "key": config.key(), "version": RECIPE_VERSION, "traces": len(traces),
              "steps_in_traces": sum(len(t.steps) for t in traces), "final_loss": final_loss,
              "seconds": round(time.perf_counter() - started, 1)}
    (scratch / "model" / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    (scratch / "model").rename(out)
    shutil.rmtree(scratch, ignore_errors=True)
    console.print(f"navigation base: built in {record['seconds'] / 60:.1f} min (final loss {final_loss:.3f}) → {out}")
    return out


def make_world(config: NavBaseConfig, work: Path) -> tuple[Path, Path, pd.DataFrame, list[str]]:
    """Step 1: the synthetic log, ingested; codes are the planted types, numbered by name."""
    from codebook.ingest import IngestConfig, ingest
    from codebook.synthetic import SyntheticConfig, generate_synthetic, read_truth

    log = generate_synthetic(work / "log", SyntheticConfig(n_shops=config.shops, buyers_per_shop=config.buyers_per_shop,
                                                           products_per_shop=config.products_per_shop, seed=config.world_seed))
    ingest([log.events_csv], work, IngestConfig(show_progress=False))
    truth, _ = read_truth(work / "log")
    names = sorted(truth["planted_type"].unique())
    codes = truth.assign(code=truth["planted_type"].map({name: index for index, name in enumerate(names)}))
    return work / "events.parquet", work / "catalog.parquet", codes[["shop_id", "buyer_id", "code"]], names


def replay_world(config: NavBaseConfig, events: Path, catalog: Path, codes: pd.DataFrame, type_names: list[str],
                 work: Path, progress: bool):
    """Step 2: every buyer (and goal buyer) replayed once, the buyers dealt round-robin over the layouts."""
    from agent.traces import read_traces
    from harness.eval.replay import ReplayConfig, replay
    from harness.eval.tasks import attach_goals, goal_set

    events = pd.read_parquet(events)
    goals = goal_set(catalog, sorted(codes["shop_id"].unique()), config.goal_buyers_per_shop,
                     type_names.index(config.goal_type), config.seed) if config.goal_buyers_per_shop else None
    if goals is not None:
        events = pd.concat([events, goals.events], ignore_index=True)
        codes = pd.concat([codes, goals.codes], ignore_index=True)
    codes = codes.sort_values(["shop_id", "buyer_id"]).reset_index(drop=True)
    traces = []
    for index, variant in enumerate(config.variants):
        share = codes.iloc[index :: len(config.variants)]
        replay_config = ReplayConfig(driver="http", concurrency=16, variant=variant, max_steps_per_buyer=config.trace_max_steps,
                                     seed=config.seed, progress=progress)
        report = asyncio.run(replay(events, catalog, share, work / variant, replay_config))
        traces.extend(read_traces(report.traces_path))
    return attach_goals(traces, goals.goals if goals is not None else {})


def train_base(config: NavBaseConfig, traces, type_names: list[str], out: Path) -> float:
    """Steps 3 and 4; saves the model with the type rows moved out of the vocabulary into
    persona_anchors.safetensors (agent.persona.PersonaAnchors) and returns the final loss."""
    from agent.models import TinyModelConfig, align_generation_config, load_tiny
    from agent.persona import PersonaAnchors, persona_token_ids
    from agent.sft import SFTConfig, train_agent
    from agent.traces import trace_texts

    size = TinyModelConfig.of_width(config.hidden_size, config.layers, config.seed, vocab_size=config.vocab_size)
    base = load_tiny(trace_texts(traces), size)
    tokenizer = copy.deepcopy(base.tokenizer)  # without the type tokens train_agent adds
    sft = SFTConfig(single_stage=True, stage2_epochs=10_000, stage2_max_steps=config.steps, stage2_lr=config.lr,
                    batch_size=config.batch_size, max_length=config.max_length, rename_shops=True,
                    num_codes=len(type_names), init_noise_scale=1.0, seed=config.seed, cart_page_decides=False)
    result = train_agent(traces, base, sft)
    model = result.model.model
    ids = persona_token_ids(result.model.tokenizer, result.persona_map)  # the types, then the neutral token
    rows = model.get_input_embeddings().weight.detach()
    anchors = PersonaAnchors(type_names, rows[ids[:-1]].clone(), rows[ids[-1]].clone())
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    align_generation_config(model, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    anchors.save(out)
    losses = [point["loss"] for point in result.curves[-20:]]
    (out / "training.json").write_text(json.dumps({"curves": result.curves, "stages": result.stages}, default=str) + "\n")
    return round(sum(losses) / max(1, len(losses)), 4)
