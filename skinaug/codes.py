"""CODES.h5: code maps per image, with names, labels, groups and the model fingerprint.

Layout (the contract): /codes/top (N,Ht,Wt) uint16 (two-level models only), /codes/bottom (N,Hb,Wb)
uint16, /image (N,) utf-8, /label (N,) int16 (-1 unlabelled), /group (N,) utf-8, and attrs
format_version, model_fingerprint, codebook_size, code_dim, levels, image_size, class_names (json).
Written by one process, appended batch by batch, renamed into place when complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SkinaugError

FORMAT_VERSION = 1


def _string_dtype():
    import h5py

    return h5py.string_dtype("utf-8")


def model_attrs(config: dict) -> dict:
    """The attrs a code file inherits from the model's config.json."""
    return {
        "format_version": FORMAT_VERSION,
        "model_fingerprint": config["fingerprint"],
        "codebook_size": config["codebook_size"],
        "code_dim": config["code_dim"],
        "levels": config["levels"],
        "image_size": config["image_size"],
        "class_names": json.dumps(config.get("class_names", [])),
    }


class CodeWriter:
    """Appends batches of codes to an HDF5 file (chunked, gzip-compressed)."""

    def __init__(self, path, attrs: dict, grid: dict[str, tuple[int, int]]):
        import h5py

        self.file = h5py.File(path, "w")
        for key, value in attrs.items():
            self.file.attrs[key] = value
        self.count = 0
        for level, (height, width) in grid.items():
            self.file.create_dataset(
                f"codes/{level}", shape=(0, height, width), maxshape=(None, height, width), dtype="uint16",
                chunks=(min(64, max(1, 2**20 // (2 * height * width))), height, width), compression="gzip", compression_opts=4,
            )
        self.file.create_dataset("image", shape=(0,), maxshape=(None,), dtype=_string_dtype(), chunks=(1024,))
        self.file.create_dataset("label", shape=(0,), maxshape=(None,), dtype="int16", chunks=(4096,))
        self.file.create_dataset("group", shape=(0,), maxshape=(None,), dtype=_string_dtype(), chunks=(1024,))

    def append(self, codes: dict[str, np.ndarray], images, labels, groups) -> None:
        n = len(images)
        start, self.count = self.count, self.count + n
        for level, values in codes.items():
            dataset = self.file[f"codes/{level}"]
            dataset.resize(self.count, axis=0)
            dataset[start:] = np.asarray(values, dtype=np.uint16)
        for name, values in (("image", list(images)), ("label", np.asarray(labels, np.int16)), ("group", list(groups))):
            dataset = self.file[name]
            dataset.resize(self.count, axis=0)
            dataset[start:] = values

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_codes(path, attrs: dict, grid: dict, codes: dict[str, np.ndarray], images, labels, groups) -> None:
    """Writes a whole code file atomically."""
    from .io import atomic_path

    with atomic_path(path) as tmp, CodeWriter(tmp, attrs, grid) as writer:
        writer.append(codes, images, labels, groups)


@dataclass
class CodeFile:
    """A code file read into memory (code maps are small: 64x64 uint16 is 8 KB per image)."""

    path: Path
    attrs: dict
    codes: dict[str, np.ndarray]
    images: list[str]
    labels: np.ndarray
    groups: list[str]
    files: dict[str, Path] | None = None  # name -> image file, when the codes were made from DATA just now

    @property
    def class_names(self) -> list[str]:
        return json.loads(self.attrs.get("class_names", "[]"))

    @property
    def fingerprint(self) -> str:
        return self.attrs["model_fingerprint"]

    def __len__(self) -> int:
        return len(self.images)

    def check_model(self, config: dict) -> None:
        """A code file is only meaningful for the VQ-VAE that wrote it."""
        if self.fingerprint != config["fingerprint"]:
            raise SkinaugError(
                f"{self.path} was written by model {self.fingerprint}, not by this model ({config['fingerprint']}): "
                "re-encode the images with `skinaug encode --model ...`"
            )


def read_codes(path) -> CodeFile:
    import h5py

    path = Path(path)
    if not path.is_file():
        raise SkinaugError(f"code file {path} does not exist")
    try:
        with h5py.File(path, "r") as file:
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in file.attrs.items()}
            if "codes" not in file or "bottom" not in file["codes"] or "model_fingerprint" not in attrs:
                raise SkinaugError(f"{path} is not a skinaug code file (no /codes/bottom or model_fingerprint)")
            codes = {level: file[f"codes/{level}"][:] for level in ("top", "bottom") if level in file["codes"]}
            images = [s.decode() if isinstance(s, bytes) else s for s in file["image"][:]]
            labels = file["label"][:].astype(np.int64)
            groups = [s.decode() if isinstance(s, bytes) else s for s in file["group"][:]]
    except OSError as error:
        raise SkinaugError(f"{path} is not a readable HDF5 file ({error})") from None
    for key in ("model_fingerprint", "class_names"):
        if isinstance(attrs.get(key), bytes):
            attrs[key] = attrs[key].decode()
    return CodeFile(path, attrs, codes, images, labels, groups)


def code_statistics(codes: dict[str, np.ndarray], codebook_size: int) -> dict:
    """The skin-lesion paper's Table 2 columns: used codes per level and co-occurring (top, bottom) pairs.

    Pairs are counted with the top map upsampled by nearest neighbour to the bottom grid, so each bottom
    position is paired with the top code above it.
    """
    stats = {f"used_codes_{level}": int(np.unique(values).size) for level, values in codes.items()}
    for level, values in codes.items():
        counts = np.bincount(values.reshape(-1).astype(np.int64), minlength=codebook_size).astype(np.float64)
        probabilities = counts / max(counts.sum(), 1)
        nonzero = probabilities[probabilities > 0]
        stats[f"perplexity_{level}"] = float(np.exp(-(nonzero * np.log(nonzero)).sum()))
    if "top" in codes:
        top, bottom = codes["top"], codes["bottom"]
        factor = bottom.shape[1] // top.shape[1]
        upsampled = top.repeat(factor, axis=1).repeat(factor, axis=2)
        pairs = upsampled.astype(np.int64) * codebook_size + bottom.astype(np.int64)
        stats["co_occurring_pairs"] = int(np.unique(pairs).size)
    return stats
