"""Train the behaviour-aware VQ-VAE on buyer_features.parquet and write the codebook artifact.

Training, top to bottom:
1. Fit the FeatureScaler on the training rows and scale them.
2. Warm up encoder and decoder as a plain autoencoder for `warmup_steps` (no quantizer), so the
   encoder outputs that initialise the codebook already carry structure (on the synthetic
   planted-type log a short warm-up costs a lot of type recovery).
3. One full pass over the training set gives every buyer's encoder output; k-means over them
   (k-means++ seeding, best of `kmeans_restarts` runs) initialises the codebook
   (VectorQuantizer.init_codebook).
4. Train with Adam on minibatches; the codebook follows EMA updates, dead codes are reset.

The loss is behaviour-aware:
* reconstruction MSE weighted per feature: FeatureColumn.decisive features (funnel and
  conversion) count `decisive_weight` times, the others once;
* commitment loss (`commitment_weight`);
* `conversion_weight` x BCE of a head that predicts the info column `converted` from the
  QUANTIZED code, which pushes converting and non-converting buyers into different codes.

Browse-only protocol: when the features metadata says browse_only=True, the conversion head is
off by default (`conversion_head=None` means "on unless browse-only"), so no purchase
information reaches training; the features themselves already leave purchase-derived columns
out. Setting conversion_head=True on browse-only features is allowed but logged as a warning,
because it breaks the strict protocol.

Artifact directory (DESIGN.md): model.safetensors, config.json, features.json, shop_mix.json,
types.json, metrics.json. `load_codebook(dir).assign(frame)` gives codes for new buyers with one
batched encoder pass.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from codebook.artifact import CONFIG_FILE, FEATURES_FILE, METRICS_FILE, MODEL_FILE, SHOP_MIX_FILE, TYPES_FILE
from codebook.metrics import assignment_metrics
from codebook.profiles import shop_mix_json, types_json
from codebook.scaling import FeatureScaler
from codebook.schema import BUYER_KEY, FeatureColumn, read_feature_meta
from codebook.vqvae import BuyerVQVAE, VQVAEConfig

log = logging.getLogger(__name__)



@dataclass
class TrainConfig:
    # codebook and model shape
    codebook_size: int = 32
    # Narrow on purpose: the warm-up autoencoder's latent is what k-means clusters at init, and a
    # nonlinear encoder does not scale latent directions by their input variance. With room to
    # spare (16 dims for ~40 features) it also encodes per-feature noise, at whatever scale, and
    # those directions blur the types (planted-type ARI 0.62-0.82 at 16 dims, 0.83-0.91 at 8).
    latent_dim: int = 8
    hidden_dim: int = 64
    depth: int = 2
    # quantizer
    # Higher than the VQ-VAE paper's 0.25 because our reconstruction term is a per-feature MEAN,
    # not a sum over thousands of pixels: at 0.25 encoder outputs drift off their entries and
    # straddle code boundaries (planted-type ARI 0.80-0.86 over seeds; 0.85-0.90 at 1.0; 2.0
    # over-constrains the encoder and some seeds fall to 0.74).
    commitment_weight: float = 1.0
    # EMA memory of ~10 updates. Small training sets make ~20 updates an epoch, and with 0.99
    # (memory ~100 updates, five epochs) the entries lag behind the encoder outputs that Adam
    # keeps moving; commitment then pulls the encoder towards stale entries and neighbouring
    # types merge (text-embedding planted data, 2 of 5 seeds: ARI 0.73 at 0.99, >= 0.88 at 0.9).
    ema_decay: float = 0.9
    ema_eps: float = 1e-5
    dead_code_threshold: float = 1.0  # EMA rows per batch below which a code is reset
    recent_buffer_size: int = 4096
    kmeans_iters: int = 300  # max Lloyd iterations per k-means run at codebook init
    kmeans_restarts: int = 10  # k-means++ runs at init; the lowest inertia wins
    # behaviour-aware loss
    decisive_weight: float = 3.0
    conversion_weight: float = 1.0
    conversion_head: bool | None = None  # None: on unless the features are browse-only
    # optimisation
    epochs: int = 20
    # Autoencoder warm-up before the codebook init, in optimizer steps (rounded up to whole
    # epochs) so that small and large training sets both get a trained encoder to cluster.
    warmup_steps: int = 600
    batch_size: int = 1024
    # Small training sets get smaller batches so that every epoch still makes at least this
    # many optimizer steps (and EMA updates); 6,000 buyers at 1,024 a batch would make 5.
    min_batches_per_epoch: int = 20
    learning_rate: float = 1e-3
    seed: int = 0
    device: str = "auto"  # "auto": cuda when available, else cpu
    # The MLP is small: one CPU thread trains it fastest, extra intra-op threads only add
    # synchronisation (and spin badly on a shared machine). None keeps torch's setting.
    num_threads: int | None = 1
    # evaluation
    min_shop_buyers: int = 30
    progress: bool = True


@dataclass
class Codebook:
    """A trained codebook: model, scaler and the settings it was trained with."""

    model: BuyerVQVAE
    scaler: FeatureScaler
    config: TrainConfig
    feature_meta: dict = field(default_factory=dict)

    @property
    def codebook_size(self) -> int:
        return self.model.config.codebook_size

    def scale(self, frame: pd.DataFrame) -> np.ndarray:
        return self.scaler.transform(frame)

    def assign_scaled(self, scaled: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """Codes for already scaled rows: the encoder forward pass in batches, no gradients."""
        self.model.eval()
        device = next(self.model.parameters()).device
        out = np.empty(len(scaled), dtype=np.int64)
        with torch.inference_mode():
            for start in range(0, len(scaled), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(scaled[start : start + batch_size])).to(device)
                out[start : start + len(batch)] = self.model.assign(batch).cpu().numpy()
        return out

    def assign(self, frame: pd.DataFrame, batch_size: int = 65536) -> np.ndarray:
        """Buyer type (code in 0..K-1) of every row of a buyer-features frame."""
        return self.assign_scaled(self.scale(frame), batch_size)

    def reconstruct_scaled(self, scaled: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Decoder output for each row's code (the reconstruction the metrics score)."""
        self.model.eval()
        with torch.inference_mode():
            entries = self.model.quantizer.embedding[torch.as_tensor(codes, device=self.model.quantizer.embedding.device)]
            return self.model.decoder(entries).cpu().numpy()

    def save(self, out_dir: Path) -> None:
        """Write model.safetensors, config.json and features.json."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, out_dir / MODEL_FILE)
        config = {"train": asdict(self.config), "model": asdict(self.model.config)}
        _write_json(out_dir / CONFIG_FILE, config)
        _write_json(out_dir / FEATURES_FILE, {**self.scaler.to_dict(), "meta": self.feature_meta})


@dataclass
class TrainResult:
    codebook: Codebook
    codes: np.ndarray  # code of every training row, in frame order
    metrics: dict
    shop_mix: dict
    types: dict
    history: list[dict]  # one dict per epoch: losses, batch perplexity, dead-code resets


def load_codebook(artifact_dir: Path, device: str = "cpu") -> Codebook:
    """Load a codebook artifact written by train_codebook (or Codebook.save)."""
    artifact_dir = Path(artifact_dir)
    for name in (MODEL_FILE, CONFIG_FILE, FEATURES_FILE):
        if not (artifact_dir / name).is_file():
            raise FileNotFoundError(f"{artifact_dir}: not a codebook artifact (missing {name})")
    config = json.loads((artifact_dir / CONFIG_FILE).read_text())
    features = json.loads((artifact_dir / FEATURES_FILE).read_text())
    known = {f.name for f in fields(TrainConfig)}
    train_config = TrainConfig(**{k: v for k, v in config["train"].items() if k in known})
    model = BuyerVQVAE(VQVAEConfig(**config["model"]))
    model.load_state_dict(load_file(artifact_dir / MODEL_FILE))
    model.to(device).eval()
    return Codebook(model, FeatureScaler.from_dict(features), train_config, features.get("meta", {}))


def read_features(path: Path) -> tuple[pd.DataFrame, list[FeatureColumn], dict]:
    """buyer_features.parquet -> (frame, feature columns, other metadata)."""
    columns, meta = read_feature_meta(Path(path))
    return pq.read_table(path).to_pandas(), columns, meta


def train_codebook(
    features: Path | pd.DataFrame,
    out_dir: Path | None = None,
    config: TrainConfig | None = None,
    *,
    columns: list[FeatureColumn] | None = None,
    meta: dict | None = None,
) -> TrainResult:
    """Train on a buyer_features.parquet path (or a frame plus its `columns` and `meta`), compute
    metrics, shop mixes and type profiles, and write the artifact to `out_dir` when given."""
    config = config or TrainConfig()
    if isinstance(features, (str, Path)):
        frame, columns, meta = read_features(Path(features))
    else:
        frame = features
        if columns is None:
            raise ValueError("train_codebook: pass `columns` (the FeatureColumns) with a DataFrame")
    meta = dict(meta or {})
    _check_frame(frame, columns)
    use_head = _resolve_conversion_head(config, frame, meta)

    device = _resolve_device(config.device)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    scaler = FeatureScaler.fit(frame, columns)
    scaled = scaler.transform(frame)
    converted = frame["converted"].to_numpy(dtype=np.float32) if "converted" in frame else None

    model_config = VQVAEConfig(
        n_features=len(columns),
        codebook_size=config.codebook_size,
        latent_dim=config.latent_dim,
        hidden_dim=config.hidden_dim,
        depth=config.depth,
        commitment_weight=config.commitment_weight,
        ema_decay=config.ema_decay,
        ema_eps=config.ema_eps,
        dead_code_threshold=config.dead_code_threshold,
        recent_buffer_size=config.recent_buffer_size,
        kmeans_iters=config.kmeans_iters,
        kmeans_restarts=config.kmeans_restarts,
        conversion_head=use_head,
    )
    model = BuyerVQVAE(model_config).to(device)
    weights = torch.tensor([config.decisive_weight if c.decisive else 1.0 for c in columns], device=device)
    x_all = torch.from_numpy(scaled).to(device)
    y_all = torch.from_numpy(converted).to(device) if use_head else None
    with _torch_threads(config.num_threads):
        history = _fit(model, x_all, y_all, weights, config)

    train_seconds = time.perf_counter() - started
    codebook = Codebook(model.eval(), scaler, config, meta)
    codes = codebook.assign_scaled(scaled)
    reconstruction = codebook.reconstruct_scaled(scaled, codes)
    names = scaler.names
    metrics = assignment_metrics(
        scaled,
        codes,
        config.codebook_size,
        feature_names=names,
        reconstruction=reconstruction,
        converted=converted,
        shop_ids=frame["shop_id"].to_numpy(),
        min_shop_buyers=config.min_shop_buyers,
        seed=config.seed,
    )
    metrics["conversion_head"] = use_head
    metrics["browse_only"] = bool(meta.get("browse_only", False))
    metrics["dead_code_resets"] = int(sum(h["resets"] for h in history))
    metrics["train_seconds"] = round(train_seconds, 2)
    metrics["device"] = str(device)
    shop_mix = shop_mix_json(frame["shop_id"].to_numpy(), codes, config.codebook_size)
    types = types_json(frame, scaled, codes, config.codebook_size, names, {c.name: c.group for c in columns})
    result = TrainResult(codebook, codes, metrics, shop_mix, types, history)
    if out_dir is not None:
        save_artifact(result, Path(out_dir))
    return result


def save_artifact(result: TrainResult, out_dir: Path) -> None:
    result.codebook.save(out_dir)
    # One shop per line: thousands of shops x K probabilities would be megabytes when indented.
    shops = ",\n".join(f"    {json.dumps(shop)}: {json.dumps(entry)}" for shop, entry in result.shop_mix["shops"].items())
    (out_dir / SHOP_MIX_FILE).write_text(
        f'{{\n  "codebook_size": {result.shop_mix["codebook_size"]},\n  "shops": {{\n{shops}\n  }}\n}}\n'
    )
    _write_json(out_dir / TYPES_FILE, result.types)
    _write_json(out_dir / METRICS_FILE, {**result.metrics, "history": result.history})


# ---------------------------------------------------------------------------------------------
def behaviour_loss(
    model: BuyerVQVAE, x: torch.Tensor, y: torch.Tensor | None, weights: torch.Tensor, config: TrainConfig, quantize: bool = True
) -> tuple[torch.Tensor, dict]:
    """Weighted reconstruction + commitment + conversion BCE; returns (total, parts for the log)."""
    out = model(x, quantize=quantize)
    reconstruction = (((out.reconstruction - x) ** 2) * weights).sum(1).mean() / weights.sum()
    total = reconstruction + out.commitment_loss
    parts = {"recon": reconstruction.item(), "commit": out.commitment_loss.item()}
    if y is not None and out.conversion_logit is not None:
        bce = F.binary_cross_entropy_with_logits(out.conversion_logit, y)
        total = total + config.conversion_weight * bce
        parts["bce"] = bce.item()
    return total, {**parts, "codes": out.codes}


def _fit(model: BuyerVQVAE, x: torch.Tensor, y: torch.Tensor | None, weights: torch.Tensor, config: TrainConfig) -> list[dict]:
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    batch_size = effective_batch_size(config, len(x))
    history: list[dict] = []
    # Drop the ragged last batch: a tiny batch would jolt the EMA cluster sizes.
    n_batches = max(len(x) // batch_size, 1)
    warmup_epochs = math.ceil(config.warmup_steps / n_batches)
    total_epochs = warmup_epochs + config.epochs
    bar = tqdm(range(total_epochs), desc="train-codebook", disable=not config.progress, unit="epoch")
    for epoch in bar:
        warming_up = epoch < warmup_epochs
        if epoch == warmup_epochs:
            _init_codebook_from_full_pass(model, x, batch_size, config.seed)
        model.train()
        sums: dict[str, float] = {}
        epoch_codes = []
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for b in range(n_batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            loss, parts = behaviour_loss(model, x[idx], None if y is None else y[idx], weights, config, quantize=not warming_up)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_codes.append(parts.pop("codes"))
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
        record = {"epoch": epoch, "phase": "warmup" if warming_up else "vq", **{k: v / n_batches for k, v in sums.items()}}
        record["resets"] = model.quantizer.resets_since_read()
        if not warming_up:
            codes = torch.cat(epoch_codes).cpu().numpy()
            usage = np.bincount(codes, minlength=config.codebook_size) / len(codes)
            used = usage[usage > 0]
            record["perplexity"] = float(np.exp(-(used * np.log(used)).sum()))
            if record["resets"]:
                log.info("epoch %d: reset %d dead codes", epoch, record["resets"])
        history.append(record)
        bar.set_postfix({k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items() if k not in ("epoch", "phase")})
    if config.epochs == 0:
        _init_codebook_from_full_pass(model, x, batch_size, config.seed)
    return history


def effective_batch_size(config: TrainConfig, n_rows: int) -> int:
    """config.batch_size, shrunk (not below 32, nor above n_rows) to give min_batches_per_epoch."""
    return max(1, min(config.batch_size, max(32, n_rows // max(config.min_batches_per_epoch, 1)), n_rows))


@torch.no_grad()
def _init_codebook_from_full_pass(model: BuyerVQVAE, x: torch.Tensor, batch_size: int, seed: int) -> None:
    model.eval()
    latents = torch.cat([model.encoder(x[i : i + 65536]) for i in range(0, len(x), 65536)])
    distinct = model.quantizer.init_codebook(latents, expected_batch_size=batch_size, seed=seed)
    if distinct < model.config.codebook_size:
        log.warning("only %d distinct encoder outputs for K=%d codes: the rest start as noisy copies", distinct, model.config.codebook_size)


def _resolve_conversion_head(config: TrainConfig, frame: pd.DataFrame, meta: dict) -> bool:
    browse_only = bool(meta.get("browse_only", False))
    has_label = "converted" in frame.columns
    if config.conversion_head is None:
        return has_label and not browse_only and config.conversion_weight > 0
    if config.conversion_head and not has_label:
        raise ValueError("conversion_head=True needs the info column 'converted' in the buyer features")
    if config.conversion_head and browse_only:
        log.warning("conversion head on browse-only features: purchase information reaches training")
    return bool(config.conversion_head)


def _check_frame(frame: pd.DataFrame, columns: list[FeatureColumn]) -> None:
    if not columns:
        raise ValueError("buyer features have no feature columns")
    missing = [c for c in (*BUYER_KEY, *(col.name for col in columns)) if c not in frame.columns]
    if missing:
        raise ValueError(f"buyer features lack columns {missing}")
    if len(frame) == 0:
        raise ValueError("buyer features have no rows")


@contextmanager
def _torch_threads(n: int | None):
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
