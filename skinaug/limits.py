"""Upper bounds on what a number from the user (an option, or a size declared in a file) makes skinaug allocate.

Each command works out what a request implies (bytes of a contact sheet, of a model's weights, of a code file's
maps, of a plan of images) and calls `check_memory` before it allocates anything: a request beyond the limit is
refused in one line that names the amount and the limit, instead of ending in the OOM killer or a MemoryError.
The limit is the machine's physical memory; `SKINAUG_MEMORY_LIMIT` (bytes, or with a K/M/G/T suffix) lowers or
raises it.
"""

from __future__ import annotations

import os
import re

from .errors import UsageError

# Memory that one planned image holds until its dataset is assembled: its job, name, CSV row, --jsonl line and its
# share of the plan's JSON (measured about 1.5 KB; code maps are counted separately).
PLANNED_IMAGE_BYTES = 2048
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", re.IGNORECASE)


def memory_limit() -> int:
    """Bytes one request may allocate: $SKINAUG_MEMORY_LIMIT, else the machine's physical memory."""
    setting = os.environ.get("SKINAUG_MEMORY_LIMIT")
    if setting:
        found = _SIZE.fullmatch(setting)
        if not found:
            raise UsageError(f"SKINAUG_MEMORY_LIMIT={setting!r} is not a size: give bytes, or e.g. 16G")
        return int(float(found.group(1)) * 1024 ** "_KMGT".index((found.group(2) or "_").upper()))
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: a bound that still stops the absurd
        return 64 * 2**30


def size_text(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def check_memory(nbytes: float, what: str, remedy: str, *, error=UsageError) -> None:
    """Refuses `what` (a phrase: "a 100000-pixel contact sheet") when it would take more than the limit.

    `error` is UsageError for an option (exit 2), SkinaugError for a size a file declares (exit 1)."""
    limit = memory_limit()
    if nbytes > limit:
        source = "SKINAUG_MEMORY_LIMIT" if os.environ.get("SKINAUG_MEMORY_LIMIT") else "this machine's memory"
        raise error(f"{what} would take {size_text(nbytes)} of memory, over the limit of {size_text(limit)} "
                    f"({source}): {remedy}")


def check_planned_images(count: int, per_image_bytes: int = 0) -> None:
    """A plan of `count` images (their jobs and rows, and `per_image_bytes` of code maps each), before it is made."""
    check_memory(count * (PLANNED_IMAGE_BYTES + per_image_bytes), f"planning {count} images",
                 "ask for fewer images per run (several runs into several folders add up)")


def code_bytes(spec) -> int:
    """Bytes of one image's code maps (uint16 on every level of the model's grid)."""
    return sum(2 * height * width for height, width in dict(spec.grid).values())



# Bytes per parameter while training: the float32 weight, its gradient and AdamW's two moments (activations come on
# top, and scale with the batch).
TRAINING_BYTES_PER_PARAMETER = 16


def check_network_memory(build, what: str, remedy: str) -> int:
    """Refuses to train the network `build()` makes when its weights and optimiser state alone exceed the limit;
    it is built on torch's meta device to count them, which allocates nothing. Returns the parameter count."""
    import torch

    with torch.device("meta"):
        parameters = sum(parameter.numel() for parameter in build().parameters())
    check_memory(parameters * TRAINING_BYTES_PER_PARAMETER, f"training {what} of {parameters:,} parameters", remedy)
    return parameters
