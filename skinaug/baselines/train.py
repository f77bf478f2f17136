"""Training a baseline generator: `skinaug train baseline DATA --labels CSV --arch ARCH --out MODEL_DIR`.

The run reuses the pieces of `train vqvae` (train_vqvae.py): the uint8 image cache read through BatchSource, the
device-side augmentation, warm-up + cosine schedules, checkpoints that carry everything needed to continue
bit-exactly on CPU with --resume, metrics.jsonl and the finite-loss guard. Only the step function differs per arch
(networks.make_step: step(images, labels) -> {loss name: scalar}); `fit` below is the thin epoch loop around it.
One process (no torchrun): the baselines are small networks at 64px.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data import group_split, scan_dataset
from ..errors import SkinaugError, UsageError
from ..image_cache import build_cache
from ..io import MODEL_DIRECTORY, atomic_path, claim_output, write_json
from ..modeldir import ModelDir
from ..runtime import log, progress, resolve_device
from ..train_vqvae import (CHECKPOINT, BatchSource, _diverged, _drop_metrics_after, _last_metrics, augment_batch,
                           load_checkpoint, restore_training_state, save_checkpoint, training_state, warmup_cosine)
from ..trained_on import record_stage
from ..vqvae import to_uint8
from . import networks
from .config import ARCH_DEFAULTS, BaselineConfig, baseline_config
from .store import save_baseline

GRID_COLUMNS = 8  # samples per class in each epoch's grid
GRID_ROWS = 10  # classes shown at most


@dataclass
class BaselineOptions:
    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None  # None: the arch's (config.ARCH_DEFAULTS)
    warmup_steps: int = 200
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    augment: bool = True  # flips, 90-degree rotations, mild colour jitter, as for the VQ-VAE
    strict: bool = False
    workers: int | None = None
    image_col: str | None = None
    label_col: str | None = None
    group_col: str | None = None


class Group:
    """Named optimizers (or schedulers) behind the single-object interface of training_state and
    restore_training_state: the GANs train two players, each with its own optimizer and schedule."""

    def __init__(self, members: dict):
        self.members = members

    def state_dict(self) -> dict:
        return {name: member.state_dict() for name, member in self.members.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, member in self.members.items():
            member.load_state_dict(state[name])

    def step(self) -> None:
        for member in self.members.values():
            member.step()

    def get_last_lr(self) -> list[float]:
        return next(iter(self.members.values())).get_last_lr()


@dataclass
class Run:
    """One training run as the epoch loop sees it."""

    model: torch.nn.Module
    optimizers: Group
    schedulers: Group
    step: Callable[[torch.Tensor, torch.Tensor], dict]
    source: BatchSource
    labels: torch.Tensor  # the label of every cached image (CPU)
    train_index: np.ndarray
    val_index: np.ndarray
    device: torch.device
    train_dir: Path
    meta: dict  # what the checkpoint keeps besides the state: config, seed, classes, data


def train_baseline(data, out, *, arch: str, labels=None, shape: dict | None = None, options: BaselineOptions,
                   resume=False, overwrite=False) -> dict:
    """Trains (or resumes) a baseline generator into the model directory `out`; returns the last epoch's metrics.

    `shape`: the baseline_config options asked for (image_size, widths, latent_dim, hidden, kl_weight, gan_weight);
    the rest are the arch's defaults. A resumed run takes its config from the checkpoint."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("train baseline runs in one process: start it without torchrun")
    shape = dict(shape or {})
    baseline_config(arch, **shape)  # a bad option fails before the output is claimed
    device = resolve_device(options.device)
    claim = claim_output(out, kind=MODEL_DIRECTORY, inputs=(data, labels), overwrite=overwrite, resume=resume)
    model_dir = ModelDir(claim.work)
    checkpoint = _checkpoint_to_resume(model_dir, out, arch) if claim.resuming else None
    if resume and not claim.resuming:
        log(f"nothing to resume in {out}: starting a new run")
    if checkpoint is not None:
        options.seed = checkpoint["meta"]["seed"]  # so the epochs' orders continue as they began
    class_names = checkpoint["meta"]["class_names"] if checkpoint is not None else None
    image_size = checkpoint["meta"]["baseline"]["image_size"] if checkpoint is not None else shape.get("image_size", 64)
    dataset, samples, cache, train_index, val_index = _training_data(data, labels, options, class_names, image_size,
                                                                     model_dir.train_dir)
    config = (BaselineConfig.from_dict(checkpoint["meta"]["baseline"]) if checkpoint is not None
              else baseline_config(arch, num_classes=len(dataset.class_names), **shape))
    torch.manual_seed(options.seed)
    run, total_steps = _start_run(config, options, cache, samples, train_index, val_index, device, model_dir.train_dir)
    run.meta = {"kind": "baseline", "baseline": config.to_dict(), "seed": options.seed,
                "class_names": dataset.class_names, "data": str(Path(data).resolve()),
                "labels": str(Path(labels).resolve()) if labels else None}
    step, start_epoch = 0, 0
    if checkpoint is not None:
        step, start_epoch = restore_training_state(checkpoint, run.model, run.optimizers, run.schedulers, device)
        log(f"resuming from epoch {start_epoch} (step {step})")
    metrics_path = model_dir.train_dir / "metrics.jsonl"
    if checkpoint is None:
        metrics_path.unlink(missing_ok=True)
    else:  # a run cut off between logging an epoch and saving its checkpoint trains that epoch again
        _drop_metrics_after(metrics_path, start_epoch)
    log(f"{config.arch}: training on {len(train_index)} images, validating on {len(val_index)}; {device}, batch "
        f"{options.batch_size}, {total_steps} steps ({options.epochs} epochs)")
    metrics, step = fit(run, options, start_epoch=start_epoch, step=step)
    metrics = metrics or _last_metrics(metrics_path)
    _save(model_dir, run, dataset, samples, metrics, options, step, data)
    claim.commit()
    return metrics


