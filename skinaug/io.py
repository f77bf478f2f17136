"""Atomic file writes and the one policy for existing outputs.

Every file skinaug produces is written under a temporary name in the same folder and renamed into
place, so an interrupted run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import SkinaugError, UsageError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SkinaugError(f"{path} does not exist") from None
    except json.JSONDecodeError as error:
        raise SkinaugError(f"{path} is not valid JSON ({error})") from None


def prepare_output(path, *, overwrite: bool, resume: bool = False, kind: str = "output") -> bool:
    """Applies the contract for an existing output; returns True when an earlier run is resumed.

    Without --overwrite or --resume an existing non-empty output is an error; --overwrite removes it.
    """
    path = Path(path)
    if overwrite and resume:
        raise UsageError("--overwrite and --resume contradict each other: choose one")
    exists = path.exists() and (path.is_file() or any(path.iterdir()))
    if not exists:
        return False
    if resume:
        return True
    if not overwrite:
        raise SkinaugError(f"{kind} {path} already exists: pass --overwrite to replace it or --resume to continue it")
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    return False
