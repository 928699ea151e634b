"""How well can any simulation whose buyer types come from browse-only features know a shop's conversion rate?

    .venv/bin/python scripts/strict_ceiling.py runs/tmall/seed2_strict/features_browse_only.parquet \
        [--codes runs/tmall/seed2_strict/strict/codes.parquet]

Under the strict protocol a held-out shop reaches the simulation only as the mix of its buyers'
types, learned from browse-only features. However well the agent plays each type, the shop's
simulated rate can at best be what those types convert at in training, weighted by the shop's mix.
This script measures that ceiling without any agent, on every shop that could be held out (>= 50
buyers, here also >= 5 real purchases, so its real rate means something). The shops are cut into
5 folds; each fold's shops are predicted from the other four folds' buyers only:

- global rate: the training buyers' conversion rate (the single-global-rate baseline);
- type oracle, k types: k-means (k-means++) on the scaled behavioural features, each type at its
  training rate, applied to the shop's own type mix: a persona agent that plays every type exactly;
- per-buyer model: gradient boosting on the same features, each buyer's predicted probability
  averaged over the shop (its buyer-level AUC is printed: what the features know about one buyer);
- the same, shrunk halfway to the global rate;
- for scale, the noise ceiling: a predictor that knows each shop's rate exactly, scored against a
  real rate drawn again from the shop's own number of buyers (its observed rate taken as the truth);
  the 50-150 buyers of a shop leave even perfect knowledge far from 1;
- with --codes: the codebook's own codes as `simpersona evaluate` saved them (types fitted on all
  training shops, so in-sample for these shops: optimistic).

Scored with the alignment `simpersona evaluate` reports (harness.eval.metrics.conversion_alignment).
Each row also gives the paired difference to the global rate with a 95 % bootstrap interval over
shops, and the share of shops where the predictor is closer to the real rate than the global rate.
Pass the paper protocol's features_all.parquet to see the same table with purchase features.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from sklearn.cluster import KMeans
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from codebook.scaling import FeatureScaler
from codebook.train import read_features
from harness.eval.metrics import alignment_term


def shop_folds(frame: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    """Fold number per buyer; every buyer of a shop in the same fold (merchant-disjoint)."""
    shops = frame.shop_id.unique()
    order = np.random.default_rng(seed).permutation(len(shops))
    fold_of_shop = dict(zip(shops[order], np.arange(len(shops)) % folds))
    return frame.shop_id.map(fold_of_shop).to_numpy()


def out_of_fold_predictions(frame, columns, folds, type_counts, seed) -> dict[str, np.ndarray]:
    """Per buyer and per predictor, the conversion probability learned from the other folds."""
    converted = frame.converted.to_numpy(bool)
    predictions = {name: np.zeros(len(frame)) for name in ["global rate", *[f"type oracle, {k} types" for k in type_counts], "per-buyer model"]}
    for fold in np.unique(folds):  # shop_folds already keeps every shop inside one fold
        train, test = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        scaler = FeatureScaler.fit(frame.iloc[train], columns)
        x_train, x_test = scaler.transform(frame.iloc[train]), scaler.transform(frame.iloc[test])
        predictions["global rate"][test] = converted[train].mean()
        for k in type_counts:
            kmeans = KMeans(k, n_init=3, random_state=seed).fit(x_train)
            type_rate = pd.Series(converted[train]).groupby(kmeans.labels_).mean()
            predictions[f"type oracle, {k} types"][test] = type_rate.reindex(kmeans.predict(x_test)).fillna(converted[train].mean()).to_numpy()
        model = HistGradientBoostingClassifier(max_iter=200, random_state=seed).fit(x_train, converted[train])
        predictions["per-buyer model"][test] = model.predict_proba(x_test)[:, 1]
    shrunk = 0.5 * (predictions["per-buyer model"] + predictions["global rate"])
    predictions["per-buyer model, shrunk halfway to global"] = shrunk
    return predictions


def in_sample_code_rates(frame: pd.DataFrame, codes_path: Path) -> np.ndarray:
    """Each buyer's code at its code's training conversion rate (codes.parquet of `simpersona evaluate`)."""
    codes = pd.read_parquet(codes_path, columns=["shop_id", "buyer_id", "code", "split", "converted"])
    rate = codes[codes.split == "training"].groupby("code").converted.mean()
    keyed = frame[["shop_id", "buyer_id"]].merge(codes[["shop_id", "buyer_id", "code"]], how="left", on=["shop_id", "buyer_id"])
    return keyed.code.map(rate).fillna(codes.converted.mean()).to_numpy()


def shop_table(frame: pd.DataFrame, predictions: dict[str, np.ndarray], min_buyers: int, min_purchases: int) -> pd.DataFrame:
    """One row per eligible shop: its real rate and every predictor's mean over its buyers."""
    columns = {"real": frame.converted.astype(float), **{name: values for name, values in predictions.items()}}
    shops = pd.DataFrame(columns).groupby(frame.shop_id.to_numpy()).mean()
    size = frame.groupby("shop_id").size()
    purchases = frame.groupby("shop_id").converted.sum()
    eligible = (size >= min_buyers) & (purchases >= min_purchases)
    return shops.loc[eligible[eligible].index]


