"""A generated dataset (OUT_DIR): images/, labels.csv, codes.h5, run.json (and boxes.jsonl after an iterative
resample); streamed and resumable. With layout imagefolder the images lie in one folder per class instead of images/
(skinaug/layout.py).

codes.h5 is absent from the datasets of a generator without codes (the baselines, skinaug/baselines/).

Work is planned up front as numbered batches, each with its own seed, so a batch's images do not
depend on which batches ran before it. After a batch's images are written, a record of it (its
rows and codes) lands atomically in OUT_DIR/.progress/; --resume skips recorded batches and redoes
the rest, so an interrupted run neither duplicates nor loses an image. When all batches are done,
labels.csv and codes.h5 are assembled from the records, run.json is written and .progress/ removed.
Under torchrun every rank writes its own batches and rank 0 assembles.

Rank 0 claims the output (see `skinaug.io.claim_output`): the command's inputs are never written over, and
--overwrite builds the new dataset beside an earlier one, which it replaces only when the new one is complete.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .codefile import CodeWriter, model_attrs
from ..errors import SkinaugError, UsageError
from .fs import (OutputKind, atomic_path, claim_output, input_state, naming_write_errors, read_json, write_json,
                 write_text)
from ..data.layout import (DEFAULT_LAYOUT, LABEL_COLUMNS, METADATA, PROGRESS, Layout, as_layout, class_folders,
                     is_generated_dataset, relative_path)
from ..spec import ModelSpec
from .trained_on import TRAINED_ON, read_record
from ..version import __version__

# rows of resample --iterative carry "boxes" (the cells each step re-drew): in their --jsonl lines, and in this file,
# one {"image", "boxes"} a line
BOXES = "boxes.jsonl"

GENERATED_DATASET = OutputKind("generated dataset", is_generated_dataset,
                               "run.json or .progress/plan.json, and skinaug's labels.csv", resumable=True)


# Linux's FICLONE ioctl (fcntl names it from Python 3.12): a copy that shares the source's blocks until either is
# written, on file systems that offer it (btrfs, XFS, bcachefs, ...)
# the number is the generic one (x86, Arm); other architectures number their ioctls differently
FICLONE = getattr(fcntl, "FICLONE", 0x40049409 if platform.machine() in ("x86_64", "aarch64") else None) \
    if sys.platform.startswith("linux") else None


def clone_or_copy(source: Path, target: Path) -> None:
    """A copy of `source` at `target`: a reflink where the file system offers one (no extra space, yet a file of its
    own: editing one never changes the other), else the bytes copied."""
    if FICLONE is not None:
        try:
            with open(source, "rb") as src, open(target, "wb") as dst:
                fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            return
        except OSError:
            target.unlink(missing_ok=True)  # not offered here (another file system, or across two): copy
    shutil.copyfile(source, target)


def link_or_copy(source: Path, target: Path, link: bool) -> None:
    """A copy (see clone_or_copy), or a hard link when asked and allowed: then the output's file IS the input, and
    editing one edits the other. Atomic either way."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    if link:
        try:
            os.link(source, tmp)
        except OSError:
            clone_or_copy(source, tmp)
    else:
        clone_or_copy(source, tmp)
    os.replace(tmp, target)


def versions() -> dict:
    """Versions of what made the output; torch and onnxruntime as loaded (the onnx backend never imports torch)."""
    found = {"skinaug": __version__, "python": platform.python_version()}
    torch = sys.modules.get("torch")
    found["torch"] = torch.__version__ if torch is not None else None
    found["numpy"] = np.__version__
    onnxruntime = sys.modules.get("onnxruntime")
    if onnxruntime is not None:
        found["onnxruntime"] = onnxruntime.__version__
    return found


def model_size(model_config: ModelSpec | dict) -> int:
    """The side of the images a generator makes (a baseline's config.json is a dict)."""
    return int(model_config["image_size"] if isinstance(model_config, dict) else model_config.image_size)


def plan_digest(plan) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def check_streaming(out, jsonl: bool, overwrite: bool) -> None:
    if jsonl and overwrite and out is not None and Path(out).exists():
        # the replacement is staged beside the old output: its images reach the printed paths only at the end
        raise UsageError("{jsonl=True} prints paths as images land, and {overwrite=True} lands them only when the run ends: "
                         "remove the old output yourself, or choose another {out}")


ABSENT = object()


