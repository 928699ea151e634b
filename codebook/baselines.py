"""Baselines and ablation for the behaviour-aware VQ-VAE, measured with the same metrics
(codebook.metrics) on the same scaled features.

* k-means (scikit-learn, k-means++ init) and a diagonal Gaussian mixture, each with K clusters;
  their "reconstruction" is the centre (mean) of the assigned cluster.
* `compare_baselines` trains all three and returns a side-by-side rich Table.
* `run_ablation` trains the VQ-VAE with and without its behaviour-aware parts (decisive-feature
  weight and conversion head) on the same data and seeds, and reports the difference in how
  well types separate conversion.

Command line (the `simpersona train-codebook` flags call the same functions):
    python -m codebook.baselines compare  buyer_features.parquet [--k 32] [--epochs 20]
    python -m codebook.baselines ablation buyer_features.parquet [--seeds 0 1 2] [--conversion-head]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture

from codebook.metrics import assignment_metrics
from codebook.scaling import FeatureScaler
from codebook.schema import FeatureColumn
from codebook.train import TrainConfig, TrainResult, read_features, train_codebook


def kmeans_assign(scaled: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(codes, reconstruction) from k-means with k-means++ init."""
    model = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed).fit(scaled)
    return model.labels_.astype(np.int64), model.cluster_centers_[model.labels_]


