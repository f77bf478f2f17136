"""Device choice, logging and progress on stderr: shared by every command."""

from __future__ import annotations

import os
import re
import sys

from .errors import SkinaugError, UsageError

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def log(message: str) -> None:
    """A line for the user on stderr (stdout carries data only)."""
    if not _quiet:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def progress(total: int | None = None, desc: str = "", unit: str = "img", **kwargs):
    """A tqdm bar on stderr; it disappears when stderr is not a terminal or with --quiet."""
    from tqdm.auto import tqdm

    disable = _quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True, leave=False, **kwargs)


DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: str) -> str:
    """--device is auto, cpu, cuda or cuda:N; anything else is a usage error (checked without importing torch).

    A well-formed name this machine cannot serve (cuda without a GPU) is a runtime error, raised when the
    device is opened: the same command line is right on another machine.
    """
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise UsageError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N")
    return name


def resolve_device(name: str = "auto"):
    """'auto' picks CUDA when it is available; asking for CUDA without one is a clear error."""
    import torch

    if isinstance(name, torch.device):  # already resolved by a library caller
        return name
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        # under torchrun each process takes the GPU of its local rank
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    device = torch.device(check_device_name(name))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SkinaugError(f"--device {name} asked for CUDA but this machine has no usable GPU: use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SkinaugError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


BACKENDS = ("torch", "onnx")


def torch_installed() -> bool:
    """Whether PyTorch can be imported here, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def resolve_backend(name: str | None = None) -> str:
    """--backend: torch or onnx; by default torch when it is installed, onnx otherwise."""
    if name is None or name == "auto":
        return "torch" if torch_installed() else "onnx"
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}: use torch or onnx")
    if name == "torch" and not torch_installed():
        raise SkinaugError("--backend torch needs PyTorch, which is not installed: use --backend onnx")
    return name
