"""Stage-1 training: `skinaug train vqvae`.

One process: `skinaug train vqvae DATA --labels CSV --out MODEL_DIR`.
Several: `torchrun --nproc_per_node N -m skinaug train vqvae ...` (see README, "Several GPUs").

Images are decoded once into a uint8 cache (MODEL_DIR/train/image_cache.npy); each step gathers a
batch from it, augments on the device (flips, 90-degree rotations, mild colour jitter) and runs the
VQ-VAE under bf16 autocast on CUDA. A checkpoint at the end of every epoch carries everything
needed to continue bit-exactly on CPU with --resume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..storage.codefile import code_statistics
from ..data.scan import check_image_size, group_split, scan_dataset
from ..distributed import Distributed
from ..errors import SkinaugError, UsageError
from ..storage.image_cache import build_cache
from ..storage.fs import MODEL_DIRECTORY, atomic_path, claim_output, files_digest, write_json
from ..limits import check_network_memory
from .losses import (GAN_START_SHARE, Adversary, LossSettings, discriminator_width, loss_settings, ssim_loss,
                     ssim_module)
from ..storage.modeldir import PRIOR_WEIGHTS, VQVAE_WEIGHTS, ModelDir, fingerprint, load_weights, vqvae_config
from ..runtime import autocast_for, log, resolve_device, warn
from ..storage.trained_on import record_stage
from .loop import (CHECKPOINT, BatchSource, Epoch, Hooks, MetricsLog, Run, TrainState, augment_batch,
                       fit, load_checkpoint, optimizer_step, shuffled_batches, steps_per_epoch, warmup_cosine)
from ..vqvae.model import VQVAE2, VQVAEConfig, to_uint8, vqvae_loss


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
# what `train vqvae` trains at without --image-size: the shipped model's size and the README's recipe, which a CPU
# trains in minutes (VQVAEConfig's own default stays the paper's 256)
DEFAULT_IMAGE_SIZE = 64
VQVAE_SHAPE_FIELDS = ("image_size", "levels", "codebook_size", "code_dim", "channels", "res_channels", "n_res_blocks",
                      "downsample")


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
    from ..storage.modeldir import locate_model

    location = locate_model(path, "{init}")
    return InitSource(location, ModelDir(location).config())


def vqvae_config_from_init(source: InitSource, requested=None) -> VQVAEConfig:
    """The --init model's VQ-VAE config. `requested` (a dict of the values asked for, or a full VQVAEConfig) may
    change the training knobs (restart_after, ...) but must agree on every shape-defining field."""
    base = vqvae_config(source.config)
    if isinstance(requested, VQVAEConfig):
        requested = requested.to_dict()
    requested = {key: value for key, value in (requested or {}).items() if value is not None}
    for name in VQVAE_SHAPE_FIELDS:
        source_value = base.get(name, getattr(VQVAEConfig, name))  # a field older models' config.json leaves out
        if name in requested and requested[name] != source_value:
            option = "{" + name + "}"  # the parameter, in the spelling of whoever reads the message
            raise UsageError(f"{option} {requested[name]} contradicts {{init}} {source.path}, whose VQ-VAE has {option} "
                             f"{source_value}: fine-tuning keeps the source's shape (leave {option} out)")
    return VQVAEConfig.from_dict({**base, **requested})


def check_init_is_not_output(source: InitSource, out) -> None:
    """Inputs are never modified: the --init model may not be the output, inside it, or hold it."""
    out_path, init_path = Path(out).resolve(), source.path.resolve()
    if out_path == init_path or out_path in init_path.parents:
        raise UsageError(f"{{out}} {out} would replace the {{init}} model {source.path}: write the fine-tuned model to a "
                         "new directory")
    if init_path in out_path.parents:
        raise UsageError(f"{{out}} {out} is inside the {{init}} model {source.path}: write the fine-tuned model elsewhere")


@torch.no_grad()
def evaluate(model: VQVAE2, batches, source: BatchSource, autocast, held_out: bool = True) -> dict:
    """Validation MSE on [0, 1] pixels and per-level code usage and perplexity. Without validation images (not
    `held_out`: `batches` are training images) there is no validation MSE: val_mse is None and the MSE on those
    training images is train_sample_mse, so that no training error is stored as a validation one."""
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
    mse = squared_error / max(1, pixels)
    return {"val_mse": mse, **stats} if held_out else {"val_mse": None, "train_sample_mse": mse, **stats}


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


class VQVAEStep:
    """One training step on a batch of cache indices: the VQ-VAE's AdamW update and, once the gan term is in, the
    discriminator's. `network` is the model as trained through (DDP-wrapped, or compiled by the benchmark)."""

    def __init__(self, model: VQVAE2, network, optimizer, source: BatchSource, autocast, *,
                 settings: LossSettings | None = None, adversary: Adversary | None = None, augment: bool = True):
        self.model, self.network, self.optimizer, self.source, self.autocast = model, network, optimizer, source, autocast
        self.settings = settings or loss_settings("mse")
        self.adversary, self.augment = adversary, augment
        self.channels_last = source.device.type == "cuda"

    def __call__(self, indices: np.ndarray, step: int) -> dict:
        """Scalar outputs: loss, mse, and the extra terms (ssim: 1 - SSIM; gan: the VQ-VAE's adversarial loss, its
        adaptive weight, the discriminator's loss, and gan_steps, 1 when the discriminator trained)."""
        images = self.source(indices)
        if self.augment:
            images = augment_batch(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        adversarial = self.adversary is not None and self.adversary.active(step)
        outputs = {}
        with self.autocast():
            # through the (possibly DDP-wrapped) network so gradients are all-reduced
            reconstruction = self.network(images)
            loss, mse = vqvae_loss(reconstruction, images, self.model.config.commitment_weight)
            if self.settings.uses_ssim:
                ssim = ssim_loss(reconstruction[0], images)
                loss = loss + self.settings.ssim_weight * ssim
                outputs["ssim"] = ssim.detach()
            if adversarial:
                # the commitment term does not reach the decoder: at its last layer, `loss` is reconstruction
                gan, gan_weight = self.adversary.generator_loss(reconstruction[0], loss, self.model.last_layer)
                loss = loss + gan_weight * gan
                outputs.update(gan=gan.detach(), gan_weight=gan_weight)
        optimizer_step(loss, self.optimizer)
        if adversarial:
            outputs.update(discriminator=self.adversary.discriminator_step(images, reconstruction[0], self.autocast),
                           gan_steps=1)
        return {"loss": loss.detach(), "mse": mse.detach(), **outputs}


@dataclass
class _Start:
    """Where a run writes and what it starts from: the checkpoint it resumes, or the --init model, or nothing."""

    claim: object | None  # rank 0's claim on the output (None on the other ranks)
    model_dir: ModelDir
    checkpoint: dict | None
    model_config: VQVAEConfig
    settings: LossSettings
    init_source: InitSource | None  # the --init model whose weights start a new run
    init_record: dict | None  # what config.json keeps about --init

    @property
    def checkpoint_path(self) -> Path:
        return self.model_dir.train_dir / CHECKPOINT


@dataclass
class _Data:
    class_names: list[str]
    dialect: str
    samples: list
    skipped: int
    cache: np.ndarray
    train_index: np.ndarray
    val_index: np.ndarray
    images: str = ""  # files_digest of the images scanned: what --resume checks


def train_vqvae(data, out, *, labels=None, model_config: VQVAEConfig | dict | None = None, options: TrainOptions,
                resume=False, overwrite=False, init=None) -> dict:
    """Trains (or resumes) a VQ-VAE-2 into the model directory `out`; returns the final metrics.

    `model_config`: a VQVAEConfig, or a dict of the fields asked for (the rest default). With `init` (a model
    directory or a shipped model's name) training starts from that model's VQ-VAE weights and config; asked-for
    shape fields must agree with it, and 0 epochs keep its weights unchanged (the same fingerprint).
    """
    dist = Distributed.from_environment(options.device)
    device = dist.device if dist.enabled else resolve_device(options.device)
    start, options = _start(data, out, labels, model_config, options, resume, overwrite, init, dist)
    dataset = _load_data(data, labels, start, options, dist)
    batch_size = max(1, options.batch_size // dist.world_size)
    total_steps = options.epochs * steps_per_epoch(len(dataset.train_index), batch_size, dist=dist)
    model, state, adversary = _build(start, options, dist, device, total_steps)
    if start.checkpoint is not None:
        state.restore(start.checkpoint, device, start.checkpoint_path)
        if dist.is_main:
            log(f"resuming from epoch {state.epoch} (step {state.step})")
    network = dist.wrap(model)
    if adversary is not None:
        adversary.network = dist.wrap(adversary.discriminator)

    source = BatchSource(dataset.cache, device)
    autocast = partial(autocast_for, device)
    held_out = len(dataset.val_index) > 0  # else code usage is measured on training images, and no val_mse is made up
    val_batches = ([dataset.val_index[i : i + 2 * batch_size] for i in range(0, len(dataset.val_index), 2 * batch_size)]
                   or [dataset.train_index[:batch_size]])
    meta = _meta(start, options, dataset, data, labels)
    metrics_log = MetricsLog(start.model_dir.train_dir / "metrics.jsonl", "vqvae")
    if dist.is_main:
        if start.checkpoint is not None:
            metrics_log.truncate(state.epoch)  # the epochs after the checkpoint's are trained (and logged) again
        else:
            metrics_log.reset()
        _log_start(start, options, dataset, device, total_steps)
    step = VQVAEStep(model, network, state.objects["optimizer"], source, autocast, settings=start.settings,
                     adversary=adversary, augment=options.augment)
    hooks = _epoch_hooks(model, state, start, source, val_batches, autocast, dist, held_out)
    run = Run("training", start.checkpoint_path, meta, metrics_log,
              restart="start again with {overwrite=True} and a lower {lr}")
    batches = partial(shuffled_batches, dataset.train_index, batch_size, seed=options.seed, dist=dist)
    metrics = fit(state, step, lambda epoch: batches(epoch=epoch), epochs=options.epochs, run=run, hooks=hooks, dist=dist)
    if dist.is_main:
        if options.epochs == 0:
            # the --init VQ-VAE as it is: how well it reconstructs and covers the new data
            metrics = metrics_log.append({"epoch": 0, "step": 0, **evaluate(model, val_batches, source, autocast, held_out)})
        metrics = metrics or metrics_log.last()  # a resumed run with no epoch left: the checkpoint's last line
        _finish(start, dataset, model, metrics, meta, options, state.step, data, device, out)
    dist.barrier()
    return metrics


def _start(data, out, labels, model_config, options: TrainOptions, resume: bool, overwrite: bool, init,
           dist: Distributed) -> tuple[_Start, TrainOptions]:
    """Claims the output (rank 0; the others follow its decision) and settles the config: a resumed run's comes
    from its checkpoint, a new run's from --init or the options. Returns the options the run trains with (a
    resumed run's seed, loss and --decoder-only are its checkpoint's), a copy: the caller's stay as they are."""
    has_checkpoint = (ModelDir(out).train_dir / CHECKPOINT).is_file()
    requested = model_config.to_dict() if isinstance(model_config, VQVAEConfig) else dict(model_config or {})
    init_source = None
    if init is not None and not (resume and has_checkpoint):  # a resumed run continues its checkpoint
        init_source = open_init(init)
        check_init_is_not_output(init_source, out)
        model_config = vqvae_config_from_init(init_source, model_config)
    elif not isinstance(model_config, VQVAEConfig):
        model_config = VQVAEConfig(**{"image_size": DEFAULT_IMAGE_SIZE, **(model_config or {})})
    if options.epochs == 0 and init is None:
        raise UsageError("{epochs=0} needs {init}: it copies the {init} model's VQ-VAE under the new data's classes")
    settings = loss_settings(options.loss, options.ssim_weight, options.gan_weight, options.gan_start)
    if options.decoder_only and init is None and not (resume and has_checkpoint):
        raise UsageError("{decoder_only=True} needs {init=MODEL}: it trains the decoder of MODEL's VQ-VAE, keeping its codes")
    check_network_memory(lambda: VQVAE2(model_config), "a VQ-VAE", "give a smaller {channels} or {res_channels}")
    # rank 0 alone applies the output policy and holds the lock; the others follow its decision and write where it
    # says: in place, or beside an earlier model that --overwrite replaces only once the new one is saved
    claim = claim_output(out, kind=MODEL_DIRECTORY, inputs=(data, labels, init_source.path if init_source else None),
                         overwrite=overwrite, resume=resume) if dist.is_main else None
    work, resuming = dist.broadcast_object((str(claim.work), claim.resuming) if claim is not None else None)
    start = _Start(claim, ModelDir(work), None, model_config, settings, init_source,
                   init_source.record() if init_source is not None else None)
    if resuming:
        options = _resume_from_checkpoint(start, out, options, init is not None, dist, requested)
    elif resume and dist.is_main:
        log(f"nothing to resume in {out}: starting a new run")
    check_image_size(start.model_config.image_size, start.model_config.downsample)
    return start, options


def _resume_from_checkpoint(start: _Start, out, options: TrainOptions, with_init: bool, dist: Distributed,
                            requested: dict) -> TrainOptions:
    """Loads the checkpoint into `start`; the shape-defining config, seed, loss and --decoder-only come from it (the
    options returned, a copy), and a `requested` config field that contradicts it is refused (it would be ignored)."""
    if not start.checkpoint_path.is_file():
        raise SkinaugError(f"{out} has no checkpoint to resume ({start.checkpoint_path} is missing)")
    if _has_priors(start.model_dir):
        # the priors were trained on this VQ-VAE's codes: training it further would silently invalidate them
        raise SkinaugError(f"{out} is a finished model with trained priors: {{resume=True}} would retrain the VQ-VAE under "
                           f"them; fine-tune into a new directory instead ({{init}} {out} {{out=NEW_DIR}})")
    checkpoint = start.checkpoint = load_checkpoint(start.checkpoint_path)
    made = asdict(VQVAEConfig.from_dict(checkpoint["meta"]["vqvae"]))  # with the fields its dict leaves at default
    for name, value in sorted(requested.items()):
        if value is not None and name in made and made[name] != value:
            raise UsageError(f"{{resume=True}} continues {out} as its checkpoint was made, with {{{name}}} {made[name]}: "
                             f"{{{name}}} {value} contradicts it (leave it out, or start again with {{overwrite=True}})")
    start.model_config = VQVAEConfig(**made)
    if with_init and dist.is_main:
        log("resuming: the weights come from the checkpoint ({init} only sets the start of a run)")
    # so do the loss and what is trained: the checkpoint's discriminator and optimizer state fit only those
    settings, decoder_only = (LossSettings.from_dict(checkpoint["meta"].get("loss")),
                              checkpoint["meta"].get("decoder_only", False))
    if (settings.terms, decoder_only) != (start.settings.terms, options.decoder_only) and dist.is_main:
        log(f"resuming: {{loss}} {settings.terms}{' {decoder_only=True}' * decoder_only}, as the checkpoint was made")
    start.settings, start.init_record = settings, checkpoint["meta"].get("init")
    return replace(options, seed=checkpoint["meta"]["seed"], decoder_only=decoder_only, loss=settings.terms)


def _load_data(data, labels, start: _Start, options: TrainOptions, dist: Distributed) -> _Data:
    """Scans DATA, decodes it once into the uint8 cache (rank 0; the others then open it) and splits it by group."""
    # fine-tuning: labels in a public vocabulary (HAM10000's mel) take the source's names (melanoma), so that its
    # priors' class embeddings carry over; a resumed run maps onto the classes it started with
    onto = (start.checkpoint["meta"]["class_names"] if start.checkpoint is not None
            else start.init_source.config.get("class_names") if start.init_source is not None else None)
    dataset = scan_dataset(data, labels, image_col=options.image_col, label_col=options.label_col,
                           group_col=options.group_col, strict=options.strict, map_onto=onto)
    for name, reason in dataset.skipped[:20]:
        log(f"skipped {name}: {reason}")
    if dataset.rows_without_file or dataset.files_without_row:
        log(f"{dataset.rows_without_file} CSV rows without a file, {dataset.files_without_row} files without a CSV row (left out)")
    images = files_digest(sample.path for sample in dataset.samples)
    if start.checkpoint is not None:  # before the image cache is rebuilt from this DATA
        _check_resumed_data(start.checkpoint["meta"], _data_record(data, labels, dataset.class_names, images))
    train_dir, image_size = start.model_dir.train_dir, start.model_config.image_size
    train_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        cache, samples = build_cache(dataset.samples, image_size, train_dir / "image_cache.npy", strict=options.strict,
                                     workers=options.workers)
    dist.barrier()
    if not dist.is_main:
        cache, samples = build_cache(dataset.samples, image_size, train_dir / "image_cache.npy")
    train_index, val_index = group_split([s.group or s.name for s in samples], options.val_fraction, options.seed,
                                         labels=np.array([s.label for s in samples]))
    if len(train_index) == 0:
        raise SkinaugError("not enough images to train: the training split is empty")
    skipped = len(dataset.skipped) + len(dataset.samples) - len(samples)
    return _Data(dataset.class_names, dataset.dialect, samples, skipped, cache, train_index, val_index, images)


def _data_record(data, labels, class_names: list[str], images: str) -> dict:
    """What a checkpoint keeps of the data it was trained on (its meta), for --resume to check against."""
    return {"data": str(Path(data).resolve()), "labels": str(Path(labels).resolve()) if labels else None,
            "class_names": list(class_names), "images": images}


def _check_resumed_data(saved: dict, current: dict) -> None:
    """--resume continues a run on the data it began with: other DATA, labels, classes or changed images (names, sizes,
    modification times) would make a model trained on two datasets, recorded as trained on the second."""
    said = {"data": "DATA", "labels": "{labels}", "class_names": "the classes", "images": "the images of DATA"}
    for key, name in said.items():
        if key in saved and saved[key] != current[key]:  # checkpoints from before "images" was kept skip that check
            shown = "changed (names, sizes or modification times)" if key == "images" else \
                f"was {saved[key]} when the run began and is {current[key]} now"
            raise SkinaugError(f"{{resume=True}} continues a run on the data it began with, but {name} {shown}: give "
                               "the run's data, or start again with {overwrite=True}")


def _build(start: _Start, options: TrainOptions, dist: Distributed, device, total_steps: int):
    """(model, its TrainState, the adversary or None), in the order that fixes the random stream of a new run."""
    torch.manual_seed(options.seed + dist.rank)
    model = VQVAE2(start.model_config)
    if start.init_source is not None and start.checkpoint is None:
        _load_init_weights(model, start.init_source)
        if dist.is_main:
            log(f"starting from the VQ-VAE of {start.init_source.path} (fingerprint {start.init_source.fingerprint})")
    if options.decoder_only:
        model.freeze_encoder()
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=options.lr, weight_decay=options.weight_decay)
    scheduler = warmup_cosine(optimizer, options.warmup_steps, total_steps)
    settings = start.settings
    if settings.uses_gan and settings.gan_start is None:
        start.settings = settings = replace(settings, gan_start=int(total_steps * GAN_START_SHARE))
    if settings.uses_ssim:
        ssim_module()  # imports MONAI now rather than inside the first epoch's timing
    state = TrainState(model=model, optimizer=optimizer, scheduler=scheduler)
    adversary = None
    if settings.uses_gan:
        adversary = Adversary(settings, channels=discriminator_width(start.model_config.channels), lr=options.lr,
                              weight_decay=options.weight_decay, seed=options.seed * 1_000_003 + 29, device=device)
        state.objects["adversary"] = adversary  # resumes exactly; never part of the model's weights
    return model, state, adversary


def _epoch_hooks(model: VQVAE2, state: TrainState, start: _Start, source: BatchSource, val_batches, autocast,
                 dist: Distributed, held_out: bool = True) -> Hooks:
    """The end of an epoch: codebooks synchronised, the metrics line, the reconstruction grid, the log line."""
    restarted = {level: q.restarted_total for level, q in model.quantizers.items()}  # at the epoch's start
    grid_images = source(val_batches[0][:8])
    codebook_size = model.config.codebook_size

    def evaluate_epoch(epoch: Epoch) -> dict:
        values = {
            "lr": state.objects["scheduler"].get_last_lr()[0],
            "train_loss": epoch.mean("loss"),
            "train_mse": epoch.mean("mse") / 4.0,  # [-1, 1] -> [0, 1] halves the scale, so squared errors shrink by 4
            **evaluate(model, val_batches, source, autocast, held_out),
            **{f"codes_restarted_{level}": q.restarted_total - restarted[level] for level, q in model.quantizers.items()},
            **loss_term_metrics(start.settings, epoch.sums, epoch.steps, epoch.sums.get("gan_steps", 0)),
            "images_per_s": epoch.items * dist.world_size / epoch.seconds,
            "seconds": epoch.seconds,
        }
        restarted.update({level: q.restarted_total for level, q in model.quantizers.items()})
        return values

    def epoch_end(epoch: Epoch, metrics: dict) -> None:
        reconstruction_grid(model, grid_images, start.model_dir.train_dir / f"reconstructions_epoch{epoch.number:03d}.png")
        usage = ", ".join(f"{level} {metrics[f'used_codes_{level}']}/{codebook_size} codes" for level in model.quantizers)
        terms = "".join(f", {name} {metrics[key]:.4f}" for name, key in
                        (("1-SSIM", "train_ssim"), ("gan", "train_gan"), ("discriminator", "train_discriminator"))
                        if metrics.get(key) is not None)
        val = "none (no validation images)" if metrics["val_mse"] is None else f"{metrics['val_mse']:.5f}"
        log(f"epoch {epoch.number}/{epoch.epochs}: train MSE {metrics['train_mse']:.5f}{terms}, val MSE {val}, "
            f"{usage}, {metrics['images_per_s']:.0f} img/s")

    def postfix(outputs: dict) -> dict:
        used = {f"codes_{level}": int(q.steps_unused.eq(0).sum()) for level, q in model.quantizers.items()}
        return {"loss": f"{float(outputs['loss']):.4f}", **used}

    return Hooks(synchronise=lambda: dist.sync_codebooks(model), evaluate=evaluate_epoch, epoch_end=epoch_end,
                 postfix=postfix)


def _meta(start: _Start, options: TrainOptions, dataset: _Data, data, labels) -> dict:
    """What the checkpoint and train_config.json keep about the run."""
    return {
        "vqvae": start.model_config.to_dict(),
        "seed": options.seed,
        **_data_record(data, labels, dataset.class_names, dataset.images),
        "init": start.init_record,
        "loss": start.settings.to_dict(),
        "decoder_only": options.decoder_only,
    }


def _log_start(start: _Start, options: TrainOptions, dataset: _Data, device, total_steps: int) -> None:
    log(f"training on {len(dataset.train_index)} images, validating on {len(dataset.val_index)}; {device}, batch "
        f"{options.batch_size}, {total_steps} steps ({options.epochs} epochs)")
    if start.settings.terms != "mse" or options.decoder_only:
        trained_part = "; training the decoder only (the codes stay fixed)" if options.decoder_only else ""
        log(f"loss {describe_loss(start.settings)}{trained_part}")


def _finish(start: _Start, dataset: _Data, model: VQVAE2, metrics: dict, meta: dict, options: TrainOptions, steps: int,
            data, device, out) -> None:
    """Rank 0: the weights, config.json, the training record and train_config.json; then the output is committed."""
    codebook_size = start.model_config.codebook_size
    for level in model.quantizers:
        used = metrics.get(f"used_codes_{level}", 0)
        if used < 0.1 * codebook_size:
            warn(f"the {level} level uses only {used} of {codebook_size} codes (under 10%): "
                 "try a smaller {codebook_size} or {code_dim}, or train longer")
    samples = dataset.samples
    per_class = {name: int(sum(1 for s in samples if s.label == i)) for i, name in enumerate(dataset.class_names)}
    training_data = {
        "data": meta["data"], "labels": meta["labels"], "dialect": dataset.dialect,
        "images": len(samples), "train_images": int(len(dataset.train_index)), "val_images": int(len(dataset.val_index)),
        "per_class": per_class, "skipped": dataset.skipped,
        "init": meta["init"], "loss": start.settings.to_dict(), "decoder_only": options.decoder_only,
    }
    final = {k: metrics[k] for k in metrics if k.startswith(("val_mse", "used_codes", "perplexity", "co_occurring"))}
    final.update(epochs=options.epochs, steps=steps)
    model_dir = start.model_dir
    model_dir.save_vqvae(model, class_names=dataset.class_names, training_data=training_data, metrics=final)
    # every image read, validation included: it chose the weights kept
    record_stage(model_dir.path, [s.name for s in samples], [s.group for s in samples], "vqvae", meta["init"], data=data)
    if options.decoder_only:
        copy_init_priors(model_dir, meta["init"], dataset.class_names, shown_as=out)
    write_json(model_dir.train_dir / "train_config.json", {**meta, "options": _options_dict(options), "device": str(device)})
    start.claim.commit()


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

    from ..priors.config import PriorConfig

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
        prior_fingerprint = fingerprint(PriorConfig.from_entry(source.config["priors"][level]).to_dict(),
                                        load_weights(weights))
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




def _options_dict(options: TrainOptions) -> dict:
    from dataclasses import asdict

    return asdict(options)
