"""`skinaug encode` and `skinaug decode`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .options import (BackendOpt, BatchOpt, ClassMapOpt, DataArg, DeviceOpt, FormatOpt, GroupColOpt, ImageColOpt, JsonOpt,
                      JsonlOpt, LabelColOpt, LabelsOpt, Layout, LayoutOpt, ModelOpt, OutputSizeOpt, OverwriteOpt,
                      QualityOpt, QuietOpt, ResumeOpt, StrictOpt, WorkersOpt, columns, emit)


def print_code_table(stats: dict, codebook_size: int, file=None) -> None:
    """The skin-lesion paper's Table 2 columns: on stderr beside a command's output, on stdout where it is the result."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="codes (Table 2 columns)")
    levels = [level for level in ("top", "bottom") if f"used_codes_{level}" in stats]
    for level in levels:
        table.add_column(f"used {level} codes")
    if "co_occurring_pairs" in stats:
        table.add_column("co-occurring pairs")
    if "mse" in stats:
        table.add_column("MSE")
    row = [f"{stats[f'used_codes_{level}']}/{codebook_size}" for level in levels]
    if "co_occurring_pairs" in stats:
        row.append(f"{stats['co_occurring_pairs']:,}")
    if "mse" in stats:
        row.append(f"{stats['mse']:.5f}")
    table.add_row(*row)
    Console(file=file or sys.stderr).print(table)


app = typer.Typer()


@app.command("encode")
def encode(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", help="Code file to write (CODES.h5).", show_default=False)],
    model: ModelOpt = None,
    labels: LabelsOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    overwrite: OverwriteOpt = False,
    strict: StrictOpt = False,
    workers: WorkersOpt = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None, class_map: ClassMapOpt = None,
    backend: BackendOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Encode images to code maps (CODES.h5) and report code usage and reconstruction MSE.

    Example: skinaug encode images/ --labels labels.csv --model models/derm128 --out codes.h5
    """
    from ..generation.encode_decode import encode_dataset
    from ..storage.modeldir import ModelDir

    stats = encode_dataset(data, out, model=model, labels=labels, device=device, batch_size=batch_size,
                           overwrite=overwrite, strict=strict, workers=workers, backend=backend, **columns(image_col, label_col, group_col))
    if not quiet:
        print_code_table(stats, ModelDir(model).spec().codebook_size)
    emit(stats, json_, out)


@app.command("decode")
def decode(
    codes: Annotated[Path, typer.Argument(metavar="CODES", help="Code file (CODES.h5) written by `skinaug encode`.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Output folder (images/, labels.csv, codes.h5, run.json).", show_default=False)],
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    image_format: FormatOpt = "png",
    quality: QualityOpt = 95,
    layout: LayoutOpt = Layout.images,
    image_size: OutputSizeOpt = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    backend: BackendOpt = None,
    json_: JsonOpt = False,
    jsonl: JsonlOpt = False,
    quiet: QuietOpt = False,
):
    """Decode a code file back into images: the 'reconstruction' set.

    Example: skinaug decode codes.h5 --model models/derm128 --out recon/
    """
    from ..generation.encode_decode import decode_codes
    from ..generation.sampler import OutputOptions, RunOptions
    from .generate import check_outputs, finish

    check_outputs(json_, jsonl)
    summary = decode_codes(codes, out, model=model,
                           run=RunOptions(device=device, backend=backend, batch_size=batch_size),
                           output=OutputOptions(overwrite=overwrite, resume=resume, image_format=image_format,
                                                quality=quality, layout=layout, jsonl=jsonl, image_size=image_size))
    finish(summary, json_, out, jsonl)
