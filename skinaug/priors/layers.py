"""Building blocks of both priors. Each cached layer has a full-grid `forward` and, next to it, a `step` computing
the same function at one sampling step's positions from its caches (see `cache.py`).

Causality: an activation at position p = (i, j) depends only on codes strictly before p in raster order (keys and
values of attention that sees each position's own code aside: they are read only by later positions). Every causal
conv reads r = kernel_size // 2 rows above (k columns centred on j) and/or up to r columns to the left on row i, with
or without the centre. So a position can be pushed through all layers as soon as its window is written, and an
activation's dependence on row i - m reaches at most m * r columns right of j, which lets the sampler run rows as a
wavefront when there is no attention.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import CacheSpec, ConvStep, Grid, Step, tap_slice


class CausalConv2d(nn.Module):
    """A causal k x k conv kept as two parts: `above` (rows i-r..i-1, columns j-r..j+r) and `left` (row i, columns
    j-r..j-1, plus j when inclusive). The parts are plain convolutions for training and one gathered window times
    one packed matrix when sampling."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, above: bool = True,
                 left: str | None = "inclusive", bias: bool = True):
        super().__init__()
        r = kernel_size // 2
        n_left = {None: 0, "exclusive": r, "inclusive": r + 1}[left]
        self.r, self.left = r, left
        self.taps = tap_slice(kernel_size, above, left)
        self.weight_above = nn.Parameter(torch.empty(out_channels, in_channels, r, kernel_size)) if above else None
        self.weight_left = nn.Parameter(torch.empty(out_channels, in_channels, 1, n_left)) if n_left else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # nn.Conv2d's default scale, with the fan-in of the taps actually used
        bound = 1 / math.sqrt(in_channels * (self.taps.stop - self.taps.start))
        for weight in (self.weight_above, self.weight_left):
            if weight is not None:
                nn.init.uniform_(weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        r, out = self.r, 0
        if self.weight_above is not None:  # r zero rows on top, last row dropped: output row i ends at input row i-1
            out = F.conv2d(F.pad(x, (r, r, r, -1)), self.weight_above)
        if self.weight_left is not None:
            out = out + F.conv2d(F.pad(x, (r, 0 if self.left == "inclusive" else -1, 0, 0)), self.weight_left)
        return out if self.bias is None else out + self.bias[:, None, None]

    def pack(self, spec: CacheSpec, grid: Grid) -> ConvStep:
        """The conv reading `grid` at sampling time: its (taps * in, out) weight in the window's tap order and its
        bias (see `cache.ConvStep`)."""
        parts = [w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]) for w in (self.weight_above, self.weight_left)
                 if w is not None]
        return spec.conv(grid, self.taps, torch.cat(parts), self.bias)

    def step(self, packed: ConvStep, step: Step, add: Tensor | None = None) -> Tensor:
        """The conv at the step's positions, plus `add` (rows (batch * slots, out), e.g. a gate bias)."""
        return packed(step, add)


class GateBias(nn.Module):
    """The bias of a gated layer's pre-activation: a constant, plus a class embedding and a 1x1 projection of the
    condition features when the prior has them. It depends on nothing sampled, so the sampler evaluates the class part
    once per call and only projects the condition features at each step's positions."""

    def __init__(self, channels: int, num_classes: int, condition_channels: int):
        super().__init__()
        self.constant = nn.Parameter(torch.zeros(channels))
        self.per_class = nn.Embedding(num_classes, channels) if num_classes else None
        self.from_condition = nn.Conv2d(condition_channels, channels, 1, bias=False) if condition_channels else None

    def forward(self, labels: Tensor | None, condition: Tensor | None) -> Tensor:
        out = self.constant[None, :, None, None]
        if self.per_class is not None:
            out = out + self.per_class(labels)[:, :, None, None]
        if self.from_condition is not None:
            out = out + self.from_condition(condition)
        return out

    def start(self, spec: CacheSpec, labels: Tensor | None) -> SimpleNamespace:
        base = self.constant[None].expand(spec.batch, -1)
        if self.per_class is not None:
            base = base + self.per_class(labels)
        projection = None if self.from_condition is None else spec.linear(self.from_condition.weight)
        return SimpleNamespace(base=spec.cast(base), projection=projection)

    def step(self, state: SimpleNamespace, step: Step) -> Tensor:
        """(batch * slots, channels); may be a view of the cache, so it is only ever read."""
        base = state.base.unsqueeze(1).expand(-1, step.slots, -1).reshape(step.batch * step.slots, -1)
        return base if state.projection is None else state.projection(step.condition, base)


