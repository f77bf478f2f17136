"""`skinaug train vqvae` and `skinaug train prior`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..runtime import set_quiet
from .options import (BatchOpt, DataArg, DeviceOpt, GroupColOpt, ImageColOpt, JsonOpt, LabelColOpt, LabelsOpt,
                      OverwriteOpt, QuietOpt, ResumeOpt, SeedOpt, StrictOpt, WorkersOpt, columns, emit)

app = typer.Typer(help="Train the stages of a model.", no_args_is_help=True)


@app.command("vqvae")
def vqvae(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", help="Model directory to create.", show_default=False)],
    labels: LabelsOpt = None,
    image_size: Annotated[int, typer.Option("--image-size", help="Side of the square training images: a multiple of 8 from 32 to 512.")] = 256,
    levels: Annotated[int, typer.Option("--levels", min=1, max=2, help="1 (bottom codes only) or 2 (top and bottom).")] = 2,
    codebook_size: Annotated[int, typer.Option("--codebook-size", min=2, max=65535, help="Codes per level (K).")] = 256,
    code_dim: Annotated[int, typer.Option("--code-dim", min=1, help="Dimension of each code (D).")] = 8,
    channels: Annotated[int, typer.Option("--channels", min=8, help="Width of the encoder and decoder.")] = 128,
    res_channels: Annotated[int, typer.Option("--res-channels", min=4, help="Width inside residual blocks.")] = 32,
    res_blocks: Annotated[int, typer.Option("--res-blocks", min=0, help="Residual blocks per encoder/decoder.")] = 2,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 30,
    batch_size: BatchOpt = 64,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (AdamW, warm-up then cosine).")] = 3e-4,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9, help="Share of lesion groups held out for validation.")] = 0.1,
    restart_after: Annotated[int, typer.Option("--restart-after", min=1, help="Steps a code may go unused before it is re-seeded.")] = 200,
    no_augment: Annotated[bool, typer.Option("--no-augment", help="Train without flips, rotations and colour jitter.")] = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    strict: StrictOpt = False,
    workers: WorkersOpt = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Train the VQ-VAE-2 (stage 1) into a new model directory.

    Example: skinaug train vqvae images/ --labels labels.csv --image-size 128 --out models/derm128
    """
    set_quiet(quiet)
    from ..train_vqvae import TrainOptions, train_vqvae
    from ..vqvae import VQVAEConfig

    config = VQVAEConfig(image_size=image_size, levels=levels, codebook_size=codebook_size, code_dim=code_dim,
                         channels=channels, res_channels=res_channels, n_res_blocks=res_blocks, restart_after=restart_after)
    options = TrainOptions(epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction, seed=seed, device=device,
                           augment=not no_augment, strict=strict, workers=workers, **columns(image_col, label_col, group_col))
    metrics = train_vqvae(data, out, labels=labels, model_config=config, options=options, resume=resume, overwrite=overwrite)
    emit({"model": str(out), **metrics}, json_, out)


@app.command("prior")
def prior(
    model: Annotated[Path, typer.Option("--model", help="Model directory with a trained VQ-VAE.", show_default=False)],
    data: Annotated[Optional[Path], typer.Argument(help="Image folder to encode on the fly (instead of --codes).", show_default=False)] = None,
    codes: Annotated[Optional[Path], typer.Option("--codes", help="Code file from `skinaug encode`.")] = None,
    labels: LabelsOpt = None,
    level: Annotated[str, typer.Option("--level", help="top, bottom or both.")] = "both",
    arch: Annotated[str, typer.Option("--arch", help="pixelsnail or gated-pixelcnn.")] = "pixelsnail",
    classes: Annotated[str, typer.Option("--classes", help="'all', or a comma-separated list of classes to train on.")] = "all",
    unconditional: Annotated[bool, typer.Option("--unconditional", help="Ignore labels: no class conditioning.")] = False,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 20,
    batch_size: BatchOpt = 32,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (AdamW, warm-up then cosine).")] = 3e-4,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9)] = 0.1,
    channels: Annotated[Optional[int], typer.Option("--channels", min=8, help="Width (default: sized from the grid).")] = None,
    blocks: Annotated[Optional[int], typer.Option("--blocks", min=1, help="Blocks (default: sized from the grid).")] = None,
    res_blocks: Annotated[Optional[int], typer.Option("--res-blocks", min=1, help="Gated residual blocks per block.")] = None,
    kernel_size: Annotated[Optional[int], typer.Option("--kernel-size", min=2, help="Causal convolution kernel.")] = None,
    dropout: Annotated[Optional[float], typer.Option("--dropout", min=0.0, max=0.9)] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    strict: StrictOpt = False,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Train the autoregressive priors over the codes (stage 2): top given class, bottom given top and class.

    Example: skinaug train prior --model models/derm128 --codes codes.h5 --level both
    """
    set_quiet(quiet)
    from ..train_prior import PriorOptions, train_priors

    overrides = {"channels": channels, "n_blocks": blocks, "n_res_blocks": res_blocks, "kernel_size": kernel_size, "dropout": dropout}
    options = PriorOptions(arch=arch, classes=None if classes == "all" else [c.strip() for c in classes.split(",") if c.strip()],
                           unconditional=unconditional, epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction,
                           seed=seed, device=device, overrides=overrides)
    metrics = train_priors(model, codes=codes, data=data, labels=labels, level=level, options=options, resume=resume,
                           overwrite=overwrite, strict=strict, **columns(image_col, label_col, group_col))
    emit({"model": str(model), "priors": metrics}, json_, model)
