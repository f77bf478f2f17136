"""Option types shared by every command, defined once so each is spelled the same everywhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

DataArg = Annotated[Path, typer.Argument(help="Folder of images (labels from --labels CSV or class sub-folders).", show_default=False)]
LabelsOpt = Annotated[Optional[Path], typer.Option("--labels", help="CSV of labels: generic, ISIC 2020, HAM10000 or ISIC 2019 one-hot.")]
ModelOpt = Annotated[Path, typer.Option("--model", help="Model directory (from `skinaug train vqvae`).", show_default=False)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed: the same seed on the same device gives the same result.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in the same output.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log lines on stderr.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Unreadable or unmatched inputs are fatal instead of skipped.")]
ImageColOpt = Annotated[Optional[str], typer.Option("--image-col", help="CSV column with the image names.")]
LabelColOpt = Annotated[Optional[str], typer.Option("--label-col", help="CSV column with the labels.")]
GroupColOpt = Annotated[Optional[str], typer.Option("--group-col", help="CSV column with lesion or patient ids (for group-aware splits).")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, help="Threads decoding images (default: up to 8).")]
FormatOpt = Annotated[str, typer.Option("--format", help="Image format of generated files: png or jpg.")]
BackendOpt = Annotated[Optional[str], typer.Option(
    "--backend", help="torch or onnx (onnxruntime on an exported model: `skinaug export onnx`). Default: torch when installed.")]
QualityOpt = Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG quality with --format jpg.")]


def columns(image_col, label_col, group_col) -> dict:
    return {"image_col": image_col, "label_col": label_col, "group_col": group_col}


def emit(summary: dict, as_json: bool, path=None) -> None:
    """stdout carries data only: the JSON summary, or the output path (once: rank 0 under torchrun)."""
    import os

    if os.environ.get("RANK", "0") != "0":
        return
    if as_json:
        print(json.dumps(summary, indent=None, default=str))
    elif path is not None:
        print(path)
    sys.stdout.flush()
