"""The `skinaug` command line: a thin layer over the library.

Heavy libraries (torch, h5py, PIL) are imported inside commands so that `skinaug --help` stays fast.
"""

from __future__ import annotations

import ast
import contextlib
import os
import sys

import typer

from ..version import __version__
from ..errors import SkinaugError, missing_package_message, os_error_message

app = typer.Typer(
    name="skinaug",
    help="Expand skin-lesion image datasets with a VQ-VAE-2 and class-conditional priors over its codes.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# How a value is shown when an option names no metavar of its own: plain words, as Click tools write them
PLAIN_METAVARS = {"int": "N", "float": "NUMBER", "str": "TEXT", "bool": "BOOL"}


def plain_metavar(param, ctx) -> str | None:
    """What the help shows after an option (or as an argument's name) in place of Typer 0.2x's own
    `<int range>`, `<list[Path]>`, `<str>` and `{data}`: the param's metavar, else its choices as `[a|b]`
    (Enum and Literal types, so that completion offers them too), else PATH, N, NUMBER or TEXT; a flag shows none."""
    if getattr(param, "is_flag", False) and not getattr(param, "count", False):
        return None
    if param.metavar is not None:
        return param.metavar
    described = param.type_descriptor
    if described.is_choice:
        values = [getattr(choice, "value", choice) for choice in described.choices or ()]
        shown = "[" + "|".join(str(value) for value in values) + "]"
    elif described.is_path or (described.is_list and "Path" in param.bare_type()):
        shown = "PATH"
    else:
        shown = PLAIN_METAVARS.get(param.bare_type().removeprefix("list[").removesuffix("]"), "VALUE")
    return shown + ("..." if param.nargs != 1 or described.is_list else "")


def _plain_help() -> None:
    """Typer 0.2x writes every flag `--overwrite <bool>`, a value `<int range>` or `<list[Path]>`, and a required
    argument `{data}` in the usage line. One place renders them the Click way instead (`--seed N`, `--device
    [auto|cpu|cuda]`, `skinaug encode DATA`), so that no option need say metavar= to read well."""
    from typer.core import TyperArgument, TyperOption

    if getattr(TyperOption, "skinaug_plain_help", False):
        return

    def argument_name(self) -> str:
        return self.metavar or (self.name or "").upper()

    def usage_name(self) -> str:
        name = argument_name(self)
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    TyperOption.display_type_rich = lambda self, ctx: plain_metavar(self, ctx)
    TyperArgument.display_type_rich = lambda self, ctx: None  # the name column already shows DATA
    TyperArgument.display_name_raw = property(argument_name)
    TyperArgument._usage_display_name = usage_name
    TyperOption.skinaug_plain_help = True


_plain_help()

def _version(value: bool) -> None:
    if value:
        print(f"skinaug {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Expand skin-lesion image datasets with a VQ-VAE-2 and class-conditional priors over its codes."""


from . import encode_decode, export, generate, inspect, models, preview, score, train  # noqa: E402

# Every module holds one command group as its own `app`: the groups of top-level commands are merged into this one
# (in the order `skinaug --help` lists them), the others become sub-commands (`skinaug train vqvae`).
for _group in (encode_decode, generate, models, preview, inspect):
    app.registered_commands += _group.app.registered_commands
app.add_typer(train.app, name="train")
app.add_typer(score.app, name="score")
app.add_typer(export.app, name="export")


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit code: 0 success, 1 runtime error (one line), 2 usage error, 130 interrupted."""
    from ..data.class_map import using_class_map
    from ..runtime import StderrHandler, reporting

    spell = flag_spelling(argv if argv is not None else sys.argv[1:])
    # progress lines on stderr (--quiet lowers the level); --class-map holds for this command only
    with reporting(StderrHandler(spell)), _pillow_warnings_as_lines(), using_class_map(None):
        return _run(argv if argv is not None else sys.argv[1:], spell)


@contextlib.contextmanager
def _pillow_warnings_as_lines():
    """Pillow's warnings about a file (a large image, odd EXIF, a palette with transparency) as skinaug's own lines,
    hidden by --quiet, instead of Python's two-line `file:line: Warning` form; other warnings are left as they are."""
    import warnings

    from ..runtime import log

    shown = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if f"{os.sep}PIL{os.sep}" in str(filename):
            log(f"Pillow: {_one_line(message)}")
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    try:
        yield
    finally:
        warnings.showwarning = shown


def flag_spelling(argv: list[str]):
    """How this command line spells a parameter that a library message names (skinaug.errors): as the running
    command's option (its first flag) or argument (its metavar), else as --name-with-dashes; a value after it
    (`--level bottom`), none for a flag set to True (`--overwrite`)."""
    flags: dict = {}

    def spell(name: str, value: str | None) -> str:
        if not flags:
            flags.update(_flags_of(argv))
        flag = flags.get(name) or "--" + name.replace("_", "-")
        if value is None:
            return flag
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a METAVAR (`{codes=CODES.h5}`)
        return flag if value is True else f"{flag} {value}"

    return spell


def _flags_of(argv: list[str]) -> dict[str, str]:
    command = typer.main.get_command(app)
    for word in argv:
        commands = getattr(command, "commands", None)
        if not commands or word not in commands:
            break
        command = commands[word]
    return {param.name: param.opts[0] if param.param_type_name == "option" else (param.metavar or param.name.upper())
            for param in command.params if param.name}


def _run(argv: list[str] | None, spell) -> int:
    try:
        result = app(args=argv, prog_name="skinaug", standalone_mode=False)
        if result == 130:  # typer turns Ctrl-C into Exit(130), which click returns when not standalone
            return _interrupted(argv)
        return result if isinstance(result, int) else 0
    except SkinaugError as error:
        if os.environ.get("SKINAUG_DEBUG"):
            raise
        print(f"error: {_one_line(error.render(spell))}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return _interrupted(argv)
    except BrokenPipeError:
        return _closed_stdout()
    except SystemExit as error:  # typer's completion options exit themselves
        # click's exit(1) on EPIPE (the reader went away) leaves sys.stdout wrapped: a clean exit (0) is never that
        if error.code not in (0, None) and type(sys.stdout).__name__ == "PacifyFlushWrapper":
            return _closed_stdout()
        return error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
    except OSError as error:
        # a failed read or write with a cause the user can act on (permissions, a full disk, a file where a
        # folder should be): named like any other runtime error, not as a bug
        if os.environ.get("SKINAUG_DEBUG"):
            raise
        print(f"error: {_one_line(os_error_message(error))}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as error:
        if os.environ.get("SKINAUG_DEBUG"):
            raise
        # an optional dependency (torch for the torch backend and training, ...) is named with its extra, not as a bug
        package = (error.name or "").split(".")[0]
        print(f"error: {missing_package_message(package or str(error))}", file=sys.stderr)
        return 1
    except Exception as error:
        # typer's (click's) own signals, matched by shape: their classes moved between typer releases
        if type(error).__name__ == "Abort":
            return _interrupted(argv)
        if hasattr(error, "exit_code") and not hasattr(error, "show"):  # Exit (e.g. after --help or --version)
            return error.exit_code
        if hasattr(error, "show") and hasattr(error, "exit_code"):  # usage errors
            error.show(file=sys.stderr)
            return error.exit_code
        if os.environ.get("SKINAUG_DEBUG"):
            raise
        print(f"error: internal error: {type(error).__name__}: {_one_line(error)} (set SKINAUG_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


# what a shell reports for a process ended by SIGPIPE (128 + 13), as `head` leaves `yes`
SIGPIPE_EXIT = 141


def _closed_stdout() -> int:
    """The reader of stdout went away (`... | head -1`): stop quietly, as Unix tools do. A generated folder stays
    marked unfinished (.progress/, for --resume) and a file output is never put in place half written."""
    with contextlib.suppress(OSError, AttributeError, ValueError):  # a stdout without a descriptor needs nothing
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())  # Python's final flush of stdout must not fail again
        finally:
            os.close(devnull)
    return SIGPIPE_EXIT


def _one_line(message) -> str:
    """The contract promises one line: messages quoting other libraries' errors may hold several."""
    return " ".join(str(message).splitlines()).strip()


def _interrupted(argv: list[str]) -> int:
    """Ctrl-C: what is kept, and how to go on; --resume only where the command has it (encode writes its code
    file whole or not at all)."""
    try:
        resumable = "resume" in _flags_of(argv)
    except Exception:  # an incomplete command line: no command to name
        resumable = False
    if resumable:
        print("interrupted: finished batches are kept; run the same command with --resume to continue", file=sys.stderr)
    else:
        print("interrupted: the output was not finished (an earlier one is kept); run the same command again",
              file=sys.stderr)
    return 130


def run() -> None:
    sys.exit(main())
