"""Dataset intake: find the images, read their labels and groups, decode them into square RGB arrays.

Everything downstream (training, encoding, augmenting, scoring) sees a dataset only through `scan_dataset`
and `load_images`, so the rules about what counts as an image live here: names are file stems, labels come
from a CSV in one of the known dialects or from class sub-folders, symlinked files and folders are followed
(a folder of links is the usual way to build a subset) but CSV names never leave the image folder, and
whatever is left out (a CSV row without a file, a file of a type skinaug does not read, an image that
cannot be decoded) is reported, never dropped in silence: one warning line on stderr, and the counts in
the summary of a command that records them (`recording_intake`). `strict` makes any of them fatal.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from .class_map import NOT_A_CLASS, chosen_class_map, relabel
from ..errors import BadImage, SkinaugError, UsageError, first_line, literal
from .layout import images_root, is_generated_folder
from ..runtime import log, warn
from ..spec import DOWNSAMPLES, TOP_STRIDE_FACTOR

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# The decoders Image.open may use. Pillow picks a decoder by content, not by name, so without this list a
# file named .png could reach any of its plugins (EPS even runs Ghostscript). JPEG covers MPO camera files.
PIL_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")
MAX_IMAGE_PIXELS = 100_000_000  # larger images are refused as decompression bombs (a 10k x 10k photo fits)
# Memory of one decoded image, judged from its header before decoding: the pixel count alone lets a 16-bit
# or float image cost several times more. An 8k x 8k RGB PNG fits; JPEGs are decoded at a reduced scale.
MAX_DECODED_BYTES = 256 * 2**20
# Above this many pixels an image is cut and box-averaged down before any conversion (see `_shrink_large`).
LARGE_PIXELS = 2048 * 2048
ESCAPES = "escapes the image folder"
NO_FILE = "no image file"
UNSUPPORTED = "unsupported file type"
EXAMPLES = 10  # names kept per report: enough to find the problem, few enough for one line
# Files of image types that skinaug does not read (Pillow's list, and formats Pillow lacks): reported when
# met, unlike other files (labels.csv, README, ...), which are no images and are ignored.
OTHER_IMAGE_TYPES = (".heic", ".heif", ".avif", ".jxl", ".dcm", ".dicom", ".svg", ".dng", ".cr2", ".nef", ".arw", ".raw")
NOT_IMAGE_TYPES = (".h5", ".hdf", ".pdf", ".mpeg", ".mpg", ".grib", ".bufr")  # in Pillow's list, but data files

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
    files_without_row: int
    missing: list[str] = field(default_factory=list)  # CSV image names without a file, in CSV order

    @property
    def rows_without_file(self) -> int:
        return len(self.missing)

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def groups(self) -> list[str]:
        return [s.group for s in self.samples]


def check_image_size(image_size: int, downsample: int = 4) -> int:
    """Both VQ-VAE-2 levels need whole grids (bottom /downsample, top twice that); above 512 the bottom prior's
    128x128 grid is too long a sequence to train."""
    if downsample not in DOWNSAMPLES:
        raise UsageError(f"{{downsample}} must be one of {', '.join(map(str, DOWNSAMPLES))}, not {downsample!r}")
    step = downsample * TOP_STRIDE_FACTOR
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not (
        32 <= image_size <= 512 and image_size % step == 0
    ):
        raise UsageError(f"{{image_size}} must be a multiple of {step} from 32 to 512"
                         f"{' with {downsample} 8' if downsample != 4 else ''}, got {image_size!r}")
    return int(image_size)


# ---------------------------------------------------------------------------------------------- reporting


def _kind(reason: str) -> str:
    """'decompression bomb: 50x40 pixels ...' -> 'decompression bomb': what reports count by."""
    return reason.split(":", 1)[0]


def _examples(items: Sequence[tuple[str, str]], limit: int = 3) -> str:
    names = ", ".join(literal(name) for name, _ in items[:limit])  # names from a CSV or a folder: data, not flags
    return names + (", ..." if len(items) > limit else "")


@dataclass
class Intake:
    """What one command took from DATA and what it left out, for its --json summary and run.json.

    Filled by every scan and decode while `recording_intake()` is open, so a command learns what its
    helpers left out without each of them passing it along.
    """

    images: int = 0  # images found by the scans, less those that could not be decoded
    files_without_row: int = 0  # image files a CSV did not list (a CSV may select a subset: not a problem)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (name, reason), in the order met

    @classmethod
    def of(cls, dataset: Dataset, unreadable: Sequence[tuple[str, str]] = ()) -> Intake:
        """A scan's account, less the images that then could not be decoded (`unreadable`)."""
        left_out = [(name, NO_FILE) for name in dataset.missing] + list(dataset.skipped) + list(unreadable)
        return cls(len(dataset.samples) - len(unreadable), dataset.files_without_row, left_out)

    def add(self, other: Intake) -> None:
        self.images += other.images
        self.files_without_row += other.files_without_row
        self.left_out.extend(other.left_out)

    def summary(self) -> dict:
        return {
            "images": self.images,
            "left_out": len(self.left_out),
            "left_out_by_reason": dict(Counter(_kind(reason) for _, reason in self.left_out)),
            "left_out_first": [{"name": name, "reason": reason} for name, reason in self.left_out[:EXAMPLES]],
            "files_without_row": self.files_without_row,
        }


