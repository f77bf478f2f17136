"""The `skinaug` command line: a thin layer over the library.

Heavy libraries (torch, h5py, PIL) are imported inside commands so that `skinaug --help` stays fast.
"""

from __future__ import annotations

import os
import sys

import typer

from .. import __version__
from ..errors import SkinaugError

app = typer.Typer(
    name="skinaug",
    help="Expand skin-lesion image datasets with a VQ-VAE-2 and class-conditional priors over its codes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"skinaug {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Expand skin-lesion image datasets with a VQ-VAE-2 and class-conditional priors over its codes."""


from . import codes, train  # noqa: E402  (commands register themselves on `app`)

app.add_typer(train.app, name="train")
codes.register(app)


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; known errors become one line on stderr and an exit code (1 runtime, 2 usage).

    Typer (click) reports usage errors itself with exit code 2; skinaug's own errors reach here.
    """
    try:
        app(args=argv, prog_name="skinaug")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    except SkinaugError as error:
        if os.environ.get("SKINAUG_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except Exception as error:  # a bug: one line, traceback on request
        if os.environ.get("SKINAUG_DEBUG"):
            raise
        print(f"error: internal error: {type(error).__name__}: {error} (set SKINAUG_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    sys.exit(main())
