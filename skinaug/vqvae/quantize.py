"""Vector quantizer with an EMA codebook, data-dependent initialisation and dead-code restart.

The codebook is not trained by gradients: it follows exponential moving averages of the encoder
outputs assigned to each code (van den Oord et al. 2017, appendix). All codebook maths runs in fp32
with autocast off, because bf16 distances pick wrong codes and bf16 EMA sums drift.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def nearest_codes(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the closest code (squared Euclidean distance) for each row of `vectors` (N, D)."""
    distances = (
        vectors.pow(2).sum(1, keepdim=True)
        - 2 * vectors @ codebook.t()
        + codebook.pow(2).sum(1)[None, :]
    )
    return distances.argmin(1)


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks under torch.distributed, so every rank applies the same codebook update."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _broadcast(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's value everywhere: random restarts are decided once and applied identically."""
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(tensor, 0)
    return tensor


class VectorQuantizer(nn.Module):
    """Maps (B, D, H, W) encoder outputs to the nearest of `codebook_size` codes.

    Returns the straight-through quantized tensor (gradients flow to the encoder as if quantization
    were the identity), the code map (B, H, W) and the commitment loss ||z - sg(q)||^2.
    """

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        restart_after: int = 200,
    ):
        super().__init__()
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.decay = decay
        self.eps = eps
        # a code not chosen in this many training steps is re-seeded from recent encoder outputs
        self.restart_after = restart_after
        self.register_buffer("codebook", torch.randn(codebook_size, code_dim))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("code_sum", self.codebook.clone())
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.restarted_total = 0  # for metrics; not part of the state
        self._initialised_seen = False

    def forward(self, z: torch.Tensor):
        with torch.autocast(device_type=z.device.type, enabled=False):
            z32 = z.float()
            vectors = z32.permute(0, 2, 3, 1).reshape(-1, self.code_dim)
            if self.training and not self._initialised_seen:
                if not bool(self.initialised):
                    self._initialise(vectors)
                self._initialised_seen = True  # spares a host sync per step once known
            codes = nearest_codes(vectors, self.codebook)
            if self.training:
                self._ema_update(vectors, codes)
            quantized = F.embedding(codes, self.codebook)
            quantized = quantized.view(z.shape[0], z.shape[2], z.shape[3], self.code_dim).permute(0, 3, 1, 2)
            commitment = F.mse_loss(z32, quantized.detach())
            straight_through = z32 + (quantized - z32).detach()
        code_map = codes.view(z.shape[0], z.shape[2], z.shape[3])
        return straight_through.to(z.dtype), code_map, commitment

    def lookup(self, code_map: torch.Tensor) -> torch.Tensor:
        """(B, H, W) codes -> (B, D, H, W) code vectors."""
        return F.embedding(code_map.long(), self.codebook).permute(0, 3, 1, 2)

    @torch.no_grad()
    def _random_rows(self, vectors: torch.Tensor, count: int) -> torch.Tensor:
        """`count` encoder outputs drawn at random (with replacement and a little noise if too few)."""
        if vectors.shape[0] >= count:
            picked = vectors[torch.randperm(vectors.shape[0], device=vectors.device)[:count]]
        else:
            picked = vectors[torch.randint(vectors.shape[0], (count,), device=vectors.device)]
            picked = picked + 0.01 * vectors.std() * torch.randn_like(picked)
        return _broadcast(picked.contiguous())

    @torch.no_grad()
    def _initialise(self, vectors: torch.Tensor) -> None:
        """Codebook from the first batch's encoder outputs, so no code starts far from the data."""
        seeds = self._random_rows(vectors, self.codebook_size)
        self.codebook.copy_(seeds)
        self.code_sum.copy_(seeds)
        self.cluster_size.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, vectors: torch.Tensor, codes: torch.Tensor) -> None:
        # scatter-adds, not a one-hot matmul: at 256px a batch has ~500k vectors and the one-hot would be 0.5 GB
        counts = _all_reduce_sum(torch.bincount(codes, minlength=self.codebook_size).to(vectors.dtype))
        sums = _all_reduce_sum(torch.zeros_like(self.code_sum).index_add_(0, codes, vectors))
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.code_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        # Laplace smoothing keeps rarely used codes from dividing by ~0
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        self.codebook.copy_(self.code_sum / smoothed[:, None])

        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        dead = self.steps_unused >= self.restart_after
        if bool(dead.any()):
            self._restart(dead, vectors)

    @torch.no_grad()
    def _restart(self, dead: torch.Tensor, vectors: torch.Tensor) -> None:
        """Re-seed dead codes from this batch's encoder outputs (the 'recent' ones)."""
        index = dead.nonzero().squeeze(1)
        seeds = self._random_rows(vectors, index.numel())
        self.codebook[index] = seeds
        self.code_sum[index] = seeds
        self.cluster_size[index] = 1.0
        self.steps_unused[index] = 0
        self.restarted_total += index.numel()
