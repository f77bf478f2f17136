"""Shared fixtures: tiny generated datasets that any test can build in a temporary folder."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@dataclass
class TinyDataset:
    images: Path  # the DATA folder
    labels_csv: Path  # generic dialect: image,label,lesion_id
    names: list[str]  # file stems, in CSV order
    labels: list[str]  # label string of each name
    lesions: list[str]  # lesion_id of each name
    colours: list[tuple[int, int, int]]  # the solid RGB colour of each image


TINY_CLASSES = ("bkl", "melanoma", "nevus")


@pytest.fixture
def tiny_dataset(tmp_path) -> TinyDataset:
    """Twelve 48x40 solid-colour PNGs (lossless, so colours can be asserted exactly): three classes of four
    images, two images per lesion, listed in a generic labels.csv."""
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    names, labels, lesions, colours = [], [], [], []
    for i in range(12):
        label = TINY_CLASSES[i // 4]
        colour = tuple(int(v) for v in np.roll([200 - 10 * i, 40 + 5 * i, 30], i // 4))
        name = f"img_{i:02d}"
        Image.new("RGB", (48, 40), colour).save(images / f"{name}.png")
        names.append(name)
        labels.append(label)
        lesions.append(f"lesion_{i // 2}")
        colours.append(colour)
    labels_csv = tmp_path / "data" / "labels.csv"
    rows = ["image,label,lesion_id"] + [f"{n},{l},{g}" for n, l, g in zip(names, labels, lesions)]
    labels_csv.write_text("\n".join(rows) + "\n")
    return TinyDataset(images, labels_csv, names, labels, lesions, colours)
