"""`skinaug mix`, `resample`, `synthesize` and `augment`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from .options import (BackendOpt, BatchOpt, ClassMapOpt, DeviceOpt, FormatOpt, GroupColOpt, ImageColOpt, JsonOpt, JsonlOpt,
                      LabelColOpt, LabelsOpt, Layout, LayoutOpt, ModelOpt, OutputSizeOpt, OverwriteOpt, QualityOpt,
                      QuietOpt, ResumeOpt, SeedOpt, StrictOpt, choices, columns, emit, finite_number)

SourceArg = Annotated[Optional[Path], typer.Argument(metavar="DATA", help="Image folder (or use --codes).", show_default=False)]
CodesOpt = Annotated[Optional[Path], typer.Option("--codes", help="Code file from `skinaug encode` (instead of DATA).")]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder: images/, labels.csv, codes.h5, run.json.", show_default=False)]
TemperatureOpt = Annotated[float, typer.Option("--temperature", callback=finite_number("--temperature", positive=True),
                                                help="Sampling temperature (lower: closer to the most likely codes).")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", min=1, help="Sample only among the k most likely codes.")]
BF16Opt = Annotated[bool, typer.Option("--bf16", help="Sample in bfloat16 on CUDA (faster; logits differ slightly from fp32).")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the sampling step (CUDA: faster steps after ~2 min of compilation; for large runs).")]
SamplerOpt = Annotated[str, typer.Option("--sampler", **choices("fast", "reference"), help="fast (cached: the reference's distribution, its codes up to float rounding) or reference (one full forward per code: slow, for checks).")]


def _at_least(flag: str, minimum: int):
    """A callback for an int option: below `minimum` is a one-line usage error (typer's min= prints a usage box)."""

    def check(value: Optional[int]) -> Optional[int]:
        if value is not None and value < minimum:
            raise UsageError(f"{flag} must be at least {minimum}, not {value}")
        return value

    return check


MaskDirOpt = Annotated[Optional[Path], typer.Option(
    "--mask-dir", help="Resample only inside each image's lesion mask DIR/<image>.png. Drawn in raster order, a masked "
                       "code cannot see the kept codes below or right of it, so seams can show at the mask's lower "
                       "and right edges: --refine N re-draws the masked codes given all their neighbours.")]
RefineOpt = Annotated[int, typer.Option(
    "--refine", callback=_at_least("--refine", 0),
    help="Gibbs sweeps after the draw (with --mask-dir): each masked code re-drawn given every other code. "
         "A sweep costs one batched prior forward per masked position (0: none, the raster draw as it is).")]
RefineCandidatesOpt = Annotated[Optional[int], typer.Option(
    "--refine-candidates", callback=_at_least("--refine-candidates", 1), show_default=False,
    help="Codes weighed per masked position by --refine (default 32): the likeliest of its raster conditional; "
         "the codebook size or more: all codes, the exact conditional.")]

IterativeOpt = Annotated[Optional[int], typer.Option(
    "--iterative", metavar="STEPS", callback=_at_least("--iterative", 1), show_default=False,
    help="Iterative inpainting: STEPS times, re-draw one square box of bottom codes given all the others (with "
         "--refine N: then N Gibbs sweeps over the box), placing each box where cells were re-drawn least so far; "
         "decode once at the end. The boxes of every image go to OUT_DIR/boxes.jsonl. Not with --mask-dir "
         "or --backend onnx.")]
BoxSizeOpt = Annotated[Optional[int], typer.Option(
    "--box-size", show_default=False,
    help="With --iterative: the box's side in bottom-grid cells (a 64px model's grid is 16x16, so 4 cells are 16 "
         "pixels); default a quarter of the grid's side. Large boxes lose the context, small ones only blur.")]
BoxScheduleOpt = Annotated[Optional[str], typer.Option(
    "--box-schedule", show_default=False,
    help="With --iterative: constant (--box-size every step, the default), shrink (from --box-size down to half "
         "of it: coarse changes first), or one size per step, e.g. 8,8,6,6,4.")]
IterativeLevelsOpt = Annotated[Optional[str], typer.Option(
    "--iterative-levels", show_default=False, **choices("bottom", "both"),
    help="With --iterative: bottom (default) re-draws bottom codes only; both first re-draws the top codes over "
         "the box, then the bottom box given them (larger changes).")]


def check_outputs(as_json: bool, jsonl: bool) -> None:
    if as_json and jsonl:
        raise UsageError("--json and --jsonl both write stdout: choose one")


def finish(summary: dict, as_json: bool, out: Path, jsonl: bool = False) -> None:
    if not jsonl:  # with --jsonl, stdout holds only the image lines
        emit(summary, as_json, out)


app = typer.Typer()


@app.command("mix")
def mix(
    out: OutOpt,
    n: Annotated[int, typer.Option("-n", "--count", min=1, help="Images to make.", show_default=False)],
    model: ModelOpt = None,
    data: SourceArg = None,
    codes: CodesOpt = None,
    labels: LabelsOpt = None,
    class_name: Annotated[Optional[str], typer.Option("--class", help="Mix only images of this class.")] = None,
    any_label: Annotated[bool, typer.Option("--any-label", help="Allow the two sources to have different labels (the top's label is kept).")] = False,
    device: DeviceOpt = "auto", backend: BackendOpt = None, seed: SeedOpt = 0, batch_size: BatchOpt = 64,
    image_format: FormatOpt = "png", quality: QualityOpt = 95,
    layout: LayoutOpt = Layout.images, image_size: OutputSizeOpt = None,
    overwrite: OverwriteOpt = False, resume: ResumeOpt = False, strict: StrictOpt = False,
    image_col: ImageColOpt = None, label_col: LabelColOpt = None, group_col: GroupColOpt = None, class_map: ClassMapOpt = None,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, quiet: QuietOpt = False,
):
    """Top codes of one image with the bottom codes of another of the same label.

    Example: skinaug mix images/ --labels labels.csv --model models/derm64 --out mixed/ -n 500
    """
    check_outputs(json_, jsonl)
    from ..generation import commands as generate
    from ..generation.sampler import InputOptions, OutputOptions, RunOptions

    summary = generate.mix(
        out, n, model=model, class_name=class_name, any_label=any_label,
        inputs=InputOptions(data=data, codes=codes, labels=labels, strict=strict,
                            columns=columns(image_col, label_col, group_col)),
        run=RunOptions(device=device, backend=backend, seed=seed, batch_size=batch_size),
        output=OutputOptions(overwrite=overwrite, resume=resume, image_format=image_format, quality=quality,
                             jsonl=jsonl, layout=layout, image_size=image_size))
    finish(summary, json_, out, jsonl)


@app.command("resample")
def resample(
    out: OutOpt,
    model: ModelOpt = None,
    data: SourceArg = None,
    codes: CodesOpt = None,
    labels: LabelsOpt = None,
    per_image: Annotated[int, typer.Option("--per-image", min=1, help="Variants per source image.")] = 1,
    temperature: TemperatureOpt = 1.0,
    top_k: TopKOpt = None,
    method: Annotated[str, typer.Option("--method", **choices("resample", "rand-bottom", "rand-top"), help="resample, or a baseline: rand-bottom | rand-top (uniformly random codes in one level).")] = "resample",
    mask_dir: MaskDirOpt = None,
    refine: RefineOpt = 0,
    refine_candidates: RefineCandidatesOpt = None,
    iterative: IterativeOpt = None, box_size: BoxSizeOpt = None, box_schedule: BoxScheduleOpt = None,
    iterative_levels: IterativeLevelsOpt = None,
    class_name: Annotated[Optional[str], typer.Option("--class", help="Only images of this class.")] = None,
    device: DeviceOpt = "auto", backend: BackendOpt = None, seed: SeedOpt = 0, batch_size: BatchOpt = 64, bf16: BF16Opt = False,
    sampler: SamplerOpt = "fast", compile_step: CompileOpt = False,
    image_format: FormatOpt = "png", quality: QualityOpt = 95,
    layout: LayoutOpt = Layout.images, image_size: OutputSizeOpt = None,
    overwrite: OverwriteOpt = False, resume: ResumeOpt = False, strict: StrictOpt = False,
    image_col: ImageColOpt = None, label_col: LabelColOpt = None, group_col: GroupColOpt = None, class_map: ClassMapOpt = None,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, quiet: QuietOpt = False,
):
    """Keep each image's top codes and draw its bottom codes again from the bottom prior.

    With --iterative STEPS, only one box of codes is re-drawn at a time, STEPS times (iterative inpainting):
    the image changes step by step while the rest of it holds the content.

    Example: skinaug resample images/ --labels labels.csv --model models/derm64 --out resampled/ --per-image 2 --temperature 0.9

    Example: skinaug resample images/ --labels labels.csv --out inpainted/ --iterative 10 --box-size 4 --refine 1
    """
    check_outputs(json_, jsonl)
    from ..generation import commands as generate
    from ..generation.iterative import iterative_request
    from ..generation.sampler import InputOptions, OutputOptions, RunOptions, SamplingOptions

    request = iterative_request(iterative, box_size, box_schedule, iterative_levels, method=method, mask_dir=mask_dir,
                                backend=backend)
    summary = generate.resample(
        out, model=model, per_image=per_image, method=method, iterative=request, class_name=class_name,
        inputs=InputOptions(data=data, codes=codes, labels=labels, masks=mask_dir, strict=strict,
                            columns=columns(image_col, label_col, group_col)),
        run=RunOptions(device=device, backend=backend, seed=seed, batch_size=batch_size, bf16=bf16,
                       compile_step=compile_step),
        sampling=SamplingOptions(temperature=temperature, top_k=top_k, sampler=sampler, refine=refine,
                                 refine_candidates=refine_candidates),
        output=OutputOptions(overwrite=overwrite, resume=resume, image_format=image_format, quality=quality,
                             jsonl=jsonl, layout=layout, image_size=image_size))
    finish(summary, json_, out, jsonl)


@app.command("synthesize")
def synthesize(
    out: OutOpt,
    model: ModelOpt = None,
    class_name: Annotated[Optional[str], typer.Option("--class", help="Class to synthesize (with -n).")] = None,
    n: Annotated[Optional[int], typer.Option("-n", "--count", min=1, help="Images of --class to make.")] = None,
    per_class: Annotated[Optional[int], typer.Option("--per-class", min=1, help="Images to make for every class.")] = None,
    temperature: TemperatureOpt = 1.0,
    top_k: TopKOpt = None,
    device: DeviceOpt = "auto", backend: BackendOpt = None, seed: SeedOpt = 0, batch_size: BatchOpt = 64, bf16: BF16Opt = False,
    sampler: SamplerOpt = "fast", compile_step: CompileOpt = False,
    image_format: FormatOpt = "png", quality: QualityOpt = 95,
    layout: LayoutOpt = Layout.images, image_size: OutputSizeOpt = None,
    overwrite: OverwriteOpt = False, resume: ResumeOpt = False,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, quiet: QuietOpt = False,
):
    """Sample top codes for a class, then bottom codes given them, and decode: new images.

    With a baseline generator as --model (`skinaug train baseline`): its images from noise, --temperature scaling the noise's standard deviation; the OUT_DIR has no codes.h5.

    Example: skinaug synthesize --model models/derm64 --out synth/ --class melanoma -n 2000
    """
    check_outputs(json_, jsonl)
    from ..generation import commands as generate
    from ..generation.sampler import OutputOptions, RunOptions, SamplingOptions

    summary = generate.synthesize(
        out, model=model, class_name=class_name, n=n, per_class=per_class,
        run=RunOptions(device=device, backend=backend, seed=seed, batch_size=batch_size, bf16=bf16,
                       compile_step=compile_step),
        sampling=SamplingOptions(temperature=temperature, top_k=top_k, sampler=sampler),
        output=OutputOptions(overwrite=overwrite, resume=resume, image_format=image_format, quality=quality,
                             jsonl=jsonl, layout=layout, image_size=image_size))
    finish(summary, json_, out, jsonl)


@app.command("augment")
def augment(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Labelled image folder to expand.", show_default=False)],
    out: OutOpt,
    model: ModelOpt = None,
    labels: LabelsOpt = None,
    factor: Annotated[Optional[float], typer.Option("--factor", callback=finite_number("--factor", positive=True),
                                                    help="Make the output F times the size of the input (per class).")] = None,
    balance: Annotated[bool, typer.Option("--balance", help="Bring every class up to the largest one with generated images. The smaller classes then hold a larger "
                  "generated share than the largest (warned): a classifier can learn 'generated' as their cue. --factor gives "
                  "every class the same share.")] = False,
    methods: Annotated[str, typer.Option("--methods", help="Methods with optional weights, e.g. mix:1,resample:2,synthesize:1; classic: albumentations copies of the inputs (the baseline).")] = "mix,resample,synthesize",
    classic_config: Annotated[Optional[Path], typer.Option("--classic-config", help="Your own albumentations pipeline for classic (a file A.save wrote, yaml or json).")] = None,
    no_originals: Annotated[bool, typer.Option("--no-originals", help="Leave the input images out of the output.")] = False,
    keep_originals: Annotated[bool, typer.Option("--keep-originals", help="Copy the originals byte for byte, at their own size and format, instead of resizing them to the output's one size (the folder is then one size only if they already are). Copies are reflinks, which cost no space, where the file system offers them.")] = False,
    link_originals: Annotated[bool, typer.Option("--link-originals", help="Hard-link the originals to the input files, byte for byte as --keep-originals: no extra space, but each is then the same file as its input, so editing or deleting its content in OUT_DIR does so to your input too.")] = False,
    copy_originals: Annotated[bool, typer.Option("--copy-originals", hidden=True, help="An earlier name of --keep-originals; kept for old scripts.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (images per class and method) and stop.")] = False,
    temperature: TemperatureOpt = 1.0,
    top_k: TopKOpt = None,
    device: DeviceOpt = "auto", backend: BackendOpt = None, seed: SeedOpt = 0, batch_size: BatchOpt = 64, bf16: BF16Opt = False, compile_step: CompileOpt = False,
    image_format: FormatOpt = "png", quality: QualityOpt = 95,
    layout: LayoutOpt = Layout.images, image_size: OutputSizeOpt = None,
    overwrite: OverwriteOpt = False, resume: ResumeOpt = False, strict: StrictOpt = False,
    image_col: ImageColOpt = None, label_col: LabelColOpt = None, group_col: GroupColOpt = None, class_map: ClassMapOpt = None,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, quiet: QuietOpt = False,
):
    """Expand a labelled folder into a training-ready one: originals plus generated images, all of one size.

    Every image of OUT_DIR is written at the model's image size (or --image-size S) in --format: the originals are read
    as every command reads images (EXIF-rotated, RGB, the shorter side scaled with LANCZOS, centre-cropped when not
    square), the generated ones decoded and resized. --keep-originals (or --link-originals) keeps the originals
    byte for byte instead.

    With a baseline generator as --model (`skinaug train baseline`): --methods synthesize (classic may be added); the OUT_DIR has no codes.h5.

    Example: skinaug augment images/ --labels labels.csv --model models/derm64 --out train_aug/ --factor 2
    """
    check_outputs(json_, jsonl)
    from ..generation import commands as generate
    from ..generation.sampler import InputOptions, OutputOptions, RunOptions, SamplingOptions

    summary = generate.augment(
        data, out, model=model, factor=factor, balance=balance, methods=methods,
        inputs=InputOptions(labels=labels, classic_config=classic_config, strict=strict,
                            columns=columns(image_col, label_col, group_col)),
        run=RunOptions(device=device, backend=backend, seed=seed, batch_size=batch_size, bf16=bf16,
                       compile_step=compile_step),
        sampling=SamplingOptions(temperature=temperature, top_k=top_k),
        output=OutputOptions(overwrite=overwrite, resume=resume, image_format=image_format, quality=quality,
                             jsonl=jsonl, layout=layout, dry_run=dry_run, image_size=image_size,
                             originals=generate.originals_policy(no_originals, link_originals, copy_originals,
                                                                 keep_originals)))
    if dry_run:  # the plan is the result: the --json summary, else its table, on stdout
        if json_:
            emit(summary, True)
        else:
            _print_plan(summary["plan"])
        return
    finish(summary, json_, out, jsonl)


def _print_plan(table: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    view = Table(title="augment plan (images per class)")
    columns_ = list(next(iter(table.values())))  # originals, each method of --methods, total
    view.add_column("class")
    for column in columns_:
        view.add_column(column, justify="right")
    for name, row in table.items():
        view.add_row(name, *(str(row.get(column, 0)) for column in columns_))
    Console(file=sys.stdout).print(view)