def plan_difference(saved, current, where: tuple = ()) -> str:
    """The first place where two plans differ, said for a person: "the input /d/images/a.png changed since the run
    began", "seed was 0, now 1"; "" when they agree."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current), key=str):
            found = plan_difference(saved.get(key, ABSENT), current.get(key, ABSENT), (*where, key))
            if found:
                return found
        return ""
    if saved == current:
        return ""
    if where[:1] == ("inputs",) and len(where) > 1:
        file = Path(where[1], *where[2:]) if len(where) > 2 else Path(where[1])
        if saved is ABSENT:
            return f"{file} was not an input of the run"
        if current is ABSENT:
            return f"{file}, an input of the run, is not one now"
        return f"the input {file} changed since the run began"
    shown = lambda value: "absent" if value is ABSENT else json.dumps(value)  # noqa: E731
    name = "/".join(map(str, where)) or "the plan"
    if len(shown(saved)) + len(shown(current)) > 120:
        return f"{name} differs"
    return f"{name} was {shown(saved)}, now {shown(current)}"


class DatasetWriter:
    """Writes a generated dataset batch by batch; see the module docstring for the resume design."""

    def __init__(self, out_dir, *, model_config: ModelSpec | dict, plan: dict, overwrite=False, resume=False,
                 image_format: str = "png", quality: int = 95, is_main: bool = True, inputs=(), work_dir=None,
                 model_dir=None, jsonl: bool = False, codes: bool = True):
        """`inputs`: what the command reads (model, sources, labels, masks), never to be written over.
        `work_dir`: on the other torchrun ranks, the folder rank 0's claim writes into (its `.work`).
        `model_dir`: the generator's directory, whose record of training images the dataset keeps.
        `model_config`: the generator's ModelSpec (or its config.json as a dict).
        `codes`: False for a generator without codes (a baseline, skinaug/baselines/): no codes.h5 is written, and
        `model_config` is its config.json dict (a baseline has no code grid, hence no ModelSpec).
        The plan's "layout" (layout.plan_layout) puts the images in images/ (the default) or one folder per class;
        its "image_size" and "originals" (layout.plan_size) say which images are resized (LANCZOS) to one side."""
        self.out = Path(out_dir)
        self.layout = as_layout(plan.get("layout", DEFAULT_LAYOUT.value))
        class_names = model_config.get("class_names", []) if isinstance(model_config, dict) else model_config.class_names
        self.class_names = list(class_names)  # in index order: run.json records them for readers (GeneratedDataset)
        self.folders = class_folders(self.class_names)
        self.codes = codes
        self.model_dir = model_dir
        self.jsonl = jsonl  # one JSON line per finished image on stdout, flushed per batch
        self.model_config = model_config  # read when the dataset is assembled (finish)
        self.image_format = image_format.lower()
        if self.image_format not in ("png", "jpg"):
            raise SkinaugError(f"{{image_format}} must be png or jpg, not {image_format}")
        self.quality = quality
        # what a resumed run must write as the run began, hence read from the plan
        self.image_size = plan.get("image_size")  # None: every image as it was made
        self.resize_originals = plan.get("originals") == "resize"
        self.originals_kept = plan.get("originals") is True  # augment's, byte for byte at their own sizes
        if is_main:  # the inputs' content is part of the plan: --resume after they changed would mix two runs
            plan = {**plan, "inputs": input_state(inputs)}
        self.plan, self.digest = plan, plan_digest(plan)
        self.started = time.perf_counter()
        self.claim = None
        if is_main:
            self.claim = claim_output(self.out, kind=GENERATED_DATASET, inputs=inputs, overwrite=overwrite, resume=resume)
            self.work = self.claim.work
        else:
            self.work = Path(work_dir) if work_dir is not None else self.out
        self.progress_dir = self.work / PROGRESS
        if self.claim is not None and self.claim.resuming:
            try:
                self._check_resumable()
            except SkinaugError:
                self.claim.release()
                raise
        (self.work / "images" if self.layout is Layout.images else self.work).mkdir(parents=True, exist_ok=True)
        self.progress_dir.mkdir(exist_ok=True)
        if is_main:
            write_json(self.progress_dir / "plan.json", {"digest": self.digest, "plan": plan})
            # rows of a batch that was cut off before its record landed must not linger
            self._rewrite_labels(self._records())

    def _check_resumable(self) -> None:
        if not self.progress_dir.is_dir():
            if (self.work / "run.json").is_file():
                raise SkinaugError(f"{self.out} is already complete: nothing to resume (use {{overwrite=True}} to generate it again)")
            raise SkinaugError(f"{self.out} exists but was not written by an interrupted skinaug run: choose another {{out}}")
        saved = read_json(self.progress_dir / "plan.json") if (self.progress_dir / "plan.json").is_file() else {}
        if saved.get("digest") != self.digest:
            difference = plan_difference(saved.get("plan", {}), self.plan) if "plan" in saved else "no plan recorded"
            raise SkinaugError(f"{self.out} holds an interrupted run of a different command or options, or of other "
                               f"inputs ({difference}): repeat the original command with {{resume=True}} on the same inputs, "
                               "or pass {overwrite=True}")

    def done_batches(self) -> set[int]:
        return {int(path.stem.split("-")[1]) for path in self.progress_dir.glob("batch-*.npz")}

    def relative_path(self, row: dict) -> str:
        """labels.csv's `path` of a row's image (layout.relative_path). An original kept byte for byte (its row
        carries the "file" it comes from) keeps that file's extension; every other image is in the output's format."""
        kept = "file" in row and not self.resize_originals
        suffix = Path(row["file"]).suffix.lower() if kept else f".{self.image_format}"
        return relative_path(self.layout, self.folders, row, suffix)

    def with_paths(self, rows: list[dict]) -> list[dict]:
        """The rows with their `path` (also those an earlier version recorded without one)."""
        return [{**row, "path": self.relative_path(row)} for row in rows]

    def image_path(self, row: dict) -> Path:
        path = self.work / self.relative_path(row)
        path.parent.mkdir(exist_ok=True)
        return path

    def write_batch(self, batch_index: int, images: np.ndarray, rows: list[dict], codes: dict[str, np.ndarray]) -> None:
        """Writes the images (each atomically), then the batch record; appends to labels.csv.

        Rows hold the LABEL_COLUMNS and may carry a "group" (the source's lesion id) for codes.h5.
        """
        for image, row in zip(images, rows):
            self._save(image, row)
        self._record(batch_index, rows, codes)
        self._announce(rows)

    def _save(self, image: np.ndarray, row: dict) -> None:
        """One uint8 image (S, S, 3) in the output's format, resized to the plan's image_size where it differs."""
        from PIL import Image

        picture = Image.fromarray(image)
        if self.image_size is not None and picture.size != (self.image_size, self.image_size):
            picture = picture.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS, reducing_gap=3.0)
        with atomic_path(self.image_path(row)) as tmp:
            if self.image_format == "png":
                picture.save(tmp, format="PNG")
            else:
                picture.save(tmp, format="JPEG", quality=self.quality)

    def write_originals(self, batch_index: int, rows: list[dict], codes: dict[str, np.ndarray], *, link: bool = False) -> None:
        """The input images themselves (rows carry their "file"): read as every command reads images (EXIF-rotated,
        RGB, the shorter side scaled to image_size with LANCZOS, centre-cropped) and written in the output's format
        when the plan resizes originals; else copied (hard-linked with `link`), never re-encoded."""
        from ..data.scan import load_image

        for row in rows:
            source = Path(row["file"])
            if self.resize_originals:
                self._save(load_image(source, self.image_size), row)
                continue
            target = self.image_path(row)
            with naming_write_errors(target):
                link_or_copy(source, target, link)
        self._record(batch_index, rows, codes)
        self._announce(rows)

    def _announce(self, rows: list[dict]) -> None:
        """--jsonl: the batch's images, one JSON object a line, once they are on disk at those paths (the CLI refuses
        --jsonl with an --overwrite that would stage them). A resumed run announces only the batches it makes."""
        if not self.jsonl:
            return
        columns = [column for column in LABEL_COLUMNS if column != "path"]  # "path" is the absolute one here
        lines = [json.dumps({"path": str(self.out / self.relative_path(row)), **{k: row.get(k, "") for k in columns},
                             **({"boxes": row["boxes"]} if "boxes" in row else {})})
                 for row in rows]
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()

    def _record(self, batch_index: int, rows: list[dict], codes: dict[str, np.ndarray]) -> None:
        with atomic_path(self.progress_dir / f"batch-{batch_index:06d}.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, rows=np.array(json.dumps(rows)), **{f"codes_{level}": np.asarray(v, np.uint16) for level, v in codes.items()})
        labels = self.work / "labels.csv"
        with naming_write_errors(labels), open(labels, "a", encoding="utf-8", newline="") as handle:
            csv.DictWriter(handle, LABEL_COLUMNS, extrasaction="ignore", lineterminator="\n").writerows(self.with_paths(rows))

    def _records(self):
        """(rows, codes) of every finished batch, in batch order."""
        records = []
        for path in sorted(self.progress_dir.glob("batch-*.npz")):
            with np.load(path) as archive:
                rows = json.loads(str(archive["rows"]))
                codes = {key[len("codes_"):]: archive[key] for key in archive.files if key.startswith("codes_")}
            records.append((rows, codes))
        return records

    def _rewrite_labels(self, records) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, LABEL_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for rows, _ in records:
            writer.writerows(self.with_paths(rows))
        write_text(self.work / "labels.csv", buffer.getvalue())

    def _write_metadata(self, rows: list[dict]) -> None:
        """metadata.csv (imagefolder layout): labels.csv's rows after a file_name column, as Hugging Face reads it."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        columns = [column for column in LABEL_COLUMNS if column != "path"]  # file_name is the path
        writer.writerow(["file_name", *columns])
        writer.writerows([self.relative_path(row), *(row.get(column, "") for column in columns)] for row in rows)
        write_text(self.work / METADATA, buffer.getvalue())

    def finish(self, *, command: str, seed, device: str, extra: dict | None = None) -> dict:
        """Assembles labels.csv, codes.h5 (unless `codes` is False) and run.json from the batch records; returns the
        summary."""
        records = self._records()
        self._rewrite_labels(records)
        all_rows = [row for rows, _ in records for row in rows]
        if self.layout is Layout.imagefolder:
            self._write_metadata(all_rows)
        names = [row["image"] for row in all_rows]
        if len(set(names)) != len(names):
            raise SkinaugError(f"internal error: duplicate image names in {self.out}")
        if self.codes:
            spec = ModelSpec.of(self.model_config)
            fingerprint = spec.fingerprint
            class_names = list(spec.class_names)
            with atomic_path(self.work / "codes.h5") as tmp, CodeWriter(tmp, model_attrs(spec), spec.grid) as writer:
                for rows, codes in records:
                    labels = [class_names.index(row["label"]) if row["label"] in class_names else -1 for row in rows]
                    writer.append(codes, [row["image"] for row in rows], labels, [row.get("group", "") for row in rows])
        else:  # a baseline's config.json: no code grid, hence no spec
            fingerprint = self.model_config["fingerprint"]
        counts: dict = {}
        for (label, method), count in sorted(Counter((r["label"], r["method"]) for r in all_rows).items()):
            counts.setdefault(label, {})[method] = count
        summary = {
            "out": str(self.out),
            "images": len(all_rows),
            "counts": counts,
            "model_fingerprint": fingerprint,
            "seed": seed,
            "seconds": round(time.perf_counter() - self.started, 3),
            **(extra or {}),
        }
        boxed = [json.dumps({"image": row["image"], "boxes": row["boxes"]}) for row in all_rows if "boxes" in row]
        if boxed:
            write_text(self.work / BOXES, "".join(line + "\n" for line in boxed))
        # which images trained the generator: what `score cas` checks against its test images
        record = read_record(self.model_dir) if self.model_dir is not None else None
        if record is not None:
            write_json(self.work / TRAINED_ON, record.to_json())
        summary["generator_trained_on"] = TRAINED_ON if record is not None else None
        write_json(self.work / "run.json", {
            "command": command,
            "argv": sys.argv,
            "versions": versions(),
            "device": device,
            "format": self.image_format,
            "layout": self.layout.value,
            "image_size": self.image_size or model_size(self.model_config),  # of every image skinaug decoded or resized
            **({"originals_kept": True} if self.originals_kept else {}),  # augment's originals: their own sizes
            "class_names": self.class_names,
            **summary,
        })
        shutil.rmtree(self.progress_dir)
        if self.claim is not None:
            self.claim.commit()  # under --overwrite, only now does the new dataset replace the earlier one
        return summary

    def close(self) -> None:
        """Gives up the output without finishing it (what is written stays, for --resume)."""
        if self.claim is not None:
            self.claim.release()
