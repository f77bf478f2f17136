"""The augmentations on the onnx backend: `skinaug.generate.Generator` with the exported graphs, in numpy.

Plans, batches, names, seeds per batch and the output layout are the torch backend's (`run_jobs` drives both);
what differs is where random numbers come from: numpy's Generator seeded with the batch seed, for the uniforms of
the priors and for the rand-top / rand-bottom baselines. One process only (no torchrun sharding).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..codes import CodeFile, model_attrs
from ..errors import SkinaugError, UsageError
from ..generate import Generator, Job
from ..modeldir import ModelDir
from .runtime import OnnxModel


class SingleProcess:
    """The `Distributed` interface `run_jobs` uses, for one process (importing the real one would import torch)."""

    rank, world_size, is_main = 0, 1, True

    def barrier(self) -> None:
        pass


class OnnxGenerator(Generator):
    def __init__(self, model, device="auto", *, temperature=1.0, top_k=None, mask_dir=None, dtype=None, sampler="fast",
                 compile_step=False):
        if compile_step:
            raise UsageError("{compile_step} compiles the PyTorch sampling step: it does not apply to {backend='onnx'}")
        if sampler not in ("fast", "reference"):
            raise UsageError(f"{{sampler}} must be fast or reference, not {sampler}")
        if temperature <= 0:
            raise UsageError(f"{{temperature}} must be positive, not {temperature}")
        if dtype is not None:
            raise UsageError("{bf16} goes with {backend='torch'}: the onnx graphs run in float32")
        self.model_dir = ModelDir(model)
        self.config = self.model_dir.config()
        self.runtime = OnnxModel(self.model_dir, device)
        self.vqvae = self.runtime.vqvae
        self.device = self.runtime.device_name
        self.temperature = temperature
        self.top_k = top_k
        self.mask_dir = Path(mask_dir) if mask_dir else None
        self.dtype = None
        self.sampler = sampler  # "fast": the cached per-step graph; "reference": one full-forward graph run per position
        self.class_names = self.config.get("class_names", [])
        self.levels = list(self.config["grid"])

    def backend_info(self) -> dict:
        return self.runtime.info()

    def distributed(self) -> SingleProcess:
        return SingleProcess()

    def prior(self, level: str):
        """(the onnx prior, the classes it was trained on), like the torch Generator's."""
        self.model_dir.require_prior(level)
        return self.runtime.prior(level), self.config["priors"][level].get("classes")

    def _sample(self, level: str, labels: np.ndarray, condition, rng: np.random.Generator, keep=None) -> np.ndarray:
        prior, _ = self.prior(level)
        class_labels = labels if prior.entry["num_classes"] else None
        draw = prior.sample_reference if self.sampler == "reference" else prior.sample
        return draw(class_labels, condition, n=len(labels), temperature=self.temperature, top_k=self.top_k, rng=rng,
                    keep=keep)

    def codes_for(self, method: str, jobs: list[Job], source: CodeFile | None, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        labels = np.array([job.label for job in jobs], np.int64)
        take = lambda level, attr: source.codes[level][[getattr(job, attr) for job in jobs]].astype(np.int64)  # noqa: E731
        n, codebook_size, grid = len(jobs), self.config["codebook_size"], self.config["grid"]
        if method == "mix":
            codes = {"top": take("top", "source_top"), "bottom": take("bottom", "source_bottom")}
        elif method == "rand-bottom":
            codes = {level: take(level, "source_top") for level in self.levels}
            codes["bottom"] = rng.integers(codebook_size, size=(n, *grid["bottom"]))
        elif method == "rand-top":
            codes = {"bottom": take("bottom", "source_bottom"), "top": rng.integers(codebook_size, size=(n, *grid["top"]))}
        elif method == "resample":
            codes = {level: take(level, "source_top") for level in self.levels}
            keep = None
            if self.mask_dir is not None:
                resampled = np.stack([self.mask_array(source.images[job.source_top]) for job in jobs])
                keep = (codes["bottom"], ~resampled)
            codes["bottom"] = self._sample("bottom", labels, codes.get("top"), rng, keep)
        elif method == "synthesize":
            codes = {"top": self._sample("top", labels, None, rng)}
            codes["bottom"] = self._sample("bottom", labels, codes["top"], rng)
        else:
            raise UsageError(f"unknown method {method}")
        return {level: codes[level].astype(np.uint16) for level in self.levels}

    def images_for(self, codes: dict[str, np.ndarray]) -> np.ndarray:
        return self.vqvae.decode_batch(codes)

    def encode_images(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self.vqvae.encode_batch(images)[0]


def codes_from_images(model_dir: ModelDir, data, labels, device, batch_size=64, **scan_options) -> CodeFile:
    """`skinaug.train_prior.codes_from_images` through encoder.onnx: DATA encoded in memory."""
    from ..encode import dataset_for_model
    from ..image_cache import decode_in_chunks

    config = model_dir.config()
    dataset = dataset_for_model(data, labels, config, **scan_options)
    vqvae = OnnxModel(model_dir, device).vqvae
    codes: dict[str, list[np.ndarray]] = {level: [] for level in config["grid"]}
    kept = []
    for images, chunk in decode_in_chunks(dataset.samples, config["image_size"]):
        for start in range(0, len(chunk), batch_size):
            batch_codes, _ = vqvae.encode_batch(images[start : start + batch_size])
            for level, values in batch_codes.items():
                codes[level].append(values)
        kept.extend(chunk)
    if not kept:
        raise SkinaugError(f"no image in {data} could be read")
    attrs = {**model_attrs(config), "class_names": json.dumps(dataset.class_names)}
    return CodeFile(Path(str(data)), attrs, {k: np.concatenate(v) for k, v in codes.items()},
                    [s.name for s in kept], np.array([s.label for s in kept]), [s.group for s in kept],
                    files={s.name: s.path for s in kept})
