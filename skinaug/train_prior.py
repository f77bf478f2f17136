"""Stage-2 training: `skinaug train prior`.

Learns p(top codes | class) and p(bottom codes | top codes, class) with one class-conditional network
per level (PixelSNAIL or Gated PixelCNN), from a code file or from images encoded on the fly.
Weights land in MODEL_DIR/prior_top.safetensors and prior_bottom.safetensors; their configs, the
classes they were trained on and their final metrics in config.json["priors"].
"""

from __future__ import annotations

import json
import math
import time
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .codes import CodeFile, read_codes
from .data import group_split
from .encode import autocast_for
from .errors import SkinaugError, UsageError
from .modeldir import PRIOR_WEIGHTS, ModelDir, load_weights, save_weights
from .priors import PriorConfig, build_prior
from .runtime import log, progress, resolve_device
from .train_vqvae import load_checkpoint, restore_training_state, save_checkpoint, training_state, warmup_cosine


@dataclass
class PriorOptions:
    arch: str = "pixelsnail"
    classes: list[str] | None = None  # None: every class of the model
    unconditional: bool = False
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    overrides: dict = field(default_factory=dict)  # PriorConfig fields from the command line (channels, ...)


def codes_from_images(model_dir: ModelDir, data, labels, device, batch_size=64, **scan_options) -> CodeFile:
    """Encodes DATA in memory (no file written) into the same structure `read_codes` returns."""
    from .codes import model_attrs
    from .encode import dataset_for_model, encode_batch
    from .image_cache import decode_in_chunks

    config = model_dir.config()
    dataset = dataset_for_model(data, labels, config, **scan_options)
    network = model_dir.load_vqvae(device)
    codes: dict[str, list[np.ndarray]] = {level: [] for level in config["grid"]}
    kept = []
    for images, chunk in decode_in_chunks(dataset.samples, config["image_size"]):
        for start in range(0, len(chunk), batch_size):
            batch_codes, _ = encode_batch(network, images[start : start + batch_size], device)
            for level, values in batch_codes.items():
                codes[level].append(values)
        kept.extend(chunk)
    attrs = {**model_attrs(config), "class_names": json.dumps(dataset.class_names)}
    return CodeFile(Path(str(data)), attrs, {k: np.concatenate(v) for k, v in codes.items()},
                    [s.name for s in kept], np.array([s.label for s in kept]), [s.group for s in kept],
                    files={s.name: s.path for s in kept})


def select_classes(code_file: CodeFile, class_names: list[str], wanted: list[str] | None) -> np.ndarray:
    """Indices of the images to train on: every labelled image, or those of the named classes."""
    if wanted is None:
        return np.arange(len(code_file))
    unknown = [name for name in wanted if name not in class_names]
    if unknown:
        raise UsageError(f"unknown class(es) {', '.join(unknown)}: the model knows {', '.join(class_names) or 'no classes'}")
    keep = np.isin(code_file.labels, [class_names.index(name) for name in wanted])
    if not keep.any():
        raise SkinaugError(f"no image of class(es) {', '.join(wanted)} in the codes")
    return np.flatnonzero(keep)


def prior_config_for(level: str, config: dict, options: PriorOptions) -> PriorConfig:
    height, width = config["grid"][level]
    num_classes = 0 if options.unconditional else len(config.get("class_names", []))
    top = config["grid"].get("top")
    prior_config = PriorConfig.default_for(
        level, config["codebook_size"], height, width, num_classes, arch=options.arch,
        top_shape=tuple(top) if (level == "bottom" and top) else None,
        top_codebook_size=config["codebook_size"] if (level == "bottom" and top) else None,
    )
    for key, value in options.overrides.items():
        if value is not None:
            setattr(prior_config, key, value)
    return prior_config