_recording: ContextVar[Intake | None] = ContextVar("skinaug_intake", default=None)


@contextlib.contextmanager
def recording_intake():
    """Collects what the scans and decodes inside the block left out: `with recording_intake() as intake:`."""
    intake = Intake()
    token = _recording.set(intake)
    try:
        yield intake
    finally:
        _recording.reset(token)


def _report_scan(dataset: Dataset, what: str) -> None:
    """One warning for everything the scan left out, grouped by reason, and a note on unlisted files.

    A warning, so it shows under --quiet too: --quiet silences progress and chatter, but a result made
    from fewer inputs than given must not look complete. It is one line, whatever the number of files.
    """
    scanned, recording = Intake.of(dataset), _recording.get()
    if recording is not None:
        recording.add(scanned)
    left_out = scanned.left_out
    if left_out:
        groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for name, reason in left_out:
            groups[_kind(reason)].append((name, reason))
        parts = [f"{kind}: {len(items)} ({_examples(items)})" for kind, items in groups.items()]
        warn(f"{len(left_out)} inputs of {what} left out: {'; '.join(parts)}. {{strict=True}} makes this an error")
    if dataset.files_without_row:
        log(f"{dataset.files_without_row} image files in {dataset.root} have no CSV row (not used)")


def report_unreadable(skipped: Sequence[tuple[str, str]]) -> None:
    """One warning for the images that could not be decoded (the same rules as `_report_scan`)."""
    recording = _recording.get()
    if recording is not None:
        recording.add(Intake(-len(skipped), 0, list(skipped)))
    if skipped:
        shown = ", ".join(literal(f"{name} ({reason})") for name, reason in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warn(f"{len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''} left out: {shown}. "
             "{strict=True} makes this an error")


# ---------------------------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class _File:
    rel: str  # path relative to the root, '/'-separated (through links, as the user sees it)
    path: Path
    problem: str | None = None  # why it cannot be used: an unreadable folder, a broken link, an unsupported type
    unsupported: bool = False  # an image of a type skinaug does not read: reported where it was meant to be used


@lru_cache(maxsize=1)
def _other_image_types() -> frozenset[str]:
    return frozenset(Image.registered_extensions()) - set(IMAGE_EXTENSIONS) - set(NOT_IMAGE_TYPES) | set(OTHER_IMAGE_TYPES)


NAME_NOT_UTF8 = "file name not UTF-8"


def _is_text(name: str) -> bool:
    """False for a name with bytes that are not UTF-8 (Python holds them as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_name(name: str) -> str:
    """`name` with each byte that is not UTF-8 shown as '?'."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\ufffd", "?")


def _file(rel: str, path: Path) -> _File | None:
    """An image file, an image of a type skinaug does not read, or None for anything else (labels.csv...)."""
    suffix = os.path.splitext(rel)[1].lower()
    if suffix in IMAGE_EXTENSIONS and not _is_text(rel):
        # its name could be written to no labels.csv, code file or JSON line: reported with the bytes shown as '?'
        return _File(printable_name(rel), path, f"{NAME_NOT_UTF8}: rename it")
    if suffix in IMAGE_EXTENSIONS:
        return _File(rel, path)
    if suffix in _other_image_types():
        return _File(rel, path, f"{UNSUPPORTED}: {suffix} (skinaug reads {', '.join(IMAGE_EXTENSIONS)})", unsupported=True)
    return None


