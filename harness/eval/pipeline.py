"""The learning pipeline as plain functions: raw log -> events -> buyer features -> codebook.

The CLI commands and the demo call these; each step writes the files DESIGN.md names into one
run directory, so any step can be re-run or inspected on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from codebook.features import build_features
from codebook.ingest import IngestConfig, IngestResult, ingest
from codebook.schema import FEATURES_FILE
from codebook.synthetic import SyntheticConfig, generate_synthetic
from codebook.train import TrainConfig, TrainResult, read_features, train_codebook

REPO_ROOT = Path(__file__).resolve().parents[2]
# Where the team's shared real data lives beside a checkout; a user's fresh clone has none.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_REAL_LOG = SHARED_DATA / "tmall_brand_2014" / "t_alibaba_data.csv"


@dataclass
class DemoInput:
    paths: list[Path]
    description: str
    synthetic_dir: Path | None = None  # set when the input is the embedded synthetic default


def choose_demo_input(data: list[Path] | None, run_dir: Path, force_synthetic: bool) -> DemoInput:
    """A user's log first, then the shared real data, then the embedded synthetic generator."""
    if data:
        return DemoInput(list(data), "your log: " + ", ".join(str(p) for p in data))
    if DEFAULT_REAL_LOG.is_file() and not force_synthetic:
        return DemoInput([DEFAULT_REAL_LOG], f"real data: Tmall 2014 brand log ({DEFAULT_REAL_LOG})")
    synthetic_dir = run_dir / "synthetic"
    log = generate_synthetic(synthetic_dir, SyntheticConfig())
    return DemoInput([log.events_csv], "embedded default: SYNTHETIC clickstream with planted buyer types",
                     synthetic_dir)


def run_ingest(paths: list[Path], run_dir: Path, shop_field: str | None = None,
               console: Console | None = None) -> IngestResult:
    config = IngestConfig(shop_field=shop_field, show_progress=console is not None)
    return ingest(paths, run_dir, config, console=console)


def run_features(run_dir: Path, browse_only: bool = False, embedding: str = "auto") -> Path:
    out = run_dir / FEATURES_FILE
    build_features(run_dir / "events.parquet", run_dir / "catalog.parquet", out,
                   browse_only=browse_only, embedding=embedding)
    return out


def run_codebook(features: Path, out_dir: Path, config: TrainConfig) -> TrainResult:
    return train_codebook(features, out_dir, config)


def types_table(types: dict, max_rows: int = 40) -> Table:
    """The learned buyer types, largest first, as people read them."""
    rate = types.get("overall_conversion_rate")
    title = "Buyer types" + (f" (overall conversion {rate:.1%})" if rate is not None else "")
    used = sorted((t for t in types["types"] if t["n_buyers"]), key=lambda t: -t["n_buyers"])
    # Logs without categories (Tmall's brand log) would show an empty column.
    show_categories = any(t.get("top_categories") for t in used)
    table = Table(title=title)
    for name, justify in (("code", "right"), ("share", "right"), ("buyers", "right"),
                          ("conv.", "right"), ("median events", "right")):
        table.add_column(name, justify=justify)
    if show_categories:
        table.add_column("top categories")
    table.add_column("summary")
    for entry in used[:max_rows]:
        conversion = entry.get("conversion_rate")
        median_events = entry.get("median_events")
        cells = [
            str(entry["code"]),
            f"{entry['share']:.1%}",
            f"{entry['n_buyers']:,}",
            "—" if conversion is None else f"{conversion:.1%}",
            "—" if median_events is None else f"{median_events:g}",
        ]
        if show_categories:
            cells.append(", ".join(c["category"] for c in entry.get("top_categories", [])[:2]))
        table.add_row(*cells, entry.get("summary", ""))
    return table


def metrics_line(metrics: dict) -> str:
    """The headline metrics of a trained codebook in one line."""
    active = metrics["active_codes"]
    parts = [
        f"active codes {active['count']}/{metrics['codebook_size']}",
        f"perplexity {metrics['perplexity']:.1f}",
    ]
    if metrics.get("reconstruction_mse") is not None:
        parts.append(f"reconstruction MSE {metrics['reconstruction_mse']:.3f}")
    conversion = metrics.get("conversion")
    if conversion:
        kruskal = conversion["kruskal"]
        parts.append(f"conversion across types {conversion['rate_min']:.1%}–{conversion['rate_max']:.1%} "
                     f"(Kruskal–Wallis p = {kruskal['p']:.1e})")
    shops = metrics.get("shops") or {}
    if shops.get("between_shops_jsd_bits") is not None:
        parts.append(f"shop mixes JSD {shops['between_shops_jsd_bits']:.3f} bits between shops vs "
                     f"{shops['split_half_jsd_bits']:.3f} within (split halves)")
    return " · ".join(parts)


def planted_type_recovery(synthetic_dir: Path, run_dir: Path, seed: int = 0) -> float:
    """Blind recovery of the generator's planted types: adjusted Rand index between them and the
    codes of a codebook with one code per planted type, trained on browse-only features (types
    are propensities; whether a buyer happened to buy is an outcome that splits every type)."""
    from sklearn.metrics import adjusted_rand_score

    from codebook.synthetic import BUYER_TYPES, read_truth

    features = run_dir / "buyer_features_browse_only.parquet"
    build_features(run_dir / "events.parquet", run_dir / "catalog.parquet", features,
                   browse_only=True, progress=False)
    result = train_codebook(features, None, TrainConfig(codebook_size=len(BUYER_TYPES), seed=seed, progress=False))
    truth, _ = read_truth(synthetic_dir)
    frame = read_features(features)[0]
    keys = frame[["shop_id", "buyer_id"]].astype(str).assign(code=result.codes)
    joined = keys.merge(truth.astype({"shop_id": str, "buyer_id": str}), on=["shop_id", "buyer_id"])
    return float(adjusted_rand_score(joined["planted_type"], joined["code"]))