def _checkpoint_to_resume(model_dir: ModelDir, out, arch: str) -> dict:
    path = model_dir.train_dir / CHECKPOINT
    if not path.is_file():
        raise SkinaugError(f"{out} has no checkpoint to resume ({path} is missing)")
    checkpoint = load_checkpoint(path)
    meta = checkpoint.get("meta", {})
    if meta.get("kind") != "baseline":
        raise SkinaugError(f"{out} holds a VQ-VAE's checkpoint, not a baseline generator's: resume it with "
                           "`skinaug train vqvae --resume`, or train the baseline into another --out")
    if meta["baseline"]["arch"] != arch:
        raise UsageError(f"--arch {arch} contradicts the checkpoint in {out}, which trains {meta['baseline']['arch']}")
    return checkpoint


def _training_data(data, labels, options: BaselineOptions, class_names, image_size: int, train_dir: Path):
    """(dataset, kept samples, uint8 cache, train indices, validation indices): labelled images only."""
    dataset = scan_dataset(data, labels, image_col=options.image_col, label_col=options.label_col,
                           group_col=options.group_col, class_names=class_names, strict=options.strict)
    for name, reason in dataset.skipped[:20]:
        log(f"skipped {name}: {reason}")
    if not dataset.class_names:
        raise SkinaugError("the baselines are class-conditional: give --labels CSV or class sub-folders")
    labelled = [sample for sample in dataset.samples if sample.label >= 0]
    if len(labelled) < len(dataset.samples):
        log(f"left out {len(dataset.samples) - len(labelled)} images without a label")
    train_dir.mkdir(parents=True, exist_ok=True)
    cache, samples = build_cache(labelled, image_size, train_dir / "image_cache.npy", strict=options.strict,
                                 workers=options.workers)
    train_index, val_index = group_split([s.group or s.name for s in samples], options.val_fraction, options.seed,
                                         labels=np.array([s.label for s in samples]))
    if len(train_index) < 2:
        raise SkinaugError(f"not enough images to train: {len(train_index)} in the training split (batch norm needs 2)")
    return dataset, samples, cache, train_index, val_index


