"""Atomic file writes with the user's umask, and the one policy for outputs.

Every file skinaug produces is written under a temporary name in the same folder, flushed to disk and
renamed into place, so an interrupted run never leaves a half-written file under the final name.

An output (a generated dataset, a model directory, a code file, a score folder) is claimed before a run
writes it (`claim_output`):
- --out may neither be nor hold an input of the command (real paths compared, so symlinks do not hide one);
- an existing output is replaced only with --overwrite, and only when it is an earlier skinaug output of the
  same kind, recognised by its marker files;
- the replacement is built beside the output (`.NAME.skinaug-new`) and renamed into place when the run
  commits, so an invalid option or a crash leaves the earlier complete output as it was;
- one writer per output: an exclusive lock on `.NAME.skinaug.lock` beside the output (beside, so that it
  outlives the output's replacement), which holds the holder's pid;
- nothing is written into the models installed with skinaug (`SHIPPED_MODELS`).
This module never imports torch: the onnx backend and `--help` stay light.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import SkinaugError, UsageError, os_error_message

# ------------------------------------------------------------------------- atomic files with the umask


def _umask_by_setting() -> int:
    # the only portable way to read the umask is to set it; done once, at import, under the import lock
    old = os.umask(0)
    os.umask(old)
    return old


def _umask_from_proc() -> int | None:
    """Linux (4.7+) reports the umask in /proc: reading it changes nothing, so it is safe in any thread."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


_UMASK_AT_IMPORT = _umask_from_proc()
if _UMASK_AT_IMPORT is None:
    _UMASK_AT_IMPORT = _umask_by_setting()


def current_umask() -> int:
    proc = _umask_from_proc()
    return _UMASK_AT_IMPORT if proc is None else proc


