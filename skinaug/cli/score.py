"""`skinaug score cas | codes | sweep | fid | memorization`: thin shells over `skinaug.scores`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .generate import TemperatureOpt, TopKOpt
from .options import (ClassMapOpt, BatchOpt, DataArg, DeviceOpt, choices, GroupColOpt, ImageColOpt, JsonOpt, LabelColOpt, LabelsOpt,
                      OverwriteOpt, QuietOpt, ResumeOpt, SeedOpt, StrictOpt, WorkersOpt, columns, emit, finite_number,
                      optional_model)

app = typer.Typer(help="Judge a model and its generated datasets: CAS, benefit, code usage, FID, memorization.", no_args_is_help=True)

ArchOpt = Annotated[str, typer.Option("--arch", **choices("efficientnet-b0", "resnet10", "resnet18"), help="Classifier: efficientnet-b0 (the paper's), resnet10 or resnet18 (MONAI).")]
ClassifierImageSizeOpt = Annotated[int, typer.Option("--image-size", min=16, help="Side of the square images the classifier sees.")]
EpochsOpt = Annotated[int, typer.Option("--epochs", min=1, help="Classifier budget in passes over the real training images (the same number of steps for every set).")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", min=1, help="Classifier budget in optimizer steps (overrides --epochs).")]
LrOpt = Annotated[float, typer.Option("--lr", min=0.0, callback=finite_number("--lr"), help="Classifier peak learning rate (AdamW, warm-up then cosine).")]
WeightsOpt = Annotated[Optional[Path], typer.Option("--weights", help="Local pretrained backbone weights (.safetensors, or a torch file read with weights_only=True). Nothing is downloaded.")]
OutDirOpt = Annotated[Optional[Path], typer.Option("--out", help="Folder for the detailed results.")]
GenArg = Annotated[Path, typer.Argument(metavar="GEN_DIR", help="Generated images: an OUT_DIR (its images/) or an image folder.", show_default=False)]
SetsArg = Annotated[str, typer.Argument(metavar="GEN_DIR[+GEN_DIR...]", help="Generated images: an OUT_DIR (its images/) or an image folder; several joined by + are one set (A+B).", show_default=False)]
RealArg = Annotated[Path, typer.Argument(metavar="REAL_DIR", help="Real images: an image folder or an OUT_DIR.", show_default=False)]


def _budget(arch: str, image_size: int, batch_size: int, lr: float):
    from ..scores.classifier import Budget

    return Budget(arch=arch, image_size=image_size, batch_size=batch_size, lr=lr)


@app.command("cas")
def cas(
    real: Annotated[Path, typer.Option("--real", help="Real image folder (split by lesion into train and test; with --test, all of it trains).", show_default=False)],
    train: Annotated[str, typer.Option("--train", help="Comma-separated training sets: 'real', a generated OUT_DIR, or OUT_DIRs joined with '+' (one set).", show_default=False)],
    labels: LabelsOpt = None,
    positive: Annotated[Optional[str], typer.Option("--positive", help="Positive class (e.g. melanoma); omit both for all classes.")] = None,
    negative: Annotated[Optional[str], typer.Option("--negative", help="Negative class (e.g. nevus).")] = None,
    mode: Annotated[str, typer.Option("--mode", **choices("replace", "add"), help="replace: train on the set alone (the paper's); add: real train split + the set.")] = "replace",
    test: Annotated[Optional[Path], typer.Option("--test", help="External test images (folder or OUT_DIR): all of --real then trains.")] = None,
    test_labels: Annotated[Optional[Path], typer.Option("--test-labels", help="Labels CSV of --test (else its class sub-folders).")] = None,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Share of the real data held out for testing (by lesion; without --test).")] = 0.2,
    real_fraction: Annotated[float, typer.Option("--real-fraction", help="Share of the real train split used (low-data regime).")] = 1.0,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Classifiers per set (seeds --seed, --seed+1, ...): mean and std.")] = 1,
    arch: ArchOpt = "efficientnet-b0",
    image_size: ClassifierImageSizeOpt = 64,
    epochs: EpochsOpt = 3,
    steps: StepsOpt = None,
    batch_size: BatchOpt = 32,
    lr: LrOpt = 1e-3,
    weights: WeightsOpt = None,
    out: OutDirOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse a set made from test images or by a generator that saw them (or whose training images are unknown), and unreadable inputs.")] = False,
    workers: WorkersOpt = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None, class_map: ClassMapOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Classification accuracy score: train a classifier on each set, AUC on real held-out images (Table 3).

    Example: skinaug score cas --real images/ --labels labels.csv --train real,recon/,mixed/ --positive melanoma --negative nevus --out cas/
    """
    from ..scores.cas import CasOptions, print_cas_table, run_cas

    options = CasOptions(positive=positive, negative=negative, mode=mode, test_fraction=test_fraction, real_fraction=real_fraction,
                         seeds=seeds, seed=seed, epochs=epochs, steps=steps, budget=_budget(arch, image_size, batch_size, lr),
                         device=device, weights=str(weights) if weights else None, strict=strict, workers=workers,
                         columns=columns(image_col, label_col, group_col), test=str(test) if test else None,
                         test_labels=str(test_labels) if test_labels else None)
    specs = [spec.strip() for spec in train.split(",") if spec.strip()]
    summary = run_cas(real, labels, specs, options, out=out, overwrite=overwrite)
    if not quiet:
        print_cas_table(summary)
    emit(summary, json_, out)


