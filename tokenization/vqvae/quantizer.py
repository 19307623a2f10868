"""Vector quantiser with an exponential-moving-average codebook and dead-code re-initialisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# At most this many distance entries (rows x codebook) are materialised at once.
_MAX_DISTANCE_ELEMENTS = 1 << 25


@dataclass
class QuantizerOutput:
    """Result of quantising a batch of encoder outputs."""

    quantized: torch.Tensor  # [b, d, h, w], straight-through: forward = codebook vectors, grad -> encoder
    codes: torch.Tensor  # [b, h, w] int64
    commitment_loss: torch.Tensor  # scalar: mean ||z - sg(e)||^2 (not yet multiplied by beta)
    counts: torch.Tensor  # [codebook_size] how often each code was chosen in this batch


class EMAQuantizer(nn.Module):
    """Nearest-neighbour quantiser; the codebook follows EMA cluster means (VQ-VAE-2), no codebook gradient."""

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 0.03,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.decay = decay
        self.eps = eps
        self.dead_code_threshold = dead_code_threshold
        self.register_buffer("codebook", torch.randn(codebook_size, code_dim))  # [K, d]
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # [K] EMA of counts per batch
        self.register_buffer("embed_avg", self.codebook.clone())  # [K, d] EMA of summed vectors
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # Data-parallel training: every rank holds an equal share of the batch; the EMA statistics and the
        # re-seeding draws are taken over the whole (rank-ordered) batch, so all ranks keep the same codebook.
        self.distributed = False

    @torch.no_grad()
    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector (squared L2) for each row of flat [n, d] -> [n]."""
        with torch.autocast(device_type=flat.device.type, enabled=False):  # distances need fp32
            return self._nearest_fp32(flat.float(), self.codebook.float())

    def _nearest_fp32(self, flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        code_sq = codebook.pow(2).sum(1)  # [K]
        chunk = max(1, _MAX_DISTANCE_ELEMENTS // self.codebook_size)
        out = []
        for start in range(0, flat.shape[0], chunk):
            rows = flat[start : start + chunk]
            # ||x||^2 is constant per row, so it does not change the argmin
            dist = torch.addmm(code_sq.unsqueeze(0), rows, codebook.t(), alpha=-2.0)  # [n, K]
            out.append(dist.argmin(1))
        return torch.cat(out) if out else flat.new_zeros(0, dtype=torch.long)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of codes [b, h, w] -> [b, d, h, w]."""
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2).contiguous()  # [b, h, w, d] -> [b, d, h, w]

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantise encoder outputs z [b, d, h, w]; in training mode also update the codebook."""
        b, d, h, w = z.shape
        z32 = z.float()
        flat = z32.permute(0, 2, 3, 1).reshape(-1, d)  # [b, d, h, w] -> [b*h*w, d]
        if self.training and not bool(self.initialized):
            self.init_codebook(flat.detach())
        codes = self.nearest(flat.detach())  # [b*h*w]
        quant = F.embedding(codes, self.codebook).view(b, h, w, d).permute(0, 3, 1, 2)  # -> [b, d, h, w]
        commitment = F.mse_loss(z32, quant.detach())
        counts = torch.bincount(codes, minlength=self.codebook_size).to(z32.dtype)
        if self.training:
            self.ema_update(flat.detach(), codes)
            self.reinit_dead_codes(flat.detach())
        quantized = (z32 + (quant - z32).detach()).to(z.dtype)  # straight-through estimator
        return QuantizerOutput(quantized, codes.view(b, h, w), commitment, counts)

    @torch.no_grad()
    def init_codebook(self, flat: torch.Tensor) -> None:
        """Initialise the codebook from random encoder outputs flat [n, d] (k-means-style seeding)."""
        picks = self._sample(flat, self.codebook_size)
        mean_count = self._rows(flat) / self.codebook_size
        self.codebook.copy_(picks)
        self.cluster_size.fill_(mean_count)
        self.embed_avg.copy_(picks * mean_count)
        self.initialized.fill_(True)

    @torch.no_grad()
    def ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        """One EMA step: cluster sizes and sums move toward this batch's; codebook = smoothed means."""
        counts = torch.bincount(codes, minlength=self.codebook_size).to(flat.dtype)  # [K]
        sums = torch.zeros_like(self.embed_avg).index_add_(0, codes, flat.to(self.embed_avg.dtype))  # [K, d]
        if self.distributed:  # the whole batch's counts and sums (one fused all-reduce)
            stats = torch.cat([counts.unsqueeze(1), sums], dim=1)  # [K, 1 + d]
            dist.all_reduce(stats)
            counts, sums = stats[:, 0], stats[:, 1:]
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        # Laplace smoothing keeps empty clusters from dividing by zero
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        self.codebook.copy_(self.embed_avg / smoothed.unsqueeze(1))

    @torch.no_grad()
    def dead_codes(self, num_vectors: int) -> torch.Tensor:
        """Bool [K]: codes whose EMA usage fell below threshold x the uniform share of num_vectors."""
        return self.cluster_size < self.dead_code_threshold * num_vectors / self.codebook_size

    @torch.no_grad()
    def reinit_dead_codes(self, flat: torch.Tensor) -> None:
        """Move dead codes onto random encoder outputs of this batch (no host sync)."""
        if self.dead_code_threshold <= 0:
            return
        dead = self.dead_codes(self._rows(flat))  # [K]
        picks = self._sample(flat, self.codebook_size)  # [K, d]
        mean_count = self._rows(flat) / self.codebook_size
        self.codebook.copy_(torch.where(dead.unsqueeze(1), picks, self.codebook))
        self.embed_avg.copy_(torch.where(dead.unsqueeze(1), picks * mean_count, self.embed_avg))
        self.cluster_size.copy_(torch.where(dead, torch.full_like(self.cluster_size, mean_count), self.cluster_size))

    def _rows(self, flat: torch.Tensor) -> int:
        """Rows of the whole batch: this rank's times the number of ranks when distributed."""
        return flat.shape[0] * (dist.get_world_size() if self.distributed else 1)

    def _sample(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        """k random rows of the whole batch (without replacement when possible); the same draw on every rank."""
        n = self._rows(flat)
        if n >= k:
            index = torch.randperm(n, device=flat.device)[:k]
        else:
            index = torch.randint(0, n, (k,), device=flat.device)
        if not self.distributed:
            return flat[index]
        # rows of the rank-ordered concatenation: each rank fills in the rows it holds, zeros elsewhere, summed
        local, start = flat.shape[0], dist.get_rank() * flat.shape[0]
        mine = (index >= start) & (index < start + local)
        rows = torch.where(mine.unsqueeze(1), flat[(index - start).clamp(0, local - 1)], torch.zeros_like(flat[:1]))
        dist.all_reduce(rows)
        return rows
