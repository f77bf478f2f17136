"""Dataset intake: find the images, read their labels and groups, decode them into square RGB arrays.

Everything downstream (training, encoding, augmenting, scoring) sees a dataset only through `scan_dataset`
and `load_images`, so the rules about what counts as an image live here: names are file stems, labels come
from a CSV in one of the known dialects or from class sub-folders, nothing outside the image folder is ever
opened, and a bad image is skipped with a reason (or is fatal under `strict`).
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadImage, SkinaugError, UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MAX_IMAGE_PIXELS = 100_000_000  # larger images are refused as decompression bombs (a 10k x 10k photo fits)
ESCAPES = "escapes the image folder"

# Column names of the known CSV dialects, matched case-insensitively.
GROUP_COLUMNS = ("lesion_id", "patient_id")
ONE_HOT_COLUMNS = ("MEL", "NV", "BCC", "AK", "AKIEC", "BKL", "DF", "VASC", "SCC", "UNK")


@dataclass(frozen=True)
class Sample:
    path: Path  # resolved file path inside the image folder
    name: str  # file stem: the image's identity everywhere (labels.csv 'image', CODES.h5 /image)
    label: int  # index into Dataset.class_names, -1 when unlabelled
    group: str  # lesion/patient id, "" when unknown (then the image is its own group)


@dataclass
class Dataset:
    root: Path
    samples: list[Sample]
    class_names: list[str]
    dialect: str  # "generic" | "isic2020" | "ham10000" | "isic2019" | "folders" | "unlabelled"
    skipped: list[tuple[str, str]]  # (name, reason) rejected at scan time
    rows_without_file: int
    files_without_row: int

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def groups(self) -> list[str]:
        return [s.group for s in self.samples]


def check_image_size(image_size: int) -> int:
    """Both VQ-VAE-2 levels need whole grids (bottom /4, top /8); above 512 the bottom prior's 128x128 grid
    is too long a sequence to train."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not (
        32 <= image_size <= 512 and image_size % 8 == 0
    ):
        raise UsageError(f"--image-size must be a multiple of 8 from 32 to 512, got {image_size!r}")
    return int(image_size)


# ---------------------------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class _File:
    rel: str  # path relative to the root, '/'-separated
    path: Path
    problem: str | None = None  # why it cannot be used: it escapes the root, or is an unreadable folder


def _walk(root: Path) -> list[_File]:
    """Image files under root, sorted; symlinks are resolved but never followed out of the root."""
    found: list[_File] = []

    def visit(folder: Path, prefix: str) -> None:
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as error:
            reason = f"unreadable folder: {error.strerror or error}"
            found.append(_File(prefix.rstrip("/") or str(folder), folder, reason))
            return
        for entry in entries:
            if entry.name.startswith(".") or entry.name == "__MACOSX":
                continue
            rel = prefix + entry.name
            path = Path(entry.path)
            if entry.is_symlink():
                target = path.resolve()
                problem = None if target.is_relative_to(root) else ESCAPES
                if entry.name.lower().endswith(IMAGE_EXTENSIONS) or (problem and target.is_dir()):
                    found.append(_File(rel, target, problem))
                # a linked folder inside the root is visited under its real name
            elif entry.is_dir():
                visit(path, rel + "/")
            elif entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(_File(rel, path))

    visit(root, "")
    return found


def _stem(name: str) -> str:
    """'a/ISIC_1.jpg' -> 'ISIC_1'; a dot that is not an image extension stays part of the name."""
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if base.lower().endswith(IMAGE_EXTENSIONS) else base


def _escapes(name: str) -> bool:
    """Judged on the name alone, so a hostile CSV row is refused before anything is looked up."""
    posix = PurePosixPath(name.replace("\\", "/"))
    return posix.is_absolute() or bool(PureWindowsPath(name).drive) or ".." in posix.parts


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise SkinaugError(f"labels file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SkinaugError(f"{path} is not UTF-8 text") from None
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count)  # Excel in many locales writes ';'
    rows = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if any(cell.strip() for cell in row)]
    if not rows:
        raise SkinaugError(f"{path} is empty: expected a header such as image,label")
    return [cell.strip() for cell in rows[0]], rows[1:]


@dataclass
class _Columns:
    dialect: str
    image: int | None
    label: int | None
    group: int | None
    one_hot: dict[int, str]  # column index -> class name (ISIC 2019)