# File systems of the machine, not of data: their folders name other processes' working directories (/proc/*/cwd)
SYSTEM_FOLDERS = tuple(Path(p) for p in ("/proc", "/sys", "/dev", "/run"))
LINK_NOT_FOLLOWED = "folder link not followed"


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _link_refusal(target: Path, tree: Path, root: Path) -> str | None:
    """Why a folder link to `target` (real path), met in the tree `tree` (DATA's or a linked folder's), is not
    followed; None to follow it. A link inside DATA may name a folder elsewhere (`ln -s /data/isic/mel melanoma`),
    but not one that holds DATA (`/`, home: the whole machine around it), nor the system's folders, and a folder
    reached that way is read without leaving it again."""
    if _within(target, tree) or _within(target, root):
        return None
    if tree != root:
        return f"{LINK_NOT_FOLLOWED}: it leaves the linked folder {tree} for {target}"
    if _within(root, target):
        return f"{LINK_NOT_FOLLOWED}: {target} holds DATA itself"
    if any(_within(target, system) for system in SYSTEM_FOLDERS):
        return f"{LINK_NOT_FOLLOWED}: {target} is a system folder"
    return None


def _walk(root: Path) -> list[_File]:
    """Files under root, sorted by path. Symlinked files are followed wherever they point, and symlinked folders
    as `_link_refusal` allows, as torchvision's ImageFolder does: the user made them, and `ln -s /data/isic/*.jpg
    subset/` is how subsets are built. Each real folder is entered once, which ends link loops; files reached
    through a link are given by their real path."""
    found: list[_File] = []
    entered: set[tuple[int, int]] = set()
    real_root = root.resolve()

    def visit(folder: Path, prefix: str, linked: bool, tree: Path) -> None:
        where = prefix.rstrip("/") or str(folder)
        try:
            info = folder.stat()
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as error:
            found.append(_File(where, folder, f"unreadable folder: {error.strerror or error}"))
            return
        if (info.st_dev, info.st_ino) in entered:
            found.append(_File(where, folder, "folder already scanned: a link loop or a second link to it"))
            return
        entered.add((info.st_dev, info.st_ino))
        for entry in entries:
            if entry.name.startswith(".") or entry.name == "__MACOSX":
                continue
            _visit_entry(entry, prefix, linked, tree)

    def _visit_entry(entry, prefix: str, linked: bool, tree: Path) -> None:
        rel, path = prefix + entry.name, Path(entry.path)
        through_link = linked or entry.is_symlink()
        try:
            is_dir, is_file = entry.is_dir(), entry.is_file()  # both follow symlinks
        except OSError:
            is_dir = is_file = False
        if is_dir and entry.is_symlink():
            target = path.resolve()
            refusal = _link_refusal(target, tree, real_root)
            if refusal is not None:
                found.append(_File(rel, path, refusal))
            else:
                visit(path, rel + "/", True, tree if _within(target, tree) else target)
        elif is_dir:
            visit(path, rel + "/", through_link, tree)
        elif is_file:
            found_file = _file(rel, path.resolve() if through_link else path)
            if found_file is not None:
                found.append(found_file)
        elif entry.is_symlink() and _file(rel, path) is not None:
            found.append(_File(rel, path, "broken link: its target is missing or not a file"))

    visit(root, "", False, real_root)
    return found


STDIN = "-"  # DATA given as '-': image paths, one a line, on standard input


