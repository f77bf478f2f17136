"""Helpers shared by the benchmark scripts: timing with CUDA synchronisation and the JSON line."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """(result, seconds) with the device drained before and after."""
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - started


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def print_json(result: dict) -> None:
    """The last stdout line of every benchmark is one JSON object."""
    result = {"torch": torch.__version__, **result}
    print(json.dumps(result))


def add_source_arguments(parser) -> None:
    """--model and where its source codes come from (--data with --labels, or --codes), for skinaug.generate's
    load_sources."""
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", type=Path, help="image folder (with --labels), encoded here")
    parser.add_argument("--labels", type=Path)
    parser.add_argument("--codes", type=Path, help="a code file from `skinaug encode` instead of --data")