def nll_bits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood in bits per code."""
    return F.cross_entropy(logits.float(), targets) / math.log(2)


class CodeBatches:
    """Code maps, labels and conditions for one level, held on the device (they are small)."""

    def __init__(self, code_file: CodeFile, level: str, indices: np.ndarray, device, conditional: bool):
        self.targets = torch.as_tensor(code_file.codes[level][indices].astype(np.int64), device=device)
        self.labels = torch.as_tensor(code_file.labels[indices], device=device) if conditional else None
        self.condition = None
        if level == "bottom" and "top" in code_file.codes:
            self.condition = torch.as_tensor(code_file.codes["top"][indices].astype(np.int64), device=device)

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __call__(self, index: torch.Tensor):
        labels = self.labels[index] if self.labels is not None else None
        condition = self.condition[index] if self.condition is not None else None
        return self.targets[index], labels, condition


@torch.no_grad()
def evaluate(prior, batches: CodeBatches, batch_size: int, autocast) -> dict:
    prior.eval()
    bits_sum, correct, count = 0.0, 0, 0
    for start in range(0, len(batches), batch_size):
        index = torch.arange(start, min(start + batch_size, len(batches)), device=batches.targets.device)
        targets, labels, condition = batches(index)
        with autocast():
            logits = prior(targets, labels, condition)
        bits_sum += nll_bits(logits, targets).item() * targets.numel()
        correct += (logits.argmax(1) == targets).sum().item()
        count += targets.numel()
    prior.train()
    return {"val_bits_per_code": bits_sum / max(1, count), "val_accuracy": correct / max(1, count)}


def train_prior_level(model_dir: ModelDir, code_file: CodeFile, level: str, options: PriorOptions, *,
                      resume: bool, overwrite: bool) -> dict:
    """Trains one level's prior; returns its final metrics."""
    from .distributed import Distributed

    config = model_dir.config()
    dist = Distributed.from_environment(options.device)
    device = dist.device if dist.enabled else resolve_device(options.device)
    weights_path = model_dir.path / PRIOR_WEIGHTS[level]
    checkpoint_path = model_dir.train_dir / f"prior_{level}_checkpoint.pt"
    if weights_path.exists() and not (overwrite or resume):
        raise SkinaugError(f"{weights_path} already exists: pass --overwrite to train it again")
    resuming = resume and checkpoint_path.is_file()
    if resume and not resuming and weights_path.exists():
        log(f"the {level} prior is already trained: nothing to resume")
        return config["priors"].get(level, {}).get("metrics", {})
    checkpoint = load_checkpoint(checkpoint_path) if resuming else None

    class_names = config.get("class_names", [])
    if checkpoint is not None:
        # the shape-defining config and the data selection come from the checkpoint
        prior_config = PriorConfig.from_dict(checkpoint["meta"]["prior"])
        options.seed, options.classes = checkpoint["meta"]["seed"], checkpoint["meta"]["classes"]
    else:
        prior_config = prior_config_for(level, config, options)
    chosen = select_classes(code_file, class_names, options.classes)
    if prior_config.num_classes and (code_file.labels[chosen] < 0).any():
        raise SkinaugError("the codes include unlabelled images: a class-conditional prior needs labels "
                           "(pass --labels, or --unconditional)")
    groups = [code_file.groups[i] or code_file.images[i] for i in chosen]
    train_index, val_index = group_split(groups, options.val_fraction, options.seed, labels=code_file.labels[chosen])
    conditional = prior_config.num_classes > 0
    train_data = CodeBatches(code_file, level, chosen[train_index], device, conditional)
    val_data = CodeBatches(code_file, level, chosen[val_index], device, conditional) if len(val_index) else train_data

    torch.manual_seed(options.seed)  # the same initial weights on every rank (DDP checks), dropout offset below
    prior = build_prior(prior_config).to(device)
    torch.manual_seed(options.seed + dist.rank)
    batch_size = max(1, options.batch_size // dist.world_size)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(dist.shard(np.arange(len(train_data)))) / batch_size))
    total_steps = options.epochs * steps_per_epoch
    scheduler = warmup_cosine(optimizer, options.warmup_steps, total_steps)
    step, start_epoch = 0, 0
    if checkpoint is not None:
        step, start_epoch = restore_training_state(checkpoint, prior, optimizer, scheduler, device)
        if dist.is_main:
            log(f"resuming the {level} prior from epoch {start_epoch}")
    network = dist.wrap(prior)
    autocast = partial(autocast_for, device)
    meta = {"prior": prior_config.to_dict(), "seed": options.seed, "classes": options.classes, "level": level}
    model_dir.train_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        log(f"{level} prior ({prior_config.arch}, {sum(p.numel() for p in prior.parameters()) / 1e6:.1f}M parameters): "
            f"{len(train_data)} training and {len(val_index)} validation code maps, {device}")

    metrics: dict = {}
    for epoch in range(start_epoch, options.epochs):
        started = time.perf_counter()
        # one permutation for all ranks (seed and epoch), then each rank takes its shard
        permutation = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(options.seed * 1_000_003 + epoch))
        order = torch.as_tensor(dist.shard(permutation.numpy())).to(device)
        bits_sum = torch.zeros((), device=device)
        with progress(len(train_data), desc=f"{level} prior, epoch {epoch + 1}/{options.epochs}", unit="map") as bar:
            for batch_number in range(steps_per_epoch):
                targets, labels, condition = train_data(order[batch_number * batch_size : (batch_number + 1) * batch_size])
                with autocast():
                    logits = network(targets, labels, condition)
                loss = nll_bits(logits, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                bits_sum += loss.detach()
                if device.type == "cpu" or batch_number % 25 == 24:
                    if not dist.all_finite(bits_sum):
                        raise SkinaugError(
                            f"{level} prior training diverged (non-finite loss at epoch {epoch + 1}, step {step}); the last "
                            f"good checkpoint is kept in {model_dir.train_dir} (resume with --resume after lowering --lr)")
                bar.update(targets.shape[0])
        if not dist.all_finite(bits_sum):
            raise SkinaugError(f"{level} prior training diverged in epoch {epoch + 1}; the last good checkpoint is kept "
                               f"in {model_dir.train_dir} (resume with --resume after lowering --lr)")
        if dist.is_main:
            metrics = {
                "stage": f"prior_{level}",
                "epoch": epoch + 1,
                "step": step,
                "train_bits_per_code": bits_sum.item() / steps_per_epoch,
                **evaluate(prior, val_data, 2 * options.batch_size, autocast),
                "maps_per_s": len(train_data) / (time.perf_counter() - started),
            }
            with open(model_dir.train_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(metrics) + "\n")
            save_checkpoint(checkpoint_path, training_state(prior, optimizer, scheduler, step, epoch + 1, meta))
            log(f"{level} prior epoch {epoch + 1}/{options.epochs}: train {metrics['train_bits_per_code']:.3f} bits/code, "
                f"validation {metrics['val_bits_per_code']:.3f} bits/code, accuracy {metrics['val_accuracy']:.3f}")
        dist.barrier()

    final = {k: metrics[k] for k in ("epoch", "train_bits_per_code", "val_bits_per_code", "val_accuracy") if k in metrics}
    if not dist.is_main:
        return final
    save_weights(weights_path, prior.state_dict())
    final = {k: metrics[k] for k in ("epoch", "train_bits_per_code", "val_bits_per_code", "val_accuracy") if k in metrics}
    priors = dict(model_dir.config().get("priors", {}))
    priors[level] = {**prior_config.to_dict(), "classes": options.classes, "metrics": final}
    model_dir.update_config(priors=priors)
    return final


def train_priors(model, *, codes=None, data=None, labels=None, level="both", options: PriorOptions,
                 resume=False, overwrite=False, **scan_options) -> dict:
    """`skinaug train prior`: one or both levels, from a code file or from images."""
    model_dir = ModelDir(model)
    config = model_dir.config()
    if (codes is None) == (data is None):
        raise UsageError("give either --codes CODES.h5 or an image folder DATA, not both and not neither")
    levels = {"both": [lvl for lvl in ("top", "bottom") if lvl in config["grid"]], "top": ["top"], "bottom": ["bottom"]}.get(level)
    if levels is None:
        raise UsageError(f"--level must be top, bottom or both, not {level}")
    if "top" in levels and "top" not in config["grid"]:
        raise UsageError(f"{model} is a one-level model: it has no top codes (use --level bottom)")
    if options.arch not in ("pixelsnail", "gated-pixelcnn"):
        raise UsageError(f"--arch must be pixelsnail or gated-pixelcnn, not {options.arch}")
    if codes is not None:
        code_file = read_codes(codes)
        code_file.check_model(config)
        if code_file.class_names and code_file.class_names != config.get("class_names", []):
            raise SkinaugError(f"{codes} uses classes {code_file.class_names}, the model {config.get('class_names')}")
    else:
        code_file = codes_from_images(model_dir, data, labels, resolve_device(options.device), **scan_options)
    return {lvl: train_prior_level(model_dir, code_file, lvl, options, resume=resume, overwrite=overwrite) for lvl in levels}


def load_prior(model_dir: ModelDir, level: str, device="cpu"):
    """A trained prior in eval mode, with the classes it was trained on."""
    model_dir.require_prior(level)
    entry = model_dir.config()["priors"][level]
    prior = build_prior(PriorConfig.from_dict({k: v for k, v in entry.items() if k not in ("classes", "metrics")}))
    try:
        prior.load_state_dict(load_weights(model_dir.path / PRIOR_WEIGHTS[level]))
    except RuntimeError as error:
        raise SkinaugError(f"{model_dir.path / PRIOR_WEIGHTS[level]} does not match config.json ({str(error).splitlines()[0]})") from None
    return prior.to(device).eval(), entry.get("classes")