@app.command("benefit")
def benefit(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", help="Benefit folder: split, generator, generated sets, classifier results, benefit.json and benefit.png.", show_default=False)],
    labels: LabelsOpt = None,
    model: Annotated[Optional[Path], typer.Option("--model", metavar="MODEL", help="A generator to use instead of training one on the train side: a VQ-VAE-2 model, or a baseline (train baseline) for synthesize and classic; refused if its trained_on.json shows it saw a test image or lesion.")] = None,
    fractions: Annotated[str, typer.Option("--fractions", help="Shares of the real train side (by lesion), comma-separated.")] = "0.1,1.0",
    methods: Annotated[str, typer.Option("--methods", help="Added images: classic (albumentations copies), mix, resample, synthesize.")] = "classic,mix,resample,synthesize",
    ratio: Annotated[float, typer.Option("--ratio", callback=finite_number("--ratio", positive=True), help="Added images per real image, in every class (the same share everywhere).")] = 1.0,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Classifiers per (fraction, method): seeds --seed, --seed+1, ...")] = 3,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Share of the lesions held out for testing.")] = 0.2,
    positive: Annotated[Optional[str], typer.Option("--positive", help="Class of the pairwise AUC (default melanoma, when present).")] = None,
    negative: Annotated[Optional[str], typer.Option("--negative", help="Other class of the pairwise AUC (default nevus).")] = None,
    arch: ArchOpt = "efficientnet-b0",
    image_size: ClassifierImageSizeOpt = 64,
    epochs: EpochsOpt = 3,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Classifier budget in optimizer steps, the same for every fraction (overrides --epochs).")] = None,
    batch_size: BatchOpt = 32,
    lr: LrOpt = 1e-3,
    weights: WeightsOpt = None,
    temperature: TemperatureOpt = 1.0,
    top_k: TopKOpt = None,
    generator_epochs: Annotated[str, typer.Option("--generator-epochs", help="Epochs of the generator trained without --model: VQ-VAE,top prior,bottom prior.")] = "16,14,10",
    generator_image_size: Annotated[int, typer.Option("--generator-image-size", help="Image side of the generator trained without --model.")] = 64,
    filter_: Annotated[Optional[float], typer.Option("--filter", help="Keep generated images that a classifier of the fraction's real images gives p(label) >= P (of --oversample x candidates; the best-scored fill a class up when too few pass).")] = None,
    oversample: Annotated[float, typer.Option("--oversample", help="With --filter: candidates generated per image kept.")] = 2.0,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Bootstrap replicates over test lesions for the gain's interval and MDE (0: none).")] = 1000,
    train_recipe: Annotated[str, typer.Option("--recipe", help="How classifiers use the added images: add (one pool), exposure (the real arm's batches plus --ratio x batch added images, loss weight --synthetic-weight), pretrain (the budget on the added images, then the real arm's batches).")] = "add",
    synthetic_weight: Annotated[Optional[float], typer.Option("--synthetic-weight", help="With --recipe exposure: the added images' loss weight (real 1).  [default: 0.5]")] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    workers: WorkersOpt = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None, class_map: ClassMapOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Does adding generated images to real ones help a classifier? Leak-free: split by lesion, generator on the train side.

    Example: skinaug score benefit images/ --labels labels.csv --out benefit/ --fractions 0.1,1.0 --seeds 3
    """
    from ..studies.benefit import BenefitOptions, print_benefit_table, run_benefit

    shares = _fractions(fractions)  # checked first, as before
    recipe = _generator_recipe(generator_epochs, generator_image_size)
    options = BenefitOptions(fractions=shares, methods=[m.strip() for m in methods.split(",") if m.strip()], ratio=ratio,
                             seeds=seeds, seed=seed, test_fraction=test_fraction, positive=positive, negative=negative,
                             epochs=epochs, steps=steps, budget=_budget(arch, image_size, batch_size, lr), temperature=temperature, top_k=top_k,
                             bootstrap=bootstrap, filter=filter_, oversample=oversample, device=device, weights=str(weights) if weights else None, workers=workers,
                             columns=columns(image_col, label_col, group_col), recipe=recipe, train_recipe=train_recipe,
                             synthetic_weight=synthetic_weight)
    summary = run_benefit(data, labels, out, options, model=model, resume=resume, overwrite=overwrite)
    if not quiet:
        print_benefit_table(summary)
    emit(summary, json_, out)


def _fractions(text: str) -> list[float]:
    from ..errors import UsageError

    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--fractions takes comma-separated shares, e.g. 0.1,1.0; got {text!r}") from None


def _generator_recipe(generator_epochs: str, image_size: int):
    """--generator-epochs VQ-VAE,top,bottom and --generator-image-size as the study's GeneratorRecipe."""
    from ..errors import UsageError
    from ..studies.benefit import GeneratorRecipe

    try:
        stages = [int(part) for part in generator_epochs.split(",")]
    except ValueError:
        stages = []
    if len(stages) != 3 or min(stages) < 1:
        raise UsageError(f"--generator-epochs takes three positive integers (VQ-VAE,top,bottom), e.g. 16,14,10; got {generator_epochs!r}")
    return GeneratorRecipe(image_size=image_size, vqvae_epochs=stages[0], top_epochs=stages[1], bottom_epochs=stages[2])


