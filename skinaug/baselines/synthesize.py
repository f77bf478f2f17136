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
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..codes import CodeFile
from ..errors import UsageError
from ..generate import (Job, batch_seed, class_index, classic_batch, job_plan, labels_of, make_batches, name_jobs,
                        original_rows, plan_augment)
from ..layout import plan_layout
from ..limits import check_planned_images
from ..output import DatasetWriter
from ..runtime import log, progress, resolve_device
from ..vqvae import to_uint8
from .store import load_baseline

METHODS = ("synthesize", "classic")  # classic copies need no generator, so a baseline's augment may add them


class BaselineSampler:
    """A baseline generator on a device: class labels and a seed in, uint8 images out."""

    def __init__(self, model, device="auto", temperature: float = 1.0):
        if not (np.isfinite(temperature) and temperature > 0):
            raise UsageError(f"{{temperature}} must be a positive number, not {temperature}")
        self.path = Path(model)
        self.device = resolve_device(device)
        self.model, self.config = load_baseline(self.path, self.device)
        self.temperature = float(temperature)
        self.class_names = list(self.config["class_names"])

    @torch.no_grad()
    def images(self, labels: list[int], seed: int) -> np.ndarray:
        """uint8 (n, S, S, 3): the decoded noise N(0, temperature^2 I) drawn from a generator seeded by `seed`."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        noise = torch.randn(len(labels), self.config["latent_dim"], generator=generator, device=self.device)
        labels_ = torch.tensor(labels, dtype=torch.long, device=self.device)
        return to_uint8(self.model.generate(noise * self.temperature, labels_)).cpu().numpy()


def synthesize(model, out, *, class_name=None, n=None, per_class=None, temperature=1.0, device="auto", seed=0,
               batch_size=64, image_format="png", quality=95, overwrite=False, resume=False, jsonl=False,
               layout="images") -> dict:
    """n images of one class, or per_class images of every class, into OUT_DIR; returns the run's summary."""
    if (class_name is None) == (per_class is None) or (class_name is not None and n is None):
        raise UsageError("give {class_name=NAME} with {n=N}, or {per_class=N}")
    sampler = BaselineSampler(model, device, temperature)
    check_planned_images(n if class_name is not None else per_class * len(sampler.class_names))
    if class_name is not None:
        jobs = [Job("synthesize", class_index(sampler.class_names, class_name)) for _ in range(n)]
    else:
        jobs = [Job("synthesize", label) for label in range(len(sampler.class_names)) for _ in range(per_class)]
    name_jobs(jobs, sampler.class_names)
    plan = job_plan(jobs, command="synthesize", seed=seed, batch_size=batch_size, temperature=temperature,
                    format=image_format, model=sampler.config["fingerprint"], **plan_layout(layout, [j.label for j in jobs]))
    return write_jobs(sampler, jobs, out, seed=seed, batch_size=batch_size, command="synthesize", plan=plan,
                      overwrite=overwrite, resume=resume, image_format=image_format, quality=quality, jsonl=jsonl)


def augment(model, data, out, *, weights: dict, labels=None, factor=None, balance=False, originals=True,
            link_originals=False, dry_run=False, temperature=1.0, device="auto", seed=0, batch_size=64,
            image_format="png", quality=95, overwrite=False, resume=False, strict=False, columns=None, jsonl=False,
            classic_transforms=None, classic_config=None, layout="images") -> dict:
    """DATA's originals plus synthesized (and classic) images per class (--factor or --balance); with dry_run only
    {"plan", "input"}."""
    unsupported = [method for method, weight in weights.items() if weight > 0 and method not in METHODS]
    if unsupported:
        raise UsageError(f"{{methods}} {','.join(unsupported)}: {model} is a baseline generator, which has no codes to "
                         "mix or resample; use {methods=synthesize} (classic may be added)")
    sampler = BaselineSampler(model, device, temperature)
    if classic_transforms is not None:  # a pipeline that cannot give the model's images fails before anything is written
        from ..classic import augment_images

        side = sampler.config["image_size"]
        augment_images(np.full((1, side, side, 3), 128, np.uint8), 0, classic_transforms)
    source, read = sources(sampler.config, data, labels, strict, columns or {})
    jobs, table = plan_augment(source, sampler.class_names, factor=factor, balance=balance, weights=weights,
                               originals=originals, seed=seed)
    if dry_run:
        return {"plan": table, "input": read}
    rows = (original_rows(source, sampler.class_names, sampler.config["fingerprint"], labels_of(data, labels))
            if originals else None)
    name_jobs(jobs, sampler.class_names, prefix="gen_", taken=[row["image"] for row in rows or []])
    plan = job_plan(jobs, command="augment", data=str(data), seed=seed, batch_size=batch_size, temperature=temperature,
                    originals=originals, format=image_format, model=sampler.config["fingerprint"],
                    **plan_layout(layout, [job.label for job in jobs] + (source.labels.tolist() if originals else [])),
                    **({"classic_config": classic_config} if classic_config is not None else {}))
    return write_jobs(sampler, jobs, out, seed=seed, batch_size=batch_size, command="augment", plan=plan,
                      overwrite=overwrite, resume=resume, image_format=image_format, quality=quality, jsonl=jsonl,
                      source=source, originals=rows, link_originals=link_originals, inputs=[labels],
                      classic_transforms=classic_transforms, extra={"plan": table, "input": read})


