"""What the cached sampler keeps between steps: padded activation grids, the positions of a step, the schedule.

Every layer input that a causal window reads is kept for the whole batch on a padded grid, channels last:
(B, cells, C) with cells = (H + r + 1) * (W + 2r) and r = kernel_size // 2. The r zero rows on top and r zero
columns on each side stand in for the convolutions' zero padding, so a causal window is a fixed list of cell
offsets and one gather reads it; the extra bottom row is scratch for the unused slots of a step, which no real
window ever reads.

Also here: how a step multiplies (`StepMatmul`: prepacked oneDNN weights on the CPU), how a conv reads its grid
(`ConvStep`: the above taps once per image row in raster order) and the attention's key/value cache
(`KeyValueCache`: only the valid prefix is read when the step knows it). The ONNX export (`skinaug.onnx.export`)
swaps grids and key/value caches for its own, which read graph inputs, through the same `CacheSpec` interface.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import UsageError
from ..sampling import sampling_steps


def tap_slice(kernel_size: int, above: bool, left: str | None) -> slice:
    """The taps of one causal conv within the shared window order (see `GridLayout.window_offsets`).

    above: the r rows above, k columns centred on the position. left: "exclusive" (r columns to the left),
    "inclusive" (those and the centre) or None. Every combination is a contiguous run of the window.
    """
    r = kernel_size // 2
    n_above = r * kernel_size
    n_left = {None: 0, "exclusive": r, "inclusive": r + 1}[left]
    return slice(0 if above else n_above, n_above + n_left)


@dataclass(frozen=True)
class GridLayout:
    height: int
    width: int
    kernel_size: int

    @property
    def r(self) -> int:
        return self.kernel_size // 2

    @property
    def positions(self) -> int:
        return self.height * self.width

    @property
    def padded_width(self) -> int:
        return self.width + 2 * self.r

    @property
    def cells(self) -> int:
        return (self.height + self.r + 1) * self.padded_width

    def window_offsets(self) -> list[int]:
        """Cell offsets of a position's causal window, in the order packed conv weights use: the r rows above
        (k columns each, row-major), then r columns to the left, then the centre."""
        r, wp = self.r, self.padded_width
        above = [dy * wp + dx for dy in range(-r, 0) for dx in range(-r, r + 1)]
        return above + list(range(-r, 0)) + [0]

    def cell(self, i, j):
        """The grid cell of position (i, j) (ints or tensors)."""
        return (i + self.r) * self.padded_width + j + self.r

    def plan(self, skew: int | None) -> Tensor:
        """The sampling schedule as a (steps, slots, 2 + taps) table: per slot [cell, raster index, window cells].

        The steps are `skinaug.sampling.sampling_steps` (raster order for skew None, else the wavefront), which the
        onnx sampler follows too. Unused slots point at the scratch cell and raster index H * W, where the sampler
        keeps a scratch code and uniform.
        """
        height, width, n = self.height, self.width, self.positions
        steps = sampling_steps(height, width, skew)
        raster = torch.full((len(steps), max(map(len, steps))), n)
        for t, members in enumerate(steps):
            raster[t, : len(members)] = torch.tensor(members)
        r, wp = self.r, self.padded_width
        index = torch.arange(n)
        cell_of = torch.cat([(index // width + r) * wp + index % width + r, torch.tensor([(height + r) * wp + r])])
        cells = cell_of[raster]
        windows = cells[..., None] + torch.tensor(self.window_offsets())
        return torch.cat([cells[..., None], raster[..., None], windows], dim=-1)


@dataclass
class Step:
    """The positions one sampling step computes, `slots` per image, and what layers read at them.

    Step activations are (batch * slots, channels), image-major.
    """

    cells: Tensor  # (slots,) grid cell of each position
    raster: Tensor  # (slots,) raster index i * W + j; H * W for an unused slot
    windows: Tensor  # (slots, taps) grid cells of each position's causal window
    batch: int
    condition: Tensor | None = None  # (batch * slots, C) condition features at these positions
    kv_length: int | None = None  # attention reads key/value slots [0, kv_length) only (None: all, masked)
    _flat: dict = field(default_factory=dict, repr=False)  # flat_windows, per tap run

    @classmethod
    def from_plan_row(cls, row: Tensor, batch: int, kv_length: int | None = None) -> Step:
        return cls(cells=row[:, 0], raster=row[:, 1], windows=row[:, 2:], batch=batch, kv_length=kv_length)

    @property
    def slots(self) -> int:
        return self.cells.shape[0]

    def flat_windows(self, taps: slice, cells: int) -> Tensor:
        """(batch * slots * taps,) rows of a grid flattened to (batch * cells, C): every image's windows, image-major,
        in the packed weights' tap order. Made once per step and tap run; all grids share the layout."""
        key = (taps.start, taps.stop)
        if key not in self._flat:
            image = torch.arange(self.batch, device=self.windows.device).mul_(cells)
            self._flat[key] = (image[:, None, None] + self.windows[None, :, taps]).flatten()
        return self._flat[key]

    def rows(self, table: Tensor) -> Tensor:
        """Rows of a per-position table (H * W + 1, D) at this step's positions, for every image: (batch * slots, D).
        A view when there is one slot, so callers must not write into it."""
        picked = table.index_select(0, self.raster)
        return picked.unsqueeze(0).expand(self.batch, -1, -1).reshape(-1, picked.shape[-1])


