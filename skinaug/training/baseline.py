"""Training a baseline generator: `skinaug train baseline DATA --labels CSV --arch ARCH --out MODEL_DIR`.

The run uses the project's training toolkit (skinaug/training.py) as `train vqvae` does: the uint8 image cache read
through BatchSource, the device-side augmentation, warm-up + cosine schedules, `fit`'s epoch loop with its finite-loss
guard and metrics log, and checkpoints that carry everything needed to continue bit-exactly on CPU with --resume.
Each arch supplies its networks, optimizers and step (networks.make_step: step(images, labels) -> {loss name:
scalar}); `BaselineStep` feeds it a batch. One process (no torchrun): the baselines are small networks at 64px.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.scan import group_split, scan_dataset
from ..errors import SkinaugError, UsageError
from ..storage.image_cache import build_cache
from ..storage.fs import MODEL_DIRECTORY, atomic_path, claim_output, write_json
from ..storage.modeldir import ModelDir
from ..runtime import log, resolve_device
from ..storage.trained_on import record_stage
from .loop import (CHECKPOINT, BatchSource, Epoch, Group, Hooks, MetricsLog, Run, TrainState, augment_batch, fit,
                        load_checkpoint, shuffled_batches, steps_per_epoch, warmup_cosine)
from ..vqvae.model import to_uint8
from ..baselines import networks
from ..baselines.config import ARCH_DEFAULTS, BaselineConfig, baseline_config
from ..baselines.store import save_baseline

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


@dataclass
class Dataset:
    """The labelled images a run trains on: the scan, the kept samples, their uint8 cache, labels and split."""

    scan: object  # data.Dataset: class names and CSV dialect
    samples: list
    cache: np.ndarray
    labels: torch.Tensor  # the label of every cached image (CPU)
    train_index: np.ndarray
    val_index: np.ndarray


class BaselineLog(MetricsLog):
    """The "baseline" stage's metrics log; every line names the arch right after the stage."""

    def __init__(self, path, arch: str):
        super().__init__(path, "baseline")
        self.arch = arch

    def append(self, line: dict) -> dict:
        return super().append({"arch": self.arch, **line})


class BaselineStep:
    """fit's step for every arch: a batch of cache indices gathered and augmented on the device, then one update of
    each of the arch's networks (`train`, from networks.make_step). Outputs: each of the arch's terms as its metric,
    train_<term>, and "loss", which fit's finite-loss guard watches: the sum of every term, so that any of them
    going non-finite stops the run (a GAN's players share no single loss)."""

    def __init__(self, train, source: BatchSource, labels: torch.Tensor, augment: bool):
        self.train, self.source, self.labels, self.augment = train, source, labels, augment

    def __call__(self, indices: np.ndarray, step: int) -> dict:
        # sorted: BatchSource returns a CPU batch in index order, and the labels must follow it
        indices = np.sort(indices)
        images = self.source(indices)
        if self.augment:
            images = augment_batch(images)
        terms = self.train(images, self.labels[torch.from_numpy(indices)].to(self.source.device))
        return {**{f"train_{name}": value for name, value in terms.items()}, "loss": sum(terms.values())}


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
    dataset = _training_data(data, labels, options, class_names, image_size, model_dir.train_dir)
    config = (BaselineConfig.from_dict(checkpoint["meta"]["baseline"]) if checkpoint is not None
              else baseline_config(arch, num_classes=len(dataset.scan.class_names), **shape))
    meta = {"kind": "baseline", "baseline": config.to_dict(), "seed": options.seed,
            "class_names": dataset.scan.class_names, "data": str(Path(data).resolve()),
            "labels": str(Path(labels).resolve()) if labels else None}
    model, state = _build(config, options, device, len(dataset.train_index))
    metrics_log = BaselineLog(model_dir.train_dir / "metrics.jsonl", config.arch)
    if checkpoint is not None:
        state.restore(checkpoint, device, model_dir.train_dir / CHECKPOINT)
        log(f"resuming from epoch {state.epoch} (step {state.step})")
        metrics_log.truncate(state.epoch)  # a run cut off between logging an epoch and saving its checkpoint
    else:
        metrics_log.reset()
    metrics = _train(model, state, dataset, options, device, model_dir.train_dir, meta, metrics_log)
    metrics = metrics or metrics_log.last()  # a resumed run with no epoch left: the checkpoint's last line
    _save(model_dir, model, meta, dataset, metrics, options, state.step, device, data)
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
                           "`skinaug train vqvae --resume`, or train the baseline into another {out}")
    if meta["baseline"]["arch"] != arch:
        raise UsageError(f"{{arch}} {arch} contradicts the checkpoint in {out}, which trains {meta['baseline']['arch']}")
    return checkpoint


def _training_data(data, labels, options: BaselineOptions, class_names, image_size: int, train_dir: Path) -> Dataset:
    """Labelled images only, decoded into the uint8 cache and split by group."""
    scan = scan_dataset(data, labels, image_col=options.image_col, label_col=options.label_col,
                        group_col=options.group_col, class_names=class_names, strict=options.strict)
    for name, reason in scan.skipped[:20]:
        log(f"skipped {name}: {reason}")
    if not scan.class_names:
        raise SkinaugError("the baselines are class-conditional: give {labels=CSV} or class sub-folders")
    labelled = [sample for sample in scan.samples if sample.label >= 0]
    if len(labelled) < len(scan.samples):
        log(f"left out {len(scan.samples) - len(labelled)} images without a label")
    train_dir.mkdir(parents=True, exist_ok=True)
    cache, samples = build_cache(labelled, image_size, train_dir / "image_cache.npy", strict=options.strict,
                                 workers=options.workers)
    train_index, val_index = group_split([s.group or s.name for s in samples], options.val_fraction, options.seed,
                                         labels=np.array([s.label for s in samples]))
    if len(train_index) < 2:
        raise SkinaugError(f"not enough images to train: {len(train_index)} in the training split (batch norm needs 2)")
    labels_ = torch.tensor([s.label for s in samples], dtype=torch.long)
    return Dataset(scan, samples, cache, labels_, train_index, val_index)


