"""What a backend offers the augmentations, whatever runs it: a code model, prior samplers, random numbers.

Everything crosses these interfaces as numpy arrays: uint8 images (B, S, S, 3), integer code maps per level
(B, H, W), float32 uniforms (B, H * W) in raster order. The torch backend (`backends/torch.py`) runs the networks
in PyTorch; the onnx backend (`backends/onnx.py`, `onnx/runtime.py`) runs the exported graphs in onnxruntime and
never imports torch. Neither does this module.

Both samplers draw a code by inverse CDF from a uniform drawn up front, so given the same uniforms the two backends
draw the same codes (up to a uniform within float rounding of a CDF step). Where the uniforms come from is the
backend's `Random`: torch's generator on the device, or numpy's, so one seed gives reproducible samples per backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import numpy as np

from ..errors import UsageError
from ..spec import ModelSpec

# uint8 pixels [0, 255] <-> network inputs [-1, 1]; MSE on [0, 1] pixels is a quarter of MSE on this scale
PIXEL_SCALE = 127.5


def check_draw_args(temperature: float, top_k: int | None) -> None:
    """The sampling knobs every sampler takes, checked before anything is drawn."""
    if not temperature > 0:
        raise UsageError(f"temperature must be positive, not {temperature}")
    if top_k is not None and not 1 <= top_k:
        raise UsageError(f"top_k must be at least 1, not {top_k}")


class CodeModel(ABC):
    """A trained VQ-VAE: uint8 images <-> code maps per level."""

    spec: ModelSpec
    device_name: str  # where it runs, as run.json's "device" shows it: "cpu", "cuda:0", ...

    @abstractmethod
    def info(self) -> dict:
        """run.json's and --json's "backend" and "provider" (the device or onnxruntime provider actually used)."""

    @abstractmethod
    def encode_with_error(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        """uint8 (B, S, S, 3) -> (uint16 code maps per level, the reconstructions' squared error summed over the
        batch, on [0, 1] pixels)."""

    @abstractmethod
    def decode(self, codes: dict[str, np.ndarray]) -> np.ndarray:
        """Integer code maps per level (B, H, W) -> uint8 images (B, S, S, 3)."""

    def encode(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (B, S, S, 3) -> uint16 code maps per level."""
        return self.encode_with_error(images)[0]


class PriorSampler(ABC):
    """One level's trained prior: draws code maps given class labels and, for the bottom level, the top codes.

    labels: (B,) int64, None for an unconditional prior. condition: the top codes (B, Ht, Wt), for a prior
    conditioned on them. uniforms: (B, H * W) float32 in [0, 1), one per position in raster order. keep:
    (codes, mask), both (B, H, W): where the mask is True the given code is kept instead of drawn, and later
    positions see it. Returns int64 codes (B, H, W)."""

    codebook_size: int
    height: int
    width: int
    num_classes: int  # 0: unconditional
    trained_classes: list[str] | None  # the classes it was trained on; None: every class of the model

    @abstractmethod
    def sample(self, labels=None, condition=None, *, n: int, uniforms: np.ndarray, temperature: float = 1.0,
               top_k: int | None = None, keep=None) -> np.ndarray:
        """The fast sampler (cached steps)."""

    @abstractmethod
    def sample_reference(self, labels=None, condition=None, *, n: int, uniforms: np.ndarray, temperature: float = 1.0,
                         top_k: int | None = None, keep=None) -> np.ndarray:
        """The reference algorithm (one full forward per position): slow, the yardstick for `sample`."""


class Random(Protocol):
    """A seeded source of the random numbers a batch of jobs uses, in the order they are asked for."""

    def uniforms(self, n: int, count: int) -> np.ndarray:
        """float32 (n, count) in [0, 1)."""

    def integers(self, high: int, shape: tuple[int, ...]) -> np.ndarray:
        """int64 of `shape`, uniform in [0, high)."""


class Backend(ABC):
    """A model directory opened on one backend and device: what `skinaug.generate.Generator` drives."""

    spec: ModelSpec
    code_model: CodeModel
    device: object  # the device it runs on (a torch.device, or "cpu" / "cuda" on onnx)

    @abstractmethod
    def prior(self, level: str) -> PriorSampler:
        """The level's prior, loaded on first use."""

    @abstractmethod
    def random(self, seed: int) -> Random:
        """A fresh source seeded with `seed`."""

    def info(self) -> dict:
        """run.json's "backend" and "provider"."""
        return self.code_model.info()

    @abstractmethod
    def distributed(self):
        """This process's share of the work: a `skinaug.distributed.Distributed`."""
