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

from ..errors import SkinaugError
from ..spec import ModelSpec

FORMAT_VERSION = 1


def _string_dtype():
    import h5py

    return h5py.string_dtype("utf-8")


def model_attrs(spec: ModelSpec | dict) -> dict:
    """The attrs a code file inherits from the model (its spec, or its config.json as a dict)."""
    spec = ModelSpec.of(spec)
    return {
        "format_version": FORMAT_VERSION,
        "model_fingerprint": spec.fingerprint,
        "codebook_size": spec.codebook_size,
        "code_dim": spec.code_dim,
        "levels": spec.levels,
        "image_size": spec.image_size,
        "class_names": json.dumps(list(spec.class_names)),
    }


class CodeWriter:
    """Appends batches of codes to an HDF5 file (chunked, gzip-compressed).

    The file is built in memory and written out with plain file I/O on a clean exit: HDF5 itself never writes to
    disk, since a write that fails inside it (a full disk) leaves its objects half-closed and crashes the process
    when they are freed (a segfault, with the temporary file and the lock left behind). A failure then is an
    ordinary OSError, which `atomic_path` names and cleans up. Code maps are small (8 KB per 64x64 map, compressed).
    """

    def __init__(self, path, attrs: dict, grid: dict[str, tuple[int, int]]):
        import io

        import h5py

        self.path = Path(path)
        self.buffer = io.BytesIO()
        self.file = h5py.File(self.buffer, "w")
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

    def close(self, write: bool = True) -> None:
        """Finishes the file in memory and, when `write`, puts it at `path` (an OSError there is the caller's)."""
        if self.file is None:
            return
        self.file.close()
        self.file = None
        if write:
            with open(self.path, "wb") as handle:
                handle.write(self.buffer.getbuffer())
        self.buffer = None

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        self.close(write=error_type is None)


def write_codes(path, attrs: dict, grid: dict, codes: dict[str, np.ndarray], images, labels, groups) -> None:
    """Writes a whole code file atomically."""
    from .fs import atomic_path

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
    def names_recorded(self) -> bool:
        """Whether the file says which class each label number means (every file skinaug writes does)."""
        return "class_names" in self.attrs

    def relabel(self, class_names: list[str]) -> "CodeFile":
        """This file with its labels as indices into `class_names` (a model's), matched by name: the same numbers
        may mean other classes in another model. A label the model does not know is refused; a file that records no
        class names is read with the model's (the only reading it allows), with a warning."""
        from dataclasses import replace

        from ..runtime import warn

        class_names = list(class_names)
        labelled = sorted({int(label) for label in self.labels if label >= 0})
        if not self.names_recorded:
            outside = [label for label in labelled if label >= len(class_names)]
            if outside:
                raise SkinaugError(f"{self.path} records no class names and holds label {outside[0]}, which this model "
                                   f"(classes {', '.join(class_names) or 'none'}) does not have: re-encode the images")
            if labelled:
                warn(f"{self.path} records no class names: its labels are read as this model's classes "
                     f"({', '.join(class_names)}); re-encode the images to be sure")
            return replace(self, attrs={**self.attrs, "class_names": json.dumps(class_names)})
        own = self.class_names
        unknown = [own[label] for label in labelled if own[label] not in class_names]
        if unknown:
            raise SkinaugError(f"{self.path} labels images {', '.join(unknown)}, a class this model does not know (it knows "
                               f"{', '.join(class_names) or 'no classes'}): use the model the codes are for, or "
                               "re-encode the images with their labels")
        mapping = np.array([class_names.index(name) if name in class_names else -1 for name in own] + [-1], np.int64)
        return replace(self, labels=mapping[self.labels], attrs={**self.attrs, "class_names": json.dumps(class_names)})

    @property
    def fingerprint(self) -> str:
        return self.attrs["model_fingerprint"]

    def __len__(self) -> int:
        return len(self.images)

    def check_model(self, spec: ModelSpec | dict) -> None:
        """A code file is only meaningful for the VQ-VAE that wrote it, and only with that model's grids."""
        spec = ModelSpec.of(spec)
        if self.fingerprint != spec.fingerprint:
            raise SkinaugError(
                f"{self.path} was written by model {self.fingerprint}, not by this model ({spec.fingerprint}): "
                "re-encode the images with `skinaug encode --model ...`"
            )
        grids = dict(spec.grid)
        found = {level: values.shape[1:] for level, values in self.codes.items()}
        if found != grids:
            raise SkinaugError(f"{self.path} holds code maps {_shapes(found)}, but this model's grids are {_shapes(grids)}: "
                               "re-encode the images with `skinaug encode --model ...`")