class GatedResidualBlock(nn.Module):
    """PixelSNAIL's gated residual block: x + glu(conv2(elu(conv1(elu(x)))) + gate bias).

    Both convs include the centre: x at p is already a function of codes before p."""

    def __init__(self, channels: int, kernel_size: int, dropout: float, num_classes: int, condition_channels: int):
        super().__init__()
        self.conv1 = CausalConv2d(channels, channels, kernel_size)
        self.conv2 = CausalConv2d(channels, 2 * channels, kernel_size, bias=False)
        self.gate_bias = GateBias(2 * channels, num_classes, condition_channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, labels: Tensor | None, condition: Tensor | None) -> Tensor:
        hidden = self.dropout(F.elu(self.conv1(F.elu(x))))
        return x + F.glu(self.conv2(hidden) + self.gate_bias(labels, condition), dim=1)

    def start(self, spec: CacheSpec, labels: Tensor | None) -> SimpleNamespace:
        channels = self.conv1.bias.shape[0]
        inputs, hidden = spec.grid(channels), spec.grid(channels)
        return SimpleNamespace(inputs=inputs, hidden=hidden, conv1=self.conv1.pack(spec, inputs),
                               conv2=self.conv2.pack(spec, hidden), gate_bias=self.gate_bias.start(spec, labels))

    def step(self, state: SimpleNamespace, step: Step, x: Tensor) -> Tensor:
        state.inputs.write(step, F.elu(x))
        state.hidden.write(step, F.elu(self.conv1.step(state.conv1, step)))
        gate = self.conv2.step(state.conv2, step, add=self.gate_bias.step(state.gate_bias, step))
        return x + F.glu(gate, dim=1)


