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
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .codes import CodeFile, read_codes
from .errors import SkinaugError, UsageError
from .modeldir import ModelDir
from .naming import name_key, unique_names
from .output import DatasetWriter
from .runtime import log, progress, resolve_backend, resolve_device, warn

SOURCE_METHODS = ("mix", "resample", "rand-bottom", "rand-top")
AUGMENT_METHODS = ("mix", "resample", "synthesize", "rand-bottom", "rand-top", "classic")
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


REFINE_CANDIDATES = 32  # codes weighed per position by --refine; a sweep's cost is proportional to it


def check_refine(refine: int, candidates: int, mask_dir) -> None:
    """--refine N sweeps need a mask (they re-draw codes given kept ones) and a non-empty candidate set."""
    if refine < 0:
        raise UsageError(f"--refine must be 0 or more sweeps, not {refine}")
    if candidates < 1:
        raise UsageError(f"--refine-candidates must be at least 1, not {candidates}")
    if refine and mask_dir is None:
        raise UsageError("--refine re-draws the codes inside the lesion masks given the kept ones: give --mask-dir "
                         "(or --iterative STEPS, whose boxes it refines)")


def open_generator(model, device="auto", *, backend=None, **options) -> "Generator":
    """The Generator of --backend: PyTorch, or the exported graphs through onnxruntime (which never import torch)."""
    if resolve_backend(backend) == "onnx":
        if options.pop("refine", 0):
            raise UsageError("--refine teacher-forces the bottom prior in PyTorch: it does not apply to --backend onnx")
        options.pop("refine_candidates", None)
        from .onnx.generate import OnnxGenerator

        return OnnxGenerator(model, device, **options)
    return Generator(model, device, **options)


