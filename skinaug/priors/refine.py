"""Refinement of masked resampling: Gibbs sweeps that re-draw each resampled code given all of its neighbours.

Sampling with some codes kept (`keep` in `sample`) draws a resampled position p from p(c_p | codes before p) in
raster order: it cannot see the kept codes below p or to its right, so the drawn region disagrees with them along
its lower and right edges. A sweep visits the resampled positions in raster order and re-draws each from its
conditional given every other code of the grid,

    p(c_p | rest)  proportional to  prod over q >= p of p(c_q | codes before q)   (no factor before p involves c_p),

computed exactly for a candidate set: the `candidates` likeliest codes of p's raster conditional (every code when
`candidates` >= K). Each candidate's grid is teacher-forced through the prior, all candidates of all images that
resample p in one batched forward (cut into chunks by `FORWARD_BUDGET_BYTES`), so a sweep over M positions costs M
such forwards, plus M forwards of the rows up to p's for the candidate sets when they are not the whole codebook.

With temperature T every factor is softmax(logits / T): the distribution the raster sampler draws from. At T = 1 with
every code a candidate a sweep is a Gibbs sweep of the prior's distribution of the region given the kept codes, which
leaves that distribution unchanged and moves a raster draw towards it; with fewer candidates each step is the
conditional restricted to the likeliest codes, as top_k restricts the raster draw. Uniforms are drawn once up front
(sweeps, B, H * W) from the caller's generator, so a seed fixes the refined codes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import UsageError
from .sampling import check_draw_args, draw_codes, evaluating, to_device

# What one teacher-forced forward of candidate grids may hold, counted per grid as its float32 logits plus four
# activation maps: it sets how many grids go in one forward. The reference bottom prior (64x64, K 512, 256 channels):
# 24 MiB a grid, 85 grids a forward; the 64px one (16x16, K 256, 128 channels): 768 KiB a grid, 2,730 grids.
FORWARD_BUDGET_BYTES = 2 << 30


def refine_codes(model: nn.Module, codes: Tensor, region: Tensor, labels: Tensor | None = None,
                 condition: Tensor | None = None, *, sweeps: int = 1, candidates: int = 32, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 uniforms: Tensor | None = None) -> Tensor:
    """Codes (B, H, W) after `sweeps` Gibbs sweeps over `region` (B, H, W) bool, True where codes are re-drawn;
    codes outside it are never changed. candidates: codes considered per position (at most K; with top_k, at most
    top_k). uniforms: (sweeps, B, H * W), else drawn from `generator` on the model's device. See the module
    docstring."""
    config = model.config
    batch, height, width = codes.shape
    if (height, width) != (config.height, config.width) or tuple(region.shape) != tuple(codes.shape):
        raise UsageError(f"codes and region must both be (B, {config.height}, {config.width}), "
                         f"not {tuple(codes.shape)} and {tuple(region.shape)}")
    if sweeps < 0:
        raise UsageError(f"sweeps must not be negative, not {sweeps}")
    if candidates < 1:
        raise UsageError(f"candidates must be at least 1, not {candidates}")
    check_draw_args(temperature, top_k)
    device = next(model.parameters()).device
    labels, condition = to_device(labels, device), to_device(condition, device)
    model.check_inputs(batch, labels, condition)
    positions = height * width
    if uniforms is None:
        uniforms = torch.rand(sweeps, batch, positions, generator=generator, device=device)
    elif tuple(uniforms.shape) != (sweeps, batch, positions):
        raise UsageError(f"uniforms must be (sweeps, batch, H*W) = ({sweeps}, {batch}, {positions}), "
                         f"not {tuple(uniforms.shape)}")
    uniforms = uniforms.to(device=device, dtype=torch.float32)
    codes = codes.to(device=device, dtype=torch.long).flatten(1).clone()
    region = region.to(device=device, dtype=torch.bool).flatten(1)
    order = region.any(dim=0).nonzero().flatten().tolist()
    with torch.no_grad(), evaluating(model):
        for sweep in range(sweeps):
            for position in order:
                images = region[:, position].nonzero().flatten()
                log_probs, choices = conditional_log_probs(
                    model, codes[images].view(-1, height, width), position, pick(labels, images),
                    pick(condition, images), candidates=candidates, temperature=temperature, top_k=top_k)
                drawn = draw_codes(log_probs, uniforms[sweep, images, position])
                codes[images, position] = choices.gather(1, drawn[:, None]).squeeze(1)
    return codes.view(batch, height, width)


def conditional_log_probs(model: nn.Module, codes: Tensor, position: int, labels: Tensor | None = None,
                          condition: Tensor | None = None, *, candidates: int = 32, temperature: float = 1.0,
                          top_k: int | None = None) -> tuple[Tensor, Tensor]:
    """The conditional of the code at raster `position` given every other code of each grid (B, H, W), over a
    candidate set: (log-probabilities (B, n), candidate codes (B, n)), normalised over the n candidates, which are
    in increasing code order (so a draw does not hang on the order of near-equal logits)."""
    with torch.no_grad(), evaluating(model):
        return _conditional_log_probs(model, codes, position, labels, condition, candidates, temperature, top_k)


def _conditional_log_probs(model, codes, position, labels, condition, candidates, temperature, top_k):
    config = model.config
    batch, width = codes.shape[0], config.width
    row, column = divmod(position, width)
    size = min(candidates, top_k or config.codebook_size, config.codebook_size)
    if size < config.codebook_size:
        # the raster conditional at p reads only the rows up to p's (causality): its likeliest codes are the candidates
        logits = model(codes[:, : row + 1], labels, condition)[:, :, row, column]
        choices = logits.topk(size, dim=1).indices.sort(dim=1).values
    else:
        choices = torch.arange(size, device=codes.device).expand(batch, size)
    grids = codes.flatten(1).repeat_interleave(size, dim=0)
    grids[:, position] = choices.flatten()
    grid_bytes = 4 * config.height * width * (config.codebook_size + 4 * config.channels)
    per_forward = max(1, FORWARD_BUDGET_BYTES // grid_bytes)
    repeat = lambda t: None if t is None else t.repeat_interleave(size, dim=0)  # noqa: E731
    labels, condition = repeat(labels), repeat(condition)
    scores = torch.cat([
        log_likelihood(model, grids[start : start + per_forward].view(-1, config.height, width),
                       pick(labels, slice(start, start + per_forward)),
                       pick(condition, slice(start, start + per_forward)), temperature=temperature, start=position)
        for start in range(0, grids.shape[0], per_forward)])
    return scores.view(batch, size).log_softmax(dim=1).float(), choices


def log_likelihood(model: nn.Module, codes: Tensor, labels: Tensor | None = None, condition: Tensor | None = None,
                   *, temperature: float = 1.0, start: int = 0) -> Tensor:
    """(B,) float64: the teacher-forced sum over raster positions q >= start of log softmax(logits_q / T)[c_q]."""
    row = start // model.config.width
    logits = model(codes, labels, condition)[:, :, row:]  # the rows above start's hold none of the summed terms
    log_probs = (logits.float() / temperature).log_softmax(dim=1).gather(1, codes[:, None, row:]).flatten(1)
    return log_probs[:, start - row * model.config.width :].double().sum(dim=1)


def pick(tensor: Tensor | None, index) -> Tensor | None:
    return None if tensor is None else tensor[index]
