"""A baseline generator's images in an OUT_DIR: `skinaug synthesize` and `skinaug augment --methods synthesize` with
--model BASELINE_DIR.

The OUT_DIR is laid out as for the VQ-VAE (images/, labels.csv with method `synthesize`, run.json, trained_on.json;
resumable batch by batch, each batch with its own seed), except codes.h5: a baseline makes images from noise and
has no codes, so its OUT_DIR has none. Every reader of OUT_DIRs (score, inspect, DATA of any command) needs only
images/ and labels.csv. run.json names the arch ("arch", "model_kind": "baseline", "codes": null) and labels.csv
the model's fingerprint, which hashes the arch with the weights.

--temperature T multiplies the standard deviation of the noise: z ~ N(0, T^2 I). For the VAEs that is their prior
N(0, I) narrowed or widened; dcgan was trained on N(0, I) noise too, and T < 1 is the GAN truncation idea in its
simplest form: more typical, less varied images. T = 1 samples as trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..storage.codefile import CodeFile
from ..distributed import Distributed
from ..errors import UsageError
from .sampler import InputOptions, RunOptions, SamplingOptions
from ..runtime import resolve_device
from ..vqvae.model import to_uint8
from ..baselines.store import load_baseline

METHODS = ("synthesize", "classic")  # classic copies need no generator, so a baseline's augment may add them
# a command's plan records these of the priors; a baseline's plans never did (its --resume digests stay valid)
PRIOR_PLAN_FIELDS = ("top_k", "bf16", "sampler")


class BaselineSampler:
    """A baseline generator on a device, the baselines' `skinaug.sampler.Sampler`: class labels and a seed in,
    uint8 images out. The noise's scale (SamplingOptions.temperature) comes with each call."""

    writes_codes = False  # it decodes noise: no codes, no codes.h5
    code_bytes = 0

    def __init__(self, model, device="auto"):
        self.path = Path(model)
        self.device = resolve_device(device)
        self.model, self.config = load_baseline(self.path, self.device)
        self.class_names = list(self.config["class_names"])

    fingerprint = property(lambda self: self.config["fingerprint"])
    image_size = property(lambda self: self.config["image_size"])
    model_path = property(lambda self: self.path)
    model_config = property(lambda self: self.config)

    @staticmethod
    def check_options(model, arch: str, run: RunOptions, sampling: SamplingOptions) -> None:
        """The priors' sampling options do not apply to a baseline generator."""
        given = [name for name, on in (("{backend='onnx'}", run.backend == "onnx"), ("{top_k}", sampling.top_k is not None),
                                       ("{bf16}", run.bf16), ("{compile_step}", run.compile_step),
                                       ("{sampler='reference'}", sampling.sampler != "fast")) if on]
        if given:
            raise UsageError(f"{', '.join(given)} set how the priors sample codes; {model} is a {arch} baseline generator, "
                             "which decodes noise (PyTorch only)")

    @torch.no_grad()
    def images(self, labels: list[int], seed: int, sampling: SamplingOptions | None = None) -> np.ndarray:
        """uint8 (n, S, S, 3): the decoded noise N(0, temperature^2 I) drawn from a generator seeded by `seed`."""
        sampling = sampling or SamplingOptions()
        generator = torch.Generator(device=self.device).manual_seed(seed)
        noise = torch.randn(len(labels), self.config["latent_dim"], generator=generator, device=self.device)
        labels_ = torch.tensor(labels, dtype=torch.long, device=self.device)
        temperature = float(sampling.temperature)
        return to_uint8(self.model.generate(noise * temperature, labels_)).cpu().numpy()

    # ------------------------------------------------------------------ the Sampler protocol

    def require(self, methods) -> None:
        unsupported = [method for method in methods if method not in METHODS]
        if unsupported:
            raise UsageError(f"{{methods}} {','.join(unsupported)}: {self.path} is a baseline generator, which has no "
                             "codes to mix or resample; use {methods=synthesize} (classic may be added)")

    def read_sources(self, inputs: InputOptions, run: RunOptions) -> tuple[CodeFile, dict]:
        return sources(self.config, inputs.data, inputs.labels, inputs.strict, inputs.columns)

    def check_jobs(self, jobs, source, sampling: SamplingOptions) -> None:
        self.require({job.method for job in jobs})

    def inputs(self) -> list:
        return [self.path]

    def distributed(self) -> Distributed:
        return Distributed()  # one process: a baseline's runs are not sharded

    def make_images(self, method: str, jobs, source, seed: int, sampling: SamplingOptions):
        return {}, self.images([job.label for job in jobs], seed, sampling)

    def encode_images(self, images: np.ndarray) -> dict:
        return {}

    def image_details(self, method: str, jobs, seed: int) -> list[dict]:
        return [{} for _ in jobs]

    def backend_info(self) -> dict:
        return {"backend": "torch", "provider": str(self.device), "model_kind": "baseline", "arch": self.config["arch"],
                "codes": None}

    def plan_fields(self, plan: dict) -> dict:
        return {**{key: value for key, value in plan.items() if key not in PRIOR_PLAN_FIELDS}, "model": self.fingerprint}


def sources(config: dict, data, labels, strict: bool, columns: dict) -> tuple[CodeFile, dict]:
    """DATA's readable images with the model's class indices, in the structure the planners take (no codes)."""
    from ..data.scan import recording_intake, scan_dataset
    from ..storage.image_cache import decode_in_chunks

    with recording_intake() as intake:
        dataset = scan_dataset(data, labels, class_names=config["class_names"], strict=strict, **columns)
        kept = [sample for _, chunk in decode_in_chunks(dataset.samples, config["image_size"], strict=strict)
                for sample in chunk]
    attrs = {"class_names": json.dumps(config["class_names"]), "model_fingerprint": config["fingerprint"]}
    source = CodeFile(Path(str(data)), attrs, {}, [s.name for s in kept], np.array([s.label for s in kept], dtype=np.int64),
                      [s.group for s in kept], files={s.name: s.path for s in kept})
    return source, intake.summary()
