"""What the cached sampler keeps between steps: padded activation grids, the positions of a step, the schedule.

Every layer input that a causal window reads is kept for the whole batch on a padded grid, channels last:
(B, cells, C) with cells = (H + r + 1) * (W + 2r) and r = kernel_size // 2. The r zero rows on top and r zero
columns on each side stand in for the convolutions' zero padding, so a causal window is a fixed list of cell
offsets and one gather reads it; the extra bottom row is scratch for the unused slots of a step, which no real
window ever reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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

    def plan(self, skew: int | None) -> Tensor:
        """The sampling schedule as a (steps, slots, 2 + taps) table: per slot [cell, raster index, window cells].

        skew None: raster order, one position per step (attention needs every earlier position). skew s: row i runs
        s columns behind row i - 1, and every row whose turn it is advances in the same step, which is exact when a
        position's dependencies on row i - m reach at most m * (s - 1) columns to its right. Unused slots point at
        the scratch cell and raster index H * W, where the sampler keeps a scratch code and uniform.
        """
        height, width, n = self.height, self.width, self.positions
        if skew is None:
            steps = [[p] for p in range(n)]
        else:
            steps = [[i * width + t - skew * i for i in range(height) if 0 <= t - skew * i < width]
                     for t in range(width + skew * (height - 1))]
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

    @classmethod
    def from_plan_row(cls, row: Tensor, batch: int) -> Step:
        return cls(cells=row[:, 0], raster=row[:, 1], windows=row[:, 2:], batch=batch)

    @property
    def slots(self) -> int:
        return self.cells.shape[0]

    def rows(self, table: Tensor) -> Tensor:
        """Rows of a per-position table (H * W + 1, D) at this step's positions, for every image: (batch * slots, D).
        A view when there is one slot, so callers must not write into it."""
        picked = table.index_select(0, self.raster)
        return picked.unsqueeze(0).expand(self.batch, -1, -1).reshape(-1, picked.shape[-1])


class Grid:
    """One layer input on the padded grid for the whole batch, written a step at a time, read as causal windows."""

    def __init__(self, batch: int, layout: GridLayout, channels: int, dtype: torch.dtype, device: torch.device):
        self.data = torch.zeros(batch, layout.cells, channels, dtype=dtype, device=device)

    def write(self, step: Step, values: Tensor) -> None:
        self.data.index_copy_(1, step.cells, values.reshape(step.batch, step.slots, -1).to(self.data.dtype))

    def windows(self, step: Step, taps: slice) -> Tensor:
        """(batch * slots, taps * channels): each position's window, flattened tap-major like the packed weights."""
        return self.data[:, step.windows[:, taps]].reshape(step.batch * step.slots, -1)


@dataclass(frozen=True)
class CacheSpec:
    """Batch size, grid, dtype and device of one sampling call: what layers need to set up their caches."""

    batch: int
    layout: GridLayout
    dtype: torch.dtype
    device: torch.device

    def grid(self, channels: int) -> Grid:
        return Grid(self.batch, self.layout, channels, self.dtype, self.device)

    def cast(self, tensor: Tensor) -> Tensor:
        return tensor.detach().to(device=self.device, dtype=self.dtype)

    def matrix(self, weight: Tensor) -> Tensor:
        """A Linear or 1x1 conv weight (out, in[, 1, 1]) as the (in, out) right operand of a step matmul."""
        return self.cast(weight.reshape(weight.shape[0], -1).t())
