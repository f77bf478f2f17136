"""The fast sampler: each layer's activation at each position is computed once, and exactly.

The reference algorithm re-runs the whole prior for every position. Here every layer input that a causal window
reads lives in a per-layer cache grid (`cache.py`); a step gathers each conv's window at the step's positions (one
index and one matmul per conv), pushes those positions through every layer, writes each layer's inputs back to its
grid, draws the codes and writes their embeddings where later windows will read them. Attention keeps a key/value
cache and masks it to the positions sampled so far. Class embeddings, the top-code condition stack, positional
projections and packed weights are computed once per call, before the loop.

Schedule: with attention, one position per step in raster order. Without it, a position's dependence on row i - m
reaches at most m * r columns right of it (r = kernel_size // 2), so row i runs r + 1 columns behind row i - 1 and
all rows whose turn it is go in the same step: W + (r + 1)(H - 1) steps instead of H * W (253 instead of 4,096 for a
64x64 bottom map), bit-for-bit the same algorithm per position.

On CUDA one step is captured in a CUDA graph and replayed: the step reads its positions from a schedule table
through a counter on the device, so nothing in the loop waits on the host (uniforms are drawn up front, codes are
written into device buffers, no .item()).

Memory of the caches, with batch B, r = kernel_size // 2, cells = (H + r + 1)(W + 2r), N = H * W, C channels and
L = n_blocks * n_res_blocks, in the sampling dtype:
    grids            (2L + 1) * B * cells * C          (Gated PixelCNN: (2L - 1) * B * cells * C)
    attention        2 * B * N * C per block with attention (keys and values, N rounded up to a multiple of 16)
    condition        B * (N + 1) * C when conditioned on the top codes
    logits           B * (N + 1) * K in float32, only with return_logits
i.e. O(B * L * C * H * W). The reference bottom prior (64x64, C 256, L 16) at batch 64 in float32: 33 grids of
64 * 67 * 68 * 256 * 4 bytes, about 9.8 GB (150 MB per image); half that in bfloat16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from .cache import CacheSpec, GridLayout, Step
from .sampling import check_draw_args, draw_codes, evaluating, resolve_batch, resolve_uniforms, to_device


def sample(model: nn.Module, labels: Tensor | None = None, condition: Tensor | None = None, *, n: int | None = None,
           temperature: float = 1.0, top_k: int | None = None, generator: torch.Generator | None = None,
           uniforms: Tensor | None = None, dtype: torch.dtype | None = None, use_cuda_graph: bool | str = "auto",
           return_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Codes (B, H, W) from the prior, the same as `sample_reference` given the same uniforms, much faster.

    n: the batch size when neither labels nor condition gives it. uniforms: (B, H * W) in raster order, else drawn
    once from `generator`. dtype: compute dtype of the caches and matmuls (e.g. torch.bfloat16); codes are always
    drawn from float32 logits. use_cuda_graph: "auto" (on CUDA), True or False. return_logits: also return the
    logits (B, K, H, W) the codes were drawn from, before temperature and top_k.
    """
    config = model.config
    batch, device = resolve_batch(model, labels, condition, n)
    labels, condition = to_device(labels, device), to_device(condition, device)
    model.check_inputs(batch, labels, condition)
    check_draw_args(temperature, top_k)
    uniforms = resolve_uniforms(uniforms, batch, config.height * config.width, generator, device)
    if use_cuda_graph not in (True, False, "auto"):
        raise UsageError(f"use_cuda_graph must be True, False or 'auto', not {use_cuda_graph!r}")
    if use_cuda_graph is True and device.type != "cuda":
        raise UsageError(f"CUDA graphs need the model on a CUDA device, not {device}")
    with torch.no_grad(), evaluating(model):
        sampler = _CachedSampler(model, batch, labels, condition, uniforms, temperature, top_k,
                                 dtype or next(model.parameters()).dtype, return_logits)
        sampler.run(cuda_graph=use_cuda_graph is True or (use_cuda_graph == "auto" and device.type == "cuda"))
    positions = config.height * config.width
    codes = sampler.codes[:, :positions].view(batch, config.height, config.width)
    if not return_logits:
        return codes
    logits = sampler.logits[:, :positions].transpose(1, 2).reshape(batch, -1, config.height, config.width)
    return codes, logits


class _CachedSampler:
    """The state of one sampling call and its step. All buffers keep one scratch position (raster index H * W) for
    the unused slots of wavefront steps."""

    def __init__(self, model: nn.Module, batch: int, labels: Tensor | None, condition: Tensor | None,
                 uniforms: Tensor, temperature: float, top_k: int | None, dtype: torch.dtype, record_logits: bool):
        config, device = model.config, uniforms.device
        layout = GridLayout(config.height, config.width, config.kernel_size)
        self.model, self.batch, self.temperature, self.top_k = model, batch, temperature, top_k
        plan = layout.plan(model.wavefront_skew)
        self.plan = plan.to(device)
        self.slots_used = (plan[:, :, 1] < layout.positions).sum(dim=1).tolist()  # per step, for the eager loop
        self.state = model.start_sampling(CacheSpec(batch, layout, dtype, device), labels, condition)
        self.uniforms = F.pad(uniforms, (0, 1))
        self.codes = torch.zeros(batch, layout.positions + 1, dtype=torch.long, device=device)
        self.logits = (torch.zeros(batch, layout.positions + 1, config.codebook_size, device=device)
                       if record_logits else None)

    def step(self, plan_row: Tensor) -> None:
        """Logits at the row's positions, codes drawn and written where later positions read them."""
        step = Step.from_plan_row(plan_row, self.batch)
        logits = self.model.step(self.state, step)
        codes = draw_codes(logits, self.uniforms.index_select(1, step.raster).flatten(), self.temperature, self.top_k)
        self.codes.index_copy_(1, step.raster, codes.view(self.batch, step.slots))
        if self.logits is not None:
            self.logits.index_copy_(1, step.raster, logits.view(self.batch, step.slots, -1))
        self.model.write_codes(self.state, step, codes)

    def run(self, cuda_graph: bool) -> None:
        if not cuda_graph:  # the host knows the step: skip the wavefront's unused slots
            for plan_row, used in zip(self.plan, self.slots_used):
                self.step(plan_row[:used])
            return
        # One graph for every step: the step reads its plan row through a counter on the device. The first step runs
        # eagerly on a side stream, which warms up cuBLAS and the allocator as capture requires; capturing records
        # the step without running it, so the replays carry on from step 1.
        step_index = torch.zeros(1, dtype=torch.long, device=self.plan.device)

        def counted_step() -> None:
            self.step(self.plan.index_select(0, step_index)[0])
            step_index.add_(1)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            counted_step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            counted_step()
        for _ in range(self.plan.shape[0] - 1):
            graph.replay()
