"""Stage-1 training: `skinaug train vqvae`.

One process: `skinaug train vqvae DATA --labels CSV --out MODEL_DIR`.
Several: `torchrun --nproc_per_node N -m skinaug train vqvae ...` (see README, "Several GPUs").

Images are decoded once into a uint8 cache (MODEL_DIR/train/image_cache.npy); each step gathers a
batch from it, augments on the device (flips, 90-degree rotations, mild colour jitter) and runs the
VQ-VAE under bf16 autocast on CUDA. A checkpoint at the end of every epoch carries everything
needed to continue bit-exactly on CPU with --resume.
"""

from __future__ import annotations

import math
import time
from functools import partial
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .codes import code_statistics
from .data import check_image_size, group_split, scan_dataset
from .encode import autocast_for
from .errors import SkinaugError, UsageError
from .image_cache import build_cache
from .io import MODEL_DIRECTORY, atomic_path, claim_output, write_json, write_text
from .losses import (GAN_START_SHARE, Adversary, LossSettings, discriminator_width, loss_settings, ssim_loss,
                     ssim_module)
from .modeldir import PRIOR_WEIGHTS, VQVAE_WEIGHTS, ModelDir, fingerprint, load_weights
from .runtime import log, progress, resolve_device, warn
from .trained_on import record_stage
from .vqvae import VQVAE2, VQVAEConfig, to_model_input, to_uint8, vqvae_loss

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainOptions:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200  # short linear warm-up keeps early EMA codebooks from chasing huge updates
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    augment: bool = True
    strict: bool = False
    workers: int | None = None
    image_col: str | None = None
    label_col: str | None = None
    group_col: str | None = None
    loss: str = "mse"  # mse, mse+ssim, mse+gan or mse+ssim+gan (see losses.py)
    ssim_weight: float | None = None  # None: losses.DEFAULT_SSIM_WEIGHT when the loss has ssim
    gan_weight: float | None = None  # None: losses.DEFAULT_GAN_WEIGHT when the loss has gan
    gan_start: int | None = None  # steps before the discriminator joins; None: a quarter of the run
    decoder_only: bool = False  # with --init: train the decoder alone, keeping the codes (and the priors)
    extra: dict = field(default_factory=dict)


# --init: the VQVAEConfig fields that define the VQ-VAE's shape
VQVAE_SHAPE_FIELDS = ("image_size", "levels", "codebook_size", "code_dim", "channels", "res_channels", "n_res_blocks")


@dataclass
class InitSource:
    """A model to start training from (`--init MODEL_DIR`): its directory and config.json."""

    path: Path
    config: dict

    @property
    def fingerprint(self) -> str:
        return self.config["fingerprint"]

    def record(self, **details) -> dict:
        """What the new model's config.json keeps about where its weights started."""
        return {"model": str(self.path.resolve()), "fingerprint": self.fingerprint, **details}


def open_init(path) -> InitSource:
    """The --init model: a model directory, or the name of a model shipped with skinaug."""
    from .modeldir import locate_model

    location = locate_model(path, "{init}")
    return InitSource(location, ModelDir(location).config())


def vqvae_config_from_init(source: InitSource, requested=None) -> VQVAEConfig:
    """The --init model's VQ-VAE config. `requested` (a dict of the values asked for, or a full VQVAEConfig) may
    change the training knobs (restart_after, ...) but must agree on every shape-defining field."""
    base = source.config["vqvae"]
    if isinstance(requested, VQVAEConfig):
        requested = requested.to_dict()
    requested = {key: value for key, value in (requested or {}).items() if value is not None}
    for name in VQVAE_SHAPE_FIELDS:
        if name in requested and requested[name] != base[name]:
            option = "{" + name + "}"  # the parameter, in the spelling of whoever reads the message
            raise UsageError(f"{option} {requested[name]} contradicts {{init}} {source.path}, whose VQ-VAE has {option} "
                             f"{base[name]}: fine-tuning keeps the source's shape (leave {option} out)")
    return VQVAEConfig.from_dict({**base, **requested})


