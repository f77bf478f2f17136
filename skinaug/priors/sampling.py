"""Drawing codes, shared by both samplers, and the reference sampler: the simple algorithm, kept as ground truth."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..backends.base import check_draw_args  # noqa: F401  (also imported from here by fast.py and refine.py)
from ..errors import UsageError


# Twin of skinaug.sampling.draw_codes (numpy, for the onnx backend): change both together.
def draw_codes(logits: Tensor, uniforms: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
    """logits (B, K), uniforms (B,) in [0, 1) -> codes (B,).

    softmax(logits / temperature), restricted to the top_k largest logits and renormalised when top_k is given, then
    inverse-CDF: the first code whose cumulative probability exceeds the uniform. Deterministic given the uniforms, so
    two samplers whose logits agree draw the same codes; no host synchronisation, so it can sit in a CUDA graph.
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probabilities = logits.softmax(dim=-1)
    cdf = probabilities.cumsum(dim=-1)
    codes = torch.searchsorted(cdf, uniforms.float().reshape(-1, 1).contiguous(), right=True).squeeze(-1)
    # rounding can leave cdf[-1] a hair below the uniform: the draw then falls to the last code that may be drawn
    # (with top-k, codes past it have probability 0), never past it
    last_possible = logits.shape[-1] - 1 - (probabilities > 0).flip(-1).to(torch.int8).argmax(dim=-1)
    return torch.minimum(codes, last_possible)


def sample_reference(model: nn.Module, labels: Tensor | None = None, condition: Tensor | None = None, *,
                     n: int | None = None, temperature: float = 1.0, top_k: int | None = None,
                     generator: torch.Generator | None = None, uniforms: Tensor | None = None,
                     keep: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Codes (B, H, W): for each position in raster order, run the whole prior on the rows up to the current one
    (what the public VQ-VAE-2 code does) and draw from that position's logits. H * W forwards: slow, obviously
    right, and the yardstick for `sample`.

    keep: (codes (B, H, W), mask (B, H, W) bool): where the mask is True the given code is kept instead of drawn,
    and later positions are conditioned on it (resampling inside a region)."""
    config = model.config
    batch, device = resolve_batch(model, labels, condition, n)
    labels, condition = to_device(labels, device), to_device(condition, device)
    model.check_inputs(batch, labels, condition)
    check_draw_args(temperature, top_k)
    positions = config.height * config.width
    uniforms = resolve_uniforms(uniforms, batch, positions, generator, device)
    kept_codes, kept = resolve_keep(keep, batch, config.height, config.width, device)
    codes = torch.zeros(batch, positions, dtype=torch.long, device=device)
    with torch.no_grad(), evaluating(model):
        for p in range(positions):
            i, j = divmod(p, config.width)
            logits = model(codes[:, : (i + 1) * config.width].view(batch, i + 1, -1), labels, condition)[:, :, i, j]
            codes[:, p] = draw_codes(logits, uniforms[:, p], temperature, top_k)
            if keep is not None:
                codes[:, p] = torch.where(kept[:, p], kept_codes[:, p], codes[:, p])
    return codes.view(batch, config.height, config.width)


def resolve_batch(model: nn.Module, labels: Tensor | None, condition: Tensor | None,
                  n: int | None) -> tuple[int, torch.device]:
    """Batch size (from labels, condition or n, which must agree) and the model's device."""
    sizes = {t.shape[0] for t in (labels, condition) if t is not None} | ({n} if n is not None else set())
    if not sizes:
        raise UsageError("give n (the batch size) when sampling without labels or a condition")
    if len(sizes) > 1:
        raise UsageError(f"labels, condition and n disagree on the batch size: {sorted(sizes)}")
    return sizes.pop(), next(model.parameters()).device


def resolve_uniforms(uniforms: Tensor | None, batch: int, positions: int, generator: torch.Generator | None,
                     device: torch.device) -> Tensor:
    """(B, H * W) uniforms in raster order: the given ones, or drawn once up front from `generator` (on the model's
    device), so a seed fixes the whole sample and the step loop never touches an RNG."""
    if uniforms is None:
        return torch.rand(batch, positions, generator=generator, device=device)
    if tuple(uniforms.shape) != (batch, positions):
        raise UsageError(f"uniforms must be (batch, H*W) = ({batch}, {positions}), not {tuple(uniforms.shape)}")
    return uniforms.to(device=device, dtype=torch.float32)


def resolve_keep(keep: tuple[Tensor, Tensor] | None, batch: int, height: int, width: int,
                 device: torch.device) -> tuple[Tensor | None, Tensor | None]:
    """(codes, mask) flattened to (B, H * W) in raster order, or (None, None)."""
    if keep is None:
        return None, None
    codes, mask = keep
    if tuple(codes.shape) != (batch, height, width) or tuple(mask.shape) != (batch, height, width):
        raise UsageError(f"keep must be (codes, mask), both of shape ({batch}, {height}, {width})")
    return codes.to(device=device, dtype=torch.long).flatten(1), mask.to(device=device, dtype=torch.bool).flatten(1)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the duration, then the caller's mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def to_device(tensor: Tensor | None, device: torch.device) -> Tensor | None:
    return None if tensor is None else tensor.to(device)