def read_codes(path) -> CodeFile:
    """A code file, read whole and checked: a damaged or hand-made file is refused here with one clear line,
    rather than failing inside a network (a code >= K) or quietly mixing classes (a label out of range)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise SkinaugError(f"code file {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        with h5py.File(path, "r") as file:
            attrs = _read_attrs(file, path)
            if "codes" not in file or "bottom" not in file["codes"] or "model_fingerprint" not in attrs:
                raise SkinaugError(f"{path} is not a skinaug code file (no /codes/bottom or model_fingerprint)")
            _check_layout(file, path)
            codes = {level: file[f"codes/{level}"][:] for level in ("top", "bottom") if level in file["codes"]}
            images = [s.decode() if isinstance(s, bytes) else s for s in file["image"][:]]
            labels = file["label"][:].astype(np.int64)
            groups = [s.decode() if isinstance(s, bytes) else s for s in file["group"][:]]
    except OSError as error:
        raise SkinaugError(f"{path} is not a readable HDF5 file ({error})") from None
    for key in ("model_fingerprint", "class_names"):
        if isinstance(attrs.get(key), bytes):
            attrs[key] = attrs[key].decode()
    code_file = CodeFile(path, attrs, codes, images, labels, groups)
    _check_values(code_file)
    return code_file


def _shapes(grids: dict) -> str:
    return ", ".join(f"{level} {'x'.join(map(str, shape))}" for level, shape in sorted(grids.items()))


def _check_layout(file, path: Path) -> None:
    """Datasets present, with the contract's ranks and kinds, one entry per image in each (read nothing yet)."""
    missing = [name for name in ("image", "label", "group") if name not in file]
    if missing:
        raise SkinaugError(f"{path} lacks /{', /'.join(missing)}: it is not a complete skinaug code file")
    count = _check_entries(file, path)
    _check_declared_sizes(file, path)
    levels = [level for level in ("top", "bottom") if level in file["codes"]]
    expected_levels = file.attrs.get("levels")
    if expected_levels is not None and len(levels) != expected_levels:
        held = " and ".join(f"/codes/{level}" for level in levels)
        raise SkinaugError(f"{path} says levels={expected_levels} but holds {held}: it is damaged or not from skinaug")
    for level in levels:
        dataset = file[f"codes/{level}"]
        if dataset.ndim != 3 or dataset.dtype.kind not in "ui":
            raise SkinaugError(f"{path}: /codes/{level} must be (N, H, W) integer codes, not {dataset.ndim}-d {dataset.dtype}")
        if dataset.shape[0] != count:
            raise SkinaugError(f"{path}: /codes/{level} holds {dataset.shape[0]} code maps for {count} images")


def _read_attrs(file, path: Path) -> dict:
    """The attributes as Python values: a one-element array is its element; a longer one is no skinaug value."""
    attrs = {}
    for key, value in file.attrs.items():
        if isinstance(value, np.ndarray) and value.size != 1:
            raise SkinaugError(f"{path}: the {key} attribute is an array of shape {value.shape}, not a single value: "
                               "the file is damaged or not from skinaug")
        attrs[key] = value.item() if hasattr(value, "item") else value
    return attrs


# Deflate shrinks data at most about 1032:1: a dataset that declares more bytes than that over what it stores holds
# entries that were never written (a 20 KB file can declare 40 M code maps), which reading would materialise.
MAX_COMPRESSION = 1100


def _check_declared_sizes(file, path: Path) -> None:
    """What the datasets declare against what the file stores, and against the memory limit, before reading."""
    from ..limits import check_memory, size_text

    total = 0
    names = [f"codes/{level}" for level in ("top", "bottom") if level in file["codes"]] + ["image", "label", "group"]
    for name in names:
        dataset = file[name]
        declared, stored = dataset.size * dataset.dtype.itemsize, dataset.id.get_storage_size()
        if declared > MAX_COMPRESSION * stored + 2**20:
            raise SkinaugError(f"{path}: /{name} declares {dataset.shape[0]} entries ({size_text(declared)}) but the file "
                               f"stores {size_text(stored)} of them: it is damaged or not from skinaug")
        total += declared
    check_memory(total, f"reading the {file['image'].shape[0]} entries of {path}", "split the code file",
                 error=SkinaugError)


def _check_entries(file, path: Path) -> int:
    """/image, /label and /group: one entry per image, names as text and labels as integers; returns the count."""
    import h5py

    count = file["image"].shape[0] if file["image"].ndim == 1 else None
    for name in ("image", "label", "group"):
        dataset = file[name]
        if dataset.ndim != 1 or dataset.shape[0] != count:
            raise SkinaugError(f"{path}: /{name} must hold one entry per image, not shape {dataset.shape}"
                               + (f" for {count} images" if count is not None else ""))
        is_text = h5py.check_string_dtype(dataset.dtype) is not None
        if (name == "label" and dataset.dtype.kind not in "ui") or (name != "label" and not is_text):
            raise SkinaugError(f"{path}: /{name} has the wrong type ({dataset.dtype})")
    return count


def _check_values(code_file: CodeFile) -> None:
    """Codes within the codebook and labels within the class names (a max over the data: code maps are small)."""
    path, attrs = code_file.path, code_file.attrs
    codebook_size = attrs.get("codebook_size")  # a Python int: read_codes unpacks numpy scalars
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size < 1:
        raise SkinaugError(f"{path}: the codebook_size attribute must be a positive integer, not {codebook_size!r}")
    for level, values in code_file.codes.items():
        outside = values[(values < 0) | (values >= codebook_size)]
        if outside.size:
            raise SkinaugError(f"{path}: /codes/{level} holds code {int(outside[0])}, outside the codebook's "
                               f"0..{codebook_size - 1}: the file is damaged or from another model")
    if not code_file.names_recorded:  # an older or hand-made file: its labels get their names from a model (relabel)
        if (code_file.labels < -1).any():
            raise SkinaugError(f"{path}: /label holds {int(code_file.labels.min())}; -1 is unlabelled, and labels are 0 or more")
        return
    try:
        class_names = code_file.class_names
    except (TypeError, ValueError):  # not JSON
        class_names = None
    if not isinstance(class_names, list) or not all(isinstance(name, str) for name in class_names):
        raise SkinaugError(f"{path}: the class_names attribute must be a JSON list of names, not {attrs.get('class_names')!r}")
    outside = code_file.labels[(code_file.labels < -1) | (code_file.labels >= len(class_names))]
    if outside.size:
        raise SkinaugError(f"{path}: /label holds {int(outside[0])}, outside -1..{len(class_names) - 1} "
                           f"(-1 for unlabelled, else an index into its {len(class_names)} class names)")


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
