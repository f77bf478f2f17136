"""What both prior architectures share: code embedding, condition stack, output head, input checks, and the cached
sampling protocol (`start_sampling`, `step`, `write_codes`) that `fast.py` drives."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from types import SimpleNamespace

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from .cache import CacheSpec, Grid, Step
from .config import PriorConfig
from .layers import ConditionStack


class CausalPrior(nn.Module, metaclass=ABCMeta):
    """Logits over one level's codes, causal in raster order. Subclasses define `body` (embedded codes -> features)
    and its cached twins `start_body` / `body_step`."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.codebook_size, config.channels)
        self.condition_stack = (
            ConditionStack(config.condition_codebook_size, config.channels, config.n_cond_res_blocks, config.dropout,
                           (config.height, config.width)) if config.conditioned else None)
        self.head = nn.Conv2d(config.channels, config.codebook_size, 1)

    @property
    def condition_channels(self) -> int:
        return self.config.channels if self.config.conditioned else 0

    @property
    def wavefront_skew(self) -> int | None:
        """How far row i may run behind row i - 1 when sampling: a position depends on row i - m at most m * r columns
        to its right (module docstring of `layers.py`), so r + 1 columns. Attention sees every earlier position, which
        leaves raster order."""
        return None if self.config.attention else self.config.kernel_size // 2 + 1

    def check_inputs(self, batch: int, labels: Tensor | None, condition: Tensor | None) -> None:
        config = self.config
        if config.num_classes:
            if labels is None or labels.shape != (batch,):
                raise UsageError(f"this prior is class-conditional: give labels of shape ({batch},)")
        elif labels is not None:
            raise UsageError("this prior is unconditional: labels must be None")
        if config.conditioned:
            expected = (batch, config.condition_height, config.condition_width)
            if condition is None or tuple(condition.shape) != expected:
                raise UsageError(f"this prior is conditioned on a code map: give condition of shape {expected}")
        elif condition is not None:
            raise UsageError("this prior has no spatial condition: condition must be None")

    def forward(self, codes: Tensor, labels: Tensor | None = None, condition: Tensor | None = None) -> Tensor:
        """codes (B, H', W) with H' <= H -> logits (B, K, H', W). A prefix of rows gives the same logits as the full
        grid on those rows (causality); the reference sampler uses that to skip rows below the current one."""
        config = self.config
        if codes.dim() != 3 or codes.shape[1] > config.height or codes.shape[2] != config.width:
            raise UsageError(f"codes must be (B, <= {config.height}, {config.width}), not {tuple(codes.shape)}")
        self.check_inputs(codes.shape[0], labels, condition)
        features = None
        if self.condition_stack is not None:
            features = self.condition_stack(condition)[:, :, : codes.shape[1]]
        hidden = self.body(self.embed(codes).permute(0, 3, 1, 2), labels, features)
        return self.head(F.elu(hidden))

    # cached sampling

    def start_sampling(self, spec: CacheSpec, labels: Tensor | None, condition: Tensor | None) -> SimpleNamespace:
        """Everything that depends on nothing sampled, computed once: class and condition projections, packed
        weights; plus zeroed caches (their memory: the `fast` module docstring)."""
        embedded = spec.grid(self.config.channels)
        features = None
        if self.condition_stack is not None:  # (B, H * W + 1, C): raster order plus the scratch position
            features = self.condition_stack(condition).flatten(2).transpose(1, 2)
            features = spec.cast(F.pad(features, (0, 0, 0, 1)))
        body = self.start_body(spec, labels, embedded)
        return SimpleNamespace(
            embedded=embedded, embedding=spec.cast(self.embed.weight), condition=features,
            head=spec.linear(self.head.weight, self.head.bias), body=body, code_readers=list(spec.code_readers))

    def step(self, state: SimpleNamespace, step: Step) -> Tensor:
        """Logits (batch * slots, K) in float32 at the step's positions; their codes' windows must be written."""
        if state.condition is not None:
            step.condition = state.condition.index_select(1, step.raster).flatten(0, 1)
        return state.head(F.elu(self.body_step(state.body, step))).float()

    def write_codes(self, state: SimpleNamespace, step: Step, codes: Tensor) -> None:
        """Make the drawn codes (batch * slots,) visible to later positions."""
        embedded = state.embedding.index_select(0, codes)
        state.embedded.write(step, embedded)
        for layer, layer_state in state.code_readers:  # attention whose keys see their position's own code
            layer.write_code(layer_state, step, embedded)

    @abstractmethod
    def body(self, embedded: Tensor, labels: Tensor | None, condition: Tensor | None) -> Tensor:
        """Embedded codes (B, C, H', W) -> features (B, C, H', W), causal."""

    @abstractmethod
    def start_body(self, spec: CacheSpec, labels: Tensor | None, embedded: Grid) -> SimpleNamespace:
        """Caches and packed weights of the body; `embedded` is the grid `write_codes` fills."""

    @abstractmethod
    def body_step(self, state: SimpleNamespace, step: Step) -> Tensor:
        """`body` at the step's positions: (batch * slots, C)."""
