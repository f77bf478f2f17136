"""Which images trained a model: `trained_on.json` in the model directory, copied into every generated OUT_DIR.

A generator that saw a test image (or another image of a test lesion) flatters every score measured on that
test set, whatever provenance filtering removes afterwards. Each training stage (VQ-VAE, top prior, bottom
prior, and the model an `--init` started from) adds the names and lesion ids it read, so the record is the
union of everything the model's weights have seen. Names and ids are kept as 64-bit SHA-256 prefixes, sorted,
base64-packed: compact (8 bytes an image), private (a name cannot be read back), and enough to test
membership (a false match needs a 64-bit collision).

    {"format": 1, "hash": "sha256-64", "complete": true, "images": 8031, "groups": 7470,
     "image_hashes": "...", "group_hashes": "...", "stages": ["vqvae", "prior_top", "prior_bottom"]}

`complete` is false when a stage started from a model without a record: what that model saw is unknown.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import SkinaugError
from .fs import read_json, write_json

TRAINED_ON = "trained_on.json"
FORMAT = 1
HASH = "sha256-64"


def hash_each(names: list[str]) -> np.ndarray:
    """One 64-bit hash per name, in order: the big-endian first 8 bytes of its UTF-8 SHA-256."""
    return np.array([int.from_bytes(hashlib.sha256(n.encode("utf-8")).digest()[:8], "big") for n in names], dtype=np.uint64)


def hash_names(names: Iterable[str]) -> np.ndarray:
    """Sorted unique hashes of the non-empty names."""
    return np.unique(hash_each([name for name in names if name]))


def _pack(hashes: np.ndarray) -> str:
    return base64.b64encode(hashes.astype(">u8").tobytes()).decode("ascii")


def _unpack(text: str, path, what: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise SkinaugError(f"{path}: {what} is not base64 text") from None
    if len(raw) % 8:
        raise SkinaugError(f"{path}: {what} holds {len(raw)} bytes, not a whole number of 8-byte hashes")
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


@dataclass
class TrainingRecord:
    image_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    group_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    stages: list[str] = field(default_factory=list)
    complete: bool = True

    @classmethod
    def of(cls, names: Iterable[str], groups: Iterable[str], stage: str) -> "TrainingRecord":
        return cls(hash_names(names), hash_names(groups), [stage])

    def merged(self, other: "TrainingRecord") -> "TrainingRecord":
        return TrainingRecord(np.union1d(self.image_hashes, other.image_hashes),
                              np.union1d(self.group_hashes, other.group_hashes),
                              list(dict.fromkeys([*self.stages, *other.stages])), self.complete and other.complete)

    def seen(self, names: Iterable[str], groups: Iterable[str]) -> tuple[list[str], list[str]]:
        """The given names, and the given lesion ids, that this model saw."""
        names, groups = [n for n in dict.fromkeys(names) if n], [g for g in dict.fromkeys(groups) if g]
        seen_names = [n for n, hit in zip(names, np.isin(hash_each(names), self.image_hashes)) if hit]
        seen_groups = [g for g, hit in zip(groups, np.isin(hash_each(groups), self.group_hashes)) if hit]
        return seen_names, seen_groups

    def to_json(self) -> dict:
        return {"format": FORMAT, "hash": HASH, "complete": self.complete, "images": int(len(self.image_hashes)),
                "groups": int(len(self.group_hashes)), "stages": self.stages,
                "image_hashes": _pack(self.image_hashes), "group_hashes": _pack(self.group_hashes)}

    @classmethod
    def from_json(cls, data, path) -> "TrainingRecord":
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("hash") != HASH:
            raise SkinaugError(f"{path} is not a skinaug training record (format {FORMAT}, hash {HASH})")
        for key in ("image_hashes", "group_hashes"):
            if not isinstance(data.get(key), str):
                raise SkinaugError(f"{path}: {key} is missing")
        complete = data.get("complete", True)
        if not isinstance(complete, bool):
            raise SkinaugError(f"{path}: complete must be true or false, not {complete!r}")
        return cls(_unpack(data["image_hashes"], path, "image_hashes"), _unpack(data["group_hashes"], path, "group_hashes"),
                   [str(s) for s in data.get("stages", [])], complete)


def read_record(folder) -> TrainingRecord | None:
    """The record in a model directory or OUT_DIR, or None when it has none (made before records, or by hand)."""
    path = Path(folder) / TRAINED_ON
    if not path.is_file():
        return None
    return TrainingRecord.from_json(read_json(path), path)


def add_to_record(folder, record: TrainingRecord) -> TrainingRecord:
    """Merges `record` into the folder's record (a new one when it has none) and writes it atomically."""
    current = read_record(folder)
    merged = record if current is None else current.merged(record)
    write_json(Path(folder) / TRAINED_ON, merged.to_json())
    return merged


def inherited(init_dir) -> TrainingRecord:
    """What a model started from `init_dir` has already seen: its record, or an incomplete empty one."""
    record = read_record(init_dir)
    if record is None:
        return TrainingRecord(stages=[f"init:{Path(init_dir).name}"], complete=False)
    return TrainingRecord(record.image_hashes, record.group_hashes, [f"init:{Path(init_dir).name}"], record.complete)


def record_stage(folder, names: Iterable[str], groups: Iterable[str], stage: str, init: dict | None = None,
                 data=None) -> TrainingRecord:
    """Adds what one training stage read (and, for a stage started with --init, what that model had seen).

    `data`: the folder (or code file) the stage read. When it is a generated folder (or a code file inside one), the
    real images behind its images are not known here: the record is marked incomplete."""
    record = TrainingRecord.of(names, groups, stage)
    if init is not None:
        record = inherited(init.get("model", "")).merged(record)
    if data is not None and str(data) != "-" and _made_by_skinaug(Path(data)):
        record = record.merged(TrainingRecord(stages=[f"data:{Path(data).name}"], complete=False))
    return add_to_record(folder, record)


def _made_by_skinaug(path: Path) -> bool:
    from ..data.layout import is_generated_folder

    folder = path if path.is_dir() else path.parent
    try:
        return is_generated_folder(folder) or (folder.name == "images" and is_generated_folder(folder.parent))
    except SkinaugError:  # an unfinished generated folder is still a generated one
        return True