def file_mode() -> int:
    """The mode an ordinary open() gives a new file: what colleagues sharing a folder expect."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    return 0o777 & ~current_umask()


def _settle(tmp: Path) -> None:
    """mkstemp makes 0600 files whatever the umask; give the file the usual mode, and flush it to disk so that
    the rename never publishes a file whose data a power cut could still lose."""
    os.chmod(tmp, file_mode())
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        _raise_write_error(error, path)
    os.close(fd)
    try:
        yield Path(tmp)
        _settle(Path(tmp))
        os.replace(tmp, path)
    except OSError as error:
        _raise_write_error(error, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _raise_write_error(error: OSError, path: Path):
    """A failed write names the file being written: the system names none (a failed write()) or only the
    temporary twin. An error that names another file (a folder that cannot be made, an input) keeps its name."""
    named = error.filename
    temporary = isinstance(named, (str, bytes, os.PathLike)) and os.fsdecode(named).startswith(
        os.fsdecode(path.parent / f".{path.name}."))
    if named is not None and not temporary:
        raise error
    raise SkinaugError(os_error_message(error, path, "cannot write")) from error


@contextlib.contextmanager
def naming_write_errors(path):
    """For a write that cannot go through atomic_path (an append, a copy): its failure names `path` as theirs do."""
    try:
        yield
    except OSError as error:
        _raise_write_error(error, Path(path))


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
    except UnicodeDecodeError:
        raise SkinaugError(f"{path} is not UTF-8 text, so not JSON written by skinaug") from None


# ------------------------------------------------------------------------- kinds of output


@dataclass(frozen=True)
class OutputKind:
    """What --overwrite may replace: earlier outputs of one kind, recognised by their marker files."""

    name: str  # in messages: "model directory"
    recognise: Callable[[Path], bool]  # whether an existing path is an earlier output of this kind
    marker: str  # what `recognise` looks for, named in the refusal
    resumable: bool = False  # a first run writes in place, where --resume finds it; otherwise every run is staged
    single_file: bool = False  # atomic_path already replaces the file in one rename


def _json_has(path: Path, key: str) -> bool:
    try:
        return key in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


# what a model directory may hold; a folder of only these, with train/, is a training cut off before config.json
MODEL_ENTRIES = {"config.json", "vqvae.safetensors", "prior_top.safetensors", "prior_bottom.safetensors", "onnx",
                 "baseline.safetensors", "MODEL_CARD.md", "train"}


def is_model_directory(path: Path) -> bool:
    if not path.is_dir():
        return False
    if _json_has(path / "config.json", "format_version"):
        return True
    return (path / "train").is_dir() and {entry.name for entry in path.iterdir()} <= MODEL_ENTRIES


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_code_file(path: Path) -> bool:
    """An HDF5 file with the attrs `skinaug encode` writes."""
    try:
        with open(path, "rb") as handle:
            if handle.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
                return False
        import h5py

        with h5py.File(path, "r") as file:
            return "format_version" in file.attrs and "model_fingerprint" in file.attrs
    except OSError:
        return False


def marked_folder(name: str, marker: str, *, resumable: bool = False) -> OutputKind:
    """A folder recognised by one file it always holds (cas.json, memorization.json, sweep_plan.json)."""
    return OutputKind(name, lambda path: (path / marker).is_file(), marker, resumable=resumable)


MODEL_DIRECTORY = OutputKind("model directory", is_model_directory, "config.json with format_version, or train/",
                             resumable=True)
CODE_FILE = OutputKind("code file", is_code_file, "HDF5 with skinaug attrs", single_file=True)
EXPORTED_MODEL = OutputKind(
    "exported model directory",
    lambda path: path.is_dir() and _json_has(path / "config.json", "format_version") and _json_has(path / "config.json", "onnx"),
    "config.json with format_version and onnx")


# ------------------------------------------------------------------------- inputs


def real_path(path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _input_paths(inputs: Iterable) -> list[tuple[object, Path]]:
    """(as given, real path) of every input; DATA '-' stands for each image listed on stdin, wherever it lies
    (their common folder says nothing about a file listed from inside the output)."""
    found = []
    for given in inputs:
        if given is None or str(given) == "":
            continue
        if str(given) == "-":
            from ..data.scan import _stdin_files

            found += [(file.path, real_path(file.path)) for file in _stdin_files()[1]]
        else:
            found.append((given, real_path(given)))
    return found


def refuse_output_over_inputs(out, inputs: Iterable) -> None:
    """--out may neither be nor hold an input (--overwrite would delete what the command reads), nor lie inside an
    input folder (the next run would read the output as input: new images, a new class; a model directory would
    gain files that are not the model's)."""
    final = real_path(out)
    for given, source in _input_paths(inputs):
        if source == final or final in source.parents:
            relation = "is" if source == final else "holds"
            raise SkinaugError(f"{{out}} {out} {relation} the input {given}: skinaug never writes over its inputs, "
                               "choose another {out}")
        if source in final.parents:
            raise SkinaugError(f"{{out}} {out} lies inside the input {given}: skinaug never writes into its inputs, "
                               "choose an {out} outside it")


def _content_digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def _file_state(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


def input_state(inputs: Iterable) -> dict:
    """What a resumable run's plan records of its inputs, so that --resume refuses to finish a run whose inputs
    changed since it began: a model directory by its weights' content (a copy of the same model resumes, another
    model with the same VQ-VAE does not), any other file or folder by each file's size and modification time.
    Keyed by real path; DATA '-' is each listed image."""
    state: dict = {}
    for _, source in _input_paths(inputs):
        key = str(source)
        if is_model_directory(source):
            state[key] = {weights.name: _content_digest(weights) for weights in sorted(source.glob("*.safetensors"))}
        elif source.is_dir():
            state[key] = {str(file.relative_to(source)): _file_state(file)
                          for file in sorted(source.rglob("*")) if file.is_file()}
        else:
            state[key] = _file_state(source) if source.is_file() else None
    return state


def files_digest(paths: Iterable) -> str:
    """One short digest of the files' names, sizes and modification times: whether a set of inputs is as it was."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(str(path) for path in paths):
        digest.update(json.dumps([path, _file_state(Path(path)) if Path(path).is_file() else None]).encode())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------- the lock

_LOCKS_HERE: "weakref.WeakValueDictionary[str, OutputLock]" = weakref.WeakValueDictionary()
_LOCKS_HERE_GUARD = threading.Lock()


class OutputLock:
    """An exclusive flock on `.NAME.skinaug.lock` beside the output, with the holder's pid in it.

    Another process is refused. In this process a new claim takes the lock over from an earlier one of the same
    thread: that one was abandoned (its run raised), though a traceback may still keep it alive.
    """

    def __init__(self, final: Path, shown):
        self.path = final.parent / f".{final.name}.skinaug.lock"
        self.thread = threading.get_ident()
        self.pid = os.getpid()
        self.handle = None
        with _LOCKS_HERE_GUARD:
            earlier = _LOCKS_HERE.get(str(self.path))
            if earlier is not None and earlier.handle is not None:
                self._take_over(earlier, shown)
            else:
                self.handle = self._acquire(shown)
            _LOCKS_HERE[str(self.path)] = self

    def _take_over(self, earlier: "OutputLock", shown) -> None:
        if earlier.thread != self.thread and any(t.ident == earlier.thread for t in threading.enumerate()):
            raise SkinaugError(f"{shown} is being written by another thread of this process (pid {os.getpid()})")
        self.handle, earlier.handle = earlier.handle, None

    def _acquire(self, shown):
        while True:
            handle = self._open(shown)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise SkinaugError(f"{shown} is being written by another skinaug process (pid {holder}): "
                                   "wait for it to finish, or choose another {out}") from None
            if _same_file(handle, self.path):
                break
            handle.close()  # the previous holder removed the file after we opened it: lock the one there now
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return handle

    def _open(self, shown):
        # never through a link: a planted `.NAME.skinaug.lock -> victim` must not get its target truncated
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            descriptor = os.open(self.path, flags, 0o666)
        except OSError as error:
            if not os.path.lexists(self.path):  # the folder refuses a new file (read-only, permissions, full): its fault
                raise SkinaugError(os_error_message(error, self.path.parent, f"cannot write {shown} in")) from None
            raise SkinaugError(f"cannot lock {shown}: {self.path} cannot be opened as a plain file "
                               f"({error.strerror}); remove it if no skinaug process is running") from None
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
            os.close(descriptor)
            raise SkinaugError(f"cannot lock {shown}: {self.path} is not a plain file of its own (a link?): "
                               "remove it if no skinaug process is running")
        return os.fdopen(descriptor, "r+", encoding="ascii")

    def release(self) -> None:
        # a forked worker (a DataLoader's) shares the lock with its parent: only the process that took it lets go
        if self.handle is None or os.getpid() != self.pid:
            return
        # removed while still held: a process that opened it meanwhile sees it gone and locks a new one;
        # only our own file (someone may have replaced it meanwhile: theirs stays)
        if _same_file(self.handle, self.path):
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.handle.close()
        self.handle = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.release()


def _same_file(handle, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------------- claiming an output


def _sibling(final: Path, role: str) -> Path:
    return final.parent / f".{final.name}.skinaug-{role}"


def _is_absent(path: Path) -> bool:
    """Absent, or an empty folder (which a user may create for the output)."""
    if path.is_dir() and not path.is_symlink():
        return not any(path.iterdir())
    return not path.exists()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _sync_folder(folder: Path) -> None:
    """Makes a rename inside `folder` durable."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_parents(folder: Path) -> list[Path]:
    """Creates `folder` and its missing parents; returns those it created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        try:
            created.mkdir(exist_ok=True)
        except OSError as error:
            raise SkinaugError(f"cannot create the folder {created} ({error.strerror})") from None
    return list(reversed(missing))


def _finish_cut_swap(final: Path) -> None:
    """A commit cut off between its two renames left the old output aside and the finished new one staged."""
    old, new = _sibling(final, "old"), _sibling(final, "new")
    if not old.exists():
        return
    if _is_absent(final) and new.exists():
        os.replace(new, final)
    elif _is_absent(final):
        os.replace(old, final)
        return
    _remove(old)


def _remove_stale_temporaries(final: Path) -> None:
    """The temporary files (`atomic_path`'s `.NAME.*.tmp`) of a run that was killed before it could remove them.
    Called under the output's lock, so no other writer owns them; left alone they would hold the space for ever."""
    # exactly mkstemp's names for this output: `.synth.png.k2j3h4g5.tmp`, another output's (`--out synth.png` beside
    # `--out synth`), or a user's `.synth.notes.tmp`, is not ours
    ours, stale = re.compile(re.escape(f".{final.name}.") + r"[a-z0-9_]{8}\.tmp"), []
    with contextlib.suppress(OSError), os.scandir(final.parent) as entries:
        stale = [entry.path for entry in entries if ours.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False)]
    for path in stale:
        with contextlib.suppress(OSError):
            os.unlink(path)


def swap_into_place(work: Path, final: Path) -> None:
    """Renames `work` onto `final`; an existing `final` is moved aside first and removed once `work` is in place."""
    old = _sibling(final, "old")
    if final.exists():
        os.replace(final, old)
    os.replace(work, final)
    _remove(old)
    _sync_folder(final.parent)


@dataclass
class OutputClaim:
    """The right to write one output: where this run writes, whether it resumes, and the lock."""

    path: Path  # the output as the caller named it (for messages and summaries)
    final: Path  # its real location
    work: Path  # where this run writes: `final`, or the staging sibling that replaces it at commit
    resuming: bool
    lock: OutputLock | None
    created: list[Path] = field(default_factory=list)  # parent folders made for the lock

    @property
    def staged(self) -> bool:
        return self.work != self.final

    def commit(self) -> None:
        """Puts a staged output in place (only now is an earlier one replaced) and ends the claim."""
        if self.staged and self.work.exists():
            swap_into_place(self.work, self.final)
        self.release()

    def release(self) -> None:
        """Ends the claim without committing: a staged run stays beside the output, for --resume."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        for folder in reversed(self.created):  # made for a run that then wrote nothing
            with contextlib.suppress(OSError):
                folder.rmdir()
        self.created = []

    def __enter__(self) -> "OutputClaim":
        return self

    def __del__(self):
        # a claim dropped by a run that raised before it could release it
        with contextlib.suppress(Exception):
            self.release()

    def __exit__(self, error_type, error, traceback) -> None:
        self.commit() if error_type is None else self.release()


def claim_output(path, *, kind: OutputKind, inputs: Iterable = (), overwrite: bool = False,
                 resume: bool = False) -> OutputClaim:
    """Applies the output policy (see the module docstring) and locks the output; creates nothing else.

    Call it once the options are validated; write into `.work`, then `.commit()` (or `.release()` on failure).
    """
    if overwrite and resume:
        raise UsageError("{overwrite=True} and {resume=True} contradict each other: choose one")
    path = Path(path)
    refuse_output_over_inputs(path, list(inputs))
    final = real_path(path)
    _refuse_shipped(path, final)
    created = _make_parents(final.parent)
    try:
        lock = OutputLock(final, path)
    except BaseException:
        OutputClaim(path, final, final, False, None, created).release()
        raise
    claim = OutputClaim(path, final, final, False, lock, created)
    try:
        claim.work, claim.resuming = _where_to_write(path, final, kind, overwrite=overwrite, resume=resume)
    except BaseException:
        claim.release()
        raise
    return claim


SHIPPED_MODELS = Path(__file__).parent.parent / "models"  # skinaug/models/, package data: installed with skinaug, read-only by contract


def is_shipped(path) -> bool:
    """True for a model installed with skinaug (or a path inside one)."""
    try:
        Path(path).resolve().relative_to(SHIPPED_MODELS.resolve())
    except ValueError:
        return False
    return True


def _refuse_shipped(path: Path, final: Path) -> None:
    """Nothing is written into (or over) the models installed with skinaug: they belong to the installation."""
    if is_shipped(final) or final in real_path(SHIPPED_MODELS).parents:
        raise SkinaugError(f"{{out}} {path} is or holds a model shipped with skinaug, which is read-only: "
                           "choose another {out}")


def _where_to_write(path: Path, final: Path, kind: OutputKind, *, overwrite: bool, resume: bool) -> tuple[Path, bool]:
    """(work folder, resuming) under the lock."""
    _finish_cut_swap(final)
    _remove_stale_temporaries(final)
    staging = _sibling(final, "new")
    in_place = kind.resumable or kind.single_file
    if resume and staging.exists():
        return staging, True  # an interrupted --overwrite run: the newest work on this output
    if _is_absent(final):
        _remove(staging)
        return (final if in_place else staging), False
    if resume:
        return final, True
    if not overwrite and not kind.recognise(final):  # something else: a folder of the user's, not ours to name
        raise SkinaugError(f"{path} already exists and is not a {kind.name} (no {kind.marker}): "
                           "choose another {out}, or remove it yourself")
    if not overwrite:
        hint = " or {resume=True} to continue it" if kind.resumable else ""
        raise SkinaugError(f"{kind.name} {path} already exists: pass {{overwrite=True}} to replace it{hint}")
    if not kind.recognise(final):
        raise SkinaugError(f"{{overwrite=True}} replaces only an earlier {kind.name} and {path} is not one (no {kind.marker}): "
                           "remove it yourself or choose another {out}")
    _remove(staging)
    return (final if kind.single_file else staging), False

