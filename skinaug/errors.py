"""Errors that reach the user as one clear line.

Library code raises these; the CLI turns them into `error: <message>` on stderr and an exit code
(1 for runtime problems, 2 for usage problems). Anything else is a bug and shows a traceback only
when SKINAUG_DEBUG=1.
"""

import errno
import os
import re


class SkinaugError(Exception):
    """A runtime problem the user can act on (bad file, missing model part, ...): exit code 1."""

    exit_code = 1


class UsageError(SkinaugError):
    """The command line asks for something impossible or contradictory: exit code 2."""

    exit_code = 2


class BadImage(SkinaugError):
    """One input image cannot be used; the message is the reason (skipped unless --strict)."""


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
    cause = error.strerror or (os.strerror(code) if code else _first_line(error))
    line = f"{action} {_file_name(where)}: {cause}" if where is not None else f"{action}: {cause}"
    hint = _OS_ERROR_HINTS.get(code)
    return f"{line} ({hint})" if hint else line


def _errno_of(error: OSError) -> int | None:
    if error.errno is None and (found := _HDF5_ERRNO.search(str(error))):
        return int(found.group(1))
    return error.errno


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _file_name(where) -> str:
    # OSError.filename may be bytes, a path, or a file descriptor
    return os.fsdecode(where) if isinstance(where, (bytes, os.PathLike)) else str(where)