@lru_cache(maxsize=1)
def _stdin_files() -> tuple[Path, list[_File]]:
    """The images named on stdin (read once per process), relative to their deepest common folder, so that class
    sub-folders label them as they would in a folder scan."""
    import sys

    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("DATA '-' reads image paths from standard input, one a line: pipe them in")
    paths = [Path(line.strip()).expanduser().absolute() for line in sys.stdin if line.strip()]
    if not paths:
        raise SkinaugError("no image paths on standard input (DATA '-')")
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    files = []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        if not path.is_file():
            files.append(_File(rel, path, "not found" if not path.exists() else "not a file"))
            continue
        found = _file(rel, path) or _File(rel, path, f"{UNSUPPORTED}: {path.suffix or 'no extension'}", unsupported=True)
        files.append(found)
    return root, sorted(dict.fromkeys(files), key=lambda f: f.rel)


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
    try:
        rows = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if any(cell.strip() for cell in row)]
    except csv.Error as error:  # a cell over csv's 131072-character limit, a NUL byte
        raise SkinaugError(f"{path} cannot be read as CSV ({error}): it is no labels file, or it is damaged") from None
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
            "(name them with {image_col}/{label_col})")
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
    class_map: dict[str, str] | None = None,
    map_onto: Sequence[str] | None = None,
) -> Dataset:
    """Find the images of DATA and their labels, without decoding any of them.

    `class_names` fixes the label order (a trained model's); without it the order is the sorted label
    strings. Labels go through `class_map` (default: the command's `--class-map`, skinaug.class_map), then,
    against `class_names`, through the public datasets' vocabularies (`mel` -> melanoma); a label the classes
    do not hold is skipped, or fatal when `strict`. `map_onto` (a fine-tuning source's classes) maps through the
    vocabularies onto those names where it can and keeps every other label as a class of its own. Files and rows
    that cannot be used are listed in `skipped`, or are fatal when `strict`; files the CSV does not mention are
    only counted, since a CSV may select a subset of a folder.
    """
    root, files, labels_csv = _scan_root(data_dir, labels_csv)
    skipped = [(f.rel, f.problem) for f in files if f.problem and not f.unsupported]
    if labels_csv is not None:
        csv_path = Path(labels_csv).expanduser()
        scan = _entries_from_csv(files, csv_path, image_col, label_col, group_col)
        where = f" for the {scan.rows} rows of {csv_path.name}"
    else:
        scan, where = _entries_from_folders(files), ""
    _to_classes(scan, class_names, chosen_class_map() if class_map is None else class_map, strict, map_onto)
    skipped += scan.skipped
    _check_usable(root, files, scan, skipped, strict, where)
    _check_unique_stems(scan.entries)
    found = sorted({label for _, label, _ in scan.entries if label is not None})
    if class_names is not None:
        found = list(class_names)
    index = {name: i for i, name in enumerate(found)}
    samples = [
        Sample(f.path, _stem(f.rel), -1 if label is None else index[label], group) for f, label, group in scan.entries
    ]
    dataset = Dataset(root, samples, found, scan.dialect, skipped, scan.files_without_row, scan.missing)
    _report_scan(dataset, f"{root}" + (f" and {Path(labels_csv).name}" if labels_csv is not None else ""))
    return dataset


def _to_classes(scan: "_Scan", class_names, class_map: dict[str, str], strict: bool, map_onto=None) -> None:
    """The scan's labels mapped (skinaug.class_map.relabel), the mapping told on stderr, and the rows whose label
    is no class of the model moved to `skipped` (`strict`: refused)."""
    result = relabel(scan.entries, class_names, class_map, onto=map_onto)
    unknown = sorted({label for _, label in result.unknown})
    classes = list(class_names if class_names is not None else map_onto or [])
    if unknown and not result.entries and not strict:
        raise SkinaugError(f"no label is among the classes {classes}: {', '.join(unknown[:EXAMPLES])} "
                           "(map them with {class_map}, e.g. mel=melanoma)")
    if unknown and strict:
        raise SkinaugError(f"labels not among the classes {classes}: {', '.join(unknown)} "
                           f"({len(result.unknown)} rows; without {{strict=True}} they are skipped, "
                           "or map them with {class_map})")
    if result.mapped:
        pairs = ", ".join(f"{written} -> {target} ({rows})" for (written, target), rows in sorted(result.mapped.items()))
        log(f"labels mapped to the classes: {pairs}")
    scan.entries = result.entries
    scan.skipped += [(f.rel, f"{NOT_A_CLASS}: {label}") for f, label in result.unknown]


@dataclass
class _Scan:
    """What matching the files with a CSV (or with class folders) gave."""

    dialect: str
    entries: list = field(default_factory=list)  # (file, label string or None, group)
    skipped: list = field(default_factory=list)  # (name, reason)
    missing: list = field(default_factory=list)  # CSV names with no file
    files_without_row: int = 0
    rows: int = 0