def check_init_is_not_output(source: InitSource, out) -> None:
    """Inputs are never modified: the --init model may not be the output, inside it, or hold it."""
    out_path, init_path = Path(out).resolve(), source.path.resolve()
    if out_path == init_path or out_path in init_path.parents:
        raise UsageError(f"{{out}} {out} would replace the {{init}} model {source.path}: write the fine-tuned model to a "
                         "new directory")
    if init_path in out_path.parents:
        raise UsageError(f"{{out}} {out} is inside the {{init}} model {source.path}: write the fine-tuned model elsewhere")


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress_ = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress_))


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int):
    """AdamW's schedule for both stages: warm-up of at most a tenth of the run, then cosine decay."""
    warmup = min(warmup_steps, total_steps // 10 + 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total_steps))


def augment_batch(images: torch.Tensor) -> torch.Tensor:
    """Random flips, 90-degree rotations and mild colour jitter for a (B, 3, S, S) batch in [-1, 1].

    Done on the device as whole-batch tensor ops: per-image CPU augmentation would starve a GPU.
    Lesions have no canonical orientation, so every dihedral transform is a valid view.
    """
    b = images.shape[0]
    draws = torch.rand(b, 6, device=images.device)
    flip = (draws[:, 0] < 0.5).view(b, 1, 1, 1)
    images = torch.where(flip, images.flip(-1), images)
    quarter_turns = (draws[:, 1] * 4).long().view(b, 1, 1, 1)
    rotated = images
    for k in range(1, 4):
        rotated = torch.where(quarter_turns == k, torch.rot90(images, k, (2, 3)), rotated)
    images = rotated
    brightness = (draws[:, 2] - 0.5) * 0.2  # +-0.1 on the [-1, 1] scale
    contrast = 1.0 + (draws[:, 3] - 0.5) * 0.2
    saturation = 1.0 + (draws[:, 4] - 0.5) * 0.2
    gray = images.mean(1, keepdim=True)
    images = gray + (images - gray) * saturation.view(b, 1, 1, 1)
    mean = images.mean((1, 2, 3), keepdim=True)
    images = mean + (images - mean) * contrast.view(b, 1, 1, 1) + brightness.view(b, 1, 1, 1)
    return images.clamp(-1.0, 1.0)


class BatchSource:
    """Batches of images from the uint8 cache, already on the device.

    When the cache fits comfortably in GPU memory it is moved there once; otherwise batches are
    gathered on the CPU into pinned memory and copied without blocking.
    """

    def __init__(self, cache: np.ndarray, device: torch.device):
        self.device = device
        self.on_device = None
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if cache.nbytes < 0.25 * free:
                self.on_device = torch.from_numpy(np.array(cache)).to(device)
        self.cache = cache

    def __call__(self, indices: np.ndarray) -> torch.Tensor:
        if self.on_device is not None:
            batch = self.on_device[torch.from_numpy(indices).to(self.device)]
        else:
            # sorted reads are sequential on the memory map; order within a batch does not matter
            batch = torch.from_numpy(self.cache[np.sort(indices)])
            if self.device.type == "cuda":
                batch = batch.pin_memory().to(self.device, non_blocking=True)
        return to_model_input(batch)


def training_state(model, optimizer, scheduler, step, epoch, meta) -> dict:
    """Everything --resume needs: weights, optimizer, schedule, position, RNG state and the run's meta."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "epoch": epoch,
        "rng": rng,
        "meta": meta,
    }


def restore_training_state(checkpoint: dict, model, optimizer, scheduler, device) -> tuple[int, int]:
    """The inverse of training_state; returns (step, epoch) to continue from."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    if "cuda" in checkpoint["rng"] and device.type == "cuda":
        torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    return checkpoint["step"], checkpoint["epoch"]


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SkinaugError(f"cannot read checkpoint {path} ({str(error).splitlines()[0]})") from None


@torch.no_grad()
def evaluate(model: VQVAE2, batches, source: BatchSource, autocast) -> dict:
    """Validation MSE on [0, 1] pixels and per-level code usage and perplexity."""
    model.eval()
    squared_error, pixels = 0.0, 0
    codes: dict[str, list[np.ndarray]] = {level: [] for level in model.quantizers}
    for indices in batches:
        images = source(indices)
        with autocast():
            reconstruction, batch_codes, _ = model(images)
        # [-1, 1] -> [0, 1] halves the scale, so squared errors shrink by 4
        squared_error += ((reconstruction.float().clamp(-1, 1) - images) ** 2).sum().item() / 4.0
        pixels += images.numel()
        for level, values in batch_codes.items():
            codes[level].append(values.cpu().numpy())
    model.train()
    stats = code_statistics({k: np.concatenate(v) for k, v in codes.items()}, model.config.codebook_size)
    return {"val_mse": squared_error / max(1, pixels), **stats}


def reconstruction_grid(model: VQVAE2, images: torch.Tensor, path: Path) -> None:
    """Originals on the top row, reconstructions below: a quick look at what the codes keep."""
    from PIL import Image

    model.eval()
    with torch.no_grad():
        reconstruction = model(images)[0]
    model.train()
    rows = torch.cat([to_uint8(images), to_uint8(reconstruction)], 0).cpu().numpy()
    n, size = images.shape[0], images.shape[-1]
    grid = rows.reshape(2, n, size, size, 3).transpose(0, 2, 1, 3, 4).reshape(2 * size, n * size, 3)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


def train_vqvae(data, out, *, labels=None, model_config: VQVAEConfig | dict | None = None, options: TrainOptions,
                resume=False, overwrite=False, init=None) -> dict:
    """Trains (or resumes) a VQ-VAE-2 into the model directory `out`; returns the final metrics.

    `model_config`: a VQVAEConfig, or a dict of the fields asked for (the rest default). With `init` (a model
    directory or a shipped model's name) training starts from that model's VQ-VAE weights and config; asked-for
    shape fields must agree with it, and 0 epochs keep its weights unchanged (the same fingerprint).
    """
    from .distributed import Distributed

    dist = Distributed.from_environment(options.device)
    device = dist.device if dist.enabled else resolve_device(options.device)
    model_dir = ModelDir(out)
    checkpoint_path = model_dir.train_dir / CHECKPOINT
    init_source = None
    if init is not None and not (resume and checkpoint_path.is_file()):  # a resumed run continues its checkpoint
        init_source = open_init(init)
        check_init_is_not_output(init_source, out)
        model_config = vqvae_config_from_init(init_source, model_config)
    elif not isinstance(model_config, VQVAEConfig):
        model_config = VQVAEConfig(**(model_config or {}))
    if options.epochs == 0 and init is None:
        raise UsageError("{epochs=0} needs {init}: it copies the {init} model's VQ-VAE under the new data's classes")
    settings = loss_settings(options.loss, options.ssim_weight, options.gan_weight, options.gan_start)
    if options.decoder_only and init is None and not (resume and checkpoint_path.is_file()):
        raise UsageError("{decoder_only=True} needs {init=MODEL}: it trains the decoder of MODEL's VQ-VAE, keeping its codes")
    # rank 0 alone applies the output policy and holds the lock; the others follow its decision and write where it
    # says: in place, or beside an earlier model that --overwrite replaces only once the new one is saved
    claim = claim_output(out, kind=MODEL_DIRECTORY, inputs=(data, labels, init_source.path if init_source else None),
                         overwrite=overwrite, resume=resume) if dist.is_main else None
    work, resuming = dist.broadcast_object((str(claim.work), claim.resuming) if claim is not None else None)
    model_dir = ModelDir(work)
    checkpoint_path = model_dir.train_dir / CHECKPOINT
    if resuming and not checkpoint_path.is_file():
        raise SkinaugError(f"{out} has no checkpoint to resume ({checkpoint_path} is missing)")
    if resuming and _has_priors(model_dir):
        # the priors were trained on this VQ-VAE's codes: training it further would silently invalidate them
        raise SkinaugError(f"{out} is a finished model with trained priors: {{resume=True}} would retrain the VQ-VAE under "
                           f"them; fine-tune into a new directory instead ({{init}} {out} {{out=NEW_DIR}})")
    if not resuming and resume and dist.is_main:
        log(f"nothing to resume in {out}: starting a new run")

    checkpoint = load_checkpoint(checkpoint_path) if resuming else None
    if checkpoint is not None:
        # the shape-defining config comes from the checkpoint, not from the command line
        model_config = VQVAEConfig.from_dict(checkpoint["meta"]["vqvae"])
        options.seed = checkpoint["meta"]["seed"]
        if init is not None and dist.is_main:
            log("resuming: the weights come from the checkpoint ({init} only sets the start of a run)")
        # so do the loss and what is trained: the checkpoint's discriminator and optimizer state fit only those
        resumed = LossSettings.from_dict(checkpoint["meta"].get("loss")), checkpoint["meta"].get("decoder_only", False)
        if (resumed[0].terms, resumed[1]) != (settings.terms, options.decoder_only) and dist.is_main:
            log(f"resuming: {{loss}} {resumed[0].terms}{' {decoder_only=True}' * resumed[1]}, as the checkpoint was made")
        settings, options.decoder_only = resumed
        options.loss = settings.terms
    init_record = checkpoint["meta"].get("init") if checkpoint is not None else (
        init_source.record() if init_source is not None else None)
    check_image_size(model_config.image_size)
    if model_config.levels not in (1, 2):
        raise UsageError(f"{{levels}} must be 1 or 2, not {model_config.levels}")

    dataset = scan_dataset(data, labels, image_col=options.image_col, label_col=options.label_col,
                           group_col=options.group_col, strict=options.strict)
    for name, reason in dataset.skipped[:20]:
        log(f"skipped {name}: {reason}")
    if dataset.rows_without_file or dataset.files_without_row:
        log(f"{dataset.rows_without_file} CSV rows without a file, {dataset.files_without_row} files without a CSV row (left out)")
    model_dir.train_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        cache, samples = build_cache(dataset.samples, model_config.image_size, model_dir.train_dir / "image_cache.npy",
                                     strict=options.strict, workers=options.workers)
    dist.barrier()
    if not dist.is_main:
        cache, samples = build_cache(dataset.samples, model_config.image_size, model_dir.train_dir / "image_cache.npy")
    train_index, val_index = group_split([s.group or s.name for s in samples], options.val_fraction, options.seed,
                                         labels=np.array([s.label for s in samples]))
    if len(train_index) == 0:
        raise SkinaugError("not enough images to train: the training split is empty")

    torch.manual_seed(options.seed + dist.rank)
    model = VQVAE2(model_config)
    if init_source is not None and checkpoint is None:
        _load_init_weights(model, init_source)
        if dist.is_main:
            log(f"starting from the VQ-VAE of {init_source.path} (fingerprint {init_source.fingerprint})")
    if options.decoder_only:
        model.freeze_encoder()
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=options.lr, weight_decay=options.weight_decay)
    batch_size = max(1, options.batch_size // dist.world_size)
    steps_per_epoch = max(1, len(dist.shard(train_index)) // batch_size)
    total_steps = options.epochs * steps_per_epoch
    scheduler = warmup_cosine(optimizer, options.warmup_steps, total_steps)
    if settings.uses_gan and settings.gan_start is None:
        settings = replace(settings, gan_start=int(total_steps * GAN_START_SHARE))
    if settings.uses_ssim:
        ssim_module()  # imports MONAI now rather than inside the first epoch's timing
    adversary = Adversary(settings, channels=discriminator_width(model_config.channels), lr=options.lr,
                          weight_decay=options.weight_decay, seed=options.seed * 1_000_003 + 29,
                          device=device) if settings.uses_gan else None
    step, start_epoch = 0, 0
    if checkpoint is not None:
        step, start_epoch = restore_training_state(checkpoint, model, optimizer, scheduler, device)
        if adversary is not None:
            adversary.load_state_dict(checkpoint["adversary"])
        if dist.is_main:
            log(f"resuming from epoch {start_epoch} (step {step})")
    network = dist.wrap(model)
    if adversary is not None:
        adversary.network = dist.wrap(adversary.discriminator)

    source = BatchSource(cache, device)
    autocast = partial(autocast_for, device)
    val_batches = [val_index[i : i + 2 * batch_size] for i in range(0, len(val_index), 2 * batch_size)] or [train_index[:batch_size]]
    grid_images = source(val_batches[0][:8])
    meta = {
        "vqvae": model_config.to_dict(),
        "seed": options.seed,
        "class_names": dataset.class_names,
        "data": str(Path(data).resolve()),
        "labels": str(Path(labels).resolve()) if labels else None,
        "init": init_record,
        "loss": settings.to_dict(),
        "decoder_only": options.decoder_only,
    }
    metrics: dict = {}
    metrics_path = model_dir.train_dir / "metrics.jsonl"
    if not resuming and metrics_path.exists() and dist.is_main:
        metrics_path.unlink()
    elif resuming and dist.is_main:
        # a run cut off between logging an epoch and saving its checkpoint trains that epoch again
        _drop_metrics_after(metrics_path, start_epoch)
    per_class = {name: int(sum(1 for s in samples if s.label == i)) for i, name in enumerate(dataset.class_names)}
    if dist.is_main:
        log(f"training on {len(train_index)} images, validating on {len(val_index)}; {device}, batch {options.batch_size}, "
            f"{total_steps} steps ({options.epochs} epochs)")
        if settings.terms != "mse" or options.decoder_only:
            trained_part = "; training the decoder only (the codes stay fixed)" if options.decoder_only else ""
            log(f"loss {describe_loss(settings)}{trained_part}")

    for epoch in range(start_epoch, options.epochs):
        started = time.perf_counter()
        # the same permutation on every rank (each then takes its shard), fixed by seed and epoch for exact resumes
        epoch_order = torch.randperm(len(train_index), generator=torch.Generator().manual_seed(options.seed * 1_000_003 + epoch))
        order = dist.shard(train_index[epoch_order.numpy()])
        restarted_before = {level: q.restarted_total for level, q in model.quantizers.items()}
        loss_sum = torch.zeros((), device=device)
        mse_sum = torch.zeros((), device=device)
        # ssim: 1 - SSIM; gan: the VQ-VAE's adversarial loss, its adaptive weight, the discriminator's loss
        term_sums = {name: torch.zeros((), device=device) for name in ("ssim", "gan", "gan_weight", "discriminator")}
        gan_steps = 0
        with progress(steps_per_epoch * batch_size, desc=f"epoch {epoch + 1}/{options.epochs}") as bar:
            for batch_number in range(steps_per_epoch):
                images = source(order[batch_number * batch_size : (batch_number + 1) * batch_size])
                if options.augment:
                    images = augment_batch(images)
                if device.type == "cuda":
                    images = images.contiguous(memory_format=torch.channels_last)
                adversarial = adversary is not None and adversary.active(step)
                with autocast():
                    # through the (possibly DDP-wrapped) network so gradients are all-reduced
                    outputs = network(images)
                    loss, mse = vqvae_loss(outputs, images, model_config.commitment_weight)
                    if settings.uses_ssim:
                        ssim = ssim_loss(outputs[0], images)
                        loss = loss + settings.ssim_weight * ssim
                        term_sums["ssim"] += ssim.detach()
                    if adversarial:
                        # the commitment term does not reach the decoder: at its last layer, `loss` is reconstruction
                        gan, gan_weight = adversary.generator_loss(outputs[0], loss, model.last_layer)
                        loss = loss + gan_weight * gan
                        term_sums["gan"] += gan.detach()
                        term_sums["gan_weight"] += gan_weight
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if adversarial:
                    term_sums["discriminator"] += adversary.discriminator_step(images, outputs[0], autocast)
                    gan_steps += 1
                step += 1
                loss_sum += loss.detach()
                mse_sum += mse.detach()
                # checking finiteness costs a host sync: every step on CPU (free), every 25 on GPU
                if device.type == "cpu" or batch_number % 25 == 24:
                    if not dist.all_finite(loss_sum):
                        raise _diverged(f"the loss became {loss.item()} at epoch {epoch + 1}, step {step}", checkpoint_path)
                if bar.disable is False:
                    bar.update(images.shape[0])
                    used = {level: int(q.steps_unused.eq(0).sum()) for level, q in model.quantizers.items()}
                    bar.set_postfix(loss=f"{loss.item():.4f}", **{f"codes_{k}": v for k, v in used.items()})
        if not dist.all_finite(loss_sum):
            raise _diverged(f"the loss became non-finite in epoch {epoch + 1}", checkpoint_path)
        dist.sync_codebooks(model)
        elapsed = time.perf_counter() - started
        if dist.is_main:
            evaluation = evaluate(model, val_batches, source, autocast)
            metrics = {
                "stage": "vqvae",
                "epoch": epoch + 1,
                "step": step,
                "lr": scheduler.get_last_lr()[0],
                "train_loss": loss_sum.item() / steps_per_epoch,
                "train_mse": mse_sum.item() / steps_per_epoch / 4.0,
                **evaluation,
                **{f"codes_restarted_{level}": q.restarted_total - restarted_before[level] for level, q in model.quantizers.items()},
                **loss_term_metrics(settings, term_sums, steps_per_epoch, gan_steps),
                "images_per_s": steps_per_epoch * batch_size * dist.world_size / elapsed,
                "seconds": elapsed,
            }
            with open(metrics_path, "a", encoding="utf-8") as handle:
                import json

                handle.write(json.dumps(metrics) + "\n")
            reconstruction_grid(model, grid_images, model_dir.train_dir / f"reconstructions_epoch{epoch + 1:03d}.png")
            state = training_state(model, optimizer, scheduler, step, epoch + 1, meta)
            if adversary is not None:
                state["adversary"] = adversary.state_dict()  # resumes exactly; never part of the model's weights
            save_checkpoint(checkpoint_path, state)
            usage = ", ".join(f"{level} {metrics[f'used_codes_{level}']}/{model_config.codebook_size} codes"
                              for level in model.quantizers)
            terms = "".join(f", {name} {metrics[key]:.4f}" for name, key in
                            (("1-SSIM", "train_ssim"), ("gan", "train_gan"), ("discriminator", "train_discriminator"))
                            if metrics.get(key) is not None)
            log(f"epoch {epoch + 1}/{options.epochs}: train MSE {metrics['train_mse']:.5f}{terms}, val MSE "
                f"{metrics['val_mse']:.5f}, {usage}, {metrics['images_per_s']:.0f} img/s")
        dist.barrier()

    if dist.is_main:
        if options.epochs == 0:
            # the --init VQ-VAE as it is: how well it reconstructs and covers the new data
            metrics = {"stage": "vqvae", "epoch": 0, "step": 0, **evaluate(model, val_batches, source, autocast)}
            with open(metrics_path, "a", encoding="utf-8") as handle:
                import json

                handle.write(json.dumps(metrics) + "\n")
        if not metrics:
            metrics = _last_metrics(metrics_path)
        for level in model.quantizers:
            used = metrics.get(f"used_codes_{level}", 0)
            if used < 0.1 * model_config.codebook_size:
                warn(f"the {level} level uses only {used} of {model_config.codebook_size} codes (under 10%): "
                     "try a smaller {codebook_size} or {code_dim}, or train longer")
        training_data = {
            "data": meta["data"], "labels": meta["labels"], "dialect": dataset.dialect,
            "images": len(samples), "train_images": int(len(train_index)), "val_images": int(len(val_index)),
            "per_class": per_class, "skipped": len(dataset.skipped) + len(dataset.samples) - len(samples),
            "init": meta["init"], "loss": settings.to_dict(), "decoder_only": options.decoder_only,
        }
        final = {k: metrics[k] for k in metrics if k.startswith(("val_mse", "used_codes", "perplexity", "co_occurring"))}
        final.update(epochs=options.epochs, steps=step)
        model_dir.save_vqvae(model, class_names=dataset.class_names, training_data=training_data, metrics=final)
        # every image read, validation included: it chose the weights kept
        record_stage(model_dir.path, [s.name for s in samples], [s.group for s in samples], "vqvae", meta["init"], data=data)
        if options.decoder_only:
            copy_init_priors(model_dir, meta["init"], dataset.class_names, shown_as=out)
        write_json(model_dir.train_dir / "train_config.json", {**meta, "options": _options_dict(options), "device": str(device)})
        claim.commit()
    dist.barrier()
    return metrics


def describe_loss(settings: LossSettings) -> str:
    """The loss as a formula, for the log."""
    parts = ["mse + commitment"]
    if settings.uses_ssim:
        parts.append(f"{settings.ssim_weight:g} x (1 - SSIM)")
    if settings.uses_gan:
        parts.append(f"{settings.gan_weight:g} x adaptive x hinge gan (from step {settings.gan_start})")
    return " + ".join(parts)


def loss_term_metrics(settings: LossSettings, sums: dict, steps: int, gan_steps: int) -> dict:
    """An epoch's means of the extra loss terms (none for plain mse); gan terms over the steps the discriminator
    was in (null before it joins)."""
    metrics = {}
    if settings.uses_ssim:
        metrics["train_ssim"] = sums["ssim"].item() / steps  # 1 - SSIM, before its weight
    if settings.uses_gan:
        mean = lambda name: sums[name].item() / gan_steps if gan_steps else None  # noqa: E731
        metrics.update(train_gan=mean("gan"), gan_adaptive_weight=mean("gan_weight"),
                       train_discriminator=mean("discriminator"), gan_steps=gan_steps)
    return metrics


def copy_init_priors(model_dir: ModelDir, init_record: dict, class_names: list[str], shown_as=None) -> list[str]:
    """--decoder-only keeps the --init model's encoder and codebooks, so its priors model this model's codes exactly:
    they are copied with their config.json entries, whose "init" names the model they came from. Priors over other
    classes are left for `train prior --init` (which matches class embeddings by name). Returns the levels copied.
    `shown_as`: the model directory as the user named it (model_dir may be a staging directory)."""
    import shutil

    from .train_prior import source_prior_config

    source = open_init(init_record["model"])
    if source.fingerprint != init_record["fingerprint"]:
        warn(f"the priors of {source.path} are not copied: its VQ-VAE changed since this run started (fingerprint "
             f"{source.fingerprint}, not {init_record['fingerprint']}), so they may not model these codes")
        return []
    levels = [level for level, entry in source.config.get("priors", {}).items()
              if (source.path / PRIOR_WEIGHTS[level]).is_file()]
    if not levels:
        log(f"{source.path} has no priors to copy")
        return []
    source_classes = list(source.config.get("class_names", []))
    if source_classes != list(class_names):
        warn(f"the priors of {source.path} are not copied: they know the classes {', '.join(source_classes)}, this "
             f"data has {', '.join(class_names)}; adapt them with `skinaug train prior --model {shown_as or model_dir.path} "
             f"DATA --labels CSV --init {source.path} --epochs 0`")
        return []
    priors = dict(model_dir.config().get("priors", {}))
    for level in levels:
        weights = source.path / PRIOR_WEIGHTS[level]
        with atomic_path(model_dir.path / PRIOR_WEIGHTS[level]) as tmp:
            shutil.copyfile(weights, tmp)
        prior_fingerprint = fingerprint(source_prior_config(source, level).to_dict(), load_weights(weights))
        priors[level] = {**source.config["priors"][level],
                         "init": source.record(prior_fingerprint=prior_fingerprint, vqvae="decoder-only", copied=True)}
    model_dir.update_config(priors=priors)
    log(f"copied the {' and '.join(levels)} prior(s) of {source.path}: the codes are unchanged, so they fit as they are")
    return levels


def _load_init_weights(model: VQVAE2, source: InitSource) -> None:
    """Every weight and codebook buffer of the --init model's VQ-VAE, bit for bit."""
    try:
        model.load_state_dict(load_weights(source.path / VQVAE_WEIGHTS))
    except RuntimeError as error:
        raise SkinaugError(f"{source.path / VQVAE_WEIGHTS} does not match its config.json "
                           f"({str(error).splitlines()[0]})") from None


def _has_priors(model_dir: ModelDir) -> bool:
    try:
        return model_dir.exists() and bool(model_dir.config().get("priors"))
    except SkinaugError:
        return False  # an unreadable config.json: the checkpoint decides, as before


def _diverged(what: str, checkpoint_path: Path) -> SkinaugError:
    if checkpoint_path.is_file():
        kept = f"the last good checkpoint is kept in {checkpoint_path.parent} (resume with {{resume=True}} after lowering {{lr}})"
    else:
        kept = "no checkpoint was saved yet (start again with {overwrite=True} and a lower {lr})"
    return SkinaugError(f"training diverged: {what}; {kept}")


def _drop_metrics_after(path: Path, epoch: int) -> None:
    """Keeps the metrics lines of epochs up to `epoch` (the checkpoint's)."""
    import json

    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("epoch", 0) <= epoch]
    write_text(path, "".join(line + "\n" for line in lines))


def _last_metrics(path: Path) -> dict:
    import json

    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else {}


def _options_dict(options: TrainOptions) -> dict:
    from dataclasses import asdict

    return asdict(options)