def _build(config: BaselineConfig, options: BaselineOptions, device, train_images: int):
    """(model, its TrainState): the networks, an optimizer and a schedule per player, in the order that fixes the
    random stream of a new run. The checkpoint keeps the optimizers under "optimizer" and the schedules under
    "scheduler", each {player: state}."""
    torch.manual_seed(options.seed)
    model = networks.build(config).to(device)
    optimizers = networks.optimizers(model, options.lr if options.lr is not None else ARCH_DEFAULTS[config.arch]["lr"])
    total_steps = options.epochs * steps_per_epoch(train_images, options.batch_size)
    schedulers = {name: warmup_cosine(optimizer, options.warmup_steps, total_steps)
                  for name, optimizer in optimizers.items()}
    return model, TrainState(model=model, optimizer=Group(**optimizers), scheduler=Group(**schedulers))


def _train(model, state: TrainState, dataset: Dataset, options: BaselineOptions, device, train_dir: Path, meta: dict,
           metrics_log: MetricsLog) -> dict:
    """The epochs left, through fit; returns the last metrics line written ({} when none was left)."""
    source = BatchSource(dataset.cache, device)
    step = BaselineStep(networks.make_step(model, state.objects["optimizer"].members), source, dataset.labels,
                        options.augment)
    total_steps = options.epochs * steps_per_epoch(len(dataset.train_index), options.batch_size)
    log(f"{model.config.arch}: training on {len(dataset.train_index)} images, validating on {len(dataset.val_index)}; "
        f"{device}, batch {options.batch_size}, {total_steps} steps ({options.epochs} epochs)")
    run = Run("training", train_dir / CHECKPOINT, meta, metrics_log,
              restart="start again with {overwrite=True} and a lower {lr}")

    def batches(epoch: int) -> list[np.ndarray]:
        return shuffled_batches(dataset.train_index, options.batch_size, seed=options.seed, epoch=epoch)

    return fit(state, step, batches, epochs=options.epochs, run=run,
               hooks=_epoch_hooks(model, state, dataset, source, options, train_dir))


def _epoch_hooks(model, state: TrainState, dataset: Dataset, source: BatchSource, options: BaselineOptions,
                 train_dir: Path) -> Hooks:
    """The end of an epoch: the metrics line, the sample grid and the log line (fit then saves the checkpoint)."""

    def evaluate(epoch: Epoch) -> dict:
        return {"lr": state.schedulers[0].get_last_lr()[0],
                **{name: epoch.mean(name) for name in epoch.sums if name != "loss"},
                **validate(model, source, dataset.labels, dataset.val_index, options.batch_size),
                "images_per_s": epoch.items / epoch.seconds, "seconds": epoch.seconds}

    def epoch_end(epoch: Epoch, metrics: dict) -> None:
        sample_grid(model, len(dataset.scan.class_names), options.seed, source.device,
                    train_dir / f"samples_epoch{epoch.number:03d}.png")
        shown = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items() if key.startswith(("train_", "val_")))
        log(f"epoch {epoch.number}: {shown}, {metrics['images_per_s']:.0f} img/s")

    return Hooks(evaluate=evaluate, epoch_end=epoch_end)


@torch.no_grad()
def validate(model, source: BatchSource, labels: torch.Tensor, val_index: np.ndarray, batch_size: int) -> dict:
    """The model's validation terms (model.validation: sums over a batch) averaged over the held-out images."""
    if len(val_index) == 0:
        return {}
    model.eval()
    sums: dict[str, float] = {}
    for start in range(0, len(val_index), batch_size):
        indices = np.sort(val_index[start : start + batch_size])
        terms = model.validation(source(indices), labels[torch.from_numpy(indices)].to(source.device))
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value.item()
    model.train()
    return {f"val_{name}": value / len(val_index) for name, value in sums.items()}


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


def _save(model_dir: ModelDir, model, meta: dict, dataset: Dataset, metrics: dict, options: BaselineOptions, step: int,
          device, data) -> None:
    """Weights, config.json, model card, the record of training images and the run's resolved options."""
    samples, class_names = dataset.samples, dataset.scan.class_names
    per_class = {name: sum(1 for s in samples if s.label == i) for i, name in enumerate(class_names)}
    training_data = {"data": meta["data"], "labels": meta["labels"], "dialect": dataset.scan.dialect,
                     "images": len(samples), "train_images": int(len(dataset.train_index)),
                     "val_images": int(len(dataset.val_index)), "per_class": per_class}
    final = {key: value for key, value in metrics.items() if key.startswith("val_")}
    final.update(epochs=options.epochs, steps=step)
    save_baseline(model_dir.path, model.cpu(), class_names=class_names, training_data=training_data, metrics=final)
    # every image read, validation included: it is part of what the run saw
    record_stage(model_dir.path, [s.name for s in samples], [s.group for s in samples], "baseline", data=data)
    write_json(model_dir.train_dir / "train_config.json", {**meta, "options": asdict(options), "device": str(device)})
