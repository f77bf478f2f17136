"""Where a generated dataset's images lie: the one definition that its writer (output.py) and its readers (data.py,
scores/sets.py, preview.py) share.

- `images` (the default): OUT_DIR/images/<name>.<ext>, with labels.csv, codes.h5 and run.json beside images/.
- `imagefolder`: OUT_DIR/<class>/<name>.<ext>, one sub-folder per class, as torchvision's `ImageFolder` and Hugging
  Face datasets' "imagefolder" read them; labels.csv (skinaug's provenance, as in the default layout) and
  metadata.csv (the same rows after a `file_name` column, the path under OUT_DIR: Hugging Face's metadata file) lie
  beside the class folders. Class folders are the class names made safe file names (naming.unique_names);
  labels.csv keeps the true text.

The layout is recorded in run.json ("layout") and, while a run is unfinished, in its plan, so a reader never guesses
it from folder names (a class may be called "images").
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

from .errors import UsageError


class Layout(str, Enum):
    """How a generated dataset's image files are arranged (see the module docstring)."""

    images = "images"
    imagefolder = "imagefolder"


DEFAULT_LAYOUT = Layout.images
METADATA = "metadata.csv"  # Hugging Face's metadata file name (imagefolder layout only)
# files and folders of OUT_DIR itself, which a class folder must never be
OWN_NAMES = ("images", "labels.csv", METADATA, "codes.h5", "run.json", "trained_on.json", "boxes.jsonl")


def as_layout(value) -> Layout:
    """A Layout from itself or its name; anything else is a usage error naming the choices."""
    if isinstance(value, Layout):
        return value
    try:
        return Layout(value)
    except ValueError:
        raise UsageError(f"{{layout}} must be {' or '.join(item.value for item in Layout)}, not {value!r}") from None


def plan_layout(layout, labels) -> dict:
    """What a generating command's plan records of {layout} (nothing for the default, so that earlier plans resume
    as they were): the writer (output.DatasetWriter) reads it there. Checked before anything is written: imagefolder
    files every image under its class, so each needs one (`labels`: class indices, -1 for none)."""
    layout = as_layout(layout)
    if layout is Layout.imagefolder and any(int(label) < 0 for label in labels):
        raise UsageError("{layout='imagefolder'} files every image under its class, and some images have none: "
                         "give {labels}, or keep the images layout")
    return {} if layout is DEFAULT_LAYOUT else {"layout": layout.value}


def class_folders(class_names) -> dict[str, str]:
    """Class name -> its folder in the imagefolder layout: one safe, distinct path component per class."""
    from .naming import unique_names

    names = list(class_names)
    return dict(zip(names, unique_names(names, taken=OWN_NAMES)))


def recorded_layout(out_dir) -> Layout:
    """The layout a generated dataset was written in: run.json's, else its unfinished run's plan's, else `images`."""
    out_dir = Path(out_dir)
    for path, keys in ((out_dir / "run.json", ("layout",)), (out_dir / ".progress" / "plan.json", ("plan", "layout"))):
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
        except (OSError, ValueError):
            continue
        if path.name == "run.json" or value is not None:
            return Layout(value) if isinstance(value, str) and value in Layout.__members__ else DEFAULT_LAYOUT
    return DEFAULT_LAYOUT


def images_root(out_dir) -> Path:
    """The folder a generated dataset's images lie under: OUT_DIR/images, or OUT_DIR itself (imagefolder)."""
    out_dir = Path(out_dir)
    return out_dir if recorded_layout(out_dir) is Layout.imagefolder else out_dir / "images"
