"""Gated PixelCNN (van den Oord et al. 2016): a vertical stack that sees only rows above and a horizontal stack that
sees the current row to the left plus the vertical stack at its own position, so the receptive field has no blind
spot.

One departure from the paper keeps cached sampling a single pass per position: the vertical convolution reads only
the previous layer's rows above (r rows, k columns), never its current row, and the vertical stack is residual so
that deep layers keep the nearest rows. The receptive field is the full causal cone: row i - m is seen m * r columns
to the right, exactly like the PixelSNAIL convolutions, which also gives both architectures the same wavefront."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor, nn

from .base import CausalPrior
from .cache import CacheSpec, Grid, Step
from .config import PriorConfig
from .layers import CausalConv2d, CausalSelfAttention, GateBias


def _gated(pre: Tensor) -> Tensor:
    value, gate = pre.chunk(2, dim=1)
    return torch.tanh(value) * torch.sigmoid(gate)


class GatedStackLayer(nn.Module):
    """(v, h) -> (v', h'). The first layer reads the embedded codes in both stacks, excludes the centre on the
    horizontal side and has no residuals (the residual would carry the code at p into p's own logits)."""

    def __init__(self, channels: int, kernel_size: int, first: bool, dropout: float, num_classes: int,
                 condition_channels: int):
        super().__init__()
        self.first = first
        self.vertical = CausalConv2d(channels, 2 * channels, kernel_size, left=None, bias=False)
        self.horizontal = CausalConv2d(channels, 2 * channels, kernel_size, above=False,
                                       left="exclusive" if first else "inclusive", bias=False)
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1, bias=False)  # vertical -> horizontal, same position
        self.out = nn.Conv2d(channels, channels, 1)
        self.gate_bias = GateBias(4 * channels, num_classes, condition_channels)  # vertical half, horizontal half
        self.dropout = nn.Dropout(dropout)

    def forward(self, v: Tensor, h: Tensor, labels: Tensor | None,
                condition: Tensor | None) -> tuple[Tensor, Tensor]:
        bias_v, bias_h = self.gate_bias(labels, condition).chunk(2, dim=1)
        pre_v = self.vertical(v) + bias_v
        pre_h = self.horizontal(h) + self.link(pre_v) + bias_h
        new_v, new_h = _gated(pre_v), self.out(self.dropout(_gated(pre_h)))
        return (new_v, new_h) if self.first else (v + new_v, h + new_h)

    def start(self, spec: CacheSpec, labels: Tensor | None, embedded: Grid) -> SimpleNamespace:
        channels = self.out.weight.shape[0]
        v_inputs = embedded if self.first else spec.grid(channels)
        h_inputs = embedded if self.first else spec.grid(channels)
        return SimpleNamespace(
            v_inputs=v_inputs, h_inputs=h_inputs,
            vertical=self.vertical.pack(spec, v_inputs), horizontal=self.horizontal.pack(spec, h_inputs),
            link=spec.linear(self.link.weight), out=spec.linear(self.out.weight, self.out.bias),
            gate_bias=self.gate_bias.start(spec, labels))

    def step(self, state: SimpleNamespace, step: Step, v: Tensor | None,
             h: Tensor | None) -> tuple[Tensor, Tensor]:
        if not self.first:
            state.v_inputs.write(step, v)
            state.h_inputs.write(step, h)
        bias_v, bias_h = self.gate_bias.step(state.gate_bias, step).chunk(2, dim=1)
        pre_v = self.vertical.step(state.vertical, step, add=bias_v)
        pre_h = self.horizontal.step(state.horizontal, step, add=bias_h) + state.link(pre_v)
        new_v, new_h = _gated(pre_v), state.out(_gated(pre_h))
        return (new_v, new_h) if self.first else (v + new_v, h + new_h)


class GatedBlock(nn.Module):
    def __init__(self, config: PriorConfig, first: bool, condition_channels: int):
        super().__init__()
        c = config
        self.layers = nn.ModuleList(
            GatedStackLayer(c.channels, c.kernel_size, first and index == 0, c.dropout, c.num_classes,
                            condition_channels)
            for index in range(c.n_res_blocks))
        # on the horizontal stack, keys and values from it alone (and the embedded codes): the block input of the
        # first block is the embedded codes themselves
        self.attention = (CausalSelfAttention(c.channels, c.n_heads, c.dropout, 0, c.height, c.width,
                                              sees_own_code=c.attention_sees_own_code) if c.attention else None)

    def forward(self, v: Tensor, h: Tensor, labels: Tensor | None, condition: Tensor | None,
                codes: Tensor) -> tuple[Tensor, Tensor]:
        for layer in self.layers:
            v, h = layer(v, h, labels, condition)
        return v, (h if self.attention is None else self.attention(h, codes=codes))

    def start(self, spec: CacheSpec, labels: Tensor | None, embedded: Grid) -> SimpleNamespace:
        return SimpleNamespace(layers=[layer.start(spec, labels, embedded) for layer in self.layers],
                               attention=None if self.attention is None else self.attention.start(spec))

    def step(self, state: SimpleNamespace, step: Step, v: Tensor | None,
             h: Tensor | None) -> tuple[Tensor, Tensor]:
        for layer, layer_state in zip(self.layers, state.layers):
            v, h = layer.step(layer_state, step, v, h)
        return v, (h if self.attention is None else self.attention.step(state.attention, step, h))


class GatedPixelCNN(CausalPrior):
    """n_blocks * n_res_blocks gated stack layers, optionally with causal attention closing every block."""

    def __init__(self, config: PriorConfig):
        super().__init__(config)
        self.blocks = nn.ModuleList(GatedBlock(config, index == 0, self.condition_channels)
                                    for index in range(config.n_blocks))

    def body(self, embedded: Tensor, labels: Tensor | None, condition: Tensor | None) -> Tensor:
        v = h = embedded
        for block in self.blocks:
            v, h = block(v, h, labels, condition, embedded)
        return h

    def start_body(self, spec: CacheSpec, labels: Tensor | None, embedded: Grid) -> SimpleNamespace:
        return SimpleNamespace(blocks=[block.start(spec, labels, embedded) for block in self.blocks])

    def body_step(self, state: SimpleNamespace, step: Step) -> Tensor:
        v = h = None  # the first layer reads the embedded codes from its grid
        for block, block_state in zip(self.blocks, state.blocks):
            v, h = block.step(block_state, step, v, h)
        return h
