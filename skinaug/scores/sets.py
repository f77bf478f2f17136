"""The image sets scores read: a plain image folder, or a generated OUT_DIR (images/ + labels.csv).

A generated set's labels.csv also says where each image came from (source_top, source_bottom): the
provenance that `score cas` checks against the real test images, and `score memorization` reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.scan import IMAGE_EXTENSIONS, Dataset, scan_dataset
from ..errors import SkinaugError
from ..data.layout import SOURCE_COLUMNS, images_root, laid_out, read_labels

@dataclass
class ImageSet:
    name: str  # the folder's name: what tables and JSON call the set
    path: Path  # the folder given (the OUT_DIR itself for a generated set)
    dataset: Dataset
    sources: dict[str, tuple[str, ...]] | None  # image -> its non-empty source names; None: no provenance columns

    @property
    def generated(self) -> bool:
        return self.sources is not None


def read_sources(labels_csv) -> dict[str, tuple[str, ...]] | None:
    """image name -> the real images it was made from, or None when the CSV has no provenance columns."""
    header, rows = read_labels(labels_csv)
    if not all(c in header for c in ("image", *SOURCE_COLUMNS)):
        return None
    sources = {}
    for row in rows:
        names = [_stem(row[c] or "") for c in SOURCE_COLUMNS]
        sources[_stem(row["image"] or "")] = tuple(dict.fromkeys(name for name in names if name))
    return sources


def _stem(name: str) -> str:
    """Names are file stems, as scan_dataset makes them: 'a/ISIC_1.jpg' -> 'ISIC_1'."""
    stem = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    return stem.rsplit(".", 1)[0] if stem.lower().endswith(IMAGE_EXTENSIONS) else stem


def open_set(path, labels=None, *, labelled: bool = True, strict: bool = False, class_names=None, **columns) -> ImageSet:
    """An image folder (labels from `labels` or class sub-folders), or a generated OUT_DIR.

    With `labelled=False` every image counts, labelled or not (FID and memorization need no labels). `class_names`
    fixes the label numbering (see `scan_dataset`).
    """
    path = Path(path).expanduser()
    if laid_out(path) and labels is None:  # an OUT_DIR (with provenance columns: a generated one)
        dataset = scan_dataset(images_root(path), path / "labels.csv" if labelled else None, strict=strict,
                               class_names=class_names)
        sources = read_sources(path / "labels.csv")
        if sources is None and strict:
            raise SkinaugError(f"{path / 'labels.csv'} has no source_top/source_bottom columns ({{strict=True}})")
    else:
        if not path.is_dir():
            raise SkinaugError(f"image folder not found: {path}")
        dataset = scan_dataset(path, labels if labelled else None, strict=strict, class_names=class_names,
                               **(columns if labelled else {}))
        sources = read_sources(labels) if labels is not None and labelled else None
    return ImageSet(path.resolve().name or str(path), path, dataset, sources)
