"""`skinaug train vqvae`, `skinaug train prior` and `skinaug train baseline`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from .options import (ClassMapOpt, BatchOpt, DataArg, DeviceOpt, choices, GroupColOpt, ImageColOpt, JsonOpt, LabelColOpt, LabelsOpt,
                      OverwriteOpt, QuietOpt, ResumeOpt, SeedOpt, StrictOpt, WorkersOpt, columns, emit, finite_number,
                      model_path)

app = typer.Typer(help="Train the stages of a model, from scratch or fine-tuned from another model (--init).",
                  no_args_is_help=True)

VqvaeInitOpt = Annotated[Optional[Path], typer.Option(
    "--init", help="Fine-tune: start from this model's VQ-VAE (a model directory or a shipped model's name) and keep "
    "its shape.", show_default=False)]
PriorInitOpt = Annotated[Optional[Path], typer.Option(
    "--init", help="Fine-tune: start from this model's priors (a model directory or a shipped model's name) and keep "
    "their shape; classes they know keep their embeddings, new classes get new ones.", show_default=False)]

# `train vqvae`'s loss options
LossOpt = Annotated[str, typer.Option(
    "--loss", **choices("mse", "mse+ssim", "mse+gan", "mse+ssim+gan"), help="mse, mse+ssim, mse+gan or mse+ssim+gan: "
    "ssim adds 1 - SSIM, gan a PatchGAN discriminator trained alongside (VQGAN's adaptive weight); both keep finer "
    "texture than mse alone.")]
SsimWeightOpt = Annotated[Optional[float], typer.Option("--ssim-weight", show_default=False,
                                                        help="Weight of 1 - SSIM (default 0.2).")]
GanWeightOpt = Annotated[Optional[float], typer.Option(
    "--gan-weight", show_default=False, help="Weight of the adversarial term, before its adaptive factor (default 0.1).")]
GanStartOpt = Annotated[Optional[int], typer.Option(
    "--gan-start", show_default=False, help="Training steps before the discriminator joins (default: a quarter of the run).")]
DecoderOnlyOpt = Annotated[bool, typer.Option(
    "--decoder-only", help="With --init: train only the decoder. The encoder and codebooks stay the --init model's, so "
    "its priors are copied and the new model generates right away.")]


@app.command("vqvae")
def vqvae(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", help="Model directory to create.", show_default=False)],
    labels: LabelsOpt = None,
    init: VqvaeInitOpt = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="Side of the square training images: a multiple of 8 from 32 to 512 (default 64, as the shipped model; with --init the source's).")] = None,
    levels: Annotated[Optional[int], typer.Option("--levels", min=1, max=2, help="1 (bottom codes only) or 2 (top and bottom) (default 2).")] = None,
    codebook_size: Annotated[Optional[int], typer.Option("--codebook-size", min=2, max=65535, help="Codes per level, K (default 256).")] = None,
    code_dim: Annotated[Optional[int], typer.Option("--code-dim", min=1, help="Dimension of each code, D (default 8).")] = None,
    channels: Annotated[Optional[int], typer.Option("--channels", min=8, help="Width of the encoder and decoder (default 128).")] = None,
    res_channels: Annotated[Optional[int], typer.Option("--res-channels", min=4, help="Width inside residual blocks (default 32).")] = None,
    n_res_blocks: Annotated[Optional[int], typer.Option("--res-blocks", min=0, help="Residual blocks per encoder/decoder (default 2).")] = None,
    downsample: Annotated[Optional[int], typer.Option("--downsample", help="Stride of the bottom codes, 4 or 8 (the top codes' is twice it): 8 gives a 128px model the 64px model's 16x16 and 8x8 code maps, so its priors cost the same (default 4; with --init the source's).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=0, help="Passes over the data; 0 (with --init) keeps the source's VQ-VAE unchanged.")] = 30,
    batch_size: BatchOpt = 64,
    lr: Annotated[float, typer.Option("--lr", min=0.0, callback=finite_number("--lr"), help="Peak learning rate (AdamW, warm-up then cosine).")] = 3e-4,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9, help="Share of lesion groups held out for validation.")] = 0.1,
    restart_after: Annotated[Optional[int], typer.Option("--restart-after", min=1, help="Steps a code may go unused before it is re-seeded (default 200; with --init the source's).")] = None,
    no_augment: Annotated[bool, typer.Option("--no-augment", help="Train without flips, rotations and colour jitter.")] = False,
    loss: LossOpt = "mse",
    ssim_weight: SsimWeightOpt = None,
    gan_weight: GanWeightOpt = None,
    gan_start: GanStartOpt = None,
    decoder_only: DecoderOnlyOpt = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    strict: StrictOpt = False,
    workers: WorkersOpt = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None, class_map: ClassMapOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Train the VQ-VAE-2 (stage 1) into a new model directory.

    Fine-tuning: with --init MODEL the new model starts from MODEL's VQ-VAE. Its shape comes from MODEL (a contradicting shape option is an error); its class names are those of the new data. --epochs 0 keeps MODEL's VQ-VAE unchanged (same fingerprint) under the new classes, so that MODEL's priors fit its codes exactly.

    Example: skinaug train vqvae images/ --labels labels.csv --image-size 128 --out models/derm128

    Fine-tune: skinaug train vqvae mine/ --labels mine.csv --init ham10000-64 --epochs 3 --out models/mine

    Sharper texture, same codes and priors: skinaug train vqvae images/ --labels labels.csv --init ham10000-64 --decoder-only --loss mse+gan --epochs 4 --out models/sharp
    """
    from ..training.vqvae import TrainOptions, train_vqvae

    given = {"image_size": image_size, "levels": levels, "codebook_size": codebook_size, "code_dim": code_dim,
             "channels": channels, "res_channels": res_channels, "n_res_blocks": n_res_blocks, "restart_after": restart_after,
             "downsample": downsample}
    # only what was asked for: the rest defaults, or with --init comes from the source (and is checked against it)
    config = {key: value for key, value in given.items() if value is not None}
    options = TrainOptions(epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction, seed=seed, device=device,
                           augment=not no_augment, strict=strict, workers=workers, loss=loss, ssim_weight=ssim_weight,
                           gan_weight=gan_weight, gan_start=gan_start, decoder_only=decoder_only,
                           **columns(image_col, label_col, group_col))
    metrics = train_vqvae(data, out, labels=labels, model_config=config, options=options, resume=resume, overwrite=overwrite,
                          init=init)
    emit({"model": str(out), **metrics}, json_, out)


