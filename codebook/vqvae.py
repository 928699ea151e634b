"""The behaviour-aware VQ-VAE: an MLP encoder, an EMA vector quantizer, an MLP decoder and a
conversion head on the quantized code.

The quantizer follows vector-quantize-pytorch: one module, every option named with a default.

* Straight-through estimator: the decoder sees the codebook entry, gradients flow to the encoder
  as if quantization were the identity.
* Commitment loss pulls encoder outputs towards their entry (weight `commitment_weight`).
* The codebook is not learned by gradients but by exponential moving averages (PAPER.md, step 2):
  per code we keep `cluster_size` (EMA of how many batch rows chose it) and `embed_avg` (EMA of
  the sum of those rows); the entry is their ratio, with Laplace smoothing so that an empty code
  never divides by zero. The invariant `embedding == embed_avg / smoothed(cluster_size)` holds
  after initialisation, after every update and after every dead-code reset.
* Initialisation by k-means over encoder outputs of a full pass over the training set
  (`init_codebook`): k-means++ seeding, Lloyd iterations to convergence, best inertia of
  `kmeans_restarts` runs. With fewer distinct outputs than K, every distinct output becomes a centre
  and the remaining entries are copies of them plus small Gaussian noise (`init_noise`); such
  copies usually win no rows, so they start dead and the dead-code reset moves them to real
  outputs as soon as training sees some.
* Dead-code reset (as in VQ-VAE-2 / Jukebox): after each training update, codes whose EMA
  cluster size fell below `dead_code_threshold` are moved onto random encoder outputs from a
  small ring buffer of recent training batches; embedding, embed_avg and cluster_size are
  rewritten together. `resets_since_read()` tells the trainer how many codes it reset.
* In eval mode nothing changes: codebook and buffers are bit-identical after any number of
  eval forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans, kmeans_plusplus
from torch import nn


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # straight-through: forward value is the entry, gradient goes to z
    codes: torch.Tensor  # int64, one per row
    commitment_loss: torch.Tensor  # already multiplied by commitment_weight


class VectorQuantizer(nn.Module):
    def __init__(
        self,
        dim: int,
        codebook_size: int = 32,
        *,
        commitment_weight: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 1.0,
        recent_buffer_size: int = 4096,
        init_noise: float = 1e-3,
        kmeans_iters: int = 300,
        kmeans_restarts: int = 10,
        reset_dead_codes: bool = True,
    ):
        """
        dim: size of the encoder output vectors.
        codebook_size: K, number of codebook entries (buyer types).
        commitment_weight: weight of ||z - sg(e)||^2 in the loss.
        decay: EMA memory gamma in e_k <- gamma e_k + (1 - gamma) zbar_k.
        eps: Laplace smoothing of the EMA cluster sizes.
        dead_code_threshold: a code whose EMA cluster size (in rows per batch) is below this is
            dead and gets reset.
        recent_buffer_size: how many recent training encoder outputs are kept to draw resets from.
        init_noise: std (relative to the data's std) of the noise on duplicated centres when
            there are fewer distinct outputs than K.
        kmeans_iters: at most this many Lloyd iterations after k-means++ seeding at init
            (0: seeding only); scikit-learn stops earlier once the assignment converges.
        kmeans_restarts: k-means++ runs at init, the one with the lowest inertia wins. One run
            lands in a poor local optimum often: on the planted-type data single runs on the
            same points give ARI 0.55-0.70 against 0.83 for the best of ten.
        reset_dead_codes: turn the dead-code reset off (for ablations and tests).
        """
        super().__init__()
        self.dim = dim
        self.codebook_size = codebook_size
        self.commitment_weight = commitment_weight
        self.decay = decay
        self.eps = eps
        self.dead_code_threshold = dead_code_threshold
        self.init_noise = init_noise
        self.kmeans_iters = kmeans_iters
        self.kmeans_restarts = kmeans_restarts
        self.reset_dead_codes_enabled = reset_dead_codes

        self.register_buffer("embedding", torch.randn(codebook_size, dim))
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_avg", self.embedding.clone())
        self.register_buffer("initted", torch.tensor(False))
        # Training-only state: not saved with the model.
        self.register_buffer("recent", torch.zeros(recent_buffer_size, dim), persistent=False)
        self.register_buffer("recent_count", torch.tensor(0), persistent=False)
        self._resets = 0

    # -- assignment ------------------------------------------------------------------------
    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry (squared Euclidean) for every row of z."""
        distances = (
            z.pow(2).sum(1, keepdim=True)
            - 2 * z @ self.embedding.t()
            + self.embedding.pow(2).sum(1)[None, :]
        )
        return distances.argmin(dim=1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if self.training and not bool(self.initted):
            # The trainer initialises from a full pass; this fallback keeps the module usable alone.
            self.init_codebook(z.detach())
        codes = self.nearest_codes(z)
        chosen = F.embedding(codes, self.embedding)
        if self.training:
            self._ema_update(z.detach(), codes)
            self._remember(z.detach())
            if self.reset_dead_codes_enabled:
                self._resets += self.reset_dead_codes()
        commitment = F.mse_loss(z, chosen.detach()) * self.commitment_weight
        quantized = z + (chosen - z).detach()
        return QuantizerOutput(quantized, codes, commitment)

    # -- EMA bookkeeping ---------------------------------------------------------------------
    def smoothed_cluster_size(self, cluster_size: torch.Tensor | None = None) -> torch.Tensor:
        """Laplace-smoothed cluster sizes: never zero, same total as the raw sizes."""
        size = self.cluster_size if cluster_size is None else cluster_size
        total = size.sum()
        return (size + self.eps) / (total + self.codebook_size * self.eps) * total

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        counts = torch.bincount(codes, minlength=self.codebook_size).to(z.dtype)
        sums = torch.zeros_like(self.embed_avg).index_add_(0, codes, z)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.embedding.copy_(self.embed_avg / self.smoothed_cluster_size()[:, None])

    @torch.no_grad()
    def _remember(self, z: torch.Tensor) -> None:
        """Append z to the ring buffer of recent encoder outputs."""
        capacity = self.recent.shape[0]
        z = z[-capacity:]
        start = int(self.recent_count) % capacity
        positions = (torch.arange(len(z), device=z.device) + start) % capacity
        self.recent[positions] = z
        self.recent_count += len(z)

    @torch.no_grad()
    def reset_dead_codes(self) -> int:
        """Move dead codes onto random recent encoder outputs; return how many were reset.

        All three EMA buffers are rewritten together: the reset entries get cluster size
        `dead_code_threshold` (so they must win rows soon or be reset again) and the matching
        embed_avg; every entry is then recomputed from embed_avg / smoothed size, which keeps
        the invariant exact even though the smoothing total changed.
        """
        dead = self.cluster_size < self.dead_code_threshold
        n_dead = int(dead.sum())
        available = min(int(self.recent_count), self.recent.shape[0])
        if n_dead == 0 or available == 0:
            return 0
        picks = torch.randint(0, available, (n_dead,), device=self.recent.device)
        new_entries = self.recent[picks]
        self.cluster_size[dead] = self.dead_code_threshold
        smoothed = self.smoothed_cluster_size()
        self.embed_avg[dead] = new_entries * smoothed[dead][:, None]
        self.embedding.copy_(self.embed_avg / smoothed[:, None])
        return n_dead

    def resets_since_read(self) -> int:
        """Number of dead-code resets since the last call (for the training log)."""
        count, self._resets = self._resets, 0
        return count

    # -- initialisation ----------------------------------------------------------------------
    @torch.no_grad()
    def init_codebook(self, z: torch.Tensor, *, expected_batch_size: int | None = None, seed: int = 0) -> int:
        """Initialise the codebook by k-means (k-means++ seeding, `kmeans_restarts` runs of up to
        `kmeans_iters` Lloyd steps, lowest inertia wins) over z, the
        encoder outputs of a full pass over the training set. Return the number of distinct
        centres found (< K when the data has fewer distinct outputs than K).

        embed_avg and cluster_size start from the k-means assignment: cluster_size is each
        centre's share of rows times `expected_batch_size` (the EMA tracks rows per batch, so
        the sizes start at the level they will keep), embed_avg = centre * smoothed size.
        """
        points = z.detach().double().cpu().numpy()
        centres, distinct = _kmeans_centres(
            points, self.codebook_size, seed, self.kmeans_iters, self.init_noise, self.kmeans_restarts
        )
        centres_t = torch.as_tensor(centres, dtype=self.embedding.dtype, device=self.embedding.device)
        self.embedding.copy_(centres_t)
        codes = self.nearest_codes(z.to(self.embedding.dtype))
        counts = torch.bincount(codes, minlength=self.codebook_size).to(self.embedding.dtype)
        rows_per_batch = expected_batch_size or len(z)
        self.cluster_size.copy_(counts * min(rows_per_batch, len(z)) / len(z))
        self.embed_avg.copy_(centres_t * self.smoothed_cluster_size()[:, None])
        self.embedding.copy_(self.embed_avg / self.smoothed_cluster_size()[:, None])
        self.initted.fill_(True)
        return distinct


def _kmeans_centres(
    points: np.ndarray, k: int, seed: int, iters: int, noise: float, restarts: int = 1
) -> tuple[np.ndarray, int]:
    """K centres for `points`: k-means++ seeding refined by up to `iters` Lloyd iterations, the
    best of `restarts` runs by inertia (scikit-learn); or, with fewer distinct points than k,
    all distinct points plus noisy copies."""
    distinct_points = np.unique(points, axis=0)
    if len(distinct_points) <= k:
        rng = np.random.default_rng(seed)
        scale = noise * (points.std() if points.std() > 0 else 1.0)
        copies = distinct_points[np.arange(k - len(distinct_points)) % len(distinct_points)]
        extra = copies + rng.normal(0.0, scale, copies.shape)
        return np.concatenate([distinct_points, extra]), len(distinct_points)
    if iters <= 0:
        centres, _ = kmeans_plusplus(points, k, random_state=seed)
        return centres, k
    km = KMeans(k, init="k-means++", n_init=max(restarts, 1), max_iter=iters, random_state=seed).fit(points)
    return km.cluster_centers_, k


# ---------------------------------------------------------------------------------------------
@dataclass
class VQVAEConfig:
    n_features: int
    codebook_size: int = 32
    latent_dim: int = 8  # see TrainConfig.latent_dim for why narrow
    hidden_dim: int = 64
    depth: int = 2  # hidden layers in the encoder, and again in the decoder
    commitment_weight: float = 1.0  # see TrainConfig.commitment_weight
    ema_decay: float = 0.9  # see TrainConfig.ema_decay for why short
    ema_eps: float = 1e-5
    dead_code_threshold: float = 1.0
    recent_buffer_size: int = 4096
    kmeans_iters: int = 300
    kmeans_restarts: int = 10
    conversion_head: bool = True


class VQVAEOutput(NamedTuple):
    reconstruction: torch.Tensor
    codes: torch.Tensor
    commitment_loss: torch.Tensor
    conversion_logit: torch.Tensor | None  # predicted from the quantized code
    latent: torch.Tensor  # encoder output before quantization


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with GELU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class BuyerVQVAE(nn.Module):
    """Scaled buyer features -> encoder -> quantizer -> decoder -> reconstructed features,
    plus a conversion logit from the quantized code (when `conversion_head`)."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        hidden = [config.hidden_dim] * config.depth
        self.encoder = mlp([config.n_features, *hidden, config.latent_dim])
        self.quantizer = VectorQuantizer(
            config.latent_dim,
            config.codebook_size,
            commitment_weight=config.commitment_weight,
            decay=config.ema_decay,
            eps=config.ema_eps,
            dead_code_threshold=config.dead_code_threshold,
            recent_buffer_size=config.recent_buffer_size,
            kmeans_iters=config.kmeans_iters,
            kmeans_restarts=config.kmeans_restarts,
        )
        self.decoder = mlp([config.latent_dim, *hidden, config.n_features])
        self.conversion_head = nn.Linear(config.latent_dim, 1) if config.conversion_head else None

    def forward(self, x: torch.Tensor, *, quantize: bool = True) -> VQVAEOutput:
        """quantize=False bypasses the quantizer (autoencoder warm-up before codebook init)."""
        latent = self.encoder(x)
        if quantize:
            quantized, codes, commitment = self.quantizer(latent)
        else:
            quantized, codes, commitment = latent, torch.full((len(x),), -1, device=x.device), x.new_zeros(())
        logit = self.conversion_head(quantized).squeeze(1) if self.conversion_head is not None else None
        return VQVAEOutput(self.decoder(quantized), codes, commitment, logit, latent)

    @torch.no_grad()
    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Codes for a batch of scaled features: one encoder pass and a nearest-entry lookup."""
        return self.quantizer.nearest_codes(self.encoder(x))
