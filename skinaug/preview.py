"""Contact sheets: a quick look at generated datasets, one row per method (and class)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from .errors import SkinaugError, UsageError
from .io import atomic_path


def _rows(folder: Path) -> list[dict]:
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise SkinaugError(f"{folder} has no labels.csv: give folders written by skinaug")
    try:
        with open(labels, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except UnicodeDecodeError:
        raise SkinaugError(f"{labels} is not UTF-8 text: give folders written by skinaug") from None


def contact_sheet(folders, out, *, per_row: int = 8, size: int = 64, by: str = "method", seed: int = 0) -> dict:
    """Writes a PNG grid with one row per method (or per method and class, by="method,label") and returns the rows.

    Images are picked at random (seeded) within each row, resized to `size` pixels, and each row is captioned.
    """
    from PIL import Image, ImageDraw

    keys = [key.strip() for key in by.split(",")]
    if any(key not in ("method", "label") for key in keys):
        raise UsageError(f"{{by}} takes method and/or label, not {by}")
    groups: dict[str, list[Path]] = defaultdict(list)
    for folder in map(Path, folders):
        for row in _rows(folder):
            path = next(iter(sorted((folder / "images").glob(f"{row['image']}.*"))), None)
            if path is not None:
                groups[" / ".join(row[key] or "-" for key in keys)].append(path)
    if not groups:
        raise SkinaugError("no images found in " + ", ".join(map(str, folders)))
    rng = np.random.default_rng(seed)
    caption = 14
    sheet = Image.new("RGB", (per_row * size, len(groups) * (size + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for row_index, (name, paths) in enumerate(sorted(groups.items())):
        top = row_index * (size + caption)
        draw.text((2, top + 1), f"{name} ({len(paths)})", fill="black")
        for column, pick in enumerate(rng.choice(len(paths), size=min(per_row, len(paths)), replace=False)):
            with Image.open(paths[pick]) as image:
                sheet.paste(image.convert("RGB").resize((size, size)), (column * size, top + caption))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return {"out": str(out), "rows": {name: len(paths) for name, paths in sorted(groups.items())}}
