"""Contact sheets: a quick look at generated datasets, one row per method, class or folder."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import BadImage, SkinaugError, UsageError
from ..storage.fs import OutputKind, atomic_path, claim_output, real_path
from ..data.layout import images_root, read_labels
from ..limits import check_memory

SOFTWARE = "skinaug preview"  # the PNG text chunk that marks a contact sheet: --overwrite replaces only those
ROW_KEYS = ("folder", "method", "label")


def is_contact_sheet(path: Path) -> bool:
    """A PNG that `skinaug preview` wrote (its Software text chunk), not any other image or file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.text.get("Software") == SOFTWARE
    except (OSError, ValueError, SyntaxError):
        return False


CONTACT_SHEET = OutputKind("contact sheet", is_contact_sheet, f"PNG text chunk Software={SOFTWARE!r}", single_file=True)


def _rows(folder: Path) -> list[dict]:
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise SkinaugError(f"{folder} has no labels.csv: give folders written by skinaug")
    try:
        return read_labels(labels)[1]
    except UnicodeDecodeError:
        raise SkinaugError(f"{labels} is not UTF-8 text: give folders written by skinaug") from None
    except csv.Error as error:  # a cell over csv's 131072-character limit
        raise SkinaugError(f"{labels} cannot be read as CSV ({error}): give folders written by skinaug") from None


def _image_file(folder: Path, name: str) -> Path | None:
    """The file of image `name`: images/NAME.*, or in the imagefolder layout CLASS/NAME.* (never the output's own
    labels.csv, run.json, ... nor anything under a hidden folder such as .progress/)."""
    root = images_root(folder)
    found = sorted(root.glob(f"{name}.*" if root != folder else f"*/{name}.*"))
    return next((path for path in found if path.is_file() and not path.relative_to(root).parts[0].startswith(".")), None)


def _read_parts(folder: Path) -> list[Path]:
    """What preview reads of a folder: its labels.csv and image folders (images/, or the class folders of the
    imagefolder layout), so that a sheet beside them, where the README puts it, is no input."""
    root = images_root(folder)
    folders = [root] if root != folder else [child for child in sorted(folder.iterdir()) if child.is_dir()]
    return [folder / "labels.csv", *folders]


def folder_captions(folders: list[Path]) -> dict[Path, str]:
    """Each folder's caption: its name, or the path as given where two folders share a name."""
    names = [folder.name or str(folder) for folder in folders]
    return {folder: name if names.count(name) == 1 else str(folder) for folder, name in zip(folders, names)}


def check_sheet_path(out, folders: list[Path]) -> None:
    """Usage errors before anything is read: a folder given twice, an --out that is a folder, or one among a
    folder's images (where every later reader would take the sheet for a generated image)."""
    seen: dict[Path, Path] = {}
    for folder in folders:
        if real_path(folder) in seen:
            raise UsageError(f"{folder} is given twice (as {seen[real_path(folder)]} too): give each folder once")
        seen[real_path(folder)] = folder
    if Path(out).is_dir():
        raise UsageError(f"{{out}} {out} is a folder: give a file name such as {Path(out) / 'sheet.png'}")
    final = real_path(out)
    for folder in folders:
        root = images_root(folder)  # images/, or the folder itself with its class folders (layout imagefolder)
        if real_path(root) in final.parents and (root != folder or final.parent != real_path(folder)):
            raise UsageError(f"{{out}} {out} is inside {final.parent}, where it would be read as a generated "
                             "image: write the sheet elsewhere")
    # the sheet is a PNG (its text chunk marks it): no PNG bytes under another name. An existing file is left to the
    # output policy, which refuses it unless it is an earlier contact sheet and --overwrite is given.
    if Path(out).suffix.lower() != ".png" and not os.path.lexists(out):
        raise UsageError(f"{{out}} {out}: a contact sheet is a PNG file; give a name ending in .png")


def contact_sheet(folders, out, *, per_row: int = 8, size: int = 64, by: str = "method", seed: int = 0,
                  overwrite: bool = False) -> dict:
    """Writes a PNG grid with one row per method, class or folder (or a combination, by="method,label") and returns
    the rows.

    Images are picked at random (seeded) within each row, resized to `size` pixels, and each row is captioned.
    `out` is never one of the folders' files: an existing file is replaced only with `overwrite`, and only when it
    is an earlier contact sheet.
    """
    from PIL import Image, ImageDraw, PngImagePlugin

    from ..data.scan import open_image

    keys = [key.strip() for key in by.split(",")]
    if not keys or any(key not in ROW_KEYS for key in keys) or len(set(keys)) != len(keys):
        raise UsageError(f"{{by}} takes folder, method and/or label, comma-separated, not {by}")
    folders = [Path(folder) for folder in folders]
    check_sheet_path(out, folders)
    captions = folder_captions(folders)
    groups: dict[str, list[Path]] = defaultdict(list)
    first_folder: dict[str, int] = {}  # each row's first folder, by its place among the folders given
    for index, folder in enumerate(folders):
        for row in _rows(folder):
            path = _image_file(folder, row["image"])
            if path is not None:
                values = {**row, "folder": captions[folder]}
                name = " / ".join(values.get(key) or "-" for key in keys)
                groups[name].append(path)
                first_folder.setdefault(name, index if "folder" in keys else 0)
    if not groups:
        raise SkinaugError("no images found in " + ", ".join(map(str, folders)))
    rows = sorted(groups, key=lambda name: (first_folder[name], name))  # with folder, in the order given
    caption = 14
    check_memory(3 * per_row * size * len(rows) * (size + caption),
                 f"a contact sheet of {len(rows)} rows of {per_row} thumbnails of {size} pixels",
                 "give a smaller {size} or {per_row}")
    claim = claim_output(out, kind=CONTACT_SHEET, inputs=[part for folder in folders for part in _read_parts(folder)],
                         overwrite=overwrite)
    with claim:
        rng = np.random.default_rng(seed)
        sheet = Image.new("RGB", (per_row * size, len(rows) * (size + caption)), "white")
        draw = ImageDraw.Draw(sheet)
        for row_index, name in enumerate(rows):
            paths, top = groups[name], row_index * (size + caption)
            draw.text((2, top + 1), f"{name} ({len(paths)})", fill="black")
            for column, pick in enumerate(rng.choice(len(paths), size=min(per_row, len(paths)), replace=False)):
                try:
                    with open_image(paths[pick]) as image:
                        sheet.paste(image.convert("RGB").resize((size, size)), (column * size, top + caption))
                except BadImage as error:
                    raise SkinaugError(f"cannot show {paths[pick]}: {error}") from None
        marks = PngImagePlugin.PngInfo()
        marks.add_text("Software", SOFTWARE)
        with atomic_path(claim.work) as tmp:
            sheet.save(tmp, format="PNG", pnginfo=marks)
    return {"out": str(out), "rows": {name: len(groups[name]) for name in rows}}