def sources(config: dict, data, labels, strict: bool, columns: dict) -> tuple[CodeFile, dict]:
    """DATA's readable images with the model's class indices, in the structure the planners take (no codes)."""
    from ..data import recording_intake, scan_dataset
    from ..image_cache import decode_in_chunks

    with recording_intake() as intake:
        dataset = scan_dataset(data, labels, class_names=config["class_names"], strict=strict, **columns)
        kept = [sample for _, chunk in decode_in_chunks(dataset.samples, config["image_size"], strict=strict)
                for sample in chunk]
    attrs = {"class_names": json.dumps(config["class_names"]), "model_fingerprint": config["fingerprint"]}
    source = CodeFile(Path(str(data)), attrs, {}, [s.name for s in kept], np.array([s.label for s in kept], dtype=np.int64),
                      [s.group for s in kept], files={s.name: s.path for s in kept})
    return source, intake.summary()


def write_jobs(sampler: BaselineSampler, jobs: list[Job], out, *, seed: int, batch_size: int, command: str, plan: dict,
               overwrite=False, resume=False, image_format="png", quality=95, jsonl=False, source: CodeFile | None = None,
               originals: list | None = None, link_originals=False, inputs=(), classic_transforms=None,
               extra: dict | None = None) -> dict:
    """Every job's image into OUT_DIR through DatasetWriter, batch by batch (resumable), without codes.h5."""
    generated = any(job.method != "classic" for job in jobs)
    writer = DatasetWriter(out, model_config=sampler.config, plan=plan, overwrite=overwrite, resume=resume,
                           image_format=image_format, quality=quality, jsonl=jsonl, codes=False,
                           inputs=[sampler.path, source.path if source is not None else None, *inputs],
                           model_dir=sampler.path if generated else None)
    done, offset = writer.done_batches(), 1 if originals else 0
    if originals and 0 not in done:
        writer.write_originals(0, originals, {}, link=link_originals)
    todo = [(index + offset, method, batch) for index, (method, batch) in enumerate(make_batches(jobs, batch_size))
            if index + offset not in done]
    started, made, timings = time.perf_counter(), 0, Counter()
    with progress(sum(len(batch) for _, _, batch in todo), desc=command) as bar:
        for batch_index, method, batch in todo:
            began, seed_value = time.perf_counter(), batch_seed(seed, batch_index)
            if method == "classic":
                images = classic_batch(source, batch, sampler.config["image_size"], seed_value, classic_transforms)
            else:
                images = sampler.images([job.label for job in batch], seed_value)
            writer.write_batch(batch_index, images, [_row(sampler, source, job, seed_value) for job in batch], {})
            timings[method] += time.perf_counter() - began
            made += len(batch)
            bar.update(len(batch))
    elapsed = time.perf_counter() - started
    log(f"made {made} images in {elapsed:.1f}s ({made / max(elapsed, 1e-9):.1f} img/s)")
    return writer.finish(command=command, seed=seed, device=str(sampler.device), extra={
        "temperature": sampler.temperature, "seconds_per_method_this_run": {k: round(v, 3) for k, v in timings.items()},
        "images_per_s_this_run": made / max(elapsed, 1e-9), "backend": "torch", "provider": str(sampler.device),
        "model_kind": "baseline", "arch": sampler.config["arch"], "codes": None, **(extra or {})})


def _row(sampler: BaselineSampler, source: CodeFile | None, job: Job, seed: int) -> dict:
    """labels.csv's provenance of one image: a synthesized one has no source; a classic copy names its original."""
    names = sampler.class_names
    copied = source.images[job.source_top] if job.source_top >= 0 else ""
    return {"image": job.name, "label": names[job.label] if 0 <= job.label < len(names) else "", "method": job.method,
            "source_top": copied, "source_bottom": copied,
            "temperature": sampler.temperature if job.method == "synthesize" else "", "seed": seed,
            "model_fingerprint": sampler.config["fingerprint"],
            "group": source.groups[job.source_top] if copied and source.groups[job.source_top] else ""}
