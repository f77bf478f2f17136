"""The generated dataset (OUT_DIR), defined once for its writer (output.py, generate.py) and its readers (data.py,
scores/sets.py, preview.py, api.py): labels.csv's columns and methods, the row builder, the reader, the recogniser,
and where the images lie. Torch-free.

labels.csv: one row per image, LABEL_COLUMNS. `image` is the file's name without extension (what codes.h5 and the
source_* columns name), `path` the file under OUT_DIR (`relative_path`). `method` is one of METHODS: original (an
input image itself), reconstruction (a resample whose mask marked nothing), or one of AUGMENT_METHODS.

Every image of OUT_DIR has one side (run.json's "image_size"; `plan_size`), unless augment kept its originals byte for
byte (run.json's "originals_kept").

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

import csv
import json
from enum import Enum
from pathlib import Path

from ..errors import SkinaugError, UsageError

# `path` (the file under OUT_DIR, extension included: images/<image>.png, <class>/<image>.png) came last, after the
# provenance columns: older folders' labels.csv lack it, and their readers never needed it
LABEL_COLUMNS = ["image", "label", "method", "source_top", "source_bottom", "temperature", "seed", "model_fingerprint",
                 "path"]
# what an image keeps from an earlier pass when it is augmented again (its row beside "image" and "label")
PROVENANCE_COLUMNS = ("method", "source_top", "source_bottom", "temperature", "seed", "model_fingerprint")
SOURCE_COLUMNS = ("source_top", "source_bottom")  # the real images an image was made from
# the columns that tell a generated dataset's labels.csv from any other labels file (older outputs had no more)
RECOGNISED_COLUMNS = ("image", "label", *SOURCE_COLUMNS)
MODEL_METHODS = ("mix", "resample", "synthesize")  # what the VQ-VAE-2 and its priors make
# augment's methods, in the order its plans group them: the random-code baselines and albumentations copies too
AUGMENT_METHODS = (*MODEL_METHODS, "rand-bottom", "rand-top", "classic")
METHODS = ("original", "reconstruction", *AUGMENT_METHODS)
DRAWN_METHODS = ("resample", "synthesize")  # drawn by a prior (a baseline's: from noise): rows record the temperature
PROGRESS = ".progress"  # an unfinished run's batch records (output.DatasetWriter)


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


def plan_size(image_size, model_size: int, originals: str | None = None) -> dict:
    """What a generating command's plan records of the images' one size, for the writer (output.DatasetWriter) to
    read there: "image_size" when an image is resized (`image_size` differs from the model's, or augment's
    `originals` are "resize"d), and "originals": "resize"; nothing otherwise, so that earlier plans resume as they
    were (an augment that keeps its originals records `originals: true`, as every augment did before)."""
    size = model_size if image_size is None else int(image_size)
    fields = {"originals": "resize"} if originals == "resize" else {}
    return {**fields, "image_size": size} if fields or size != model_size else fields


def relative_path(layout: Layout, folders: dict[str, str], row: dict, suffix: str) -> str:
    """labels.csv's `path`: where a row's image lies under OUT_DIR, images/<image><suffix> or
    <class folder>/<image><suffix> (imagefolder; `folders`: class_folders)."""
    if layout is Layout.images:
        return f"images/{row['image']}{suffix}"
    if row["label"] not in folders:
        raise SkinaugError(f"{row['image']} has no class, and {{layout='imagefolder'}} files every image under its "
                           "class: use the images layout for unlabelled images")
    return f"{folders[row['label']]}/{row['image']}{suffix}"


def class_folders(class_names) -> dict[str, str]:
    """Class name -> its folder in the imagefolder layout: one safe, distinct path component per class."""
    from ..naming import unique_names

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


def recorded_size(out_dir) -> int | None:
    """The side of every image of a finished generated dataset, as its run.json records it; None when it does not
    (folders written before sizes were recorded, or an augment that kept its originals at their own sizes)."""
    try:
        run = json.loads((Path(out_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    size = run.get("image_size") if isinstance(run, dict) and not run.get("originals_kept") else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def images_root(out_dir) -> Path:
    """The folder a generated dataset's images lie under: OUT_DIR/images, or OUT_DIR itself (imagefolder)."""
    out_dir = Path(out_dir)
    return out_dir if recorded_layout(out_dir) is Layout.imagefolder else out_dir / "images"


# ------------------------------------------------------------------ labels.csv: rows, reader, recogniser


def label_row(image: str, label: str, method: str, *, source_top="", source_bottom="", temperature="", seed="",
              fingerprint: str = "", group: str = "", **details) -> dict:
    """One labels.csv row (LABEL_COLUMNS), with the writer's extras: "group" (the source's lesion id, for
    codes.h5) and `details` (an original's "file" and "index", an iterative resample's "boxes")."""
    return {"image": image, "label": label, "method": method, "source_top": source_top, "source_bottom": source_bottom,
            "temperature": temperature, "seed": seed, "model_fingerprint": fingerprint, "group": group, **details}


def read_labels(labels_csv) -> tuple[list[str], list[dict]]:
    """labels.csv's header and rows, as spreadsheets save it too (a UTF-8 byte order mark is dropped)."""
    with open(labels_csv, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or ()), rows


def read_provenance(labels_csv) -> dict[str, dict]:
    """image name -> its provenance columns, from a labels.csv skinaug wrote (one with a known `method` per row);
    {} for any other CSV (a real dataset's labels): its images are originals."""
    try:
        header, rows = read_labels(labels_csv)
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    if not set(("image", *PROVENANCE_COLUMNS)) <= set(header):
        return {}
    return {row["image"]: {column: row[column] or "" for column in PROVENANCE_COLUMNS}
            for row in rows if row.get("method") in METHODS}


def row_methods(labels_csv) -> dict[str, str]:
    """image name -> its method ("real" where a row names none)."""
    _, rows = read_labels(labels_csv)
    return {row["image"]: row.get("method") or "real" for row in rows}


def _header(labels_csv: Path) -> list[str]:
    try:
        with open(labels_csv, encoding="utf-8-sig", newline="") as handle:
            return next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def laid_out(path) -> bool:
    """The shape every OUT_DIR has, which readers take without a labels file: its images (images/, or class
    folders) beside a labels.csv."""
    path = Path(path)
    return images_root(path).is_dir() and (path / "labels.csv").is_file()


def generated_state(path) -> str | None:
    """THE recogniser: "finished" or "unfinished" (its .progress/ still there) when `path` is a generated dataset,
    else None. A generated dataset is laid out (`laid_out`) with a labels.csv that holds the provenance columns
    (RECOGNISED_COLUMNS)."""
    path = Path(path)
    if not laid_out(path) or not set(RECOGNISED_COLUMNS) <= set(_header(path / "labels.csv")):
        return None
    return "unfinished" if (path / PROGRESS).is_dir() else "finished"


def is_generated_folder(path) -> bool:
    """A finished generated dataset, which a command reads as DATA with its own labels.csv. An unfinished one is
    refused: its labels.csv holds only part of the run."""
    state = generated_state(path)
    if state == "unfinished":
        raise SkinaugError(f"{path} is an unfinished generated folder (.progress/ is there): finish it with {{resume=True}} first")
    return state is not None


def is_generated_dataset(path) -> bool:
    """A generated dataset that a run may overwrite or resume (output.GENERATED_DATASET): recognised, with the record
    of the run that wrote it (run.json, or an unfinished run's .progress/plan.json)."""
    path = Path(path)
    recorded = (path / "run.json").is_file() or (path / PROGRESS / "plan.json").is_file()
    return recorded and generated_state(path) is not None