class Grid:
    """One layer input on the padded grid for the whole batch, written a step at a time, read as causal windows."""

    def __init__(self, batch: int, layout: GridLayout, channels: int, dtype: torch.dtype, device: torch.device):
        self.layout = layout
        self.data = torch.zeros(batch, layout.cells, channels, dtype=dtype, device=device)

    def write(self, step: Step, values: Tensor) -> None:
        self.data.index_copy_(1, step.cells, values.reshape(step.batch, step.slots, -1).to(self.data.dtype))

    def windows(self, step: Step, taps: slice) -> Tensor:
        """(batch * slots, taps * channels): each position's window, flattened tap-major like the packed weights.
        One index_select of whole channel rows (several times faster on the CPU than advanced indexing)."""
        rows = self.data.view(-1, self.data.shape[-1]).index_select(0, step.flat_windows(taps, self.data.shape[1]))
        return rows.view(step.batch * step.slots, -1)

    def row_windows(self, i: int, taps: slice) -> Tensor:
        """(W * B, taps * channels): the windows of every position of row i, position-major (all images at column 0,
        then column 1, ...), for `ConvStep.row`."""
        layout, (batch, cells, channels) = self.layout, self.data.shape
        offsets = torch.tensor(layout.window_offsets()[taps], device=self.data.device)
        positions = layout.cell(i, torch.arange(layout.width, device=self.data.device))
        image = torch.arange(batch, device=self.data.device) * cells
        index = (positions[:, None, None] + image[None, :, None] + offsets[None, None]).flatten()
        return self.data.view(-1, channels).index_select(0, index).view(layout.width * batch, -1)