def _scan_root(data_dir, labels_csv):
    """The folder the images are read from, its files, and the labels CSV (a generated OUT_DIR brings its own)."""
    if str(data_dir) == STDIN:
        root, files = _stdin_files()
        return root, files, labels_csv
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise SkinaugError(f"image folder not found: {root}")
    if labels_csv is None and is_generated_folder(root):
        # a generated OUT_DIR: its images/ labelled by its own labels.csv, so that commands chain without --labels
        root, labels_csv = images_root(root), root / "labels.csv"
    root = root.resolve()
    return root, _walk(root), labels_csv


def _entries_from_csv(files, csv_path: Path, image_col, label_col, group_col) -> _Scan:
    header, rows = _read_csv(csv_path)
    cols = _detect_columns(header, image_col, label_col, group_col, csv_path)
    scan = _Scan(cols.dialect, rows=len(rows))
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
            scan.skipped.append((f"{csv_path.name} line {line}", "no image name"))
            continue
        if _escapes(name):
            scan.skipped.append((name, ESCAPES))
            continue
        hit = _file_for(name, by_rel, by_key)
        if hit is None:
            scan.missing.append(name)
            continue
        if hit.rel in used:
            raise SkinaugError(f"{csv_path} lists image {name!r} twice (again on line {line})")
        used.add(hit.rel)
        if hit.unsupported:
            scan.skipped.append((name, hit.problem))
            continue
        if hit.problem:
            continue  # already listed by the walk
        label, reason = _row_label(row, cols, header)
        if label is None:
            scan.skipped.append((name, reason))
            continue
        group = row[cols.group].strip() if cols.group is not None and cols.group < len(row) else ""
        scan.entries.append((hit, label, group))
    scan.files_without_row = sum(1 for f in files if f.rel not in used and not f.problem)
    return scan


def _file_for(name: str, by_rel: dict, by_key: dict):
    """The one file a CSV name means (None: no file); a name that matches several is an error."""
    key = name.rsplit(".", 1)[0] if name.lower().endswith(IMAGE_EXTENSIONS) else name
    hits = [by_rel[name]] if name in by_rel else by_key.get(key, [])
    if len(hits) > 1 and sum(not f.unsupported for f in hits) == 1:
        hits = [f for f in hits if not f.unsupported]  # 'x' names x.jpg, not its x.heic original
    if len(hits) > 1:
        raise SkinaugError(f"image name {name!r} matches several files: {', '.join(f.rel for f in hits)}")
    return hits[0] if hits else None


def _entries_from_folders(files) -> _Scan:
    class_dirs = {f.rel.split("/", 1)[0] for f in files if "/" in f.rel and not f.problem}
    scan = _Scan("folders" if class_dirs else "unlabelled")
    scan.skipped += [(f.rel, f.problem) for f in files if f.unsupported]  # every file counts without a CSV
    for f in files:
        if f.problem:
            continue
        if not class_dirs:
            scan.entries.append((f, None, ""))
        elif "/" in f.rel:
            scan.entries.append((f, f.rel.split("/", 1)[0], ""))
        else:
            scan.skipped.append((f.rel, "outside the class folders"))
    return scan


def _check_usable(root, files, scan: _Scan, skipped: list, strict: bool, where: str) -> None:
    if strict and (skipped or scan.missing):
        problems = [literal(f"{name}: {reason}") for name, reason in skipped[:3]]
        if scan.missing:
            problems.append(f"{len(scan.missing)} CSV rows have no image file (e.g. {literal(', '.join(scan.missing[:3]))})")
        raise SkinaugError(f"{len(skipped) + len(scan.missing)} unusable inputs ({{strict=True}}): " + "; ".join(problems))
    if not scan.entries:
        example = f" (e.g. no file for {scan.missing[0]!r})" if scan.missing else ""
        other = [f.rel for f in files if f.unsupported]
        found_other = f"; found {len(other)} files of types skinaug does not read (e.g. {other[0]})" if other else ""
        raise SkinaugError(
            f"no images found in {root}{where}{example}; looked for {', '.join(IMAGE_EXTENSIONS)}{found_other}")


