"""Images decoded once into a uint8 array on disk, so later epochs never decode a JPEG.

The cache is a .npy file opened as a memory map: datasets larger than memory still train, and the
page cache keeps hot images in RAM. A JSON sidecar records which files it holds (name, size and
modification time of each, so a replaced image does not keep its old pixels) at which size. A cache
that does not match the dataset, or that cannot be read as a plain uint8 array, is rebuilt; nothing in
it is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..data.scan import Sample, load_images, report_unreadable
from ..errors import SkinaugError
from .fs import atomic_path, write_json
from ..runtime import log, progress

CHUNK = 512  # images decoded per thread-pool round; bounds memory while the cache is built
CACHE_VERSION = 2  # 2: files identified by name, size and mtime_ns (1 knew names only)


def decode_in_chunks(samples: list[Sample], image_size: int, *, strict: bool = False, workers=None, chunk: int = CHUNK,
                     skipped_out: list | None = None):
    """Yields (uint8 images (n,S,S,3), kept samples) chunk by chunk; reports the unreadable files once, at the
    end (and appends them to `skipped_out` when given)."""
    skipped_all: list[tuple[str, str]] = []
    with progress(len(samples), desc="decoding") as bar:
        for start in range(0, len(samples), chunk):
            part = samples[start : start + chunk]
            images, kept, skipped = load_images(part, image_size, strict=strict, workers=workers)
            for name, reason in skipped:
                log(f"skipped {name}: {reason}")  # the full list (few, unlike CSV rows without a file); --quiet hides it
            skipped_all.extend(skipped)
            bar.update(len(part))
            if kept:
                yield images, kept
    report_unreadable(skipped_all)
    if skipped_out is not None:
        skipped_out.extend(skipped_all)


def file_identities(samples: list[Sample]) -> list[list]:
    """[name, size, mtime_ns] of each sample's file: what a cache entry is valid for. A file that is gone
    gets -1s, which match no cache, so it is decoded again (and reported unreadable)."""
    identities = []
    for sample in samples:
        try:
            info = os.stat(sample.path)
            identities.append([sample.name, info.st_size, info.st_mtime_ns])
        except OSError:
            identities.append([sample.name, -1, -1])
    return identities


def _reusable(cache_path: Path, index_path: Path, image_size: int, identities: list[list]):
    """(memory-mapped array, index) of the cache on disk when it was built from exactly these files at this size
    and reads as a uint8 array of the right shape; None when it must be built (again)."""
    if not (cache_path.is_file() and index_path.is_file()):
        return None
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log(f"image cache index {index_path} is unreadable: decoding the images again")
        return None
    if not isinstance(index, dict) or index.get("version") != CACHE_VERSION or index.get("image_size") != image_size:
        return None
    if index.get("files") != identities:
        log("images changed since the image cache was built: decoding them again")
        return None
    kept = index.get("kept")
    try:
        # allow_pickle=False: an object array (or a file that is not .npy at all) fails here instead of running code
        array = np.load(cache_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        log(f"image cache {cache_path} is unreadable ({error}): decoding the images again")
        return None
    shape_ok = array.ndim == 4 and array.shape[1:] == (image_size, image_size, 3)
    if array.dtype != np.uint8 or not shape_ok or not isinstance(kept, list) or len(kept) > array.shape[0]:
        log(f"image cache {cache_path} holds a {array.dtype} array of shape {array.shape}, not the images: "
            "decoding them again")
        return None
    return array, index


def build_cache(samples: list[Sample], image_size: int, cache_path, *, strict=False, workers=None):
    """Returns (memory-mapped uint8 array (N,S,S,3), kept samples); reuses a matching cache on disk."""
    cache_path = Path(cache_path)
    index_path = cache_path.with_suffix(".json")
    identities = file_identities(samples)
    found = _reusable(cache_path, index_path, image_size, identities)
    if found is not None:
        array, index = found
        kept_names = set(index["kept"])
        kept = [sample for sample in samples if sample.name in kept_names]
        skipped = [tuple(item) for item in index.get("skipped", [])]
        if strict and skipped:
            raise SkinaugError(f"unusable image {skipped[0][0]} ({{strict=True}}): {skipped[0][1]}")
        report_unreadable(skipped)  # as when the cache was built: a resumed run reports the same inputs
        return array[: len(kept)], kept

    index_path.unlink(missing_ok=True)  # an index must never describe a cache it did not see built
    kept: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    with atomic_path(cache_path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(samples), image_size, image_size, 3))
        for images, chunk_kept in decode_in_chunks(samples, image_size, strict=strict, workers=workers, skipped_out=skipped):
            array[len(kept) : len(kept) + len(chunk_kept)] = images
            kept.extend(chunk_kept)
        array.flush()
        del array
        if not kept:
            raise SkinaugError("none of the images could be read")
    write_json(index_path, {"version": CACHE_VERSION, "image_size": image_size, "files": identities,
                            "kept": [s.name for s in kept], "skipped": [list(item) for item in skipped]})
    # rows past len(kept) were reserved for images that failed to decode and stay unused
    return np.load(cache_path, mmap_mode="r", allow_pickle=False)[: len(kept)], kept