def gmm_assign(scaled: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(codes, reconstruction) from a diagonal-covariance Gaussian mixture (k-means init)."""
    # In float64: a component's variance is E[x²] − mean², and where a heavy-tailed feature puts a
    # few buyers far out (Tmall's counts, standardised), float32 cancels it below zero and the fit fails.
    model = GaussianMixture(n_components=k, covariance_type="diag", reg_covar=1e-4,
                            random_state=seed).fit(scaled.astype(np.float64))
    codes = model.predict(scaled).astype(np.int64)
    return codes, model.means_[codes]


@dataclass
class Comparison:
    table: Table
    metrics: dict[str, dict]  # method -> assignment_metrics


def compare_baselines(
    features: Path | pd.DataFrame,
    config: TrainConfig | None = None,
    *,
    columns: list[FeatureColumn] | None = None,
    meta: dict | None = None,
    trained: TrainResult | None = None,
) -> Comparison:
    """Train the VQ-VAE (unless `trained` is given), k-means and a GMM with the same K on the
    same scaled features; return the side-by-side table and every method's metrics."""
    config = config or TrainConfig()
    frame, columns, meta = _load(features, columns, meta)
    if trained is None:
        trained = train_codebook(frame, None, config, columns=columns, meta=meta)
    scaler = FeatureScaler.fit(frame, columns)
    scaled = scaler.transform(frame)
    converted = frame["converted"].to_numpy(dtype=np.float64) if "converted" in frame else None
    shops = frame["shop_id"].to_numpy()
    results = {"vq-vae": trained.metrics}
    for name, method in (("k-means", kmeans_assign), ("gmm", gmm_assign)):
        codes, reconstruction = method(scaled, config.codebook_size, config.seed)
        results[name] = assignment_metrics(
            scaled,
            codes,
            config.codebook_size,
            feature_names=scaler.names,
            reconstruction=reconstruction,
            converted=converted,
            shop_ids=shops,
            min_shop_buyers=config.min_shop_buyers,
            seed=config.seed,
        )
    table = metrics_table(results, title=f"Buyer types, K={config.codebook_size}, {len(frame):,} buyers")
    return Comparison(table, results)


def summary_row(metrics: dict) -> dict[str, float | None]:
    """The headline numbers of one assignment, flat (for tables and reports)."""
    conversion = metrics.get("conversion") or {}
    shops = metrics.get("shops") or {}
    kruskal_h = [v["H"] for v in metrics["kruskal_per_feature"].values()]
    return {
        "reconstruction MSE": metrics.get("reconstruction_mse"),
        "perplexity": metrics["perplexity"],
        "active codes (share)": metrics["active_codes"]["share"],
        "Calinski-Harabasz": metrics["calinski_harabasz"],
        "median feature KW H": float(np.median(kruskal_h)) if kruskal_h else None,
        "conversion KW H": (conversion.get("kruskal") or {}).get("H"),
        "conversion KW p": (conversion.get("kruskal") or {}).get("p"),
        "conversion rate std across types": conversion.get("rate_std_between_types"),
        "conversion AUC from type rate": conversion.get("auc_from_type_rate"),
        "JSD between shops (bits)": shops.get("between_shops_jsd_bits"),
        "JSD split-half noise floor (bits)": shops.get("split_half_jsd_bits"),
    }


def metrics_table(results: dict[str, dict], title: str = "") -> Table:
    table = Table(title=title)
    table.add_column("metric")
    for method in results:
        table.add_column(method, justify="right")
    rows = {method: summary_row(metrics) for method, metrics in results.items()}
    for metric in next(iter(rows.values())):
        table.add_row(metric, *(_fmt(rows[method][metric]) for method in results))
    return table


# ---------------------------------------------------------------------------------------------
@dataclass
class Ablation:
    table: Table
    runs: dict[str, list[dict]]  # variant -> summary_row per seed
    configs: dict[str, TrainConfig]


def run_ablation(
    features: Path | pd.DataFrame,
    config: TrainConfig | None = None,
    *,
    seeds: tuple[int, ...] = (0, 1, 2),
    columns: list[FeatureColumn] | None = None,
    meta: dict | None = None,
) -> Ablation:
    """Train the VQ-VAE with its behaviour-aware parts (as configured) and without them
    (decisive_weight=1, no conversion head) on the same data and seeds; table of mean ± std per
    variant and the mean paired difference.

    On browse-only features the behaviour-aware variant keeps the conversion head off unless
    config.conversion_head is True, so there the ablation isolates the decisive-feature weight.
    """
    config = replace(config or TrainConfig(), progress=False)
    frame, columns, meta = _load(features, columns, meta)
    variants = {
        "behaviour-aware": config,
        "plain": replace(config, decisive_weight=1.0, conversion_head=False),
    }
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    heads = {}
    for seed in seeds:
        for name, variant in variants.items():
            result = train_codebook(frame, None, replace(variant, seed=seed), columns=columns, meta=meta)
            runs[name].append(summary_row(result.metrics))
            heads[name] = result.metrics["conversion_head"]
    title = (
        f"Ablation over seeds {list(seeds)}: behaviour-aware (decisive weight {config.decisive_weight}, "
        f"conversion head {'on' if heads['behaviour-aware'] else 'off'}) vs plain"
    )
    return Ablation(_ablation_table(runs, title), runs, variants)


def _ablation_table(runs: dict[str, list[dict]], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    for name in runs:
        table.add_column(name, justify="right")
    table.add_column("difference (aware - plain)", justify="right")
    aware, plain = runs["behaviour-aware"], runs["plain"]
    for metric in aware[0]:
        a = np.array([r[metric] for r in aware], dtype=float)
        p = np.array([r[metric] for r in plain], dtype=float)
        diff = a - p
        table.add_row(metric, _mean_std(a), _mean_std(p), _mean_std(diff))
    return table


def _mean_std(values: np.ndarray) -> str:
    if np.all(np.isnan(values)):
        return "-"
    if len(values) == 1:
        return _fmt(float(values[0]))
    return f"{_fmt(float(np.nanmean(values)))} ± {_fmt(float(np.nanstd(values, ddof=1)))}"


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3g}"
    return f"{value:.4g}"


def _load(features, columns, meta) -> tuple[pd.DataFrame, list[FeatureColumn], dict]:
    if isinstance(features, (str, Path)):
        return read_features(Path(features))
    if columns is None:
        raise ValueError("pass `columns` (the FeatureColumns) with a DataFrame")
    return features, columns, dict(meta or {})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m codebook.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["compare", "ablation"])
    parser.add_argument("features", type=Path, help="buyer_features.parquet")
    parser.add_argument("--k", type=int, default=TrainConfig.codebook_size)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--conversion-head", action="store_true", help="force the conversion head on (breaks browse-only)")
    args = parser.parse_args(argv)
    config = TrainConfig(codebook_size=args.k, epochs=args.epochs, seed=args.seeds[0], progress=False)
    if args.conversion_head:
        config = replace(config, conversion_head=True)
    console = Console()
    if args.what == "compare":
        console.print(compare_baselines(args.features, config).table)
    else:
        console.print(run_ablation(args.features, config, seeds=tuple(args.seeds)).table)


if __name__ == "__main__":
    main()
