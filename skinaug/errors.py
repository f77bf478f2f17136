"""Errors that reach the user as one clear line.

Library code raises these; the CLI turns them into `error: <message>` on stderr and an exit code
(1 for runtime problems, 2 for usage problems). Anything else is a bug and shows a traceback only
when SKINAUG_DEBUG=1.
"""


class SkinaugError(Exception):
    """A runtime problem the user can act on (bad file, missing model part, ...): exit code 1."""

    exit_code = 1


class UsageError(SkinaugError):
    """The command line asks for something impossible or contradictory: exit code 2."""

    exit_code = 2


class BadImage(SkinaugError):
    """One input image cannot be used; the message is the reason (skipped unless --strict)."""
