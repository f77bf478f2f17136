"""`skinaug preview`: a contact sheet of generated folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import JsonOpt, QuietOpt, SeedOpt, emit


app = typer.Typer()


@app.command("preview")
def preview(
    folders: Annotated[list[Path], typer.Argument(metavar="OUT_DIR", help="Folders written by skinaug (images/ + labels.csv).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="PNG to write.", show_default=False)],
    per_row: Annotated[int, typer.Option("--per-row", min=1, help="Images per row.")] = 8,
    size: Annotated[int, typer.Option("--size", min=8, help="Side of each thumbnail in pixels.")] = 64,
    by: Annotated[str, typer.Option("--by", help="One row per: folder, method or label, or a combination such as method,label.")] = "method",
    seed: SeedOpt = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier contact sheet (never another file).")] = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Write a contact sheet (PNG grid) of generated images, one captioned row per method, class or folder.

    Example: skinaug preview aug/ synth/ --out sheet.png --by method,label
    """
    from ..reports.preview import contact_sheet

    emit(contact_sheet(folders, out, per_row=per_row, size=size, by=by, seed=seed, overwrite=overwrite), json_, out)
