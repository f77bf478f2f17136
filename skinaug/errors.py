"""Errors that reach the user as one clear line.

Library code raises these; the CLI turns them into `error: <message>` on stderr and an exit code
(1 for runtime problems, 2 for usage problems). Anything else is a bug and shows a traceback only
when SKINAUG_DEBUG=1.

Messages (and log lines) name the library's parameters, never command-line flags: a placeholder `{overwrite=True}`,
`{device}`, `{level='bottom'}` or `{codes=CODES.h5}` in the text reads `overwrite=True`, `device`, `level='bottom'`,
`codes=CODES.h5` for Python callers (str(error)) and `--overwrite`, `--device`, `--level bottom`, `--codes CODES.h5`
where the CLI renders it with its flags (`render(text, spell)`). Placeholders sit in plain strings as `{name}` and in
f-strings as `{{name}}`.
"""

import errno
import os
import re

# `{name}` or `{name=value}`: a lowercase Python identifier, and the value as Python writes it (or a METAVAR)
PARAMETER = re.compile(r"\{([a-z_][a-z0-9_]*)(?:=([^{}]+))?\}")


def python_spelling(name: str, value: str | None) -> str:
    return name if value is None else f"{name}={value}"


# a doubled brace is a brace of the data (see `literal`), never part of a placeholder
_LITERAL_BRACE = re.compile(r"(\{\{|\}\})")


def render(text: str, spell=python_spelling) -> str:
    """`text` with each parameter placeholder written as spell(name, value) (value None for a bare `{name}`), and
    each doubled brace (from `literal`) as one brace."""
    return "".join(part[0] if part in ("{{", "}}") else PARAMETER.sub(lambda match: spell(match.group(1), match.group(2)), part)
                   for part in _LITERAL_BRACE.split(str(text)))


def literal(text) -> str:
    """Data (a file name, a CSV cell, a class name) as it goes into a message: a name such as `{overwrite}` is shown
    as it is, never read as a placeholder and spelled as a flag."""
    return str(text).replace("{", "{{").replace("}", "}}")


class Message:
    """A log line whose placeholders are rendered late: str() for Python, `render(spell)` by the CLI's handler."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return render(self.text)

    def render(self, spell=python_spelling) -> str:
        return render(self.text, spell)


class SkinaugError(Exception):
    """A runtime problem the user can act on (bad file, missing model part, ...): exit code 1."""

    exit_code = 1

    def __str__(self) -> str:
        return self.render()

    def render(self, spell=python_spelling) -> str:
        """The message with its parameters spelled by `spell`: Python's by default, the CLI passes its flags."""
        return render(super().__str__(), spell)


class UsageError(SkinaugError):
    """The command line asks for something impossible or contradictory: exit code 2."""

    exit_code = 2


class BadImage(SkinaugError):
    """One input image cannot be used; the message is the reason (skipped unless --strict)."""


# The optional packages (import names) and the extra of pyproject.toml that installs each. The core install is what
# the onnx backend needs (numpy, pillow, h5py, scipy, typer, rich, tqdm); PyTorch and the training-only packages come
# with `skinaug[torch]`.
EXTRAS = {"torch": "torch", "safetensors": "torch", "monai": "torch", "pytorch_msssim": "torch",
          "albumentations": "classic", "onnxruntime": "onnx", "onnx": "onnx"}


def install_hint(package: str) -> str:
    """What to run when the package `package` (an import name) is missing: the one place that names the extras."""
    extra = EXTRAS.get(package.split(".")[0])
    return f"pip install 'skinaug[{extra}]'" if extra else "reinstall skinaug with its dependencies"


def missing_package_message(package: str) -> str:
    """One line for a missing package, e.g. `this needs the package torch, which is not installed: pip install ...`."""
    return f"this needs the package {package}, which is not installed: {install_hint(package)}"


# What the user can do about the causes of a failed read or write that have one remedy.
_OS_ERROR_HINTS = {
    errno.EACCES: "check the permissions, or choose another location",
    errno.EPERM: "check the permissions, or choose another location",
    errno.EROFS: "the file system is read-only: choose another location",
    errno.ENOSPC: "free some space, or choose another location",
    errno.EDQUOT: "free some space, or choose another location",
}
# HDF5 reports a failed system call inside its own message, with no errno on the exception
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


def os_error_message(error: OSError, path=None, action: str = "cannot access") -> str:
    """One line for a failed read or write: the file, the cause as the system names it, and the remedy.

    `path` names the file when the error names none (a failed write() carries no file name) or when the caller
    knows a better name for it (the final name of a temporary file).
    """
    where = path if path is not None else error.filename
    code = _errno_of(error)
    cause = error.strerror or (os.strerror(code) if code else first_line(error))
    line = f"{action} {_file_name(where)}: {cause}" if where is not None else f"{action}: {cause}"
    hint = _OS_ERROR_HINTS.get(code)
    return f"{line} ({hint})" if hint else line


def _errno_of(error: OSError) -> int | None:
    if error.errno is None and (found := _HDF5_ERRNO.search(str(error))):
        return int(found.group(1))
    return error.errno


def first_line(error: Exception) -> str:
    """The first line of another library's error (its later lines are tracebacks or advice), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _file_name(where) -> str:
    # OSError.filename may be bytes, a path, or a file descriptor
    return os.fsdecode(where) if isinstance(where, (bytes, os.PathLike)) else str(where)