def _int_list(text: str, option: str) -> list[int]:
    from ..errors import UsageError

    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers, e.g. 128,256,512; got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{option} takes positive integers, got {text!r}")
    return list(dict.fromkeys(values))


@app.command("codes")
def codes(
    codes_path: Annotated[Path, typer.Argument(metavar="CODES", help="Code file (CODES.h5).", show_default=False)],
    model: Annotated[Optional[Path], typer.Option("--model", metavar="MODEL", callback=optional_model, help="Model directory or shipped model name, for the reconstruction MSE (with --data).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Image folder to reconstruct for the MSE (with --model).")] = None,
    labels: LabelsOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    strict: StrictOpt = False,
    workers: WorkersOpt = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None, class_map: ClassMapOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Table 2 columns of a code file: used codes per level, co-occurring pairs, and MSE given --model and --data.

    Example: skinaug score codes codes.h5 --model models/derm64 --data images/ --labels labels.csv
    """
    from ..scores.code_usage import score_codes
    from .encode_decode import print_code_table

    stats = score_codes(codes_path, model=model, data=data, labels=labels, device=device, batch_size=batch_size,
                        strict=strict, workers=workers, **columns(image_col, label_col, group_col))
    if not json_:  # no output file: the table is the result, on stdout as `skinaug models` prints its own
        print_code_table(stats, stats["codebook_size"], file=sys.stdout)
        return
    if not quiet:  # beside the JSON, the table for a reader, on stderr
        print_code_table(stats, stats["codebook_size"])
    emit(stats, json_, None)


@app.command("sweep")
def sweep(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", help="Sweep folder: one model per configuration, sweep.csv and sweep.json.", show_default=False)],
    labels: LabelsOpt = None,
    codebook_size: Annotated[str, typer.Option("--codebook-size", help="Codebook sizes K to try, comma-separated.")] = "128,256,512",
    code_dim: Annotated[str, typer.Option("--code-dim", help="Code dimensions D to try, comma-separated.")] = "8,32,64",
    image_size: Annotated[int, typer.Option("--image-size", help="Training image side: a multiple of 8 from 32 to 512.")] = 64,
    levels: Annotated[int, typer.Option("--levels", min=1, max=2, help="1 (bottom codes only) or 2 (top and bottom).")] = 2,
    channels: Annotated[int, typer.Option("--channels", min=8, help="Width of the encoder and decoder.")] = 128,
    res_channels: Annotated[int, typer.Option("--res-channels", min=4, help="Width inside residual blocks.")] = 32,
    res_blocks: Annotated[int, typer.Option("--res-blocks", min=0, help="Residual blocks per encoder/decoder.")] = 2,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs per configuration.")] = 10,
    batch_size: BatchOpt = 64,
    lr: Annotated[float, typer.Option("--lr", min=0.0, callback=finite_number("--lr"), help="Peak learning rate (AdamW, warm-up then cosine).")] = 3e-4,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start the sweep folder again (a rerun otherwise continues it).")] = False,
    strict: StrictOpt = False,
    workers: WorkersOpt = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None, class_map: ClassMapOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Train one VQ-VAE per (codebook size, code dimension), encode the data, tabulate Table 2. Rerun to continue.

    Example: skinaug score sweep images/ --labels labels.csv --codebook-size 128,256,512 --code-dim 8,32,64 --out sweep/
    """
    from ..studies.sweep import print_sweep_table, run_sweep
    from ..training.vqvae import TrainOptions
    from ..vqvae.model import VQVAEConfig

    sizes, dims = _int_list(codebook_size, "--codebook-size"), _int_list(code_dim, "--code-dim")
    base = VQVAEConfig(image_size=image_size, levels=levels, channels=channels, res_channels=res_channels, n_res_blocks=res_blocks)
    options = TrainOptions(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, strict=strict, workers=workers,
                           **columns(image_col, label_col, group_col))
    rows = run_sweep(data, out, labels=labels, codebook_sizes=sizes, code_dims=dims, base=base, options=options, overwrite=overwrite)
    if not quiet:
        print_sweep_table(rows)
    emit({"out": str(out), "rows": rows}, json_, out)


@app.command("fid")
def fid(
    generated: SetsArg,
    real: RealArg,
    features: Annotated[str, typer.Option("--features", **choices("inception", "classifier"), help="inception (the standard FID, needs --inception-weights) or classifier (a classifier trained on the real labels).")] = "inception",
    inception_weights: Annotated[Optional[Path], typer.Option("--inception-weights", help="Local pt_inception-2015-12-05-6726825d.pth (default: the torch hub cache). Nothing is downloaded.")] = None,
    real_labels: Annotated[Optional[Path], typer.Option("--labels", help="Labels of REAL_DIR for --features classifier (else its class sub-folders or its labels.csv).")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", min=16, help="Both sets are decoded at this side first (default: the generated images').")] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Neighbours for the precision/recall manifolds.")] = 3,
    arch: ArchOpt = "efficientnet-b0",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Feature classifier budget in passes over the real images.")] = 3,
    lr: LrOpt = 1e-3,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 32,
    seed: SeedOpt = 0,
    strict: StrictOpt = False,
    workers: WorkersOpt = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None, class_map: ClassMapOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Fréchet distance and KID of GEN_DIR (or GEN_DIR+GEN_DIR...) to REAL_DIR (Inception or classifier features), with k-NN precision and recall.

    Example: skinaug score fid mixed/ images/ --inception-weights pt_inception-2015-12-05-6726825d.pth
    """
    from ..scores.fid import compute_fid
    from ..scores.options import ScoreOptions

    options = ScoreOptions(real_labels=real_labels, columns=columns(image_col, label_col, group_col), device=device,
                           budget=_budget(arch, 64, batch_size, lr), epochs=epochs, seed=seed, strict=strict, workers=workers)
    result = compute_fid(generated, real, features=features, inception_weights=inception_weights, image_size=image_size,
                         k=k, batch_size=batch_size, options=options)
    if not quiet:
        _print_fid(result)
    emit(result, json_, None)
    if not json_:
        print(f"{result['frechet_distance']:.4f}")


def _print_fid(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    name = "FID" if result["features"] == "inception" else "Fréchet distance (classifier features)"
    table = Table(title=f"{result['generated']} vs {result['real']} at {result['image_size']}px")
    for column in (name, f"KID (subsets of {result['kid_subset_size']})", f"precision (k={result['k']})", f"recall (k={result['k']})",
                   "generated", "real"):
        table.add_column(column, justify="right")
    table.add_row(f"{result['frechet_distance']:.3f}", f"{result['kid']:.5f} ± {result['kid_std']:.5f}",
                  f"{result['precision']:.3f}", f"{result['recall']:.3f}",
                  f"{result['generated_images']:,}", f"{result['real_images']:,}")
    Console(file=sys.stderr, width=None if sys.stderr.isatty() else 140).print(table)


@app.command("memorization")
def memorization(
    generated: GenArg,
    real: RealArg,
    out: OutDirOpt = None,
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, help="Flag generated images whose RMS pixel distance (on [0, 1]) to a real image is at most this.")] = 0.02,
    feature_threshold: Annotated[Optional[float], typer.Option("--feature-threshold", min=0.0, help="Also flag those whose feature (cosine) distance is at most this.")] = None,
    size: Annotated[int, typer.Option("--size", min=8, help="Side at which pixels are compared.")] = 32,
    embedding: Annotated[str, typer.Option("--embedding", help="fixed (thumbnail, flip/rotation-invariant) or classifier (trained on the real labels).")] = "fixed",
    real_labels: Annotated[Optional[Path], typer.Option("--labels", help="Labels of REAL_DIR for --embedding classifier.")] = None,
    pairs: Annotated[int, typer.Option("--pairs", min=1, help="Closest pairs drawn in closest_pairs.png.")] = 16,
    arch: ArchOpt = "efficientnet-b0",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Embedding classifier budget in passes over the real images.")] = 3,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 32,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
    strict: StrictOpt = False,
    workers: WorkersOpt = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None, class_map: ClassMapOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Each generated image's nearest real image; near-copies flagged; closest pairs drawn side by side.

    Example: skinaug score memorization synth/ images/ --out memo/ --threshold 0.02
    """
    from ..scores.memorization import check_memorization
    from ..scores.options import ScoreOptions

    options = ScoreOptions(real_labels=real_labels, columns=columns(image_col, label_col, group_col), device=device,
                           budget=_budget(arch, size, batch_size, 1e-3), epochs=epochs, seed=seed, strict=strict,
                           workers=workers)
    summary = check_memorization(generated, real, out=out, threshold=threshold, feature_threshold=feature_threshold,
                                 size=size, embedding=embedding, pairs=pairs, overwrite=overwrite, options=options)
    if not quiet:
        from rich.console import Console

        Console(file=sys.stderr).print(
            f"{summary['flagged']} of {summary['generated_images']} generated images flagged as near-copies "
            f"(pixel RMS <= {threshold}); pixel distance min {summary['pixel_distance']['min']:.4f}, "
            f"median {summary['pixel_distance']['median']:.4f}; nearest real image is the source for {summary['nearest_is_source']}")
    emit(summary, json_, out)
