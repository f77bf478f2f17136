"""PixelSNAIL (Chen et al. 2018) as VQ-VAE-2 uses it: blocks of causal gated residual blocks, each block optionally
closed by causal self-attention; class and top-code conditioning bias every gated residual block."""

from __future__ import annotations

from types import SimpleNamespace

from torch import Tensor, nn

from .base import CausalPrior
from .cache import CacheSpec, Grid, Step
from .config import PriorConfig
from .layers import CausalConv2d, CausalSelfAttention, GatedResidualBlock


class PixelBlock(nn.Module):
    def __init__(self, config: PriorConfig, condition_channels: int):
        super().__init__()
        c = config
        self.res_blocks = nn.ModuleList(
            GatedResidualBlock(c.channels, c.kernel_size, c.dropout, c.num_classes, condition_channels)
            for _ in range(c.n_res_blocks))
        # keys and values also read the block input (and the embedded codes), as in PixelSNAIL
        self.attention = (CausalSelfAttention(c.channels, c.n_heads, c.dropout, c.channels, c.height, c.width,
                                              sees_own_code=c.attention_sees_own_code) if c.attention else None)

    def forward(self, x: Tensor, labels: Tensor | None, condition: Tensor | None, codes: Tensor) -> Tensor:
        h = x
        for res_block in self.res_blocks:
            h = res_block(h, labels, condition)
        return h if self.attention is None else self.attention(h, context=x, codes=codes)

    def start(self, spec: CacheSpec, labels: Tensor | None) -> SimpleNamespace:
        return SimpleNamespace(res_blocks=[block.start(spec, labels) for block in self.res_blocks],
                               attention=None if self.attention is None else self.attention.start(spec))

    def step(self, state: SimpleNamespace, step: Step, x: Tensor) -> Tensor:
        h = x
        for res_block, res_state in zip(self.res_blocks, state.res_blocks):
            h = res_block.step(res_state, step, h)
        return h if self.attention is None else self.attention.step(state.attention, step, h, context=x)


class PixelSNAIL(CausalPrior):
    def __init__(self, config: PriorConfig):
        super().__init__(config)
        # strictly causal (centre excluded): everything downstream may then include the centre
        self.stem = CausalConv2d(config.channels, config.channels, config.kernel_size, left="exclusive")
        self.blocks = nn.ModuleList(PixelBlock(config, self.condition_channels) for _ in range(config.n_blocks))

    def body(self, embedded: Tensor, labels: Tensor | None, condition: Tensor | None) -> Tensor:
        x = self.stem(embedded)
        for block in self.blocks:
            x = block(x, labels, condition, embedded)
        return x

    def start_body(self, spec: CacheSpec, labels: Tensor | None, embedded: Grid) -> SimpleNamespace:
        return SimpleNamespace(embedded=embedded, stem=self.stem.pack(spec, embedded),
                               blocks=[block.start(spec, labels) for block in self.blocks])

    def body_step(self, state: SimpleNamespace, step: Step) -> Tensor:
        x = self.stem.step(state.stem, step)
        for block, block_state in zip(self.blocks, state.blocks):
            x = block.step(block_state, step, x)
        return x