def grid_coordinates(height: int, width: int) -> Tensor:
    """(H * W, 2) row and column of every position in raster order, scaled to [-1, 1]."""
    rows = torch.linspace(-1, 1, height) if height > 1 else torch.zeros(1)
    cols = torch.linspace(-1, 1, width) if width > 1 else torch.zeros(1)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention over earlier positions, merged through a gated residual.

    Queries come from h, keys and values from h and, for PixelSNAIL, the block input (`context`). Row and column
    coordinates enter as additive projections, which the sampler tabulates once per call.

    sees_own_code (PixelSNAIL's attention): the key and value at p also read the embedded code at p (`codes`), and p
    attends to the positions before it only, so every code is visible to every later position. Position 0 has nothing
    before it: its attended vector is zero. When sampling, p's key and value are complete once its code is drawn
    (`write_code`). Otherwise (legacy priors) keys and values at p carry only codes before p and p attends to itself
    too: a code reaches attention only through a later position's convolutions, which hides a row's last codes from
    the start of the next row.
    """

    def __init__(self, channels: int, n_heads: int, dropout: float, context_channels: int, height: int, width: int,
                 sees_own_code: bool = False):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.query = nn.Linear(channels, channels)
        self.key_value = nn.Linear(context_channels + channels, 2 * channels)
        self.own_code = nn.Linear(channels, 2 * channels, bias=False) if sees_own_code else None
        self.position = nn.Linear(2, 3 * channels, bias=False)
        self.merge = nn.Linear(2 * channels, 2 * channels)
        self.register_buffer("coordinates", grid_coordinates(height, width), persistent=False)

    def _heads(self, x: Tensor) -> Tensor:  # (B, n, C) -> (B, heads, n, C / heads)
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

    def forward(self, h: Tensor, context: Tensor | None = None, codes: Tensor | None = None) -> Tensor:
        """h and context (B, C, H', W); codes: the embedded codes (B, C, H', W), read when the keys see them."""
        batch, channels, height, width = h.shape
        tokens = h.flatten(2).transpose(1, 2)
        kv_input = tokens if context is None else torch.cat([context.flatten(2).transpose(1, 2), tokens], dim=-1)
        position = self.position(self.coordinates[: height * width])
        query = self.query(tokens) + position[:, :channels]
        key_value = self.key_value(kv_input) + position[:, channels:]
        if self.own_code is not None:
            key_value = key_value + self.own_code(codes.flatten(2).transpose(1, 2))
        query, key, value = (self._heads(t) for t in (query, *key_value.chunk(2, dim=-1)))
        dropout = self.dropout if self.training else 0.0
        if self.own_code is None:
            attended = F.scaled_dot_product_attention(query, key, value, is_causal=True, dropout_p=dropout)
        else:
            attended = attend_earlier(query, key, value, dropout)
        merged = self.merge(torch.cat([F.elu(tokens), attended.transpose(1, 2).flatten(2)], dim=-1))
        out = tokens + F.glu(merged, dim=-1)
        return out.transpose(1, 2).reshape(batch, channels, height, width)

    def start(self, spec: CacheSpec) -> SimpleNamespace:
        """One matmul's weight and per-position bias table for query, key and value from [context, h] (the query
        ignores the context and carries the softmax scale), and a key/value cache (`cache.KeyValueCache`). With
        sees_own_code, also the projection of the drawn codes' embeddings, which `write_code` adds to the cache."""
        channels = self.query.weight.shape[0]
        scale = (channels // self.n_heads) ** -0.5
        context_channels = self.key_value.weight.shape[1] - channels
        query_weight = F.pad(self.query.weight, (context_channels, 0)) * scale
        table = self.position(self.coordinates) + torch.cat([self.query.bias, self.key_value.bias])
        table = torch.cat([table[:, :channels] * scale, table[:, channels:]], dim=1)
        state = SimpleNamespace(
            qkv=spec.linear(torch.cat([query_weight, self.key_value.weight])), table=spec.cast(F.pad(table, (0, 0, 0, 1))),
            merge=spec.linear(self.merge.weight, self.merge.bias),
            cache=spec.key_value_cache(self.n_heads, channels // self.n_heads), own_code=None)
        if self.own_code is not None:
            state.own_code = spec.linear(self.own_code.weight)
            spec.code_readers.append((self, state))
        return state

    def step(self, state: SimpleNamespace, step: Step, h: Tensor, context: Tensor | None = None) -> Tensor:
        channels = h.shape[1]
        qkv_input = h if context is None else torch.cat([context, h], dim=1)
        qkv = state.qkv(qkv_input, step.rows(state.table))
        # with sees_own_code the cache keeps the keys and values without their codes until `write_code`; the step's
        # own positions are not attended to, so nothing reads them before then
        attended = state.cache.attend(step, qkv[:, :channels], qkv[:, channels:], earlier=self.own_code is not None)
        merged = state.merge(torch.cat([F.elu(h), attended], dim=1))
        return h + F.glu(merged, dim=1)

    def write_code(self, state: SimpleNamespace, step: Step, embedded: Tensor) -> None:
        """Completes the keys and values of the step's positions with their drawn codes' embeddings
        (batch * slots, C)."""
        state.cache.add(step, state.own_code(embedded))


def attend_earlier(query: Tensor, key: Tensor, value: Tensor, dropout: float = 0.0) -> Tensor:
    """(B, heads, n, d) each -> attended (B, heads, n, d): position p attends to positions before p only, and position
    0 gets zeros. Queries 1.. against keys ..n-2, causally aligned: query p reads keys 0 .. p - 1 (and fused causal
    kernels stay usable)."""
    if query.shape[2] < 2:
        return torch.zeros_like(query)
    attended = F.scaled_dot_product_attention(query[:, :, 1:], key[:, :, :-1], value[:, :, :-1], is_causal=True,
                                              dropout_p=dropout)
    return F.pad(attended, (0, 0, 1, 0))


class _ConditionResidual(nn.Module):
    """A non-causal gated residual block (3x3 convs): the condition map is fully visible to every position."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.glu(self.conv2(self.dropout(F.elu(self.conv1(F.elu(x))))), dim=1)


class ConditionStack(nn.Module):
    """Top codes -> condition features on the modelled grid: embedding, gated residual blocks at the top resolution,
    nearest-neighbour upsampling. Run once per batch; every gated layer projects the result into its gate bias."""

    def __init__(self, codebook_size: int, channels: int, n_res_blocks: int, dropout: float,
                 out_size: tuple[int, int]):
        super().__init__()
        self.out_size = out_size
        self.embed = nn.Embedding(codebook_size, channels)
        self.blocks = nn.Sequential(*(_ConditionResidual(channels, dropout) for _ in range(n_res_blocks)))

    def forward(self, condition: Tensor) -> Tensor:
        features = self.blocks(self.embed(condition).permute(0, 3, 1, 2))
        return F.interpolate(features, size=self.out_size, mode="nearest")