def _start_run(config: BaselineConfig, options: BaselineOptions, cache, samples, train_index, val_index, device,
               train_dir: Path) -> tuple[Run, int]:
    """The model, its optimizers and schedules, and its step function; and the run's total steps."""
    model = networks.build(config).to(device)
    optimizers = networks.optimizers(model, options.lr if options.lr is not None else ARCH_DEFAULTS[config.arch]["lr"])
    steps_per_epoch = max(1, len(train_index) // options.batch_size)
    total_steps = options.epochs * steps_per_epoch
    schedulers = {name: warmup_cosine(optimizer, options.warmup_steps, total_steps) for name, optimizer in optimizers.items()}
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    run = Run(model, Group(optimizers), Group(schedulers), networks.make_step(model, optimizers), BatchSource(cache, device),
              labels, train_index, val_index, device, train_dir, {})
    return run, total_steps


def fit(run: Run, options: BaselineOptions, *, start_epoch: int, step: int) -> tuple[dict, int]:
    """The epochs from start_epoch: seeded order, steps, finite-loss guard, then per epoch the metrics line, the
    sample grid and the checkpoint. Returns (last metrics, step)."""
    batch_size = options.batch_size
    steps_per_epoch = max(1, len(run.train_index) // batch_size)
    checkpoint_path = run.train_dir / CHECKPOINT
    metrics: dict = {}
    for epoch in range(start_epoch, options.epochs):
        started = time.perf_counter()
        # fixed by seed and epoch, so that a resumed run sees the same batches
        order = run.train_index[torch.randperm(len(run.train_index),
                                               generator=torch.Generator().manual_seed(options.seed * 1_000_003 + epoch)).numpy()]
        sums: dict[str, torch.Tensor] = {}
        with progress(steps_per_epoch * batch_size, desc=f"epoch {epoch + 1}/{options.epochs}") as bar:
            for batch_number in range(steps_per_epoch):
                # sorted: BatchSource returns a CPU batch in index order, and the labels must follow it
                indices = np.sort(order[batch_number * batch_size : (batch_number + 1) * batch_size])
                images = run.source(indices)
                if options.augment:
                    images = augment_batch(images)
                losses = run.step(images, run.labels[torch.from_numpy(indices)].to(run.device))
                run.schedulers.step()
                step += 1
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + value
                # checking finiteness costs a host sync: every step on CPU (free), every 25 on GPU
                if (run.device.type == "cpu" or batch_number % 25 == 24) and not _finite(sums):
                    raise _diverged(f"a loss became non-finite at epoch {epoch + 1}, step {step}", checkpoint_path)
                bar.update(images.shape[0])
        if not _finite(sums):
            raise _diverged(f"a loss became non-finite in epoch {epoch + 1}", checkpoint_path)
        elapsed = time.perf_counter() - started
        metrics = {"stage": "baseline", "arch": run.model.config.arch, "epoch": epoch + 1, "step": step,
                   "lr": run.schedulers.get_last_lr()[0],
                   **{f"train_{name}": value.item() / steps_per_epoch for name, value in sums.items()},
                   **validate(run, batch_size), "images_per_s": steps_per_epoch * batch_size / elapsed, "seconds": elapsed}
        _end_epoch(run, metrics, epoch, step)
    return metrics, step


def _finite(sums: dict) -> bool:
    return all(bool(torch.isfinite(value)) for value in sums.values())


def _end_epoch(run: Run, metrics: dict, epoch: int, step: int) -> None:
    """The metrics line, the sample grid, then the checkpoint (last: a crash before it redoes the epoch)."""
    with open(run.train_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(metrics) + "\n")
    sample_grid(run.model, len(run.meta["class_names"]), run.meta["seed"], run.device,
                run.train_dir / f"samples_epoch{epoch + 1:03d}.png")
    save_checkpoint(run.train_dir / CHECKPOINT, training_state(run.model, run.optimizers, run.schedulers, step, epoch + 1,
                                                               run.meta))
    shown = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items() if key.startswith(("train_", "val_")))
    log(f"epoch {epoch + 1}: {shown}, {metrics['images_per_s']:.0f} img/s")


@torch.no_grad()
def validate(run: Run, batch_size: int) -> dict:
    """The model's validation terms (model.validation: sums over a batch) averaged over the held-out images."""
    if len(run.val_index) == 0:
        return {}
    run.model.eval()
    sums: dict[str, float] = {}
    for start in range(0, len(run.val_index), batch_size):
        indices = np.sort(run.val_index[start : start + batch_size])
        for name, value in run.model.validation(run.source(indices), run.labels[torch.from_numpy(indices)].to(run.device)).items():
            sums[name] = sums.get(name, 0.0) + value.item()
    run.model.train()
    return {f"val_{name}": value / len(run.val_index) for name, value in sums.items()}


@torch.no_grad()
def sample_grid(model, num_classes: int, seed: int, device, path: Path) -> None:
    """A row of samples per class (up to GRID_ROWS) from the same fixed noise every epoch, so epochs compare; drawn
    from its own generator, never from the training RNG that --resume restores."""
    from PIL import Image

    rows = min(num_classes, GRID_ROWS)
    noise = torch.randn(rows * GRID_COLUMNS, model.config.latent_dim, generator=torch.Generator().manual_seed(seed + 7919))
    labels = torch.arange(rows).repeat_interleave(GRID_COLUMNS)
    model.eval()
    images = to_uint8(model.generate(noise.to(device), labels.to(device))).cpu().numpy()
    model.train()
    size = images.shape[1]
    grid = images.reshape(rows, GRID_COLUMNS, size, size, 3).transpose(0, 2, 1, 3, 4).reshape(rows * size, -1, 3)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


def _save(model_dir: ModelDir, run: Run, dataset, samples, metrics: dict, options: BaselineOptions, step: int, data) -> None:
    """Weights, config.json, model card, the record of training images and the run's resolved options."""
    per_class = {name: sum(1 for s in samples if s.label == i) for i, name in enumerate(dataset.class_names)}
    training_data = {"data": run.meta["data"], "labels": run.meta["labels"], "dialect": dataset.dialect,
                     "images": len(samples), "train_images": int(len(run.train_index)),
                     "val_images": int(len(run.val_index)), "per_class": per_class}
    final = {key: value for key, value in metrics.items() if key.startswith("val_")}
    final.update(epochs=options.epochs, steps=step)
    save_baseline(model_dir.path, run.model.cpu(), class_names=dataset.class_names, training_data=training_data,
                  metrics=final)
    # every image read, validation included: it is part of what the run saw
    record_stage(model_dir.path, [s.name for s in samples], [s.group for s in samples], "baseline", data=data)
    write_json(model_dir.train_dir / "train_config.json", {**run.meta, "options": asdict(options),
                                                           "device": str(run.device)})
