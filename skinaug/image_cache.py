"""Images decoded once into a uint8 array on disk, so later epochs never decode a JPEG.

The cache is a .npy file opened as a memory map: datasets larger than memory still train, and the
page cache keeps hot images in RAM. A JSON sidecar records which images it holds at which size; a
cache that does not match the dataset is rebuilt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .data import Sample, load_images
from .errors import SkinaugError
from .io import atomic_path, write_json
from .runtime import log, progress

CHUNK = 512  # images decoded per thread-pool round; bounds memory while the cache is built


def decode_in_chunks(samples: list[Sample], image_size: int, *, strict: bool = False, workers=None, chunk: int = CHUNK):
    """Yields (uint8 images (n,S,S,3), kept samples) chunk by chunk, logging skipped files once."""
    with progress(len(samples), desc="decoding") as bar:
        for start in range(0, len(samples), chunk):
            part = samples[start : start + chunk]
            images, kept, skipped = load_images(part, image_size, strict=strict, workers=workers)
            for name, reason in skipped:
                log(f"skipped {name}: {reason}")
            bar.update(len(part))
            if kept:
                yield images, kept


def build_cache(samples: list[Sample], image_size: int, cache_path, *, strict=False, workers=None):
    """Returns (memory-mapped uint8 array (N,S,S,3), kept samples); reuses a matching cache on disk."""
    cache_path = Path(cache_path)
    index_path = cache_path.with_suffix(".json")
    names = [sample.name for sample in samples]
    if cache_path.is_file() and index_path.is_file():
        index = json.loads(index_path.read_text())
        if index.get("image_size") == image_size and index.get("requested") == names:
            kept_names = set(index["kept"])
            kept = [sample for sample in samples if sample.name in kept_names]
            return np.load(cache_path, mmap_mode="r")[: len(kept)], kept

    index_path.unlink(missing_ok=True)  # an index must never describe a cache it did not see built
    kept: list[Sample] = []
    with atomic_path(cache_path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(samples), image_size, image_size, 3))
        for images, chunk_kept in decode_in_chunks(samples, image_size, strict=strict, workers=workers):
            array[len(kept) : len(kept) + len(chunk_kept)] = images
            kept.extend(chunk_kept)
        array.flush()
        del array
        if not kept:
            raise SkinaugError("none of the images could be read")
    write_json(index_path, {"image_size": image_size, "requested": names, "kept": [s.name for s in kept]})
    # rows past len(kept) were reserved for images that failed to decode and stay unused
    return np.load(cache_path, mmap_mode="r")[: len(kept)], kept
