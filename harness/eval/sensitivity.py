"""Codebook sensitivity: how held-out type-oracle fidelity moves with the codebook size K and the
commitment weight.

No agent and no simulation: for every (K, commitment weight) and every fold of K-fold
merchant-disjoint cross-validation (harness.eval.split with folds > 1), a codebook is trained on
the fold's TRAINING shops' feature rows only, every buyer gets a code, and each held-out shop is
scored with the type oracle: the shop's real code shares, each code at its training buyers'
conversion rate (harness.eval.metrics.type_oracle_rate). Over the folds every eligible shop is
held out exactly once, so each setting's figures are over all eligible shops.

Work dir (`out_dir`), each file written once and reused on a rerun (resumable):

    features_<all|browse_only>.parquet      buyer features of every buyer (codebook.features)
    cells/K<size>_w<weight>/fold<k>/        one codebook per (size, weight, fold):
        codebook/                           the artifact, trained on the fold's training rows
        cell.json                           its settings, held-out shops and per-shop scores
    sensitivity.json, sensitivity.md        the summary per setting, and as a markdown table

Purity (per setting): the share of training buyers whose outcome (converted or not) is the
majority outcome of their code among training buyers, i.e. the buyer-weighted mean over codes of
max(rate, 1 - rate). The global-rate row is the one-code codebook, so its purity is the floor.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.eval.evaluate import PROTOCOLS, protocol_features, real_conversion, training_rate
from harness.eval.metrics import summarize_policy, type_oracle_rate
from harness.eval.split import ShopSplit, SplitConfig, buyers_per_shop, split_shops

RESULT_FILE = "sensitivity.json"
TABLE_FILE = "sensitivity.md"
CELL_FILE = "cell.json"
PROTOCOL_NOTES = {
    "paper": "Paper protocol: the features include purchases, so a code can separate converters by construction.",
    "strict": "Strict protocol: browse-only features, no purchase information reaches the codes.",
}
TABLE_HEADER = ("K", "commitment", "shops", "alignment", "95% CI", "Pearson r", "codes used", "purity", "seconds")


class SensitivityError(ValueError):
    """A saved cell that was computed with other settings or another split."""


@dataclass
class SensitivityConfig:
    out_dir: Path
    input_dir: Path  # an ingested dir holding events.parquet and catalog.parquet
    sizes: tuple[int, ...] = (16, 32, 64)
    commitment_weights: tuple[float, ...] = (0.1, 0.25, 1.0)
    folds: int = 5
    protocol: str = "paper"  # paper: types from all features; strict: browse-only features
    min_buyers: int = 50  # a shop needs this many buyers to be eligible (held out once)
    codebook_epochs: int = 8  # as harness.eval.evaluate
    embedding: str = "hashed"
    seed: int = 0  # the split, the codebook training and the bootstrap
    progress: bool = True

    def __post_init__(self) -> None:
        self.out_dir, self.input_dir = Path(self.out_dir), Path(self.input_dir)
        for path in (self.events, self.catalog):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found (expected an ingested dir from `simpersona ingest`)")
        self.sizes = tuple(int(size) for size in self.sizes)
        self.commitment_weights = tuple(float(weight) for weight in self.commitment_weights)
        if not self.sizes or min(self.sizes) < 2:
            raise ValueError(f"codebook sizes must be at least 2, got {self.sizes}")
        if not self.commitment_weights or min(self.commitment_weights) <= 0:
            raise ValueError(f"commitment weights must be > 0, got {self.commitment_weights}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2 (cross-validation), got {self.folds}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")

    @property
    def events(self) -> Path:
        return self.input_dir / "events.parquet"

    @property
    def catalog(self) -> Path:
        return self.input_dir / "catalog.parquet"

    @property
    def settings(self) -> list[tuple[int, float]]:
        return [(size, weight) for size in self.sizes for weight in self.commitment_weights]


# ---------------------------------------------------------------------------------------------
# Inputs: features, folds, real rates


def build_or_load_features(config: SensitivityConfig, console: Console) -> tuple[pd.DataFrame, list, dict]:
    from codebook.train import read_features

    path = protocol_features(config.events, config.catalog, config.out_dir, config.protocol, config.embedding,
                             config.progress, console)
    frame, columns, meta = read_features(path)
    frame["shop_id"] = frame["shop_id"].astype(str)
    return frame, columns, meta


def fold_splits(counts: dict[str, int], config: SensitivityConfig) -> list[ShopSplit]:
    """The folds; checked to hold out every eligible shop exactly once (the summary counts on it)."""
    splits = [split_shops(counts, SplitConfig(min_buyers=config.min_buyers, seed=config.seed,
                                              folds=config.folds, fold=k)) for k in range(config.folds)]
    held = [shop for split in splits for shop in split.held_out]
    if not held:
        raise ValueError(f"{config.events}: no shop has at least min_buyers={config.min_buyers} buyers")
    if sorted(held) != sorted(splits[0].eligible):
        raise AssertionError("folds do not hold out every eligible shop exactly once")
    return splits


def code_purity(codes: np.ndarray, converted: np.ndarray) -> float:
    """Share of buyers whose outcome is their code's majority outcome (see the module doc)."""
    frame = pd.DataFrame({"code": codes, "converted": converted.astype(float)})
    rates = frame.groupby("code")["converted"].transform("mean")
    return float((np.maximum(rates, 1.0 - rates)).mean())


