"""The fast sampler: each layer's activation at each position is computed once, and exactly.

The reference algorithm re-runs the whole prior for every position. Here every layer input that a causal window
reads lives in a per-layer cache grid (`cache.py`); a step gathers each conv's window at the step's positions (one
index and one matmul per conv), pushes those positions through every layer, writes each layer's inputs back to its
grid, draws the codes and writes their embeddings where later windows will read them. Attention keeps a key/value
cache and masks it to the positions sampled so far; where keys see their position's own code, a position's key and
value are completed with its code after the draw (`CausalSelfAttention.write_code`). Class embeddings, the top-code
condition stack, positional projections and packed weights are computed once per call, before the loop.

Schedule: with attention, one position per step in raster order. Without it, a position's dependence on row i - m
reaches at most m * r columns right of it (r = kernel_size // 2), so row i runs r + 1 columns behind row i - 1 and
all rows whose turn it is go in the same step: W + (r + 1)(H - 1) steps instead of H * W (253 instead of 4,096 for a
64x64 bottom map), bit-for-bit the same algorithm per position.

Eagerly (the host drives every step: the CPU, or CUDA without graphs), three things cut the work of a step without
changing what it computes. On the CPU in float32, every step matmul uses a weight prepacked once per process for
oneDNN (`cache.StepMatmul`), whose AVX-512 kernels run 1.7 to 3.4x faster than the BLAS behind torch.addmm on an AMD
EPYC with AVX-512 (on an AVX2-only CPU both run AVX2 kernels, and the two are within a few percent). In raster order,
each conv sums its taps on the rows above once per image row, for the whole row in one matmul, and a step only
gathers the taps to its left (`cache.ConvStep`). Attention reads only the key/value slots its positions reach
(`cache.KeyValueCache`). Together: 1.9x the plain step's speed on one core, for the default 64px priors at batch 64
with AVX-512 (benchmarks/synthesize_cpu.py). The wavefront stays the faster schedule without attention.

On CUDA a step is captured in a CUDA graph and replayed for every step of its width: it reads its positions from
the schedule through a counter on the device, so nothing in the loop waits on the host (uniforms are drawn up front,
codes are written into device buffers, no .item()); by default the captured step is the torch.compile'd one, which
fuses the step's element-wise kernels. Measured on an H100 at batch 64 (reference sizes, TF32 on both sides): 0.022 s
per image against 5.06 s for the reference algorithm; benchmarks/RESULTS.md.

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

import warnings
from dataclasses import dataclass
from functools import cache, partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from .cache import CacheSpec, GridLayout, Step, onednn_matmuls
from .sampling import (check_draw_args, draw_codes, evaluating, resolve_batch, resolve_keep, resolve_uniforms,
                       to_device)


@dataclass(frozen=True)
class StepOptions:
    """How `sample` runs its step (never which codes it draws, up to the dtype's rounding).

    dtype: compute dtype of the caches and matmuls (e.g. torch.bfloat16; None: the model's); codes are always drawn
    from float32 logits. use_cuda_graph: "auto" (on CUDA), True or False. compile: run the step through
    torch.compile (inductor, static shapes, one compiled step per width), which fuses its gathers, cache writes and
    element-wise chains; "auto": on CUDA, back to the plain step with a warning if compilation fails; True: on any
    device, errors raised. The first call in a process pays the compilation (about 20 s per step width; a wavefront
    has about log2(widest) + 1 widths); later calls of the same shapes reuse it.
    """

    dtype: torch.dtype | None = None
    use_cuda_graph: bool | str = "auto"
    compile: bool | str = "auto"

    def __post_init__(self) -> None:
        if self.use_cuda_graph not in (True, False, "auto"):
            raise UsageError(f"use_cuda_graph must be True, False or 'auto', not {self.use_cuda_graph!r}")
        if self.compile not in (True, False, "auto"):
            raise UsageError(f"compile must be True, False or 'auto', not {self.compile!r}")


def sample(model: nn.Module, labels: Tensor | None = None, condition: Tensor | None = None, *, n: int | None = None,
           temperature: float = 1.0, top_k: int | None = None, generator: torch.Generator | None = None,
           uniforms: Tensor | None = None, keep: tuple[Tensor, Tensor] | None = None,
           step: StepOptions = StepOptions(), return_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Codes (B, H, W) from the prior, the same as `sample_reference` given the same uniforms, much faster.

    n: the batch size when neither labels nor condition gives it. uniforms: (B, H * W) in raster order, else drawn
    once from `generator`. keep: (codes, mask), both (B, H, W): keep the given code where the mask is True (see
    `sample_reference`). step: dtype, CUDA graphs and torch.compile (`StepOptions`).
    return_logits: also return the logits (B, K, H, W) the codes were drawn from, before temperature and top_k.
    """
    config = model.config
    batch, device = resolve_batch(model, labels, condition, n)
    labels, condition = to_device(labels, device), to_device(condition, device)
    model.check_inputs(batch, labels, condition)
    check_draw_args(temperature, top_k)
    uniforms = resolve_uniforms(uniforms, batch, config.height * config.width, generator, device)
    keep = resolve_keep(keep, batch, config.height, config.width, device)
    if step.use_cuda_graph is True and device.type != "cuda":
        raise UsageError(f"CUDA graphs need the model on a CUDA device, not {device}")
    compile = ("fallback" if device.type == "cuda" else False) if step.compile == "auto" else step.compile
    with torch.no_grad(), evaluating(model):
        cuda_graph = step.use_cuda_graph is True or (step.use_cuda_graph == "auto" and device.type == "cuda")
        sampler = _CachedSampler(model, batch, labels, condition, uniforms, keep, temperature, top_k,
                                 step.dtype or next(model.parameters()).dtype, return_logits, compile,
                                 eager=not compile and not cuda_graph)
        sampler.run(cuda_graph=cuda_graph)
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
                 uniforms: Tensor, keep: tuple[Tensor | None, Tensor | None], temperature: float, top_k: int | None,
                 dtype: torch.dtype, record_logits: bool, compile: bool | str = False, eager: bool = False):
        config, device = model.config, uniforms.device
        layout = GridLayout(config.height, config.width, config.kernel_size)
        self.model, self.batch, self.temperature, self.top_k = model, batch, temperature, top_k
        plan = layout.plan(model.wavefront_skew)
        self.plan = plan.to(device)
        self.slots_used = (plan[:, :, 1] < layout.positions).sum(dim=1).tolist()  # per step, for the eager loop
        # per step, the key/value slots its positions reach: the eager loop's attention reads only that prefix
        self.kv_lengths = (plan[:, :, 1].masked_fill(plan[:, :, 1] >= layout.positions, -1).amax(dim=1) + 1).tolist()
        self.compile = compile  # False, True, or "fallback": compile, else the plain step with a warning
        self.compiled = bool(compile)
        # eager (the host drives every step): prepacked oneDNN matmuls on the CPU (`cache.StepMatmul`), and in raster
        # order the convs' above taps once per image row (`cache.ConvStep`)
        self.spec = CacheSpec(batch, layout, dtype, device, packed=eager and onednn_matmuls(device, dtype),
                              rows_above=eager and model.wavefront_skew is None)
        self.state = model.start_sampling(self.spec, labels, condition)
        self.uniforms = F.pad(uniforms, (0, 1))
        self.kept_codes, self.kept = (None, None) if keep[0] is None else (F.pad(t, (0, 1)) for t in keep)
        self.codes = torch.zeros(batch, layout.positions + 1, dtype=torch.long, device=device)
        self.logits = (torch.zeros(batch, layout.positions + 1, config.codebook_size, device=device)
                       if record_logits else None)

    def step(self, plan_row: Tensor, kv_length: int | None = None) -> None:
        """Logits at the row's positions, codes drawn and written where later positions read them. kv_length: how
        many key/value slots the positions reach (host-side knowledge; None reads the whole cache, masked)."""
        step = Step.from_plan_row(plan_row, self.batch, kv_length)
        logits = self.model.step(self.state, step)
        codes = draw_codes(logits, self.uniforms.index_select(1, step.raster).flatten(), self.temperature, self.top_k)
        if self.kept is not None:
            codes = torch.where(self.kept.index_select(1, step.raster).flatten(),
                                self.kept_codes.index_select(1, step.raster).flatten(), codes)
        self.codes.index_copy_(1, step.raster, codes.view(self.batch, step.slots))
        if self.logits is not None:
            self.logits.index_copy_(1, step.raster, logits.view(self.batch, step.slots, -1))
        self.model.write_codes(self.state, step, codes)

    def first_step(self, plan_row: Tensor) -> None:
        """The first step of a width, compiled when asked: compilation fails before the step changes any state, so
        the plain step can take over."""
        if self.compiled:
            try:
                with torch._dynamo.config.patch(recompile_limit=64):
                    _compiled_step()(self, plan_row)
                return
            except Exception as error:  # torch.compile raises many kinds (backend, tracing, toolchain)
                if self.compile is True:
                    raise
                warnings.warn(f"torch.compile failed, sampling without it: {type(error).__name__}: {error}",
                              RuntimeWarning, stacklevel=3)
                self.compiled = False
        self.step(plan_row)

    def next_step(self, plan_row: Tensor) -> None:
        if self.compiled:
            _compiled_step()(self, plan_row)
        else:
            self.step(plan_row)

    def run(self, cuda_graph: bool) -> None:
        if cuda_graph:
            self._run_cuda_graphs()
            return
        if not self.compiled:
            width = self.model.config.width
            for index, (plan_row, used, kv_length) in enumerate(zip(self.plan, self.slots_used, self.kv_lengths)):
                if self.spec.rows_above and index % width == 0 and index:  # raster order: step index = position
                    for conv in self.spec.conv_steps:
                        conv.row(index // width)
                self.step(plan_row[:used], kv_length)  # the host knows each step: no unused slots, no unread slots
            return
        widths, seen = self.widths(), set()  # compiled: the graphs' widths, so that few shapes get compiled
        for plan_row, used in zip(self.plan, self.slots_used):
            width = next(w for w in widths if w >= used)
            (self.next_step if width in seen else self.first_step)(plan_row[:width])
            seen.add(width)

    def widths(self) -> list[int]:
        """Step widths: halving from the widest step down to 1, so a wavefront's ramps do not pay for the full
        width."""
        widest = self.plan.shape[1]
        return sorted({-(-widest // 2**k) for k in range(widest.bit_length() + 1)})

    def _run_cuda_graphs(self) -> None:
        """Replay captured steps. A step reads its plan row through a counter on the device, so one graph serves every
        step of the same width; widths halve from the widest step down to 1, so a wavefront's ramps do not pay for
        the full width (`widths`). A width's graph is captured at its first step, which first runs on the side stream
        (compiling the step when asked, warming up cuBLAS and the allocator, as capture requires); capture records
        without running, and the counter moves on only when a replay runs."""
        step_index = torch.zeros(1, dtype=torch.long, device=self.plan.device)
        widths = self.widths()

        def counted_step(width: int, first: bool = False) -> None:
            (self.first_step if first else self.next_step)(self.plan.index_select(0, step_index)[0, :width])
            step_index.add_(1)

        graphs: dict[int, torch.cuda.CUDAGraph] = {}
        side = torch.cuda.Stream()
        for used in self.slots_used:
            width = next(w for w in widths if w >= used)
            if width in graphs:
                graphs[width].replay()
                continue
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                counted_step(width, first=True)
            pool = next(iter(graphs.values())).pool() if graphs else None  # one memory pool: steps never overlap
            graphs[width] = _capture(partial(counted_step, width), side, pool)
            torch.cuda.current_stream().wait_stream(side)


@cache
def _compiled_step():
    """`_CachedSampler.step` through torch.compile, made on first use (importing dynamo takes a while). One function
    for all calls: its compiled graphs are reused while the shapes stay, and no sampler holds a reference to it (a
    bound method would tie the sampler's caches in a reference cycle until the garbage collector runs). Each width,
    prior and option set is its own static-shape graph: more than dynamo's default limit of 8 per function (a
    wavefront alone has about log2(widest) + 1 widths), hence the higher limit where a step first runs."""
    return torch.compile(_CachedSampler.step, fullgraph=True, dynamic=False)


def _capture(fn, stream: torch.cuda.Stream, pool) -> torch.cuda.CUDAGraph:
    """fn's kernels recorded, not run, into a CUDA graph."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream):
        fn()
    return graph