def _detect_columns(header: list[str], image_col, label_col, group_col, csv_path: Path) -> _Columns:
    index = {name.lower(): i for i, name in reversed(list(enumerate(header)))}

    def first(*names: str) -> int | None:
        return next((index[n.lower()] for n in names if n.lower() in index), None)

    one_hot = {index[c.lower()]: header[index[c.lower()]] for c in ONE_HOT_COLUMNS if c.lower() in index}
    if "image_name" in index:
        cols = _Columns("isic2020", first("image_name"), first("diagnosis", "benign_malignant", "target"),
                        first("patient_id"), {})
    elif "image_id" in index:
        cols = _Columns("ham10000", first("image_id"), first("dx"), first("lesion_id"), {})
    elif "image" in index and len(one_hot) >= 2 and "label" not in index:
        cols = _Columns("isic2019", first("image"), None, first(*GROUP_COLUMNS), one_hot)
    else:
        cols = _Columns("generic", first("image"), first("label"), first(*GROUP_COLUMNS), {})

    def override(name: str | None) -> int | None:
        if name is None:
            return None
        if name.lower() not in index:
            raise SkinaugError(f"{csv_path} has no column {name!r}; its columns are: {', '.join(header)}")
        return index[name.lower()]

    if image_col is not None:
        cols.image = override(image_col)
    if label_col is not None:
        cols.label, cols.one_hot = override(label_col), {}
    if group_col is not None:
        cols.group = override(group_col)
    if cols.image is None or (cols.label is None and not cols.one_hot):
        missing = "image column (image, image_name or image_id)" if cols.image is None else (
            "label column (label, dx, diagnosis, benign_malignant, target or one-hot MEL,NV,...)")
        raise SkinaugError(
            f"{csv_path} has no {missing}; its columns are: {', '.join(header)} "
            "(name them with --image-col/--label-col)")
    return cols


