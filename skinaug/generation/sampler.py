"""The generation seam: what every generator offers the one batch loop (`Sampler`), and the settings that travel
with each call instead of living in a generator (`SamplingOptions`), or with each run (`RunOptions`, `InputOptions`,
`OutputOptions`). Torch-free: the onnx backend and `--help` import it.

Two kinds of generator implement `Sampler`: the VQ-VAE-2 with its priors (`skinaug.generate.Generator`, and its
`IterativeGenerator`) and the baselines that decode noise (`skinaug.baselines.synthesize.BaselineSampler`).
`skinaug.generate.open_sampler` is the one place that chooses between them; `skinaug.generate.write_dataset` the
one loop that writes a dataset for either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import UsageError

SAMPLERS = ("fast", "reference")  # how the priors draw: cached steps, or one full forward per position (the truth)
REFINE_CANDIDATES = 32  # codes weighed per position by `refine`; a sweep's cost is proportional to it


@dataclass(frozen=True)
class SamplingOptions:
    """How codes (or a baseline's noise) are drawn, passed with each call: nothing of it is a generator's state.

    temperature: the priors' softmax temperature (a baseline's noise scale); top_k: draw only among the k likeliest
    codes; sampler: fast or reference; refine: Gibbs sweeps over re-drawn codes after the raster draw (resample
    with a mask, or iterative boxes), weighing refine_candidates codes per position (None: 32)."""

    temperature: float = 1.0
    top_k: int | None = None
    sampler: str = "fast"
    refine: int = 0
    refine_candidates: int | None = None

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float, np.floating)) and math.isfinite(self.temperature)
                and self.temperature > 0):  # nan passes a plain `<= 0` and would fail only when sampling
            raise UsageError(f"{{temperature}} must be a positive number, not {self.temperature}")
        if self.top_k is not None and not self.top_k >= 1:
            raise UsageError(f"top_k must be at least 1, not {self.top_k}")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"{{sampler}} must be fast or reference, not {self.sampler}")
        if self.refine < 0:
            raise UsageError(f"{{refine}} must be 0 or more sweeps, not {self.refine}")
        if self.refine_candidates is not None and self.refine_candidates < 1:
            raise UsageError(f"{{refine_candidates}} must be at least 1, not {self.refine_candidates}")

    @property
    def candidates(self) -> int:
        """Codes weighed per position by the refine sweeps."""
        return REFINE_CANDIDATES if self.refine_candidates is None else self.refine_candidates


@dataclass(frozen=True)
class RunOptions:
    """Where and in which pieces a run goes: device and backend (torch, or onnx: skinaug.backends), the seed every
    batch's seed derives from, images per batch, bfloat16 sampling and a compiled sampling step (CUDA)."""

    device: str = "auto"
    backend: str | None = None
    seed: int = 0
    batch_size: int = 64
    bf16: bool = False
    compile_step: bool = False


@dataclass(frozen=True)
class InputOptions:
    """What a command reads its source images from: an image folder `data` (labels from `labels` or class
    sub-folders; `columns`: image_col, label_col, group_col of the CSV) or a code file `codes`; lesion masks
    `masks` (resample) and an albumentations pipeline `classic_config` (augment's classic method)."""

    data: Path | str | None = None
    codes: Path | str | None = None
    labels: Path | str | None = None
    masks: Path | str | None = None
    classic_config: Path | str | None = None
    strict: bool = False
    columns: dict = field(default_factory=dict)


# what augment does with its input images: resized to the output's one size and format (the default), kept byte for
# byte (copied, or hard-linked), or left out
ORIGINALS = ("resize", "copy", "link", "none")
IMAGE_SIZES = (8, 4096)  # the sides OUT_DIR's images may be written at


@dataclass(frozen=True)
class OutputOptions:
    """How OUT_DIR is written: replace an earlier output (overwrite) or finish an interrupted one (resume), image
    format and JPEG quality, one JSON line per image on stdout (jsonl), the layout (images or imagefolder), the side
    of every image (image_size; None: the model's: generated images are decoded, then resized to it), and what
    augment does with the input images (originals: resize, to image_size and image_format like the generated ones;
    copy or link, byte for byte at their own size and format; none); with dry_run nothing is written."""

    overwrite: bool = False
    resume: bool = False
    image_format: str = "png"
    quality: int = 95
    jsonl: bool = False
    layout: str = "images"
    originals: str = "resize"
    dry_run: bool = False
    image_size: int | None = None

    def __post_init__(self):
        if self.originals not in ORIGINALS:
            raise UsageError(f"{{originals}} must be resize, copy, link or none, not {self.originals!r}")
        check_image_size(self.image_size)


def check_image_size(image_size) -> None:
    """{image_size}: None (the model's), or a side in pixels within IMAGE_SIZES."""
    low, high = IMAGE_SIZES
    if image_size is not None and not (isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
                                       and low <= image_size <= high):
        raise UsageError(f"{{image_size}} must be a side in pixels from {low} to {high}, not {image_size!r}")


@runtime_checkable
class Sampler(Protocol):
    """A generator the batch loop (`skinaug.generate.write_dataset`) writes datasets with: jobs in, images out."""

    class_names: list[str]
    device: object

    @property
    def fingerprint(self) -> str: ...  # labels.csv's model_fingerprint

    @property
    def image_size(self) -> int: ...

    @property
    def model_path(self) -> Path: ...  # an input of the run, and the record of the images that trained it

    @property
    def model_config(self) -> object: ...  # what DatasetWriter records: a ModelSpec, or a baseline's config dict

    @property
    def writes_codes(self) -> bool: ...  # codes.h5 in OUT_DIR (False: a baseline decodes noise, it has no codes)

    @property
    def code_bytes(self) -> int: ...  # of one image's code maps (what a plan of many images holds in memory)

    def require(self, methods) -> None: ...  # fails early on a method it cannot make

    def read_sources(self, inputs: InputOptions, run: RunOptions) -> tuple: ...  # (the source CodeFile, intake summary)

    def check_jobs(self, jobs, source, sampling: SamplingOptions) -> None: ...  # before anything is written

    def inputs(self) -> list: ...  # what it reads besides the sources (model, masks): never written over

    def distributed(self): ...  # this process's share of the batches

    def make_images(self, method: str, jobs, source, seed: int,
                    sampling: SamplingOptions) -> tuple[dict[str, np.ndarray], np.ndarray]: ...  # codes, uint8 images

    def encode_images(self, images: np.ndarray) -> dict[str, np.ndarray]: ...  # a classic copy's codes ({}: none)

    def image_details(self, method: str, jobs, seed: int) -> list[dict]: ...  # per row, beyond the columns

    def backend_info(self) -> dict: ...  # run.json's "backend", "provider", ...

    def plan_fields(self, plan: dict) -> dict: ...  # a command's plan as this kind of generator records it