# ---------------------------------------------------------------------------------------------
# One cell: one codebook on one fold's training shops, scored on its held-out shops


def cell_dir(config: SensitivityConfig, size: int, weight: float, fold: int) -> Path:
    return config.out_dir / "cells" / f"K{size}_w{weight:g}" / f"fold{fold}"


def cell_settings(config: SensitivityConfig, size: int, weight: float, fold: int) -> dict:
    """Everything a cell's numbers depend on; a saved cell is reused only when these match."""
    return {"size": size, "commitment_weight": weight, "fold": fold, "folds": config.folds, "seed": config.seed,
            "protocol": config.protocol, "min_buyers": config.min_buyers,
            "codebook_epochs": config.codebook_epochs, "embedding": config.embedding}


def load_cell(path: Path, settings: dict, split: ShopSplit) -> dict | None:
    """The saved cell at `path`, None when there is none; one saved for other settings is an error,
    never silently replaced."""
    if not path.is_file():
        return None
    cell = json.loads(path.read_text())
    if cell["settings"] != settings or cell["held_out"] != split.held_out:
        raise SensitivityError(f"{path}: saved with other settings or another split ({cell['settings']}); "
                               "use another --out or delete the cell")
    return cell


def run_cell(frame: pd.DataFrame, columns: list, meta: dict, split: ShopSplit, real: pd.DataFrame,
             settings: dict, work: Path, progress: bool) -> dict:
    from codebook.train import TrainConfig, train_codebook

    started = time.perf_counter()
    training = frame["shop_id"].isin(set(split.training)).to_numpy()
    train_config = TrainConfig(codebook_size=settings["size"], commitment_weight=settings["commitment_weight"],
                               epochs=settings["codebook_epochs"], seed=settings["seed"], progress=progress)
    trained = train_codebook(frame[training].reset_index(drop=True), work / "codebook", train_config,
                             columns=columns, meta={**meta, "training_shops_only": True, "fold": settings["fold"]})
    codes = trained.codebook.assign(frame)
    converted = frame["converted"].to_numpy(dtype=float)
    fallback = training_rate(split, real)
    code_rates = pd.Series(converted[training]).groupby(codes[training]).mean().to_dict()
    return {
        "settings": settings,
        "held_out": split.held_out,
        "training_shops": len(split.training),
        "training_buyers": int(training.sum()),
        "training_rate": fallback,
        "codes_used": int(np.unique(codes[training]).size),
        "purity": code_purity(codes[training], converted[training]),
        "rows": oracle_rows(frame["shop_id"].to_numpy(), codes, split, real, code_rates, fallback),
        "seconds": round(time.perf_counter() - started, 2),
    }


def oracle_rows(shops: np.ndarray, codes: np.ndarray, split: ShopSplit, real: pd.DataFrame,
                code_rates: dict, fallback: float) -> list[dict]:
    """Per held-out shop: its real rate and the type oracle's (its real code mix at training rates)."""
    rows = []
    for shop in split.held_out:
        mix = pd.Series(codes[shops == shop]).value_counts(normalize=True)
        rows.append({"shop": shop, "buyers": int(real.loc[shop, "buyers"]),
                     "cr_real": float(real.loc[shop, "conversion_rate"]),
                     "cr_sim": type_oracle_rate({int(c): float(s) for c, s in mix.items()}, code_rates, fallback)})
    return rows


def save_cell(path: Path, cell: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(cell, indent=1) + "\n")
    partial.replace(path)  # a crash never leaves half a cell that a rerun would trust


# ---------------------------------------------------------------------------------------------
# Summary


def setting_summary(cells: list[dict], seed: int) -> dict:
    """One setting's figures over all folds' held-out shops (each eligible shop once)."""
    rows = [row for cell in cells for row in cell["rows"]]
    return {**summarize_policy(rows, seed),
            "codes_used": float(np.mean([cell["codes_used"] for cell in cells])),
            "codes_used_per_fold": [cell["codes_used"] for cell in cells],
            "purity": float(np.mean([cell["purity"] for cell in cells])),
            "seconds": round(sum(cell["seconds"] for cell in cells), 1)}


