"""The torch backend: the VQ-VAE and the priors in PyTorch, on any device, sharded under torchrun.

numpy in, numpy out (the interfaces of `base.py`); tensors live on the device in between. Random numbers come from
a torch.Generator on the device seeded per batch, so a seed gives the same codes as it always has on this backend.
Only here: --bf16 and --compile for the sampling step, and --refine's Gibbs sweeps (`TorchPrior.refine`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..runtime import resolve_device
from .base import Backend, CodeModel, PriorSampler

__all__ = ["TorchBackend", "TorchCodeModel", "TorchPrior", "TorchRandom"]


def encode_batch(model, images_uint8, device) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """uint8 (B,S,S,3) -> (code maps per level as uint16 arrays, squared error sum on [0, 1] pixels)."""
    from ..runtime import autocast_for
    from ..vqvae.model import to_model_input

    images = to_model_input(torch.as_tensor(np.asarray(images_uint8)).to(device))
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast_for(device):
        quantized, codes, _ = model.encode(images)
        reconstruction = model.decode(quantized)
    squared_error = ((reconstruction.float().clamp(-1, 1) - images) ** 2).sum() / 4.0
    return {level: values.to(torch.int32).cpu().numpy().astype(np.uint16) for level, values in codes.items()}, squared_error


def decode_batch(model, codes: dict[str, np.ndarray], device) -> np.ndarray:
    """Code maps per level (B,H,W) -> uint8 images (B,S,S,3)."""
    from ..runtime import autocast_for
    from ..vqvae.model import to_uint8

    tensors = {level: torch.as_tensor(np.asarray(values, dtype=np.int64)).to(device) for level, values in codes.items()}
    with torch.no_grad(), autocast_for(device):
        images = model.decode_codes(tensors)
    return to_uint8(images.clamp(-1, 1)).cpu().numpy()


class TorchCodeModel(CodeModel):
    """The model directory's VQ-VAE in PyTorch on `device` (channels-last on CUDA), as a `CodeModel`
    (`onnx.runtime.OnnxVQVAE` is its onnx twin)."""

    def __init__(self, model_dir, device="auto"):
        self.spec = model_dir.spec()
        self.device = resolve_device(device)
        self.device_name = str(self.device)
        self.network = model_dir.load_vqvae(self.device)
        if self.device.type == "cuda":
            self.network = self.network.to(memory_format=torch.channels_last)

    def info(self) -> dict:
        return {"backend": "torch", "provider": self.device_name}

    def encode_with_error(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        codes, squared_error = encode_batch(self.network, images, self.device)
        return codes, float(squared_error)

    def decode(self, codes: dict[str, np.ndarray]) -> np.ndarray:
        return decode_batch(self.network, codes, self.device)


class TorchRandom:
    """`base.Random` from a torch.Generator on the device: the uniforms and integers the samplers always drew."""

    def __init__(self, seed: int, device: torch.device):
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def uniforms(self, n: int, count: int) -> np.ndarray:
        return torch.rand(n, count, generator=self.generator, device=self.device).cpu().numpy()

    def integers(self, high: int, shape: tuple[int, ...]) -> np.ndarray:
        return torch.randint(high, tuple(shape), generator=self.generator, device=self.device).cpu().numpy()


class TorchPrior(PriorSampler):
    """A trained prior network (`priors.build_prior`) behind the `PriorSampler` interface."""

    def __init__(self, network, trained_classes: list[str] | None = None, *, dtype=None, compile_step: bool = False):
        config = network.config
        self.network, self.trained_classes = network, trained_classes
        self.codebook_size, self.height, self.width = config.codebook_size, config.height, config.width
        self.num_classes = config.num_classes
        self.dtype, self.compile_step = dtype, compile_step
        self.device = next(network.parameters()).device

    def _tensor(self, values, dtype=torch.long):
        return None if values is None else torch.as_tensor(np.asarray(values), device=self.device).to(dtype)

    def _inputs(self, labels, condition, uniforms, keep) -> dict:
        keep = None if keep is None else (self._tensor(keep[0]), self._tensor(keep[1], torch.bool))
        return dict(labels=self._tensor(labels), condition=self._tensor(condition), keep=keep,
                    uniforms=self._tensor(uniforms, torch.float32))

    def sample(self, labels=None, condition=None, *, n: int, uniforms: np.ndarray, temperature: float = 1.0,
               top_k: int | None = None, keep=None) -> np.ndarray:
        from ..priors import StepOptions, sample

        with torch.no_grad():
            codes = sample(self.network, n=n, temperature=temperature, top_k=top_k,
                           step=StepOptions(dtype=self.dtype, compile=self.compile_step),
                           **self._inputs(labels, condition, uniforms, keep))
        return codes.cpu().numpy()

    def sample_reference(self, labels=None, condition=None, *, n: int, uniforms: np.ndarray, temperature: float = 1.0,
                         top_k: int | None = None, keep=None) -> np.ndarray:
        from ..priors import sample_reference

        codes = sample_reference(self.network, n=n, temperature=temperature, top_k=top_k,
                                 **self._inputs(labels, condition, uniforms, keep))
        return codes.cpu().numpy()

    def refine(self, codes: np.ndarray, region: np.ndarray, labels=None, condition=None, *, random: TorchRandom,
               sweeps: int, candidates: int, temperature: float = 1.0, top_k: int | None = None) -> np.ndarray:
        """Gibbs sweeps over `region` (`priors.refine_codes`), their uniforms drawn from `random` after the raster
        draw's (no sweep draws nothing, so its codes are those of a run without refinement)."""
        from ..priors import refine_codes

        with torch.no_grad():
            refined = refine_codes(self.network, self._tensor(codes), self._tensor(region, torch.bool),
                                   self._tensor(labels), self._tensor(condition), sweeps=sweeps, candidates=candidates,
                                   temperature=temperature, top_k=top_k, generator=random.generator)
        return refined.cpu().numpy()


class TorchBackend(Backend):
    """A model directory in PyTorch on one device; priors loaded on first use."""

    def __init__(self, model_dir, device="auto", *, dtype=None, compile_step: bool = False):
        self.model_dir = model_dir
        self.device = resolve_device(device)
        self.code_model = TorchCodeModel(model_dir, self.device)
        self.spec = self.code_model.spec
        # torch.compile of the sampling step: ~30% faster steps on CUDA, but ~20 s of compilation per step width
        # (about 2 minutes for a 256px model) that only pays off for thousands of images
        self.dtype, self.compile_step = dtype, compile_step
        self._priors: dict[str, TorchPrior] = {}

    def prior(self, level: str) -> TorchPrior:
        if level not in self._priors:
            network, classes = self.model_dir.load_prior(level, self.device)
            self._priors[level] = TorchPrior(network, classes, dtype=self.dtype, compile_step=self.compile_step)
        return self._priors[level]

    def random(self, seed: int) -> TorchRandom:
        return TorchRandom(seed, self.device)

    def distributed(self):
        """torchrun's rank and world size: ranks take disjoint batches."""
        from ..distributed import Distributed

        return Distributed.from_environment("cpu" if self.device.type == "cpu" else "auto")