def noise_ceiling(frame: pd.DataFrame, shops: pd.DataFrame, seed: int, draws: int = 500) -> float:
    """Mean alignment of the exact rate against resampled real rates of the same number of buyers."""
    size = frame.groupby("shop_id").size().reindex(shops.index).to_numpy()
    redrawn = np.random.default_rng(seed).binomial(size, shops.real.to_numpy(), size=(draws, len(shops))) / size
    return float(np.mean([[alignment_term(rate, real) for rate, real in zip(shops.real, row)] for row in redrawn]))


def paired_to_global(shops: pd.DataFrame, name: str, seed: int, draws: int = 2000) -> tuple[float, float, float, float]:
    """(alignment, difference to the global rate, its 95 % bootstrap interval) over shops."""
    terms = np.array([alignment_term(s, r) for s, r in zip(shops[name], shops.real)])
    global_terms = np.array([alignment_term(s, r) for s, r in zip(shops["global rate"], shops.real)])
    differences = terms - global_terms
    resampled = np.random.default_rng(seed).integers(0, len(shops), size=(draws, len(shops)))
    low, high = np.percentile(differences[resampled].mean(axis=1), [2.5, 97.5])
    return terms.mean(), differences.mean(), low, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features", type=Path, help="buyer features (features_browse_only.parquet of `simpersona evaluate`)")
    parser.add_argument("--codes", type=Path, help="codes.parquet of the same protocol, to score the codebook's own types")
    parser.add_argument("--types", default="16,32", help="comma-separated k for the k-means type oracle")
    parser.add_argument("--min-buyers", type=int, default=50, help="shops eligible for evaluation")
    parser.add_argument("--min-purchases", type=int, default=5, help="and with at least this many real purchases")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    frame, columns, meta = read_features(args.features)
    columns = [column for column in columns if column.group != "embedding"]  # a held-out shop's products are new anyway
    folds = shop_folds(frame, args.folds, args.seed)
    predictions = out_of_fold_predictions(frame, columns, folds, [int(k) for k in args.types.split(",")], args.seed)
    if args.codes:
        predictions["codebook codes (in-sample)"] = in_sample_code_rates(frame, args.codes)
    auc = roc_auc_score(frame.converted.to_numpy(bool), predictions["per-buyer model"])
    shops = shop_table(frame, predictions, args.min_buyers, args.min_purchases)

    protocol = "browse-only" if meta.get("browse_only") else "all"
    table = Table(title=f"{args.features} ({protocol} features, {len(columns)} behavioural columns): "
                        f"{len(shops)} shops with >= {args.min_buyers} buyers and >= {args.min_purchases} purchases; "
                        f"per-buyer AUC {auc:.3f}")
    for name in ("predictor", "alignment", "minus global rate [95 % CI]", "closer than global", "Pearson with real"):
        table.add_column(name, justify="right" if name != "predictor" else "left")
    for name in predictions:
        alignment, difference, low, high = paired_to_global(shops, name, args.seed)
        closer = np.mean(np.abs(shops[name] - shops.real) < np.abs(shops["global rate"] - shops.real))
        pearson = shops[name].corr(shops.real) if shops[name].std() > 0 else float("nan")
        difference_text = "" if name == "global rate" else f"{difference:+.3f} [{low:+.3f}, {high:+.3f}]"
        closer_text = "" if name == "global rate" else f"{closer:.0%}"
        table.add_row(name, f"{alignment:.3f}", difference_text, closer_text, "" if np.isnan(pearson) else f"{pearson:.2f}")
    table.add_row("noise ceiling: each shop's exact rate", f"{noise_ceiling(frame, shops, args.seed):.3f}", "", "", "")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