def global_rate_summary(frame: pd.DataFrame, splits: list[ShopSplit], real: pd.DataFrame, seed: int) -> dict:
    """Reference: every held-out shop at its fold's training buyers' overall rate (one code)."""
    rows, purities = [], []
    for split in splits:
        rate = training_rate(split, real)
        rows += [{"shop": shop, "cr_real": float(real.loc[shop, "conversion_rate"]), "cr_sim": rate}
                 for shop in split.held_out]
        converted = frame.loc[frame["shop_id"].isin(set(split.training)), "converted"].to_numpy(dtype=float)
        purities.append(code_purity(np.zeros(len(converted), dtype=int), converted))
    return {**summarize_policy(rows, seed), "codes_used": 1.0, "purity": float(np.mean(purities)), "seconds": 0.0}


def table_rows(result: dict) -> list[tuple[str, ...]]:
    """The summary as text cells under TABLE_HEADER: one row per setting, then the global rate."""
    def line(size: str, weight: str, figures: dict) -> tuple[str, ...]:
        low, high = figures["alignment_ci"] or (float("nan"), float("nan"))
        pearson = "—" if figures["pearson"] is None else f"{figures['pearson']:.3f}"
        return (size, weight, str(figures["shops"]), f"{figures['alignment']:.3f}", f"[{low:.3f}, {high:.3f}]",
                pearson, f"{figures['codes_used']:.1f}", f"{figures['purity']:.4f}", f"{figures['seconds']:.0f}")

    rows = [line(str(s["size"]), f"{s['commitment_weight']:g}", s) for s in result["settings"]]
    return rows + [line("global rate", "—", result["global_rate"])]


def markdown_table(result: dict) -> str:
    header = "| " + " | ".join(TABLE_HEADER) + " |\n|" + "---|" * len(TABLE_HEADER) + "\n"
    body = "".join("| " + " | ".join(row) + " |\n" for row in table_rows(result))
    return (f"Type-oracle alignment on held-out shops, {result['config']['folds']}-fold merchant-disjoint CV "
            f"({result['eligible_shops']} eligible shops, {result['config']['protocol']} protocol). "
            "95 % CI: bootstrap over shops. Codes used: distinct codes among training buyers, mean over folds. "
            "Purity: share of training buyers whose outcome is their code's majority outcome. "
            "Seconds: codebook training and scoring, summed over folds. The global-rate row's Pearson only "
            "reflects the folds' different training rates. " + PROTOCOL_NOTES[result["config"]["protocol"]]
            + "\n\n" + header + body)


# ---------------------------------------------------------------------------------------------
# The run


def run_sensitivity(config: SensitivityConfig, console: Console | None = None) -> dict:
    """Every cell (reusing saved ones), then sensitivity.json and sensitivity.md in out_dir."""
    console = console or Console(quiet=not config.progress)
    started = time.perf_counter()
    config.out_dir.mkdir(parents=True, exist_ok=True)
    frame, columns, meta = build_or_load_features(config, console)
    real = real_conversion(config.events)
    splits = fold_splits(buyers_per_shop(config.events), config)
    console.print(f"[bold]folds[/]: {len(splits[0].eligible)} eligible shops in {config.folds} folds; "
                  f"{len(config.settings)} settings x {config.folds} folds = {len(config.settings) * config.folds} codebooks")
    cells: dict[tuple[int, float], list[dict]] = {}
    columns_shown = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns_shown, console=console, disable=not config.progress) as progress:
        task = progress.add_task("codebooks", total=len(config.settings) * config.folds)
        for size, weight in config.settings:
            for split in splits:
                fold = split.config.fold
                progress.update(task, description=f"K={size} commitment={weight:g} fold {fold + 1}/{config.folds}")
                cells.setdefault((size, weight), []).append(cell_for(config, frame, columns, meta, split, real, size, weight))
                progress.advance(task)
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "eligible_shops": len(splits[0].eligible),
        "folds": [{"fold": s.config.fold, "held_out": s.held_out, "training_shops": len(s.training)} for s in splits],
        "settings": [{"size": size, "commitment_weight": weight, **setting_summary(found, config.seed)}
                     for (size, weight), found in cells.items()],
        "global_rate": global_rate_summary(frame, splits, real, config.seed),
        "purity_definition": "share of training buyers whose outcome is their code's majority outcome",
        "seconds": round(time.perf_counter() - started, 1),
    }
    (config.out_dir / RESULT_FILE).write_text(json.dumps(result, indent=1) + "\n")
    (config.out_dir / TABLE_FILE).write_text(markdown_table(result))
    return result


def cell_for(config: SensitivityConfig, frame: pd.DataFrame, columns: list, meta: dict, split: ShopSplit,
             real: pd.DataFrame, size: int, weight: float) -> dict:
    """The saved cell when there is one, else a freshly computed and saved one."""
    work = cell_dir(config, size, weight, split.config.fold)
    settings = cell_settings(config, size, weight, split.config.fold)
    cell = load_cell(work / CELL_FILE, settings, split)
    if cell is None:
        cell = run_cell(frame, columns, meta, split, real, settings, work, progress=False)
        save_cell(work / CELL_FILE, cell)
    return cell