class Generator:
    """Turns batches of jobs into code maps and images with one model directory on one device."""

    def __init__(self, model, device="auto", *, temperature=1.0, top_k=None, mask_dir=None, dtype=None, sampler="fast",
                 compile_step=False, refine=0, refine_candidates=None):
        refine_candidates = REFINE_CANDIDATES if refine_candidates is None else refine_candidates
        check_refine(refine, refine_candidates, mask_dir)
        self.model_dir = ModelDir(model)
        self.config = self.model_dir.config()
        self.device = resolve_device(device)
        self.temperature = temperature
        self.top_k = top_k
        self.mask_dir = Path(mask_dir) if mask_dir else None
        self.refine = refine  # Gibbs sweeps over the masked bottom codes after the raster draw (0: none)
        self.refine_candidates = refine_candidates
        self.dtype = dtype
        if sampler not in ("fast", "reference"):
            raise UsageError(f"--sampler must be fast or reference, not {sampler}")
        self.sampler = sampler  # "reference": one full forward per position, the ground truth (slow)
        # torch.compile of the sampling step: ~30% faster steps on CUDA, but ~20 s of compilation per step width
        # (about 2 minutes for a 256px model) that only pays off for thousands of images
        self.compile_step = compile_step
        self.class_names = self.config.get("class_names", [])
        self.levels = list(self.config["grid"])
        self.vqvae = self.model_dir.load_vqvae(self.device)
        self._priors: dict = {}
        if not (np.isfinite(temperature) and temperature > 0):  # nan passes a plain `<= 0` and fails only when sampling
            raise UsageError(f"--temperature must be a positive number, not {temperature}")

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

    def prior(self, level: str):
        if level not in self._priors:
            from .train_prior import load_prior

            self._priors[level] = load_prior(self.model_dir, level, self.device)
        return self._priors[level]

    def check_class(self, level: str, label: int) -> None:
        _, trained_classes = self.prior(level)
        if trained_classes is not None and self.class_names[label] not in trained_classes:
            raise SkinaugError(f"the {level} prior was trained on {', '.join(trained_classes)} only, not on {self.class_names[label]}")

    def backend_info(self) -> dict:
        """run.json's "backend" and "provider"."""
        return {"backend": "torch", "provider": str(self.device)}

    def distributed(self):
        """This process's share of the work (torchrun ranks take disjoint batches)."""
        from .distributed import Distributed

        return Distributed.from_environment("cpu" if self.device.type == "cpu" else "auto")

    def _sample(self, level: str, labels, condition, generator, keep=None):
        from .priors import sample, sample_reference

        prior, _ = self.prior(level)
        class_labels = labels if prior.config.num_classes else None
        options = dict(n=labels.shape[0], temperature=self.temperature, top_k=self.top_k, generator=generator, keep=keep)
        if self.sampler == "reference":
            return sample_reference(prior, class_labels, condition, **options)
        return sample(prior, class_labels, condition, dtype=self.dtype, compile=self.compile_step, **options)

    def _refine(self, codes, region, labels, condition, generator):
        """Gibbs sweeps over the masked codes, after the raster draw and from the same generator (refine 0 draws
        nothing from it, so its codes are those of a run without refinement)."""
        from .priors import refine_codes

        prior, _ = self.prior("bottom")
        class_labels = labels if prior.config.num_classes else None
        return refine_codes(prior, codes, region, class_labels, condition, sweeps=self.refine,
                            candidates=self.refine_candidates, temperature=self.temperature, top_k=self.top_k,
                            generator=generator)

    def _mask(self, name: str):
        import torch

        return torch.from_numpy(self.mask_array(name))

    def mask_array(self, name: str) -> np.ndarray:
        """A lesion mask (DIR/<image>.png) reduced to the bottom grid: True where codes are resampled."""
        from PIL import Image

        path = self.mask_dir / f"{name}.png"
        if not path.is_file():
            raise SkinaugError(f"no mask for {name}: {path} is missing")
        height, width = self.config["grid"]["bottom"]
        try:
            with Image.open(path) as image:
                mask = np.asarray(image.convert("L").resize((width, height), Image.Resampling.BOX)) >= 128
        except OSError as error:
            raise SkinaugError(f"cannot read mask {path} ({error})") from None
        return mask

    def codes_for(self, method: str, jobs: list[Job], source: CodeFile | None, seed: int) -> dict[str, np.ndarray]:
        """Code maps (uint16 per level) for a batch of jobs of one method."""
        import torch

        with torch.no_grad():
            return self._codes_for(method, jobs, source, seed)

    def _codes_for(self, method: str, jobs: list[Job], source: CodeFile | None, seed: int) -> dict[str, np.ndarray]:
        import torch

        generator = torch.Generator(device=self.device).manual_seed(seed)
        labels = torch.tensor([job.label for job in jobs], device=self.device)
        take = lambda level, attr: torch.as_tensor(  # noqa: E731
            source.codes[level][[getattr(job, attr) for job in jobs]].astype(np.int64), device=self.device)
        n = len(jobs)
        codebook_size = self.config["codebook_size"]
        if method == "mix":
            codes = {"top": take("top", "source_top"), "bottom": take("bottom", "source_bottom")}
        elif method == "rand-bottom":
            codes = {level: take(level, "source_top") for level in self.levels}
            codes["bottom"] = torch.randint(codebook_size, (n, *self.config["grid"]["bottom"]), generator=generator, device=self.device)
        elif method == "rand-top":
            codes = {"bottom": take("bottom", "source_bottom"),
                     "top": torch.randint(codebook_size, (n, *self.config["grid"]["top"]), generator=generator, device=self.device)}
        elif method == "resample":
            codes = {level: take(level, "source_top") for level in self.levels}
            keep = None
            if self.mask_dir is not None:
                resampled = torch.stack([self._mask(source.images[job.source_top]) for job in jobs]).to(self.device)
                keep = (codes["bottom"], ~resampled)
            codes["bottom"] = self._sample("bottom", labels, codes.get("top"), generator, keep)
            if self.refine:
                codes["bottom"] = self._refine(codes["bottom"], resampled, labels, codes.get("top"), generator)
        elif method == "synthesize":
            codes = {"top": self._sample("top", labels, None, generator)}
            codes["bottom"] = self._sample("bottom", labels, codes["top"], generator)
        else:
            raise UsageError(f"unknown method {method}")
        return {level: codes[level].to(torch.int32).cpu().numpy().astype(np.uint16) for level in self.levels}

    def image_details(self, method: str, jobs: list[Job], seed: int) -> list[dict]:
        """Per image of a batch, what its row records beyond labels.csv's columns (the iterative resample's boxes:
        skinaug/iterative.py); none here."""
        return [{} for _ in jobs]

    def images_for(self, codes: dict[str, np.ndarray]) -> np.ndarray:
        from .encode import decode_batch

        return decode_batch(self.vqvae, codes, self.device)

    def encode_images(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 images (B, S, S, 3) -> code maps per level: what codes.h5 keeps of a classically augmented image."""
        from .encode import encode_batch

        return encode_batch(self.vqvae, images, self.device)[0]


def load_sources(model, codes=None, data=None, labels=None, device="auto", backend=None, **scan_options) -> CodeFile:
    """Source images' codes: from a code file (checked against the model) or encoded from DATA now."""
    model_dir = ModelDir(model)
    config = model_dir.config()
    if (codes is None) == (data is None):
        raise UsageError("give either an image folder DATA or --codes CODES.h5")
    if codes is not None:
        source = read_codes(codes)
        source.check_model(config)
        return source
    if resolve_backend(backend) == "onnx":
        from .onnx.generate import codes_from_images

        return codes_from_images(model_dir, data, labels, device, **scan_options)
    from .train_prior import codes_from_images

    return codes_from_images(model_dir, data, labels, resolve_device(device), **scan_options)


def class_index(class_names: list[str], name: str) -> int:
    """The index of --class NAME; a name the model does not know is a usage error (exit 2)."""
    if name not in class_names:
        raise UsageError(f"--class {name!r} is not a class of this model: it knows {', '.join(class_names) or 'no classes'}")
    return class_names.index(name)


def plan_mix(source: CodeFile, n: int, rng: np.random.Generator, *, any_label=False, label: int | None = None) -> list[Job]:
    """n (top source, bottom source) pairs: same label unless any_label; a different image when there is one."""
    candidates = np.flatnonzero(source.labels == label) if label is not None else np.arange(len(source))
    if label is None and not any_label:
        candidates = candidates[source.labels[candidates] >= 0]
    if candidates.size == 0:
        raise SkinaugError("no source image to mix" + (f" of class {label}" if label is not None else " with a label (use --any-label)"))
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


def run_jobs(generator: Generator, jobs: list[Job], source: CodeFile | None, out, *, seed: int, batch_size: int,
             command: str, plan: dict, overwrite=False, resume=False, image_format="png", quality=95,
             originals: list | None = None, link_originals=True, extra: dict | None = None, inputs=(), jsonl=False,
             classic_transforms: list | None = None) -> dict:
    """Makes every job's image into OUT_DIR (streamed, resumable, sharded under torchrun).

    `classic` jobs are their source image through the albumentations pipeline (skinaug.classic; `classic_transforms`
    a user's own), encoded for codes.h5; every other method draws codes and decodes them.

    `inputs`: what else the command reads (a labels CSV), never to be written over; the model, the sources
    and the mask folder are known here."""
    dist = generator.distributed()
    generator.require({job.method for job in jobs})
    generator.check_classes(jobs)
    if any(job.method in PRIORS_NEEDED and job.label < 0 for job in jobs) and generator.class_names:
        raise SkinaugError("a class-conditional prior cannot resample unlabelled images: give --labels")
    check_masks(generator, jobs, source)
    if any(job.method == "classic" for job in jobs) and (source is None or source.files is None):
        raise UsageError("classic augments the image files themselves: give DATA rather than --codes")
    fingerprint = generator.config["fingerprint"]
    inputs = [generator.model_dir.path, generator.mask_dir, source.path if source is not None else None, *inputs]
    if dist.is_main:
        writer = DatasetWriter(out, model_config=generator.config, plan=plan, overwrite=overwrite, resume=resume,
                               image_format=image_format, quality=quality, inputs=inputs, jsonl=jsonl,
                               # only images the generator made carry its training record (classic copies do not)
                               model_dir=generator.model_dir.path if any(job.method != "classic" for job in jobs) else None)
    # rank 0 alone claims the output; the other ranks write their batches where it says (staged under --overwrite)
    work_dir = dist.broadcast_object(str(writer.work) if dist.is_main else None) if dist.world_size > 1 else None
    if not dist.is_main:
        writer = DatasetWriter(out, model_config=generator.config, plan=plan, resume=True, image_format=image_format,
                               quality=quality, is_main=False, work_dir=work_dir, jsonl=jsonl)
    done = writer.done_batches()
    offset = 0
    if originals:
        offset = 1
        if dist.is_main and 0 not in done:
            indices = [row["index"] for row in originals]
            writer.write_originals(0, originals, {level: values[indices] for level, values in source.codes.items()},
                                   link=link_originals)
    batches = make_batches(jobs, batch_size)
    timings: Counter = Counter()
    counts: Counter = Counter()
    class_names = generator.class_names
    started = time.perf_counter()
    todo = [(index + offset, method, batch) for index, (method, batch) in enumerate(batches)
            if (index + offset) % dist.world_size == dist.rank and (index + offset) not in done]
    with progress(sum(len(batch) for _, _, batch in todo), desc=command) as bar:
        for batch_index, method, batch in todo:
            began = time.perf_counter()
            seed_value = batch_seed(seed, batch_index)
            if method == "classic":
                images = classic_batch(source, batch, generator.config["image_size"], seed_value, classic_transforms)
                codes = generator.encode_images(images)
            else:
                codes = generator.codes_for(method, batch, source, seed_value)
                images = generator.images_for(codes)
            rows = [{
                "image": job.name,
                "label": class_names[job.label] if 0 <= job.label < len(class_names) else "",
                "method": method,
                "source_top": source.images[job.source_top] if job.source_top >= 0 else "",
                "source_bottom": source.images[job.source_bottom] if job.source_bottom >= 0 else "",
                "temperature": generator.temperature if method in PRIORS_NEEDED else "",
                "seed": seed_value,
                "model_fingerprint": fingerprint,
                "group": source.groups[job.source_top] if job.source_top >= 0 and source.groups[job.source_top] else "",
            } for job in batch]
            for row, details in zip(rows, generator.image_details(method, batch, seed_value)):
                row.update(details)
            writer.write_batch(batch_index, images, rows, codes)
            timings[method] += time.perf_counter() - began
            counts[method] += len(batch)
            bar.update(len(batch))
            bar.set_postfix(img_s=f"{sum(counts.values()) / (time.perf_counter() - started):.1f}")
    dist.barrier()
    if not dist.is_main:
        return {}
    made = sum(counts.values())
    elapsed = time.perf_counter() - started
    log(f"made {made} images in {elapsed:.1f}s ({made / max(elapsed, 1e-9):.1f} img/s)")
    return writer.finish(command=command, seed=seed, device=str(generator.device), extra={
        "temperature": generator.temperature,
        "seconds_per_method_this_run": {k: round(v, 3) for k, v in timings.items()},
        "images_per_s_this_run": made / max(elapsed, 1e-9),
        **generator.backend_info(),
        **(extra or {}),
    })


def classic_batch(source: CodeFile, jobs: list[Job], image_size: int, seed: int, transforms) -> np.ndarray:
    """The jobs' source images at the model's side, classically augmented with the batch's seed."""
    from .classic import augment_images
    from .data import load_image

    images = np.stack([load_image(source.files[source.images[job.source_top]], image_size) for job in jobs])
    return augment_images(images, seed, transforms)


def check_masks(generator: Generator, jobs: list[Job], source: CodeFile | None) -> None:
    """Every lesion mask a resample job needs, looked for before anything is written (not half-way through)."""
    if generator.mask_dir is None:
        return
    for name in sorted({source.images[job.source_top] for job in jobs if job.method == "resample"}):
        path = generator.mask_dir / f"{name}.png"
        if not path.is_file():
            raise SkinaugError(f"no mask for {name}: {path} is missing")


def job_plan(jobs: list[Job], **options) -> dict:
    return {"jobs": [asdict(job) for job in jobs], **{k: str(v) if isinstance(v, Path) else v for k, v in options.items()}}


def weighted_counts(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Splits total by weights with the largest-remainder rule, so the parts add up exactly."""
    weight_sum = sum(weights.values())
    raw = {m: total * w / weight_sum for m, w in weights.items()}
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
            raise UsageError(f"unknown method {name!r} in --methods: choose from {', '.join(AUGMENT_METHODS)}")
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError:
            raise UsageError(f"bad weight {weight!r} for {name} in --methods") from None
        if not np.isfinite(weights[name]):  # float() reads "nan" and "inf"
            raise UsageError(f"bad weight {weight!r} for {name} in --methods: give a finite number")
        if weights[name] < 0:
            raise UsageError(f"negative weight for {name} in --methods")
    if not weights or sum(weights.values()) <= 0:
        raise UsageError("--methods names no method with a positive weight")
    return weights


def plan_augment(source: CodeFile, class_names: list[str], *, factor=None, balance=False, weights: dict[str, float],
                 originals=True, seed=0) -> tuple[list[Job], dict]:
    """Jobs per class and method so the output holds F x the input (--factor) or equal classes (--balance)."""
    if (factor is None) == (not balance):
        raise UsageError("give exactly one of --factor F or --balance")
    if factor is not None and factor < (1.0 if originals else 0.0):
        raise UsageError(f"--factor {factor} would remove images: use a factor of at least 1 (or --no-originals)")
    rng = np.random.default_rng(seed)
    per_class = {c: int((source.labels == c).sum()) for c in range(len(class_names))}
    present = {c: n for c, n in per_class.items() if n > 0}
    if not present:
        raise SkinaugError("no labelled image to augment: give --labels or class sub-folders")
    largest = max(present.values())
    jobs: list[Job] = []
    table: dict = {}
    for label, count in present.items():
        target = round(factor * count) if factor is not None else largest
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
    return jobs, table


def original_rows(source: CodeFile, class_names: list[str], fingerprint: str) -> list[dict]:
    """labels.csv rows for the input images themselves (method 'original'), with their files."""
    if source.files is None:
        raise UsageError("originals need the image files: give DATA rather than --codes")
    rows = []
    # the file keeps the source's name where that is a safe, distinct file name; source_* keep it as it is
    for index, (name, file_name) in enumerate(zip(source.images, unique_names(source.images))):
        label = int(source.labels[index])
        rows.append({"image": file_name, "label": class_names[label] if label >= 0 else "", "method": "original",
                     "source_top": name, "source_bottom": name, "temperature": "", "seed": "",
                     "model_fingerprint": fingerprint, "group": source.groups[index], "file": str(source.files[name]),
                     "index": index})
    return rows