def _check_unique_stems(entries) -> None:
    stems = Counter(_stem(f.rel) for f, _, _ in entries)
    duplicates = [stem for stem, n in stems.items() if n > 1]
    if duplicates:
        paths = [f.rel for f, _, _ in entries if _stem(f.rel) == duplicates[0]]
        raise SkinaugError(
            f"image names must be unique (they are file stems): {duplicates[0]!r} is {' and '.join(paths)}"
            + (f", and {len(duplicates) - 1} more names repeat" if len(duplicates) > 1 else ""))


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


def decoded_bytes(img: Image.Image) -> int:
    """Bytes Pillow allocates for the decoded image, known from the header: Pillow keeps 1-bit, L and P
    pixels in one byte, I;16 in two, and every other mode (RGB and LA included) in four."""
    try:
        mode = ImageMode.getmode(img.mode)
        per_pixel = np.dtype(mode.typestr).itemsize if len(mode.bands) == 1 else 4
    except (KeyError, TypeError, ValueError):
        per_pixel = 8  # a mode this table does not know: assume the worst
    return img.width * img.height * per_pixel


def _shrink_large(image: Image.Image, image_size: int) -> Image.Image:
    """A large image cut to its centred square and box-averaged to at least 3x image_size before anything
    else, so that EXIF rotation, colour conversion and the float arrays of 16-bit scaling each copy a small
    image rather than the full one. Smaller images are left alone (and give the same pixels as before).

    The centred square is the same whichever way the EXIF orientation turns the image, so cropping first
    is safe; the orientation itself moves with the pixels (the shrunk copy has no file to read it from).
    """
    width, height = image.size
    if width * height <= LARGE_PIXELS:
        return image
    side = min(width, height)
    target = max(1, side // max(1, side // (3 * image_size)))
    left, top = (width - side) // 2, (height - side) // 2
    small = image.resize((target, target), Image.Resampling.BOX, box=(left, top, left + side, top + side))
    try:
        small.info["exif"] = image.getexif().tobytes()
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, AttributeError):
        pass  # unreadable EXIF: the stored orientation is kept, as in `preprocess`
    return small


def preprocess(image: Image.Image, image_size: int) -> np.ndarray:
    """Upright (EXIF), RGB, shorter side scaled to image_size, centre-cropped: (S, S, 3) uint8."""
    image = _shrink_large(image, image_size)
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


def _check_decoded_size(img: Image.Image) -> None:
    needed = decoded_bytes(img)
    if needed > MAX_DECODED_BYTES:
        raise BadImage(f"too large to decode: {img.width}x{img.height} pixels of mode {img.mode} take "
                       f"{needed / 2**20:.1f} MiB, over the limit of {MAX_DECODED_BYTES / 2**20:.1f} MiB")


@contextlib.contextmanager
def open_image(path):
    """Image.open through skinaug's decoders, within the size limits, with every way Pillow fails on a bad file
    (and on the block's decoding) raised as BadImage with the reason: what makes an input "skipped, unreadable".

    Pillow fails in many classes: UnidentifiedImageError, DecompressionBombError (not an OSError), ValueError for
    an oversized zTXt/iCCP chunk or a bad palette, SyntaxError and EOFError from damaged headers, struct.error."""
    import struct

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file")
        with Image.open(path, formats=PIL_FORMATS) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise BadImage(f"decompression bomb: {width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS}")
            yield img
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except Image.DecompressionBombError as error:
        raise BadImage(f"decompression bomb: {error}") from None
    except (ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError) as error:
        raise BadImage(f"truncated or corrupt: {first_line(error)}") from None
    except OSError as error:
        raise BadImage(f"cannot read: {error.strerror or first_line(error)}") from None


def load_image(path, image_size: int) -> np.ndarray:
    """Decode one image file into (S, S, 3) uint8, or raise BadImage with the reason. The file is only read."""
    with open_image(path) as img:
        img.draft(None, (image_size, image_size))  # JPEG: decode at 1/2..1/8 scale when that still covers S
        _check_decoded_size(img)  # after draft, which shrinks JPEGs without decoding them; before load
        try:
            img.load()  # PIL is lazy: truncation only shows when every byte is decoded
        except (OSError, SyntaxError, ValueError, EOFError):
            raise BadImage("truncated or corrupt") from None
        return preprocess(img, image_size)


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
                raise SkinaugError(f"unusable image {literal(samples[i].path)} ({{strict=True}}): {literal(reasons[i])}")
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