class KeyValueCache:
    """Attention keys and values of the positions sampled so far, by raster index: (2, B, heads, slots, head_dim),
    slots = H * W + 1 (the last is scratch) rounded up to a multiple of 16. A position attends to the slots up to its
    own (or only those before it: `attend`'s `earlier`); when the step knows how far its positions reach
    (`Step.kv_length`, the eager loop's host-side plan), only that prefix is read, else the whole cache, masked (static
    shapes for CUDA graphs and torch.compile)."""

    def __init__(self, batch: int, heads: int, head_dim: int, positions: int, dtype: torch.dtype,
                 device: torch.device):
        slots = -(-(positions + 1) // 16) * 16
        self.heads = heads
        self.data = torch.zeros(2, batch, heads, slots, head_dim, dtype=dtype, device=device)
        self.slot_index = torch.arange(slots, device=device)

    def attend(self, step: Step, query: Tensor, key_value: Tensor, earlier: bool = False) -> Tensor:
        """query (batch * slots, C), key_value (batch * slots, 2C) at the step's positions -> attended
        (batch * slots, C). The keys and values are stored first: a position attends to itself, or with `earlier`
        only to the positions before it (zeros for position 0, which has none)."""
        batch, slots = step.batch, step.slots
        self.data.index_copy_(3, step.raster, self._by_slot(step, key_value))
        cache, slot_index = self.data, self.slot_index
        if step.kv_length is not None:
            cache, slot_index = cache[:, :, :, : step.kv_length], slot_index[: step.kv_length]
        # a handful of queries against the cache: plain matmuls, where fused kernels would tile 64 queries at a time
        query = query.reshape(batch, slots, self.heads, -1).transpose(1, 2)
        scores = torch.matmul(query, cache[0].transpose(-1, -2))
        hidden = slot_index >= step.raster[:, None] if earlier else slot_index > step.raster[:, None]
        weights = scores.masked_fill_(hidden, float("-inf")).softmax(dim=-1)
        if earlier:  # position 0 masks every slot: its NaN weights become zeros, and so does what it attends
            weights = weights.nan_to_num_(0.0)
        return torch.matmul(weights, cache[1]).transpose(1, 2).reshape(batch * slots, -1)

    def add(self, step: Step, key_value: Tensor) -> None:
        """Adds key_value (batch * slots, 2C) to the stored keys and values of the step's positions."""
        self.data.index_copy_(3, step.raster, self.data.index_select(3, step.raster) + self._by_slot(step, key_value))

    def _by_slot(self, step: Step, key_value: Tensor) -> Tensor:
        """(batch * slots, 2C) -> (2, B, heads, slots, head_dim), the cache's layout."""
        return key_value.reshape(step.batch, step.slots, 2, self.heads, -1).permute(2, 0, 3, 1, 4)


class StepMatmul:
    """x @ weight (+ bias) (+ add) at a step's positions; weight (in, out), bias (out,), add (rows, out).

    packed: the weight is prepacked for oneDNN's matmul (`torch.ops.mkldnn._linear_pointwise`), which picks its
    kernels by the CPU's features, on AMD as on Intel. Where the CPU has AVX-512 that is 1.7 to 3.4x the speed of
    `torch.addmm` (MKL, which runs its AVX2 kernels on AMD CPUs) at the step shapes on one core of the AMD EPYC (Zen 5)
    of benchmarks/RESULTS.md; on an AVX2-only CPU (AMD Zen 2/3, older Intel) both libraries run AVX2 kernels and
    oneDNN is 1.0 to 1.5x addmm, the whole sampler 0.98 to 1.02x (RESULTS.md, "Synthesis ... on this CPU").
    A weight is packed once per process (`_packed_if_faithful` keeps it for later calls with the same weight).
    Otherwise (CUDA, bfloat16, torch.compile, a torch without oneDNN, SKINAUG_STEP_MATMUL=addmm) a plain addmm."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, packed: bool = False):
        self.weight, self.bias, self.packed = weight, bias, None
        if packed:
            self.packed = _packed_if_faithful(weight, bias)

    def __call__(self, x: Tensor, add: Tensor | None = None) -> Tensor:
        if self.packed is not None:
            out = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
            return out if add is None else out.add_(add)
        bias = add if self.bias is None else (self.bias if add is None else add + self.bias)
        return x @ self.weight if bias is None else torch.addmm(bias, x, self.weight)


_PACKED: OrderedDict = OrderedDict()  # key -> (weight copy, bias copy, packed weight), least recently used first
_PACKED_LIMIT = 512  # weights kept: a two-level model has about 80


def _packed_if_faithful(weight: Tensor, bias: Tensor | None):
    """The oneDNN-packed weight (`_pack`), or None for the plain addmm path; kept for the process's later calls.

    Every sampling call builds its step matmuls again (a batch of `synthesize` is one call per prior); packing them
    afresh cost 58 ms of CPU per batch of 64 for the 64px model on one core, 5.7% of the batch. A kept packing is
    reused only for a weight equal to the one it was made from (compared in full, about 0.1 ms for the largest
    weight: a freed tensor's memory may come back holding other values) under the same matmul precision."""
    key = (weight.data_ptr(), tuple(weight.shape), weight.stride(), weight.dtype,
           None if bias is None else (bias.data_ptr(), tuple(bias.shape)), torch.get_float32_matmul_precision())
    kept = _PACKED.get(key)
    if kept is not None and torch.equal(kept[0], weight) and (bias is None or torch.equal(kept[1], bias)):
        _PACKED.move_to_end(key)
        return kept[2]
    packed = _pack(weight, bias)
    if packed is not None:
        _PACKED[key] = (weight.clone(), None if bias is None else bias.clone(), packed)
        _PACKED.move_to_end(key)
        while len(_PACKED) > _PACKED_LIMIT:
            _PACKED.popitem(last=False)
    return packed


def _pack(weight: Tensor, bias: Tensor | None):
    """The oneDNN-packed weight, or None (the plain addmm path) unless a probe through the packed op runs and agrees
    with addmm: an internal op may be missing, fail only when first run, or (under a host application's
    `set_float32_matmul_precision("medium")` or ONEDNN_DEFAULT_FPMATH_MODE) compute in lower precision."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.t().contiguous())
        probe = torch.linspace(-1.0, 1.0, 2 * weight.shape[0], dtype=weight.dtype, device=weight.device)
        probe = probe.reshape(2, weight.shape[0])
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, bias, "none", [], "")
    except Exception:  # noqa: BLE001  any failure of an internal op means: use the public one
        return None
    want = probe @ weight if bias is None else torch.addmm(bias, probe, weight)
    scale = want.abs().max().item() + 1.0
    if got.shape != want.shape or not torch.allclose(got, want, rtol=0, atol=1e-5 * scale):
        return None
    return packed


class ConvStep:
    """A causal conv at sampling time: its packed weight (`StepMatmul`) and the grid it reads.

    rows_above: the taps on the r rows above (r * k of the window's taps) are computed once per image row, for the
    whole row in one matmul of (W * B) rows (`row`, when the rows above are final: raster order), leaving a step
    only the taps to its left and its centre. Same arithmetic, split in two sums; larger matmuls, a third of the
    gathering, and no work on the padding rows above the first row. Otherwise one matmul over the whole window."""

    def __init__(self, spec: CacheSpec, grid, taps: slice, weight: Tensor, bias: Tensor | None):
        layout = spec.layout
        n_above = layout.r * layout.kernel_size
        above_taps = max(0, min(taps.stop, n_above) - taps.start)
        self.grid, self.taps, self.width, self.batch = grid, taps, layout.width, spec.batch
        self.split = spec.rows_above and above_taps > 0
        if not self.split:
            self.full = spec.matmul(weight, bias)
            return
        channels = weight.shape[0] // (taps.stop - taps.start)
        self.above = spec.matmul(weight[: above_taps * channels])
        self.above_taps = slice(taps.start, taps.start + above_taps)
        self.left_taps = slice(n_above, taps.stop)
        self.left = spec.matmul(weight[above_taps * channels :], bias) if taps.stop > n_above else None
        self.bias = None if self.left is not None or bias is None else spec.cast(bias)
        self.rows = spec.zeros(layout.width, spec.batch, weight.shape[1])  # (W, B, out): row 0 reads only padding
        spec.conv_steps.append(self)

    def row(self, i) -> None:
        """The above taps' sums at every position of row i: its rows above must be final."""
        windows = self.grid.row_windows(i, self.above_taps)  # (W * B, taps * C), position-major
        self.rows = self.above(windows).view(self.width, self.batch, -1)

    def __call__(self, step: Step, add: Tensor | None = None) -> Tensor:
        """(batch * slots, out) at the step's positions, plus `add` (rows, e.g. a gate bias)."""
        if not self.split:
            return self.full(self.grid.windows(step, self.taps), add)
        above = self.rows.index_select(0, step.raster % self.width)  # (slots, B, out)
        above = above[0] if step.slots == 1 else above.transpose(0, 1).reshape(step.batch * step.slots, -1)
        if add is not None:
            above = above + add
        if self.left is not None:
            return self.left(self.grid.windows(step, self.left_taps), above)
        return above if self.bias is None else above + self.bias


STEP_MATMULS = ("packed", "addmm")


def step_matmul_choice() -> str:
    """How CPU float32 step matmuls run: "packed" (oneDNN, the default) or "addmm" (torch.addmm), from the
    environment variable SKINAUG_STEP_MATMUL, read at every sampling call. benchmarks/synthesize_cpu.py measures its
    baseline arm with "addmm" in the same process."""
    choice = os.environ.get("SKINAUG_STEP_MATMUL", "packed").strip().lower() or "packed"
    if choice not in STEP_MATMULS:
        raise UsageError(f"SKINAUG_STEP_MATMUL={choice!r}: use packed or addmm")
    return choice


def onednn_matmuls(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether step matmuls should use prepacked oneDNN weights (`StepMatmul`): float32 on the CPU, with oneDNN,
    unless SKINAUG_STEP_MATMUL=addmm (`step_matmul_choice`)."""
    return (device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise") and step_matmul_choice() == "packed")


@dataclass(frozen=True)
class CacheSpec:
    """Batch size, grid, dtype and device of one sampling call: what layers need to set up their caches.
    packed: step matmuls with prepacked oneDNN weights (`StepMatmul`); never under torch.compile.
    rows_above: convs sum their above taps once per image row (`ConvStep`); the sampler then calls `row` on every
    one in `conv_steps` at the start of each row (raster order, eager loop only). code_readers: the layers whose caches
    also take the drawn codes (attention whose keys see their position's own code)."""

    batch: int
    layout: GridLayout
    dtype: torch.dtype
    device: torch.device
    packed: bool = False
    rows_above: bool = False
    conv_steps: list = field(default_factory=list)
    code_readers: list = field(default_factory=list)  # (layer, state): `layer.write_code` after every draw

    def grid(self, channels: int) -> Grid:
        return Grid(self.batch, self.layout, channels, self.dtype, self.device)

    def key_value_cache(self, heads: int, head_dim: int) -> KeyValueCache:
        return KeyValueCache(self.batch, heads, head_dim, self.layout.positions, self.dtype, self.device)

    def cast(self, tensor: Tensor) -> Tensor:
        return tensor.detach().to(device=self.device, dtype=self.dtype)

    def zeros(self, *shape: int) -> Tensor:
        return torch.zeros(*shape, dtype=self.dtype, device=self.device)

    def conv(self, grid: Grid, taps: slice, weight: Tensor, bias: Tensor | None) -> ConvStep:
        """A causal conv reading `grid`, from its (taps * in, out) weight in window order."""
        return ConvStep(self, grid, taps, self.cast(weight), None if bias is None else self.cast(bias))

    def matmul(self, weight: Tensor, bias: Tensor | None = None) -> StepMatmul:
        """A step matmul from an (in, out) weight (cast here) and an optional bias."""
        return StepMatmul(self.cast(weight), None if bias is None else self.cast(bias), self.packed)

    def linear(self, weight: Tensor, bias: Tensor | None = None) -> StepMatmul:
        """A step matmul from a Linear or 1x1 conv weight (out, in[, 1, 1]) and an optional bias."""
        return self.matmul(weight.reshape(weight.shape[0], -1).t(), bias)
