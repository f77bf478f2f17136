"""`skinaug inspect`: a report on a dataset before a generator is trained on it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (ClassMapOpt, DataArg, DeviceOpt, GroupColOpt, ImageColOpt, JsonOpt, LabelColOpt, LabelsOpt, OverwriteOpt, QuietOpt,
                      WorkersOpt, columns, emit)


app = typer.Typer()


@app.command("inspect")
def inspect(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", help="Report folder: report.html (self-contained), report.json, plots/.", show_default=False)],
    labels: LabelsOpt = None,
    model: Annotated[Optional[Path], typer.Option("--model", metavar="MODEL", help="Also list the images this model's VQ-VAE reconstructs worst.")] = None,
    near: Annotated[int, typer.Option("--near", min=0, max=64, help="Near duplicates: perceptual hashes within this many bits (and thumbnails within 8/255 on average).")] = 4,
    z: Annotated[float, typer.Option("--z", min=0.0, help="Saturation and lightness outliers: beyond this many standard deviations.")] = 3.0,
    show: Annotated[int, typer.Option("--show", min=1, help="Thumbnails per contact sheet (outliers, duplicates, worst reconstructions).")] = 16,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
    overwrite: OverwriteOpt = False,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None, class_map: ClassMapOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Look at a dataset: classes and lesions, sizes and formats, colour, outliers, duplicates, hard images.

    Example: skinaug inspect images/ --labels labels.csv --out report/ --model ham10000-64
    """
    from ..reports.inspection import inspect_dataset

    report = inspect_dataset(data, labels, out=out, model=model, near=near, z=z, show=show, device=device, workers=workers,
                             overwrite=overwrite, **columns(image_col, label_col, group_col))
    if not quiet:
        import sys

        dup = report["duplicates"]
        print(f"{report['images']:,} images, {len(report['classes'])} classes; {dup['exact_images']} exact and "
              f"{dup['near_images']} near duplicates; {len(report['saturation']['outliers'])} saturation and "
              f"{len(report['lightness']['outliers'])} lightness outliers; report in {out / 'report.html'}", file=sys.stderr)
    emit({k: v for k, v in report.items()}, json_, out)
