"""Option types shared by every command, defined once so each is spelled the same everywhere."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from ..data.layout import Layout
from ..runtime import check_device_name

IMAGE_FORMATS = ("png", "jpg")


def finite_number(flag: str, *, positive: bool = False):
    """A callback for a float option: refuses what typer's min= lets through (inf; nan where there is no min=),
    and with `positive` also 0, which min= cannot exclude."""

    def check(value: Optional[float]) -> Optional[float]:
        if value is not None and not (math.isfinite(value) and (value > 0 or not positive)):
            raise UsageError(f"{flag} must be a {'positive' if positive else 'finite'} number, not {value}")
        return value

    return check


def _image_format(value: str) -> str:
    # checked while parsing, so that a typo fails before a model is loaded, and as a usage error
    if value.lower() not in IMAGE_FORMATS:
        raise UsageError(f"--format must be png or jpg, not {value!r}")
    return value.lower()

def choices(*values: str, shown: str | None = None) -> dict:
    """An option's choices, shown as `[a|b]` in the help and offered by shell completion; the value stays a
    plain str that the library checks (with its own message), so that e.g. `cuda:1` can be allowed besides."""

    def complete(incomplete: str) -> list[str]:
        return [value for value in values if value.startswith(incomplete)]

    return {"metavar": shown or "[" + "|".join(values) + "]", "autocompletion": complete}


DataArg = Annotated[Path, typer.Argument(metavar="DATA", help="Folder of images (labels from --labels CSV or class sub-folders).", show_default=False)]
LabelsOpt = Annotated[Optional[Path], typer.Option("--labels", metavar="CSV", help="CSV of labels: generic, ISIC 2020, HAM10000 or ISIC 2019 one-hot.")]


def model_path(value: Path) -> Path:
    """A required model directory: a path, or the name of a shipped model when no such path exists."""
    from ..storage.modeldir import model_location

    return model_location(value)


def optional_model(value: Optional[Path]) -> Optional[Path]:
    """An optional model with no default (score codes' --model): a path, or the name of a shipped model."""
    from ..storage.modeldir import model_location

    return None if value is None else model_location(value)


def _resolve_model(value: Optional[Path]) -> Path:
    """--model > $SKINAUG_MODEL > the shipped default; a path that does not exist is left for the command to
    report (after the usage checks), unless it names a shipped model."""
    from ..storage.modeldir import model_location

    return model_location(value)


ModelOpt = Annotated[Optional[Path], typer.Option(
    "--model", callback=_resolve_model, show_default=False, metavar="MODEL",
    help="Model directory (from `skinaug train vqvae`) or the name of a shipped model (`skinaug models`). "
         "Default: $SKINAUG_MODEL, else the shipped ham10000-64.")]
DeviceOpt = Annotated[str, typer.Option("--device", callback=check_device_name,
                                        **choices("auto", "cpu", "cuda", shown="[auto|cpu|cuda|cuda:N]"), help="auto, cpu, cuda or cuda:N.")]
# numpy's generators take only non-negative seeds
SeedOpt = Annotated[int, typer.Option("--seed", min=0, help="Seed: the same seed on the same device gives the same result.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in the same output.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
JsonlOpt = Annotated[bool, typer.Option("--jsonl", help="Print one JSON object per finished image on stdout (path, label, method, sources, ...), flushed per batch, for pipes.")]


def _quiet(value: bool) -> bool:
    # the "skinaug" logger's level while the command runs: `skinaug.cli.main` restores it afterwards
    if value:
        import logging

        logging.getLogger("skinaug").setLevel(logging.WARNING)
    return value


QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", callback=_quiet, help="No progress or log lines on stderr.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Unreadable or unmatched inputs are fatal instead of skipped.")]
ImageColOpt = Annotated[Optional[str], typer.Option("--image-col", help="CSV column with the image names.")]
LabelColOpt = Annotated[Optional[str], typer.Option("--label-col", help="CSV column with the labels.")]
GroupColOpt = Annotated[Optional[str], typer.Option("--group-col", help="CSV column with lesion or patient ids (for group-aware splits).")]


def _class_map(value: Optional[str]) -> Optional[str]:
    # parsed while parsing (a bad map is a usage error before a model loads), and in force until the command ends
    from ..data.class_map import choose_class_map, parse_class_map

    if value is not None:
        choose_class_map(parse_class_map(value))
    return value


ClassMapOpt = Annotated[Optional[str], typer.Option(
    "--class-map", callback=_class_map, metavar="FILE|A=B,...", show_default=False,
    help="Your label names mapped to the model's classes: a file (name=class a line, or JSON) or mel=melanoma,nv=nevus. "
         "HAM10000, ISIC 2019 and ISIC 2020 names are mapped without it (README, Label vocabularies).")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, help="Threads decoding images (default: up to 8).")]
FormatOpt = Annotated[str, typer.Option("--format", callback=_image_format, **choices(*IMAGE_FORMATS), help="Image format of generated files: png or jpg.")]
BackendOpt = Annotated[Optional[str], typer.Option(
    "--backend", **choices("torch", "onnx"), help="torch or onnx (onnxruntime on an exported model: `skinaug export onnx`). Default: torch when installed.")]
QualityOpt = Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG quality with --format jpg.")]
OutputSizeOpt = Annotated[Optional[int], typer.Option(
    "--image-size", metavar="S", show_default=False,
    help="Side in pixels of every image written (default: the model's image size). Generated images are decoded at "
         "the model's size, then resized to S x S (LANCZOS).")]
LayoutOpt = Annotated[Layout, typer.Option(
    "--layout", help="Where the images go: images (images/ + labels.csv) or imagefolder (one folder per class, as "
                     "torchvision's ImageFolder and Hugging Face's imagefolder read; labels.csv and metadata.csv beside them).")]


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