def _row_label(row: list[str], cols: _Columns, header: list[str]) -> tuple[str | None, str]:
    """The row's label string, or None and the reason it has none."""
    def cell(i: int) -> str:
        return row[i].strip() if i < len(row) else ""

    if cols.one_hot:
        marked = [name for i, name in cols.one_hot.items() if _as_float(cell(i)) == 1.0]
        if len(marked) == 1:
            return marked[0], ""
        return None, "one-hot row marks no class" if not marked else f"one-hot row marks several classes: {marked}"
    value = cell(cols.label)
    if not value:
        return None, "no label"
    if header[cols.label].lower() == "target":  # ISIC 2020's 0/1 column
        value = {0.0: "benign", 1.0: "malignant"}.get(_as_float(value), value)
    return value, ""


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def scan_dataset(
    data_dir,
    labels_csv=None,
    *,
    image_col: str | None = None,
    label_col: str | None = None,
    group_col: str | None = None,
    class_names: list[str] | None = None,
    strict: bool = False,
) -> Dataset:
    """Find the images of DATA and their labels, without decoding any of them.

    `class_names` fixes the label order (a trained model's); without it the order is the sorted label
    strings. Files and rows that cannot be used are listed in `skipped`, or are fatal when `strict`;
    files the CSV does not mention are only counted, since a CSV may select a subset of a folder.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise SkinaugError(f"image folder not found: {root}")
    root = root.resolve()
    files = _walk(root)
    skipped = [(f.rel, f.problem) for f in files if f.problem]
    missing: list[str] = []
    entries: list[tuple[_File, str | None, str]] = []  # file, label string, group
    files_without_row = 0

    if labels_csv is not None:
        csv_path = Path(labels_csv).expanduser()
        header, rows = _read_csv(csv_path)
        cols = _detect_columns(header, image_col, label_col, group_col, csv_path)
        dialect = cols.dialect
        by_rel = {f.rel: f for f in files}
        by_key: dict[str, list[_File]] = defaultdict(list)  # relative path without extension, and bare stem
        for f in files:
            by_key[f.rel.rsplit(".", 1)[0]].append(f)
            if "/" in f.rel:
                by_key[_stem(f.rel)].append(f)
        used: set[str] = set()
        for line, row in enumerate(rows, start=2):
            name = (row[cols.image] if cols.image < len(row) else "").strip().replace("\\", "/")
            if not name:
                skipped.append((f"{csv_path.name} line {line}", "no image name"))
                continue
            if _escapes(name):
                skipped.append((name, ESCAPES))
                continue
            key = name.rsplit(".", 1)[0] if name.lower().endswith(IMAGE_EXTENSIONS) else name
            hits = [by_rel[name]] if name in by_rel else by_key.get(key, [])
            if len(hits) > 1:
                raise SkinaugError(f"image name {name!r} matches several files: {', '.join(f.rel for f in hits)}")
            if not hits:
                missing.append(name)
                continue
            if hits[0].rel in used:
                raise SkinaugError(f"{csv_path} lists image {name!r} twice (again on line {line})")
            used.add(hits[0].rel)
            if hits[0].problem:
                continue  # already listed by the walk
            label, reason = _row_label(row, cols, header)
            if label is None:
                skipped.append((name, reason))
                continue
            group = row[cols.group].strip() if cols.group is not None and cols.group < len(row) else ""
            entries.append((hits[0], label, group))
        files_without_row = sum(1 for f in files if f.rel not in used and not f.problem)
    else:
        class_dirs = {f.rel.split("/", 1)[0] for f in files if "/" in f.rel and not f.problem}
        dialect = "folders" if class_dirs else "unlabelled"
        for f in files:
            if f.problem:
                continue
            if not class_dirs:
                entries.append((f, None, ""))
            elif "/" in f.rel:
                entries.append((f, f.rel.split("/", 1)[0], ""))
            else:
                skipped.append((f.rel, "outside the class folders"))

    if strict and (skipped or missing):
        problems = [f"{name}: {reason}" for name, reason in skipped[:3]]
        if missing:
            problems.append(f"{len(missing)} CSV rows have no image file (e.g. {', '.join(missing[:3])})")
        raise SkinaugError(f"{len(skipped) + len(missing)} unusable inputs (--strict): " + "; ".join(problems))
    if not entries:
        hint = f" for the {len(rows)} rows of {csv_path.name}" if labels_csv is not None else ""
        example = f" (e.g. no file for {missing[0]!r})" if missing else ""
        raise SkinaugError(f"no images found in {root}{hint}{example}; looked for {', '.join(IMAGE_EXTENSIONS)}")

    stems = Counter(_stem(f.rel) for f, _, _ in entries)
    duplicates = [stem for stem, n in stems.items() if n > 1]
    if duplicates:
        paths = [f.rel for f, _, _ in entries if _stem(f.rel) == duplicates[0]]
        raise SkinaugError(
            f"image names must be unique (they are file stems): {duplicates[0]!r} is {' and '.join(paths)}"
            + (f", and {len(duplicates) - 1} more names repeat" if len(duplicates) > 1 else ""))

    found = sorted({label for _, label, _ in entries if label is not None})
    if class_names is not None:
        unknown = [label for label in found if label not in class_names]
        if unknown:
            raise SkinaugError(f"labels not among the classes {list(class_names)}: {', '.join(unknown)}")
        found = list(class_names)
    index = {name: i for i, name in enumerate(found)}
    samples = [
        Sample(f.path, _stem(f.rel), -1 if label is None else index[label], group) for f, label, group in entries
    ]
    return Dataset(root, samples, found, dialect, skipped, len(missing), files_without_row)


# ---------------------------------------------------------------------------------------------- decoding


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel. Transparent pixels become white, as viewers show them; high bit depths
    are rescaled (16-bit /257, floats in [0,1] x255, anything else stretched to its own range), never clipped."""
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        if mode.startswith("I;16") or (mode == "I" and low >= 0 and 255 < high <= 65535):
            values = values / 257.0
        elif mode == "F" and low >= 0 and high <= 1:
            values = values * 255.0
        elif low < 0 or high > 255:
            values = (values - low) * (255.0 / max(high - low, 1e-12))
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except ValueError:
        raise BadImage(f"unsupported colour mode {mode}") from None


def preprocess(image: Image.Image, image_size: int) -> np.ndarray:
    """Upright (EXIF), RGB, shorter side scaled to image_size, centre-cropped: (S, S, 3) uint8."""
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        pass  # unreadable EXIF: keep the stored orientation rather than lose the image
    image = _to_rgb(image)
    width, height = image.size
    side = min(width, height)
    if (width, height) != (image_size, image_size):
        left, top = (width - side) / 2, (height - side) / 2
        image = image.resize((image_size, image_size), Image.Resampling.LANCZOS,
                             box=(left, top, left + side, top + side), reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8).copy()


