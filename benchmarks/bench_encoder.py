"""Benchmark: buyer-type assignment (`Codebook.assign`, one batched encoder pass) on CPU.

Builds 1M synthetic buyer-feature rows with the tmall feature layout, a codebook with the default
model shape (TrainConfig), and times
  * assign(frame): scaling + encoder + nearest entry, the path `simpersona assign` takes;
  * assign_scaled: encoder + nearest entry alone;
against two baselines measured in the same run on the same rows:
  * scikit-learn KMeans.predict with the same K on the scaled rows (the cheapest learned
    assignment one could ship instead);
  * a per-row loop through the same encoder (what a naive service would do), on a sample.
Target: >= 200k buyers/s for assign(frame).

    .venv/bin/python benchmarks/bench_encoder.py [--rows 1000000] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans

from codebook.scaling import FeatureScaler
from codebook.schema import FeatureColumn
from codebook.train import Codebook, TrainConfig
from codebook.vqvae import BuyerVQVAE, VQVAEConfig

TARGET_PER_SECOND = 200_000


def synthetic_frame(rows: int, seed: int = 0) -> tuple[pd.DataFrame, list[FeatureColumn]]:
    """Heavy-tailed counts and [0, 1] shares, 30 features, like a real buyer_features file."""
    rng = np.random.default_rng(seed)
    columns, data = [], {}
    for i in range(15):
        name = f"count_{i}"
        columns.append(FeatureColumn(name, "behavior", "log1p"))
        data[name] = rng.negative_binomial(1, 0.2 + 0.05 * (i % 5), rows).astype(np.float64)
    for i in range(15):
        name = f"share_{i}"
        columns.append(FeatureColumn(name, "funnel" if i < 3 else "behavior", decisive=i < 3))
        data[name] = rng.beta(0.5 + i % 3, 2.0, rows)
    frame = pd.DataFrame(data)
    frame.insert(0, "buyer_id", np.arange(rows).astype(str))
    frame.insert(0, "shop_id", (np.arange(rows) % 100).astype(str))
    return frame, columns


def build_codebook(frame: pd.DataFrame, columns: list[FeatureColumn], config: TrainConfig) -> Codebook:
    """A codebook with the trained model's shape; weights are untrained (speed does not depend
    on them), the codebook is k-means++-initialised over a sample of encoder outputs."""
    torch.manual_seed(config.seed)
    scaler = FeatureScaler.fit(frame.head(50_000), columns)
    model = BuyerVQVAE(
        VQVAEConfig(len(columns), config.codebook_size, config.latent_dim, config.hidden_dim, config.depth)
    ).eval()
    with torch.no_grad():
        sample = torch.from_numpy(scaler.transform(frame.head(20_000)))
        model.quantizer.init_codebook(model.encoder(sample), seed=config.seed)
    return Codebook(model, scaler, config)


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = TrainConfig()
    frame, columns = synthetic_frame(args.rows)
    codebook = build_codebook(frame, columns, config)
    scaled = codebook.scale(frame)
    print(
        f"{args.rows:,} rows x {len(columns)} features, K={config.codebook_size}, "
        f"encoder {len(columns)}-{config.hidden_dim}x{config.depth}-{config.latent_dim}, torch threads {torch.get_num_threads()}"
    )

    codes = codebook.assign(frame)
    assert len(codes) == args.rows
    t_assign = best_of(args.repeats, lambda: codebook.assign(frame))
    t_scaled = best_of(args.repeats, lambda: codebook.assign_scaled(scaled))

    kmeans = KMeans(config.codebook_size, init="k-means++", n_init=1, random_state=0).fit(scaled[:20_000])
    t_kmeans = best_of(args.repeats, lambda: kmeans.predict(scaled))

    loop_rows = 2_000
    model = codebook.model

    def per_row() -> None:
        with torch.inference_mode():
            for row in scaled[:loop_rows]:
                model.assign(torch.from_numpy(row[None, :]))

    t_loop = best_of(1, per_row) * args.rows / loop_rows

    rate = args.rows / t_assign
    print(f"assign(frame)        {rate:12,.0f} buyers/s  ({t_assign:.3f} s)")
    print(f"assign_scaled        {args.rows / t_scaled:12,.0f} buyers/s  ({t_scaled:.3f} s)")
    print(f"KMeans.predict       {args.rows / t_kmeans:12,.0f} buyers/s  ({t_kmeans:.3f} s)   ratio assign/kmeans = {t_kmeans / t_assign:.2f}x")
    print(f"per-row encoder loop {args.rows / t_loop:12,.0f} buyers/s  (extrapolated from {loop_rows:,} rows)   ratio = {t_loop / t_assign:.0f}x")
    print(f"target >= {TARGET_PER_SECOND:,} buyers/s: {'MET' if rate >= TARGET_PER_SECOND else 'NOT MET'}")


if __name__ == "__main__":
    main()