@app.command("prior")
def prior(
    model: Annotated[Path, typer.Option("--model", metavar="MODEL", callback=model_path, show_default=False,
                                        help="Model directory with a trained VQ-VAE (the priors are written into it).")],
    data: Annotated[Optional[Path], typer.Argument(metavar="DATA", help="Image folder to encode on the fly (instead of --codes).", show_default=False)] = None,
    codes: Annotated[Optional[Path], typer.Option("--codes", help="Code file from `skinaug encode`.")] = None,
    labels: LabelsOpt = None,
    level: Annotated[str, typer.Option("--level", **choices("top", "bottom", "both"), help="top, bottom or both.")] = "both",
    init: PriorInitOpt = None,
    arch: Annotated[Optional[str], typer.Option("--arch", **choices("pixelsnail", "gated-pixelcnn"), help="pixelsnail or gated-pixelcnn (default pixelsnail; with --init the source's).")] = None,
    classes: Annotated[str, typer.Option("--classes", help="'all', or a comma-separated list of classes to train on.")] = "all",
    unconditional: Annotated[bool, typer.Option("--unconditional", help="Ignore labels: no class conditioning.")] = False,
    epochs: Annotated[int, typer.Option("--epochs", min=0, help="Passes over the codes; 0 (with --init) copies the source's priors.")] = 20,
    batch_size: BatchOpt = 32,
    lr: Annotated[Optional[float], typer.Option("--lr", min=0.0, callback=finite_number("--lr"), show_default=False,
                                                help="Peak learning rate (AdamW, warm-up then cosine). Default: 3e-4; "
                                                     "with --init 3e-5, which keeps what the source learned.")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9)] = 0.1,
    channels: Annotated[Optional[int], typer.Option("--channels", min=8, help="Width (default: sized from the grid).")] = None,
    n_blocks: Annotated[Optional[int], typer.Option("--blocks", min=1, help="Blocks (default: sized from the grid).")] = None,
    n_res_blocks: Annotated[Optional[int], typer.Option("--res-blocks", min=1, help="Gated residual blocks per block.")] = None,
    kernel_size: Annotated[Optional[int], typer.Option("--kernel-size", min=2, help="Causal convolution kernel.")] = None,
    dropout: Annotated[Optional[float], typer.Option("--dropout", min=0.0, max=0.9, help="Dropout while training (default 0.1; with --init the source's, but it may change).")] = None,
    attention: Annotated[Optional[str], typer.Option("--attention", **choices("fixed", "legacy"), help="fixed (attention sees every earlier code, as in PixelSNAIL; default) or legacy (the priors of skinaug 0.1); with --init the source's.")] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    strict: StrictOpt = False,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None, class_map: ClassMapOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Train the autoregressive priors over the codes (stage 2): top given class, bottom given top and class.

    Fine-tuning: with --init MODEL each level starts from MODEL's prior. Its shape (arch, channels, blocks, ...) is kept (a contradicting option is an error) and its code grid must be this model's. Class embeddings are matched by name: classes MODEL's prior was trained on keep theirs, new classes get new ones.

    Best when this model's VQ-VAE is MODEL's (`train vqvae --init MODEL --epochs 0`) or was fine-tuned from it. Another VQ-VAE is allowed: its codes mean other things, but MODEL's prior is still a better start than random weights. --resume continues the checkpoint and ignores --init.

    Example: skinaug train prior --model models/derm128 --codes codes.h5 --level both

    Fine-tune: skinaug train prior --model models/mine --codes mine.h5 --init ham10000-64 --epochs 20
    """
    from ..training.prior import PriorOptions, train_priors

    from ..priors.config import ATTENTION_KINDS

    if attention is not None and attention not in ATTENTION_KINDS:
        raise UsageError(f"--attention must be fixed or legacy, not {attention}")
    overrides = {"channels": channels, "n_blocks": n_blocks, "n_res_blocks": n_res_blocks, "kernel_size": kernel_size, "dropout": dropout,
                 "attention_sees_own_code": None if attention is None else ATTENTION_KINDS[attention]}
    options = PriorOptions(arch=arch, classes=None if classes == "all" else [c.strip() for c in classes.split(",") if c.strip()],
                           unconditional=unconditional, epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction,
                           seed=seed, device=device, overrides=overrides)
    metrics = train_priors(model, codes=codes, data=data, labels=labels, level=level, options=options, resume=resume,
                           overwrite=overwrite, init=init, strict=strict, **columns(image_col, label_col, group_col))
    emit({"model": str(model), "priors": metrics}, json_, model)


def _widths(value: Optional[str]) -> Optional[tuple[int, ...]]:
    if value is None:
        return None
    try:
        widths = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise UsageError(f"--widths must be comma-separated integers, e.g. 32,64,128, not {value!r}") from None
    if not widths or min(widths) < 1:
        raise UsageError(f"--widths must be positive integers, not {value!r}")
    return widths


@app.command("baseline")
def baseline(
    data: DataArg,
    arch: Annotated[str, typer.Option("--arch", **choices("dcgan", "cvae", "vae", "msssim-vae", "vae-gan"), help="dcgan, cvae, vae, msssim-vae or vae-gan.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Model directory to create.", show_default=False)],
    labels: LabelsOpt = None,
    image_size: Annotated[int, typer.Option("--image-size", help="Side of the square training images (a multiple of 8 from 32 to 512, halved once per width; msssim-vae needs 40 or more).")] = 64,
    widths: Annotated[Optional[str], typer.Option("--widths", callback=_widths, help="Channels of the stride-2 layers, shallow to deep, e.g. 32,64,128,256,512 (default: the arch's).", show_default=False)] = None,
    latent_dim: Annotated[Optional[int], typer.Option("--latent-dim", min=1, help="Noise / latent dimension (default 100 for dcgan, 128 for the VAEs).", show_default=False)] = None,
    hidden: Annotated[Optional[int], typer.Option("--hidden", min=1, help="Width of cvae's dense layers and of vae-gan's discriminator head (default 512).", show_default=False)] = None,
    kl_weight: Annotated[Optional[float], typer.Option("--kl-weight", callback=finite_number("--kl-weight"), help="VAEs: weight of the KL term (default 0.00025).", show_default=False)] = None,
    gan_weight: Annotated[Optional[float], typer.Option("--gan-weight", callback=finite_number("--gan-weight"), help="vae-gan: weight of the adversarial term (default 0.01).", show_default=False)] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the data.")] = 30,
    batch_size: BatchOpt = 64,
    lr: Annotated[Optional[float], typer.Option("--lr", min=0.0, callback=finite_number("--lr"), show_default=False,
                                                help="Peak learning rate (Adam, warm-up then cosine). Default: the arch's "
                                                     "recipe: dcgan 2e-4, cvae 1e-3, vae and msssim-vae 5e-3, vae-gan 3e-4.")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9, help="Share of lesion groups held out for validation.")] = 0.1,
    no_augment: Annotated[bool, typer.Option("--no-augment", help="Train without flips, rotations and colour jitter.")] = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    strict: StrictOpt = False,
    workers: WorkersOpt = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None, class_map: ClassMapOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Train a baseline generator to compare with the VQ-VAE-2: the recipes of the seed reports (docs/seeds 003, 004).

    dcgan: DCGAN with resize-convolutions and one-sided label smoothing. cvae: conv + dense encoder, dense + resize-conv decoder, MSE + KL. vae: five stride-2 convolutions, mirrored decoder with Tanh, MSE + KL. msssim-vae: the vae with a 1 - MS-SSIM loss. vae-gan: the vae plus a discriminator on its reconstructions.

    Every arch is class-conditional through a learned label embedding: one model serves all classes. The model has no codes: use it with `skinaug synthesize` and `skinaug augment --methods synthesize`.

    Example: skinaug train baseline images/ --labels labels.csv --arch dcgan --image-size 64 --epochs 50 --out models/dcgan64
    """
    from ..training.baseline import BaselineOptions, train_baseline

    shape = {"image_size": image_size, "widths": widths, "latent_dim": latent_dim, "hidden": hidden,
             "kl_weight": kl_weight, "gan_weight": gan_weight}
    options = BaselineOptions(epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction, seed=seed,
                              device=device, augment=not no_augment, strict=strict, workers=workers,
                              **columns(image_col, label_col, group_col))
    metrics = train_baseline(data, out, arch=arch, labels=labels, shape=shape, options=options, resume=resume,
                             overwrite=overwrite)
    emit({"model": str(out), **metrics}, json_, out)
