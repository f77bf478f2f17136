"""The augmentations: mix, resample, synthesize, the random-code baselines, and augment.

Every command plans its work up front as a list of jobs (one per image to make: method, label,
sources, temperature), cuts it into batches of one method, and gives each batch its own seed derived
from --seed and the batch number. A batch's images therefore depend only on the plan, which is what
makes --resume exact and lets torchrun ranks take disjoint batches.

- mix: top codes of one image with the bottom codes of another image of the same label.
- resample: an image's top codes kept, its bottom codes drawn again from the bottom prior at a
  temperature (optionally only inside a lesion mask, then optionally refined by Gibbs sweeps that let each
  redrawn code see the kept codes below and right of it: `priors/refine.py`).
- synthesize: top codes drawn for a class, then bottom codes given them.
- rand-bottom / rand-top: one level replaced by uniformly random codes (baselines for scoring).

One `Generator` drives either backend (`skinaug.backends`: PyTorch, or the ONNX export on onnxruntime); it works
in numpy and asks the backend for the code model, the priors and each batch's random numbers.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from . import iterative as iterative_module
from ..backends import open_backend
from ..storage.codefile import CodeFile, read_codes
from ..errors import BadImage, SkinaugError, UsageError, literal
from ..data.layout import (AUGMENT_METHODS, DRAWN_METHODS, as_layout, is_generated_folder, label_row, plan_layout,
                           plan_size, read_provenance)
from ..limits import check_planned_images
from ..limits import code_bytes as grid_code_bytes
from ..storage.modeldir import ModelDir, baseline_arch, model_location
from ..naming import name_key, unique_names
from ..storage.writer import DatasetWriter, check_streaming
from ..runtime import log, progress, resolve_backend, warn
from .sampler import REFINE_CANDIDATES, InputOptions, OutputOptions, RunOptions, Sampler, SamplingOptions

PRIORS_NEEDED = {"resample": ("bottom",), "synthesize": ("top", "bottom")}


@dataclass
class Job:
    """One image to make. Sources are indices into the source codes (-1: none)."""

    method: str
    label: int
    source_top: int = -1
    source_bottom: int = -1
    name: str = ""


def batch_seed(seed: int, batch_index: int) -> int:
    return (seed * 1_000_003 + batch_index * 7919 + 17) % (2**63 - 1)


def check_refine(sampling: SamplingOptions, mask_dir, backend) -> None:
    """refine sweeps re-draw codes given kept ones: they need a mask (or the iterative boxes, IterativeGenerator),
    and the PyTorch priors."""
    if sampling.refine and mask_dir is None:
        raise UsageError("{refine} re-draws the codes inside the lesion masks given the kept ones: give {mask_dir} "
                         "(or {iterative=STEPS}, whose boxes it refines)")
    if sampling.refine and resolve_backend(backend) == "onnx":
        raise UsageError("{refine} teacher-forces the bottom prior in PyTorch: it does not apply to {backend='onnx'}")


def open_generator(model, device="auto", *, backend=None, **options) -> "Generator":
    """The Generator of --backend: PyTorch, or the exported graphs through onnxruntime (which never import torch)."""
    return Generator(model, device, backend=backend, **options)


def open_sampler(model, run: RunOptions | None = None, sampling: SamplingOptions | None = None, *,
                 mask_dir=None, iterative=None) -> Sampler:
    """THE choice between the two kinds of generator: a baseline's directory (`skinaug train baseline`) opens its
    BaselineSampler (PyTorch only: the priors' options are refused), any other a VQ-VAE-2 Generator on
    `run.backend` (an IterativeGenerator with an `iterative` request). `sampling` is only checked here."""
    run, sampling = run or RunOptions(), sampling or SamplingOptions()
    arch = baseline_arch(model) if model is not None else None
    if arch is not None:
        from .baseline_sampler import BaselineSampler

        BaselineSampler.check_options(model, arch, run, sampling)
        return BaselineSampler(model, run.device)
    return open_model_generator(model, run, sampling, mask_dir=mask_dir, iterative=iterative)


def open_model_generator(model, run: RunOptions | None = None, sampling: SamplingOptions | None = None, *,
                         mask_dir=None, iterative=None) -> "Generator":
    """A VQ-VAE-2 model's Generator (what mix and resample, which read codes, need whatever `model` is)."""
    run, sampling = run or RunOptions(), sampling or SamplingOptions()
    options = dict(mask_dir=mask_dir, dtype=sampling_dtype(run.bf16), compile_step=run.compile_step)
    if iterative is not None:  # its refine sweeps refine the boxes (and the request refused the onnx backend)
        return IterativeGenerator(model, run.device, iterative=iterative, **options)
    check_refine(sampling, mask_dir, run.backend)  # before the backend opens (an onnx one may be missing)
    return Generator(model, run.device, backend=run.backend, **options)


class Generator:
    """Turns batches of jobs into code maps and images with one model directory on one backend and device: the
    VQ-VAE-2 `Sampler`. How codes are drawn (SamplingOptions) comes with each call; nothing of it is kept here.

    The backend (`skinaug.backends`) holds the networks and the random numbers; everything here is numpy, so both
    backends make the same plans, names, seeds per batch and outputs."""

    writes_codes = True

    def __init__(self, model, device="auto", *, backend=None, mask_dir=None, dtype=None, compile_step=False):
        self.backend_name = resolve_backend(backend)
        self.model_dir = ModelDir(model)
        self.config = self.model_dir.config()  # config.json as read (priors, export, ...); shapes: self.spec
        self.backend = open_backend(self.model_dir, device, self.backend_name, dtype=dtype, compile_step=compile_step)
        self.spec, self.code_model, self.device = self.backend.spec, self.backend.code_model, self.backend.device
        self.mask_dir = Path(mask_dir) if mask_dir else None
        self.class_names = list(self.spec.class_names)
        self.levels = list(self.spec.level_names)
        self.unmasked: set[int] = set()  # sources whose mask marks no code: their "resample" is a reconstruction

    fingerprint = property(lambda self: self.spec.fingerprint)
    image_size = property(lambda self: self.spec.image_size)
    model_path = property(lambda self: self.model_dir.path)
    model_config = property(lambda self: self.spec)
    code_bytes = property(lambda self: grid_code_bytes(self.spec))  # of one image's code maps

    def check_sampling(self, sampling: SamplingOptions) -> None:
        check_refine(sampling, self.mask_dir, self.backend_name)

    def inputs(self) -> list:
        return [self.model_dir.path, self.mask_dir]

    def plan_fields(self, plan: dict) -> dict:
        return plan

    def read_sources(self, inputs: InputOptions, run: RunOptions) -> tuple[CodeFile, dict | None]:
        return read_sources(self.model_dir.path, inputs.codes, inputs.data, inputs.labels, run.device, run.backend,
                            inputs.strict, **inputs.columns)

    def require(self, methods) -> None:
        """Fails early, naming the missing prior file and the command that trains it."""
        for method in methods:
            if method in ("mix", "rand-top", "synthesize") and "top" not in self.levels:
                raise SkinaugError(f"{method} needs a two-level model; {self.model_dir.path} has one level")
            for level in PRIORS_NEEDED.get(method, ()):
                if level in self.levels:
                    self.model_dir.require_prior(level)

    def check_classes(self, jobs) -> None:
        """Every prior a job samples was trained on the job's class."""
        for method, label in sorted({(job.method, job.label) for job in jobs}):
            for level in PRIORS_NEEDED.get(method, ()):
                if level in self.levels and label >= 0:
                    self.check_class(level, label)

    def check_class(self, level: str, label: int) -> None:
        trained_classes = self.backend.prior(level).trained_classes
        if trained_classes is not None and self.class_names[label] not in trained_classes:
            raise SkinaugError(f"the {level} prior was trained on {', '.join(trained_classes)} only, not on {self.class_names[label]}")

    def backend_info(self) -> dict:
        """run.json's "backend" and "provider"."""
        return self.backend.info()

    def distributed(self):
        """This process's share of the work (torchrun ranks take disjoint batches on the torch backend)."""
        return self.backend.distributed()

    def _sample(self, level: str, labels: np.ndarray, condition, random, sampling: SamplingOptions,
                keep=None) -> np.ndarray:
        prior = self.backend.prior(level)
        draw = prior.sample_reference if sampling.sampler == "reference" else prior.sample
        return draw(labels if prior.num_classes else None, condition, n=len(labels),
                    uniforms=random.uniforms(len(labels), prior.height * prior.width), temperature=sampling.temperature,
                    top_k=sampling.top_k, keep=keep)

    def _refine(self, level, codes, region, labels, condition, random, sampling: SamplingOptions) -> np.ndarray:
        """Gibbs sweeps over the codes in `region`, after the raster draw and from the same random numbers (torch)."""
        prior = self.backend.prior(level)
        return prior.refine(codes, region, labels if prior.num_classes else None, condition, random=random,
                            sweeps=sampling.refine, candidates=sampling.candidates, temperature=sampling.temperature,
                            top_k=sampling.top_k)

    def mask_array(self, name: str) -> np.ndarray:
        """A lesion mask (DIR/<image>.png) reduced to the bottom grid: True where codes are resampled."""
        from PIL import Image

        from ..data.scan import open_image

        path = self.mask_dir / f"{name}.png"
        if not path.is_file():
            raise SkinaugError(f"no mask for {name}: {path} is missing")
        height, width = self.spec.grid["bottom"]
        try:
            with open_image(path) as image:
                mask = np.asarray(image.convert("L").resize((width, height), Image.Resampling.BOX)) >= 128
        except BadImage as error:  # a mask is needed for its image: no skipping it
            raise SkinaugError(f"cannot read mask {path}: {error}") from None
        return mask

    def codes_for(self, method: str, jobs: list[Job], source: CodeFile | None, seed: int,
                  sampling: SamplingOptions | None = None) -> dict[str, np.ndarray]:
        """Code maps (uint16 per level) for a batch of jobs of one method; its random numbers come from `seed`."""
        sampling = sampling or SamplingOptions()
        random = self.backend.random(seed)
        labels = np.array([job.label for job in jobs], np.int64)
        take = lambda level, attr: source.codes[level][[getattr(job, attr) for job in jobs]].astype(np.int64)  # noqa: E731
        n, codebook_size, grid = len(jobs), self.spec.codebook_size, self.spec.grid
        if method == "mix":
            codes = {"top": take("top", "source_top"), "bottom": take("bottom", "source_bottom")}
        elif method == "rand-bottom":
            codes = {level: take(level, "source_top") for level in self.levels}
            codes["bottom"] = random.integers(codebook_size, (n, *grid["bottom"]))
        elif method == "rand-top":
            codes = {"bottom": take("bottom", "source_bottom"), "top": random.integers(codebook_size, (n, *grid["top"]))}
        elif method == "resample":
            codes = {level: take(level, "source_top") for level in self.levels}
            keep = None
            if self.mask_dir is not None:
                resampled = np.stack([self.mask_array(source.images[job.source_top]) for job in jobs])
                keep = (codes["bottom"], ~resampled)
            codes["bottom"] = self._sample("bottom", labels, codes.get("top"), random, sampling, keep)
            if sampling.refine:
                codes["bottom"] = self._refine("bottom", codes["bottom"], resampled, labels, codes.get("top"), random,
                                               sampling)
        elif method == "synthesize":
            codes = {"top": self._sample("top", labels, None, random, sampling)}
            codes["bottom"] = self._sample("bottom", labels, codes["top"], random, sampling)
        else:
            raise UsageError(f"unknown method {method}")
        return {level: codes[level].astype(np.uint16) for level in self.levels}

    def image_details(self, method: str, jobs: list[Job], seed: int) -> list[dict]:
        """Per image of a batch, what its row records beyond labels.csv's columns (the iterative resample's boxes:
        skinaug/iterative.py), or in place of them: a resample under a mask that marks nothing draws no code, so
        its image is a reconstruction and its row says so."""
        reconstruction = {"method": "reconstruction", "temperature": "", "seed": ""}
        return [reconstruction if method == "resample" and job.source_top in self.unmasked else {} for job in jobs]

    def images_for(self, codes: dict[str, np.ndarray]) -> np.ndarray:
        return self.code_model.decode(codes)

    def make_images(self, method: str, jobs: list[Job], source: CodeFile | None, seed: int,
                    sampling: SamplingOptions) -> tuple[dict[str, np.ndarray], np.ndarray]:
        codes = self.codes_for(method, jobs, source, seed, sampling)
        return codes, self.images_for(codes)

    def check_jobs(self, jobs: list[Job], source: CodeFile | None, sampling: SamplingOptions) -> None:
        """What the jobs need (priors trained on their classes, labels, masks), before anything is written."""
        self.require({job.method for job in jobs})
        self.check_sampling(sampling)
        self.check_classes(jobs)
        if any(job.method in PRIORS_NEEDED and job.label < 0 for job in jobs) and self.class_names:
            raise SkinaugError("a class-conditional prior cannot resample unlabelled images: give {labels}")
        check_masks(self, jobs, source)

    def encode_images(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 images (B, S, S, 3) -> code maps per level: what codes.h5 keeps of a classically augmented image."""
        return self.code_model.encode(images)


def load_sources(model, codes=None, data=None, labels=None, device="auto", backend=None, **scan_options) -> CodeFile:
    """Source images' codes: from a code file (checked against the model) or encoded from DATA now."""
    from .encode_decode import codes_from_images

    model_dir = ModelDir(model)
    if (codes is None) == (data is None):
        raise UsageError("give either an image folder {data} or {codes=CODES.h5}")
    if codes is not None:
        spec = model_dir.spec()
        source = read_codes(codes)
        source.check_model(spec)
        return source.relabel(spec.class_names)  # label numbers are the file's; the model's may differ
    code_model = open_backend(model_dir, device, resolve_backend(backend)).code_model
    return codes_from_images(code_model, data, labels, **scan_options)


def class_index(class_names: list[str], name: str) -> int:
    """The index of --class NAME; a name the model does not know is a usage error (exit 2)."""
    if name not in class_names:
        raise UsageError(f"{{class_name}} {name!r} is not a class of this model: it knows {', '.join(class_names) or 'no classes'}")
    return class_names.index(name)


def plan_mix(source: CodeFile, n: int, rng: np.random.Generator, *, any_label=False, label: int | None = None) -> list[Job]:
    """n (top source, bottom source) pairs: same label unless any_label; a different image when there is one."""
    check_planned_images(n)
    candidates = np.flatnonzero(source.labels == label) if label is not None else np.arange(len(source))
    if label is None and not any_label:
        candidates = candidates[source.labels[candidates] >= 0]
    if candidates.size == 0:
        raise SkinaugError("no source image to mix" + (f" of class {label}" if label is not None else " with a label (use {any_label=True})"))
    by_label = {lab: np.flatnonzero(source.labels == lab) for lab in np.unique(source.labels[candidates])}
    jobs = []
    alone: set[int] = set()
    for top in rng.choice(candidates, size=n):
        pool = np.arange(len(source)) if any_label else by_label[source.labels[top]]
        others = pool[pool != top]
        if not others.size:
            alone.add(int(source.labels[top]))
        bottom = int(rng.choice(others)) if others.size else int(top)
        jobs.append(Job("mix", int(source.labels[top]), int(top), bottom))
    for lab in sorted(alone):
        names = source.class_names
        name = names[lab] if 0 <= lab < len(names) else "unlabelled" if lab < 0 else str(lab)
        warn(f"class {name} has a single source image: its mixes are reconstructions of it "
             "(source_top = source_bottom in labels.csv)")
    return jobs


def plan_per_source(method: str, indices, per_image: int, source: CodeFile) -> list[Job]:
    check_planned_images(len(indices) * per_image)
    return [Job(method, int(source.labels[i]), int(i), int(i)) for i in indices for _ in range(per_image)]


def name_jobs(jobs: list[Job], class_names: list[str], prefix: str = "", *, taken=()) -> None:
    """Names each job's image '<prefix><method>_<class>_<n>'. Class names come from CSVs and downloaded models,
    so each is made one safe file-name part (see naming.py); every name differs from the others and from
    `taken` (the originals' names in the same output), also when case is ignored."""
    labels = unique_names(class_names)
    used = {name_key(name) for name in taken}
    counters: Counter = Counter()
    for job in jobs:
        label = labels[job.label] if 0 <= job.label < len(class_names) else "unlabelled"
        key = (job.method, label)
        while True:  # skips numbers an original already has (an OUT_DIR augmented again holds gen_ names)
            name = f"{prefix}{job.method}_{label}_{counters[key]:06d}"
            counters[key] += 1
            if name_key(name) not in used:
                break
        used.add(name_key(name))
        job.name = name


def make_batches(jobs: list[Job], batch_size: int) -> list[tuple[str, list[Job]]]:
    """Consecutive jobs of one method, at most batch_size each (plans are already grouped by method)."""
    batches = []
    for job in jobs:
        if batches and batches[-1][0] == job.method and len(batches[-1][1]) < batch_size:
            batches[-1][1].append(job)
        else:
            batches.append((job.method, [job]))
    return batches


def write_dataset(sampler: Sampler, jobs: list[Job], source: CodeFile | None, out, *, plan: dict,
                  run: RunOptions | None = None, sampling: SamplingOptions | None = None,
                  output: OutputOptions | None = None, originals: list | None = None, extra: dict | None = None,
                  inputs=(), classic_transforms: list | None = None) -> dict:
    """THE batch loop: every job's image into OUT_DIR, for any Sampler (streamed, resumable, sharded under torchrun).
    `plan` (job_plan) names the command; its digest is what --resume checks.

    Batch i is drawn with batch_seed(run.seed, i) (batch 0 holds the `originals` rows when there are some).
    `classic` jobs are their source image through the albumentations pipeline (skinaug.classic; `classic_transforms`
    a user's own), encoded for codes.h5 where the sampler has codes; every other method is the sampler's.
    `inputs`: what else the command reads (a labels CSV), never to be written over; the sampler's own (model, masks)
    and the sources are known here. Every image is written at output.image_size (None: the sampler's), the
    `originals` too unless output.originals keeps them byte for byte: the plan records it (layout.plan_size)."""
    run, sampling, output = run or RunOptions(), sampling or SamplingOptions(), output or OutputOptions()
    plan = {**plan, **plan_size(output.image_size, sampler.image_size, output.originals if originals else None)}
    command = plan["command"]
    dist = sampler.distributed()
    check_jobs(sampler, jobs, source, sampling)
    writer = open_writer(sampler, jobs, out, plan, output, dist,
                         [*sampler.inputs(), source.path if source is not None else None, *inputs])
    done = writer.done_batches()
    offset = 1 if originals else 0
    if originals and dist.is_main and 0 not in done:
        indices = [row["index"] for row in originals]
        writer.write_originals(0, originals, {level: values[indices] for level, values in source.codes.items()},
                               link=output.originals == "link")
    timings, counts = Counter(), Counter()
    started = time.perf_counter()
    todo = [(index + offset, method, batch) for index, (method, batch) in enumerate(make_batches(jobs, run.batch_size))
            if (index + offset) % dist.world_size == dist.rank and (index + offset) not in done]
    with progress(sum(len(batch) for _, _, batch in todo), desc=command) as bar:
        for batch_index, method, batch in todo:
            began = time.perf_counter()
            seed_value = batch_seed(run.seed, batch_index)
            codes, images = make_batch(sampler, method, batch, source, seed_value, sampling, classic_transforms)
            writer.write_batch(batch_index, images, batch_rows(sampler, method, batch, source, seed_value, sampling),
                               codes)
            timings[method] += time.perf_counter() - began
            counts[method] += len(batch)
            bar.update(len(batch))
            bar.set_postfix(img_s=f"{sum(counts.values()) / (time.perf_counter() - started):.1f}")
    dist.barrier()
    if not dist.is_main:
        return {}
    return finish_run(writer, sampler, command=command, seed=run.seed, temperature=sampling.temperature,
                      counts=counts, timings=timings, seconds=time.perf_counter() - started, extra=extra)


def open_writer(sampler: Sampler, jobs: list[Job], out, plan: dict, output: OutputOptions, dist, inputs) -> DatasetWriter:
    """Rank 0 claims the output; the other ranks write their batches where it says (staged under --overwrite)."""
    options = dict(model_config=sampler.model_config, plan=plan, image_format=output.image_format,
                   quality=output.quality, jsonl=output.jsonl, codes=sampler.writes_codes)
    if dist.is_main:
        # only images the generator made carry its training record (classic copies do not)
        made = any(job.method != "classic" for job in jobs)
        writer = DatasetWriter(out, overwrite=output.overwrite, resume=output.resume, inputs=inputs,
                               model_dir=sampler.model_path if made else None, **options)
    work_dir = dist.broadcast_object(str(writer.work) if dist.is_main else None) if dist.world_size > 1 else None
    if not dist.is_main:
        writer = DatasetWriter(out, resume=True, is_main=False, work_dir=work_dir, **options)
    return writer


def check_jobs(sampler: Sampler, jobs: list[Job], source: CodeFile | None, sampling: SamplingOptions) -> None:
    """What the jobs need (the sampler's checks, the image files of classic copies), before anything is written."""
    sampler.check_jobs(jobs, source, sampling)
    if any(job.method == "classic" for job in jobs) and (source is None or source.files is None):
        raise UsageError("classic augments the image files themselves: give {data} rather than {codes}")


def batch_rows(sampler: Sampler, method: str, jobs: list[Job], source: CodeFile | None, seed: int,
               sampling: SamplingOptions) -> list[dict]:
    """labels.csv rows of a batch's images (with a "group" for codes.h5, and the method's details)."""
    class_names = sampler.class_names
    rows = []
    for job, details in zip(jobs, sampler.image_details(method, jobs, seed)):
        top, bottom = job.source_top, job.source_bottom
        rows.append({**label_row(
            job.name, class_names[job.label] if 0 <= job.label < len(class_names) else "", method,
            source_top=source.images[top] if top >= 0 else "", source_bottom=source.images[bottom] if bottom >= 0 else "",
            temperature=sampling.temperature if method in DRAWN_METHODS else "", seed=seed, fingerprint=sampler.fingerprint,
            group=source.groups[top] if top >= 0 and source.groups[top] else ""), **details})
    return rows


def finish_run(writer: DatasetWriter, sampler: Sampler, *, command: str, seed: int, temperature: float, counts: Counter,
               timings: Counter, seconds: float, extra: dict | None) -> dict:
    """Rank 0, once every batch is written: the log line, then the dataset assembled (see DatasetWriter.finish)."""
    made = sum(counts.values())
    log(f"made {made} images in {seconds:.1f}s ({made / max(seconds, 1e-9):.1f} img/s)")
    return writer.finish(command=command, seed=seed, device=str(sampler.device), extra={
        "temperature": temperature,
        "seconds_per_method_this_run": {k: round(v, 3) for k, v in timings.items()},
        "images_per_s_this_run": made / max(seconds, 1e-9),
        **sampler.backend_info(),
        **(extra or {}),
    })


def make_batch(sampler: Sampler, method: str, jobs: list[Job], source: CodeFile | None, seed: int,
               sampling: SamplingOptions | None = None, classic_transforms=None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One batch of one method: its code maps per level and its uint8 images (what the commands write and the Python
    API returns). `classic` is the sources through the albumentations pipeline, encoded; the others the sampler's."""
    sampling = sampling or SamplingOptions()
    if method == "classic":
        images = classic_batch(source, jobs, sampler.image_size, seed, classic_transforms)
        return sampler.encode_images(images), images
    return sampler.make_images(method, jobs, source, seed, sampling)


def classic_batch(source: CodeFile, jobs: list[Job], image_size: int, seed: int, transforms) -> np.ndarray:
    """The jobs' source images at the model's side, classically augmented with the batch's seed."""
    from ..data.classic import augment_images
    from ..data.scan import load_image

    images = np.stack([load_image(source.files[source.images[job.source_top]], image_size) for job in jobs])
    return augment_images(images, seed, transforms)


def check_masks(generator: Generator, jobs: list[Job], source: CodeFile | None) -> None:
    """Every lesion mask a resample job needs, looked for before anything is written (not half-way through)."""
    generator.unmasked = set()  # of this run's sources (a generator may serve several runs)
    if generator.mask_dir is None:
        return
    for index in sorted({job.source_top for job in jobs if job.method == "resample"}):
        name = source.images[index]
        path = generator.mask_dir / f"{name}.png"
        if not path.is_file():
            raise SkinaugError(f"no mask for {name}: {path} is missing")
        if not generator.mask_array(name).any():  # nothing drawn anew: a reconstruction, labelled as one
            generator.unmasked.add(index)
    if generator.unmasked:
        names = sorted(source.images[index] for index in generator.unmasked)
        warn(f"{len(names)} masks mark no part of their image at the code grid's resolution (no region of pixels >= "
             f"128), so nothing is resampled: {literal(', '.join(names[:3]))}{', ...' if len(names) > 3 else ''} "
             "are labelled reconstruction")


def job_plan(jobs: list[Job], **options) -> dict:
    return {"jobs": [asdict(job) for job in jobs], **{k: str(v) if isinstance(v, Path) else v for k, v in options.items()}}


def weighted_counts(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Splits total by weights with the largest-remainder rule, so the parts add up exactly."""
    largest = max(weights.values())  # shares of the largest weight: weights near the float limit cannot overflow
    shares = {m: w / largest for m, w in weights.items()}
    share_sum = sum(shares.values())
    raw = {m: total * share / share_sum for m, share in shares.items()}
    counts = {m: int(np.floor(v)) for m, v in raw.items()}
    for m in sorted(raw, key=lambda m: raw[m] - counts[m], reverse=True)[: total - sum(counts.values())]:
        counts[m] += 1
    return counts


def parse_methods(text: str) -> dict[str, float]:
    """'mix:1,resample:2,synthesize' -> {'mix': 1.0, 'resample': 2.0, 'synthesize': 1.0}."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition(":")
        if name not in AUGMENT_METHODS:
            raise UsageError(f"unknown method {name!r} in {{methods}}: choose from {', '.join(AUGMENT_METHODS)}")
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError:
            raise UsageError(f"bad weight {weight!r} for {name} in {{methods}}") from None
        if not np.isfinite(weights[name]):  # float() reads "nan" and "inf"
            raise UsageError(f"bad weight {weight!r} for {name} in {{methods}}: give a finite number")
        if weights[name] < 0:
            raise UsageError(f"negative weight for {name} in {{methods}}")
    if not weights or sum(weights.values()) <= 0:
        raise UsageError("{methods} names no method with a positive weight")
    return weights


def plan_augment(source: CodeFile, class_names: list[str], *, factor=None, balance=False, weights: dict[str, float],
                 originals=True, seed=0) -> tuple[list[Job], dict]:
    """Jobs per class and method so the output holds F x the input (--factor) or equal classes (--balance)."""
    if (factor is None) == (not balance):
        raise UsageError("give exactly one of {factor=F} or {balance=True}")
    if factor is not None and factor < (1.0 if originals else 0.0):
        raise UsageError(f"{{factor}} {factor} would remove images: use a factor of at least 1 (or {{no_originals=True}})")
    rng = np.random.default_rng(seed)
    per_class = {c: int((source.labels == c).sum()) for c in range(len(class_names))}
    present = {c: n for c, n in per_class.items() if n > 0}
    if not present:
        raise SkinaugError("no labelled image to augment: give {labels} or class sub-folders")
    largest = max(present.values())
    targets = {label: round(factor * count) if factor is not None else largest for label, count in present.items()}
    check_planned_images(sum(targets.values()))
    jobs: list[Job] = []
    table: dict = {}
    for label, count in present.items():
        target = targets[label]
        to_make = max(0, target - (count if originals else 0))
        split = weighted_counts(to_make, weights)
        table[class_names[label]] = {"originals": count if originals else 0, **split, "total": target}
        members = np.flatnonzero(source.labels == label)
        for method, n in split.items():
            if n == 0:
                continue
            if method == "mix":
                jobs += plan_mix(source, n, rng, label=label)
            elif method == "synthesize":
                jobs += [Job("synthesize", label) for _ in range(n)]
            else:
                # each source used as evenly as possible, in a seeded order
                picks = np.resize(rng.permutation(members), n)
                jobs += [Job(method, label, int(i), int(i)) for i in picks]
    jobs.sort(key=lambda job: AUGMENT_METHODS.index(job.method))  # one method per batch, fewer batches
    warn_unequal_generated_shares(table)
    return jobs, table


# generated shares this far apart between classes make "looks generated" a class cue (#22: --balance on a 10% share
# of HAM10000 made melanoma 85% generated against nevus 0%, and lowered melanoma-vs-nevus AUC from 0.83 to 0.70)
SHARE_SPREAD_LIMIT = 0.05


def generated_shares(table: dict) -> dict[str, float]:
    """Per class, the share of its output images that a generator made (classic copies and originals are real)."""
    return {name: sum(n for method, n in row.items() if method in AUGMENT_METHODS and method != "classic") / row["total"]
            for name, row in table.items() if row["total"] > 0}


def warn_unequal_generated_shares(table: dict) -> None:
    shares = generated_shares(table)
    if shares and max(shares.values()) - min(shares.values()) > SHARE_SPREAD_LIMIT:
        listed = ", ".join(f"{name} {share:.0%}" for name, share in sorted(shares.items(), key=lambda item: -item[1]))
        warn(f"the classes' generated shares differ ({listed}): a classifier can learn 'generated' as a cue for the "
             "classes with more; {factor=F} gives every class the same share, and class weights or a weighted "
             "sampler balance classes without it")


def original_rows(source: CodeFile, class_names: list[str], fingerprint: str, labels_csv=None) -> list[dict]:
    """labels.csv rows for the input images themselves, with their files: method 'original', unless `labels_csv` (the
    labels the sources were read with) is a generated dataset's, whose images keep the method and sources it gives
    them (so a folder augmented again still tells its synthetic images from the real ones)."""
    if source.files is None:
        raise UsageError("originals need the image files: give {data} rather than {codes}")
    earlier = read_provenance(labels_csv) if labels_csv is not None else {}
    rows = []
    # the file keeps the source's name where that is a safe, distinct file name; source_* keep it as it is
    for index, (name, file_name) in enumerate(zip(source.images, unique_names(source.images))):
        label = int(source.labels[index])
        row = label_row(file_name, class_names[label] if label >= 0 else "", "original", source_top=name,
                        source_bottom=name, fingerprint=fingerprint)
        rows.append({**row, **earlier.get(name, {}), "group": source.groups[index], "file": str(source.files[name]),
                     "index": index})
    return rows


def labels_of(data, labels) -> Path | None:
    """The labels CSV that DATA is read with: `labels`, or a generated OUT_DIR's own labels.csv."""
    from ..data.scan import STDIN

    if labels is not None:
        return Path(labels)
    if str(data) != STDIN and Path(data).is_dir() and is_generated_folder(Path(data)):
        return Path(data) / "labels.csv"
    return None


class IterativeGenerator(Generator):
    """The Generator whose `resample` jobs re-draw one box per step (other methods are the Generator's): iterative
    inpainting in code space, skinaug/iterative.py (the boxes and their placement)."""

    def __init__(self, model, device="auto", *, iterative, mask_dir=None, **options):
        if mask_dir is not None:
            raise UsageError(iterative_module.WITH_MASK)
        super().__init__(model, device, **options)
        self.iterative = iterative_module.resolve_settings(iterative, self.spec.grid)

    def check_sampling(self, sampling: SamplingOptions) -> None:
        """The refine sweeps refine each box, not a lesion mask: the Generator's check that they have one does not
        apply (and the iterative request already refused the onnx backend)."""

    def require(self, methods) -> None:
        super().require(methods)
        if "resample" in methods and self.iterative.levels == "both":
            self.model_dir.require_prior("top")

    def check_classes(self, jobs) -> None:
        super().check_classes(jobs)
        if self.iterative.levels == "both":
            for label in sorted({job.label for job in jobs if job.method == "resample" and job.label >= 0}):
                self.check_class("top", label)

    def image_details(self, method: str, jobs, seed: int) -> list[dict]:
        if method != "resample":
            return super().image_details(method, jobs, seed)
        return [{"boxes": iterative_module.image_boxes(self.iterative, seed, index)} for index in range(len(jobs))]

    def codes_for(self, method, jobs, source, seed, sampling: SamplingOptions | None = None):
        sampling = sampling or SamplingOptions()
        if method != "resample":
            return super().codes_for(method, jobs, source, seed, sampling)
        random = self.backend.random(seed)
        labels = np.array([job.label for job in jobs], np.int64)
        sources = [job.source_top for job in jobs]
        codes = {level: source.codes[level][sources].astype(np.int64) for level in self.levels}
        boxes = [details["boxes"] for details in self.image_details(method, jobs, seed)]
        for step in range(self.iterative.steps):
            for level in self.iterative.redrawn_levels:
                grid = tuple(self.spec.grid[level])
                region = np.stack([iterative_module.boxes_mask(records, level, grid, step) for records in boxes])
                condition = codes.get("top") if level == "bottom" else None
                codes[level] = self._redraw(level, codes[level], region, labels, condition, random, sampling)
        return {level: codes[level].astype(np.uint16) for level in self.levels}

    def _redraw(self, level, codes, region, labels, condition, random, sampling: SamplingOptions):
        """The codes inside `region` drawn again given the others (raster draw, then the {refine} sweeps)."""
        drawn = self._sample(level, labels, condition, random, sampling, keep=(codes, ~region))
        if not sampling.refine:
            return drawn
        return self._refine(level, drawn, region, labels, condition, random, sampling)


# ------------------------------------------------------------------ the generating commands as library functions
#
# Each writes a generated dataset into OUT_DIR (images/, labels.csv, codes.h5, run.json) and returns the run's summary
# (what run.json records); `skinaug mix|resample|synthesize|augment` call them with their options. `model`: a model
# directory or a shipped model's name (None: $SKINAUG_MODEL, else the shipped default). Sources (`inputs`) are an
# image folder (labels from a CSV or class sub-folders) or a code file. Settings come as options objects
# (skinaug.sampler): how codes are drawn (SamplingOptions), where and in which batches (RunOptions), how OUT_DIR is
# written (OutputOptions).


def mix(out, n: int, *, model=None, class_name=None, any_label=False, inputs: InputOptions | None = None,
        run: RunOptions | None = None, output: OutputOptions | None = None) -> dict:
    """n images, each the top codes of one source image with the bottom codes of another of the same label (of any
    label with `any_label`; only of `class_name` when given)."""
    inputs, run, output = inputs or InputOptions(), run or RunOptions(), output or OutputOptions()
    check_output(out, output)
    generator = open_model_generator(model_location(model), run)
    generator.require(["mix"])
    source, read = generator.read_sources(inputs, run)
    label = class_index(generator.class_names, class_name) if class_name else None
    jobs = plan_mix(source, n, np.random.default_rng(run.seed), any_label=any_label, label=label)
    name_jobs(jobs, generator.class_names)
    plan = job_plan(jobs, command="mix", source=str(inputs.codes or inputs.data), seed=run.seed,
                    batch_size=run.batch_size, format=output.image_format,
                    **plan_layout(output.layout, [job.label for job in jobs]))
    return write_dataset(generator, jobs, source, out, plan=plan, run=run, output=output,
                         extra={"any_label": any_label, "input": read}, inputs=[inputs.labels])


def resample(out, *, model=None, per_image=1, method="resample", iterative=None, class_name=None,
             inputs: InputOptions | None = None, run: RunOptions | None = None,
             sampling: SamplingOptions | None = None, output: OutputOptions | None = None) -> dict:
    """per_image variants of every source image (of `class_name` when given): its top codes kept, its bottom codes
    drawn again by the bottom prior (only inside its lesion mask inputs.masks/<image>.png when given), or one level
    replaced by random codes (method rand-bottom | rand-top, the baselines). With iterative=STEPS (or an
    iterative.IterativeRequest: box size and schedule too), one box of codes is re-drawn per step instead, STEPS
    times (iterative inpainting, skinaug/iterative.py)."""
    inputs, run, output = inputs or InputOptions(), run or RunOptions(), output or OutputOptions()
    sampling = sampling or SamplingOptions()
    check_output(out, output)
    mask_dir = inputs.masks
    request = check_resample(method, iterative, mask_dir, run.backend, sampling)
    generator = open_model_generator(model_location(model), run, sampling, mask_dir=mask_dir, iterative=request)
    generator.require([method])
    source, read = generator.read_sources(inputs, run)
    indices = np.arange(len(source))
    if class_name:
        indices = indices[source.labels == class_index(generator.class_names, class_name)]
    jobs = plan_per_source(method, indices, per_image, source)
    name_jobs(jobs, generator.class_names)
    # in the plan only when on: the plans (and --resume) of runs without refinement stay as they were
    candidates = sampling.candidates if sampling.refine else None
    refined = {"refine": sampling.refine, "refine_candidates": candidates} if sampling.refine else {}
    iterated = {"iterative": generator.iterative.to_json()} if request else {}
    masks = str(mask_dir) if mask_dir else None
    plan = job_plan(jobs, command=method, source=str(inputs.codes or inputs.data), seed=run.seed,
                    batch_size=run.batch_size, temperature=sampling.temperature, top_k=sampling.top_k, mask_dir=masks,
                    format=output.image_format, bf16=run.bf16, sampler=sampling.sampler, **refined, **iterated,
                    **plan_layout(output.layout, [job.label for job in jobs]))
    return write_dataset(generator, jobs, source, out, plan=plan, run=run, sampling=sampling,
                         output=output, inputs=[inputs.labels],
                         extra={"mask_dir": masks, "refine": sampling.refine, "refine_candidates": candidates,
                                "input": read, **iterated})


def check_resample(method: str, iterative, mask_dir, backend, sampling: SamplingOptions):
    """resample's options checked for what they go with; its iterative request (None: not iterative)."""
    if isinstance(iterative, iterative_module.IterativeRequest):
        steps, box = iterative.steps, (iterative.box_size, iterative.schedule, iterative.levels)
    else:
        steps, box = iterative, (None, None, None)
    request = iterative_module.iterative_request(steps, *box, method=method, mask_dir=mask_dir, backend=backend)
    if method not in ("resample", "rand-bottom", "rand-top"):
        raise UsageError(f"{{method}} must be resample, rand-bottom or rand-top, not {method}")
    if mask_dir is not None and method != "resample":
        raise UsageError("{mask_dir} goes with {method='resample'}")
    if mask_dir is not None and not Path(mask_dir).is_dir():
        raise UsageError(f"{{mask_dir}} {mask_dir} is not a folder")
    if sampling.refine_candidates is not None and not sampling.refine:
        raise UsageError("{refine_candidates} goes with {refine=N}")
    return request


def synthesize(out, *, model=None, class_name=None, n=None, per_class=None, run: RunOptions | None = None,
               sampling: SamplingOptions | None = None, output: OutputOptions | None = None) -> dict:
    """New images: n of `class_name`, or per_class of every class; from the priors alone, or from a baseline
    generator's noise when `model` is one (`skinaug train baseline`; its OUT_DIR has no codes.h5)."""
    run, sampling, output = run or RunOptions(), sampling or SamplingOptions(), output or OutputOptions()
    check_output(out, output)
    if (class_name is None) == (per_class is None) or (class_name is not None and n is None):
        raise UsageError("give {class_name=NAME} with {n=N}, or {per_class=N}")
    sampler = open_sampler(model_location(model), run, sampling)
    sampler.require(["synthesize"])
    count = n if class_name is not None else per_class * len(sampler.class_names)
    check_planned_images(count, sampler.code_bytes)
    if class_name is not None:
        jobs = [Job("synthesize", class_index(sampler.class_names, class_name)) for _ in range(n)]
    else:
        if not sampler.class_names:
            raise UsageError("this model has no classes: use {class_name} with a class name of a labelled model")
        jobs = [Job("synthesize", label) for label in range(len(sampler.class_names)) for _ in range(per_class)]
    name_jobs(jobs, sampler.class_names)
    plan = job_plan(jobs, command="synthesize", seed=run.seed, batch_size=run.batch_size,
                    temperature=sampling.temperature, top_k=sampling.top_k, format=output.image_format, bf16=run.bf16,
                    sampler=sampling.sampler, **plan_layout(output.layout, [job.label for job in jobs]))
    return write_dataset(sampler, jobs, None, out, plan=sampler.plan_fields(plan), run=run,
                         sampling=sampling, output=output)


def augment(data, out, *, model=None, factor=None, balance=False, methods="mix,resample,synthesize",
            inputs: InputOptions | None = None, run: RunOptions | None = None,
            sampling: SamplingOptions | None = None, output: OutputOptions | None = None) -> dict:
    """A labelled folder expanded into a training-ready one: its originals (output.originals: "resize", the default,
    at output.image_size (else the model's) in output.image_format, as every image of OUT_DIR; "copy": byte for byte,
    reflinks where the file system offers them; "link": hard links to the inputs; "none") plus generated images
    (decoded, then resized to output.image_size where it differs from the model's), `factor` times
    the input per class or every class up to the largest (`balance`). `methods`: "mix:1,resample:2,synthesize:1" or
    {"mix": 1, ...}; classic: albumentations copies (inputs.classic_config: a pipeline A.save wrote). A baseline
    generator makes synthesize (and classic) images only. With output.dry_run nothing is written and the summary
    holds the plan (images per class and method)."""
    inputs, run, output = inputs or InputOptions(), run or RunOptions(), output or OutputOptions()
    sampling = sampling or SamplingOptions()
    check_output(out, output)
    inputs = replace(inputs, data=data)
    weights, transforms = augment_methods(methods, inputs.classic_config)
    sampler = open_sampler(model_location(model), run, sampling)
    sampler.require([m for m, w in weights.items() if w > 0])
    if transforms is not None:  # a pipeline that cannot give the model's images fails before anything is written
        from ..data.classic import augment_images

        side = sampler.image_size
        augment_images(np.full((1, side, side, 3), 128, np.uint8), 0, transforms)
    source, read = sampler.read_sources(inputs, run)
    keep = output.originals != "none"
    jobs, table = plan_augment(source, sampler.class_names, factor=factor, balance=balance, weights=weights,
                               originals=keep, seed=run.seed)
    if output.dry_run:
        return {"plan": table, "input": read}
    originals = original_rows(source, sampler.class_names, sampler.fingerprint, labels_of(data, inputs.labels)) if keep else None
    name_jobs(jobs, sampler.class_names, prefix="gen_", taken=[row["image"] for row in originals or []])
    plan = job_plan(jobs, command="augment", data=str(data), seed=run.seed, batch_size=run.batch_size,
                    temperature=sampling.temperature, top_k=sampling.top_k, originals=keep, format=output.image_format,
                    bf16=run.bf16, **plan_layout(output.layout, [job.label for job in jobs] + (source.labels.tolist() if keep else [])),
                    # the pipeline's content, so that --resume after an edit of the file is refused
                    **({"classic_config": file_record(inputs.classic_config)} if inputs.classic_config is not None else {}))
    return write_dataset(sampler, jobs, source, out, plan=sampler.plan_fields(plan), run=run,
                         sampling=sampling, output=output, originals=originals, extra={"plan": table, "input": read},
                         inputs=[inputs.labels, inputs.classic_config], classic_transforms=transforms)


def check_output(out, output: OutputOptions) -> None:
    """The output options checked before anything is read."""
    check_streaming(out, output.jsonl, output.overwrite)
    as_layout(output.layout)


def read_sources(model, codes, data, labels, device, backend, strict, **columns) -> tuple[CodeFile, dict | None]:
    """The source codes, and what reading DATA left out: the summary's "input" (None for a code file)."""
    from ..data.scan import recording_intake

    with recording_intake() as intake:
        source = load_sources(model, codes, data, labels, device, backend=backend, strict=strict, **columns)
    return source, (intake.summary() if data is not None else None)


def augment_methods(methods, classic_config=None):
    """augment's method weights ("mix:1,resample:2" or {"mix": 1, ...}) and the classic pipeline of `classic_config`
    (None: the default one, or no classic at all)."""
    weights = parse_methods(methods if isinstance(methods, str) else ",".join(f"{m}:{w}" for m, w in methods.items()))
    if weights.get("classic", 0) > 0:  # an optional package (skinaug[classic]): missing, it stops us before any write
        import albumentations  # noqa: F401
    if classic_config is None:
        return weights, None
    from ..data.classic import load_transforms

    if weights.get("classic", 0) <= 0:
        raise UsageError("{classic_config} sets the classic pipeline: add classic to {methods}")
    return weights, load_transforms(classic_config)


def linking_originals(link_originals: bool, copy_originals: bool, no_originals: bool = False) -> bool:
    """Whether augment hard-links its originals: only on request, since a linked output file IS the input file."""
    if link_originals and copy_originals:
        raise UsageError("{link_originals=True} and {copy_originals=True} contradict each other: choose one")
    for given, verb in ((copy_originals, "copy"), (link_originals, "link")):
        if no_originals and given:
            raise UsageError(f"{{no_originals=True}} leaves the originals out, so {{{verb}_originals=True}} has nothing to "
                             f"{verb}: choose one")
    return bool(link_originals)


def originals_policy(no_originals=False, link_originals=False, copy_originals=False, keep_originals=False) -> str:
    """OutputOptions.originals from augment's flags: "resize" (the default: at the output's one size and format),
    "copy" (`keep_originals`, or its earlier name `copy_originals`: byte for byte), "link" (hard links, which keep
    them byte for byte too) or "none"."""
    if no_originals and keep_originals:
        raise UsageError("{no_originals=True} leaves the originals out, so {keep_originals=True} has nothing to keep: "
                         "choose one")
    if linking_originals(link_originals, copy_originals, no_originals):
        return "link"
    return "none" if no_originals else "copy" if copy_originals or keep_originals else "resize"


def sampling_dtype(bf16: bool):
    if not bf16:
        return None  # without importing torch: the onnx backend runs where it is not installed
    import torch

    return torch.bfloat16


def file_record(path) -> str:
    """A file's name and content digest as a plan records it (so that --resume after an edit of the file is refused)."""
    import hashlib

    return f"{path} sha256:{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}"