def load_image(path, image_size: int) -> np.ndarray:
    """Decode one image file into (S, S, 3) uint8, or raise BadImage with the reason. The file is only read."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file")
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise BadImage(f"decompression bomb: {width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS}")
            img.draft(None, (image_size, image_size))  # JPEG: decode at 1/2..1/8 scale when that still covers S
            try:
                img.load()  # PIL is lazy: truncation only shows when every byte is decoded
            except (OSError, SyntaxError, ValueError, EOFError):
                raise BadImage("truncated or corrupt") from None
            return preprocess(img, image_size)
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except Image.DecompressionBombError as error:
        raise BadImage(f"decompression bomb: {error}") from None
    except OSError as error:
        raise BadImage(f"cannot read: {error.strerror or error}") from None


def load_images(
    dataset_or_samples: Dataset | Sequence[Sample],
    image_size: int,
    *,
    strict: bool = False,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[Sample], list[tuple[str, str]]]:
    """Decode many images in threads (PIL releases the GIL while decoding) into one uint8 stack.

    Returns the stack of the good images, their samples (input order) and (name, reason) for the bad ones;
    with `strict` the first bad image is fatal. `progress(1)` is called after each image (tqdm's `update`).
    """
    samples = list(dataset_or_samples.samples if isinstance(dataset_or_samples, Dataset) else dataset_or_samples)
    images = np.empty((len(samples), image_size, image_size, 3), dtype=np.uint8)
    reasons: list[str | None] = [None] * len(samples)

    def decode(i: int) -> None:
        try:
            images[i] = load_image(samples[i].path, image_size)
        except BadImage as error:
            reasons[i] = str(error)

    workers = workers or min(8, os.cpu_count() or 1)  # measured: more threads decode no faster (GIL-bound glue)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(decode, i): i for i in range(len(samples))}
        for future in as_completed(futures):
            future.result()
            i = futures[future]
            if strict and reasons[i] is not None:
                pool.shutdown(cancel_futures=True)
                raise SkinaugError(f"unusable image {samples[i].path} (--strict): {reasons[i]}")
            if progress is not None:
                progress(1)

    kept, skipped = [], []
    for i, (sample, reason) in enumerate(zip(samples, reasons)):
        if reason is None:
            if len(kept) != i:
                images[len(kept)] = images[i]  # compact in place: no second copy of a large stack
            kept.append(sample)
        else:
            skipped.append((sample.name, reason))
    return images[: len(kept)], kept, skipped


# ---------------------------------------------------------------------------------------------- splitting


def group_split(
    groups: Sequence[str], val_fraction: float, seed: int, *, labels: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices such that no lesion (or patient) is on both sides.

    Images of one lesion are near-duplicates, so a split by image would leak them into validation and
    flatter every score. "" groups are single images. With `labels`, each class is split on its own so
    every class with two or more groups appears on both sides; a group counts for its rarest label, so
    a patient's rare melanoma is not swallowed by their common naevi.
    """
    if not 0 <= val_fraction < 1:
        raise UsageError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    n = len(groups)
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} groups")
    if n < 2 or val_fraction == 0:
        return np.arange(n, dtype=np.int64), np.empty(0, dtype=np.int64)
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group if group else f"\0{i}", []).append(i)  # \0 keeps singletons apart from real ids
    units = list(members.values())
    if len(units) < 2:
        raise SkinaugError(f"cannot hold out validation images: all {n} images belong to group {groups[0]!r}")

    rng = np.random.default_rng(seed)
    if labels is None:
        strata = {0: list(range(len(units)))}
    else:
        labels = np.asarray(labels)
        counts = Counter(labels.tolist())
        strata = defaultdict(list)
        for u, unit in enumerate(units):
            strata[min(labels[unit].tolist(), key=lambda c: (counts[c], c))].append(u)

    in_val = np.zeros(len(units), dtype=bool)
    for key in sorted(strata):
        chosen = [strata[key][j] for j in rng.permutation(len(strata[key]))]
        target = val_fraction * sum(len(units[u]) for u in chosen)
        taken = 0
        for u in chosen:
            if taken + len(units[u]) / 2 < target:  # take the group when that brings us nearer the target
                in_val[u], taken = True, taken + len(units[u])
        if len(chosen) >= 2 and not in_val[chosen].any():
            in_val[min(chosen, key=lambda u: len(units[u]))] = True
        if len(chosen) >= 2 and in_val[chosen].all():
            in_val[min(chosen, key=lambda u: len(units[u]))] = False
    if not in_val.any():
        in_val[min(range(len(units)), key=lambda u: len(units[u]))] = True
    if in_val.all():
        in_val[min(range(len(units)), key=lambda u: len(units[u]))] = False

    val = np.sort(np.array([i for u, unit in enumerate(units) if in_val[u] for i in unit], dtype=np.int64))
    train = np.setdiff1d(np.arange(n, dtype=np.int64), val)
    return train, val
