"""Device choice, logging and progress on stderr: shared by every command.

What skinaug reports goes through the standard `logging` logger "skinaug": INFO for progress lines (and the
progress bars, shown only while INFO is enabled and stderr is a terminal), WARNING for warnings. By default it writes
plain lines to stderr; `logging.getLogger("skinaug").setLevel(logging.WARNING)` keeps only the warnings (what the
commands' --quiet does), and handlers of one's own replace the default one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys

from .errors import Message, SkinaugError, UsageError, install_hint, python_spelling

logger = logging.getLogger("skinaug")


class StderrHandler(logging.Handler):
    """One line per record on the sys.stderr of the moment (pytest and notebooks swap it): warnings say so.
    Parameters in skinaug's lines are spelled by `spell` (see skinaug.errors): Python's, or the CLI's flags."""

    def __init__(self, spell=python_spelling):
        super().__init__()
        self.spell = spell

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.msg.render(self.spell) if isinstance(record.msg, Message) else record.getMessage()
            print(f"warning: {text}" if record.levelno >= logging.WARNING else text, file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001  (logging's own rule: a failed report must not end the run)
            self.handleError(record)


if not logger.handlers:  # a program that set up the logger before importing skinaug keeps its setup
    logger.addHandler(StderrHandler())
    logger.propagate = False  # the root logger's handlers would print every line twice
if logger.level == logging.NOTSET:
    logger.setLevel(logging.INFO)


@contextlib.contextmanager
def reporting(handler: logging.Handler | None = None, level: int = logging.INFO):
    """The logger at `level` (writing through `handler` alone when given) for a block, as it was afterwards: a
    command run sets it up this way, and its --quiet lowers the level while it runs."""
    saved = logger.level, list(logger.handlers), logger.propagate
    if handler is not None:
        logger.handlers = [handler]
        logger.propagate = False
    logger.setLevel(level)
    try:
        yield logger
    finally:
        logger.handlers, logger.propagate = saved[1], saved[2]
        logger.setLevel(saved[0])


def log(message: str) -> None:
    """A line for the user on stderr (stdout carries data only); hidden below INFO (--quiet). It may name parameters
    like an error message does (skinaug.errors)."""
    logger.info(Message(message))


def warn(message: str) -> None:
    """A warning: shown under --quiet too."""
    logger.warning(Message(message))


def progress(total: int | None = None, desc: str = "", unit: str = "img", **kwargs):
    """A tqdm bar on stderr; it disappears when stderr is not a terminal or INFO is off (--quiet)."""
    from tqdm.auto import tqdm

    disable = not logger.isEnabledFor(logging.INFO) or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True, leave=False, **kwargs)


DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def autocast_for(device):
    """bf16 autocast on CUDA (the quantizer itself stays fp32); nothing on CPU. Used by the trainers and the torch
    backend alike, so it lives beside resolve_device rather than in the training loop."""
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def check_device_name(name: str) -> str:
    """--device is auto, cpu, cuda or cuda:N; anything else is a usage error (checked without importing torch).

    A well-formed name this machine cannot serve (cuda without a GPU) is a runtime error, raised when the
    device is opened: the same command line is right on another machine.
    """
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise UsageError(f"{{device}} {name!r} is not a device: use auto, cpu, cuda or cuda:N")
    return name


def cgroup_cpu_quota(proc_cgroup: str | None = None, root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """The CPU bandwidth this process's cgroups allow, in CPUs (quota / period), or None where none is set.

    proc_cgroup: the text of /proc/self/cgroup (read when None). cgroup v2 (a "0::PATH" line): `cpu.max`
    ("QUOTA PERIOD" or "max PERIOD") of the process's cgroup and of each ancestor under `root`; cgroup v1 (a line
    whose controllers include cpu): `cpu.cfs_quota_us` (-1: none) and `cpu.cfs_period_us` under root/<controllers>.
    The tightest quota along the path counts. Inside a container the cgroup path that /proc names is often not
    mounted as such (the container's own cgroup is the mount's root), so every suffix of the path is tried down to
    the root. Unreadable or absent files mean no quota."""
    from pathlib import Path

    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    root, quotas = Path(root), []
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not hierarchy or not path.startswith("/"):
            continue
        parts = [part for part in path.split("/") if part]
        if hierarchy == "0" and controllers == "":  # cgroup v2
            base, read = root, _cpu_max
        elif "cpu" in controllers.split(","):  # cgroup v1
            base = root / controllers
            if not base.is_dir():
                base = root / "cpu"
            read = _cfs_quota
        else:
            continue
        for depth in range(len(parts), -1, -1):
            quota = read(base.joinpath(*parts[:depth]))
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def _cpu_max(folder) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _cfs_quota(folder) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus(affinity: int | None = None, quota: float | None = None) -> int:
    """CPU cores this process can keep busy: its affinity mask (os.cpu_count where the OS has none), capped by its
    cgroup's CPU quota (`cgroup_cpu_quota`), rounded down but at least 1. A container may see a host's 64 CPUs with
    a quota of 2: threads beyond the quota only wait for each other (torch's OpenMP regions end in a barrier, and a
    throttled thread holds every other one up). Both backends size their thread pools with it. The arguments are
    for tests: None reads this process's."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            affinity = os.cpu_count() or 1
    quota = cgroup_cpu_quota() if quota is None else quota
    count = affinity if quota is None else min(affinity, int(quota))
    return max(1, count)


_torch_threads_fitted = False


def fit_torch_threads() -> None:
    """torch's intra-op threads at most `usable_cpus()`, once per process, when neither OMP_NUM_THREADS nor
    MKL_NUM_THREADS chose them: torch sizes its pool by the CPUs it sees, ignoring affinity and cgroup quotas.
    Never raises the count (a program that asked for fewer keeps them)."""
    global _torch_threads_fitted
    if _torch_threads_fitted:
        return
    _torch_threads_fitted = True
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return
    import torch

    usable = usable_cpus()
    if torch.get_num_threads() > usable:
        torch.set_num_threads(usable)


def resolve_device(name: str = "auto"):
    """'auto' picks CUDA when it is available; asking for CUDA without one is a clear error. The first call also
    fits torch's CPU threads to the usable CPUs (`fit_torch_threads`): the CPU runs host work on CUDA too."""
    import torch

    fit_torch_threads()
    if isinstance(name, torch.device):  # already resolved by a library caller
        return name
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        # under torchrun each process takes the GPU of its local rank
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    device = torch.device(check_device_name(name))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SkinaugError(f"{{device}} {name} asked for CUDA but this machine has no usable GPU: use {{device='cpu'}}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SkinaugError(f"{{device}} {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def default_workers() -> int:
    return max(1, min(8, usable_cpus()))


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
        raise SkinaugError("{backend='torch'} needs PyTorch, which is not installed: use {backend='onnx'} with an exported "
                           f"model, or {install_hint('torch')}")
    return name
