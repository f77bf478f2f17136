"""The onnx backend: the graphs `skinaug export onnx` wrote, run by onnxruntime (`skinaug.onnx.runtime`). Never
imports torch.

Random numbers come from numpy's Generator seeded per batch (the priors' uniforms and the rand-top / rand-bottom
baselines): onnx-backend samples are reproducible per seed but differ from torch-backend samples of the same seed.
One process only: under torchrun every rank would make every batch, so the work is not sharded.
"""

from __future__ import annotations

import numpy as np

from ..distributed import Distributed
from ..errors import UsageError
from .onnx_runtime import OnnxModel, OnnxPrior
from .base import Backend


class NumpyRandom:
    """`base.Random` from numpy's default Generator."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def uniforms(self, n: int, count: int) -> np.ndarray:
        return self.rng.random((n, count), dtype=np.float32)

    def integers(self, high: int, shape: tuple[int, ...]) -> np.ndarray:
        return self.rng.integers(high, size=tuple(shape))


class OnnxBackend(Backend):
    """A model directory's ONNX export on onnxruntime (CUDA or CPU provider)."""

    def __init__(self, model_dir, device="auto", *, dtype=None, compile_step: bool = False):
        if compile_step:
            raise UsageError("{compile_step} compiles the PyTorch sampling step: it does not apply to {backend='onnx'}")
        if dtype is not None:
            raise UsageError("{bf16} goes with {backend='torch'}: the onnx graphs run in float32")
        self.runtime = OnnxModel(model_dir, device)
        self.code_model = self.runtime.vqvae
        self.spec = self.code_model.spec
        self.device = self.runtime.device_name

    def prior(self, level: str) -> OnnxPrior:
        self.runtime.model_dir.require_prior(level)
        return self.runtime.prior(level)

    def random(self, seed: int) -> NumpyRandom:
        return NumpyRandom(seed)

    def distributed(self) -> Distributed:
        return Distributed()
