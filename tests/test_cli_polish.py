"""CLI polish: the command list, every help page, flags show no `<bool>` type, shell completion is on, a missing
optional package names its extra."""

import importlib.util
import re
import sys

import pytest

from skinaug.cli import main

HELP_PAGES = [[], ["synthesize"], ["augment"], ["resample"], ["train", "vqvae"], ["train", "prior"], ["score", "cas"],
              ["score", "benefit"], ["export", "onnx"], ["models"]]


TOP_LEVEL = ["encode", "decode", "mix", "resample", "synthesize", "augment", "models", "preview", "inspect", "train", "score",
             "export"]
GROUPS = {"train": ["vqvae", "prior"], "score": ["cas", "benefit", "codes", "sweep", "fid", "memorization"], "export": ["onnx"]}


def _listed_commands(page: str) -> list[str]:
    """The names in the help page's Commands panel, in their order."""
    panel = page[page.index("Commands"):]
    return re.findall(r"^│ ([a-z][a-z-]*)\s{2,}", panel, re.M)


def test_the_help_lists_every_command_in_its_order(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["--help"]) == 0
    assert _listed_commands(capsys.readouterr().out) == TOP_LEVEL
    for group, commands in GROUPS.items():
        assert main([group, "--help"]) == 0
        listed = _listed_commands(capsys.readouterr().out)
        assert [name for name in listed if name in commands] == commands  # groups may grow, never lose one


def _every_command():
    import typer

    from skinaug.cli import app

    def walk(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            yield [*path, name]
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


@pytest.mark.parametrize("command", _every_command(), ids=" ".join)
def test_every_help_page_renders(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main([*command, "--help"]) == 0
    captured = capsys.readouterr()
    assert f"Usage: skinaug {' '.join(command)} [OPTIONS]" in captured.out and captured.err == ""
    assert "--help" in captured.out


@pytest.mark.parametrize("command", HELP_PAGES, ids=lambda c: " ".join(c) or "skinaug")
def test_flags_show_no_bool_type_in_the_help(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main([*command, "--help"]) == 0
    page = capsys.readouterr().out
    assert "--help" in page and "<bool>" not in page
    if command == ["synthesize"]:
        assert "PATH" in page  # options that take a value still show its type
        line = next(line for line in page.splitlines() if "--overwrite" in line)
        assert "Replace an existing output" in line


def test_shell_completion_is_on(capsys, monkeypatch):
    # typer detects the parent shell (shellingham) unless told not to; under a runner whose parent is no shell (a
    # detached job, a CI agent) detection fails, so the shell is named and detection is off
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    assert main(["--help"]) == 0
    assert "--install-completion" in capsys.readouterr().out
    assert main(["--show-completion", "bash"]) == 0
    assert "_skinaug_completion" in capsys.readouterr().out


def test_a_clean_exit_is_not_taken_for_a_closed_stdout(capsys, monkeypatch):
    """click leaves sys.stdout wrapped in a PacifyFlushWrapper after an EPIPE; a later command in the same process
    that exits cleanly (the completion script) must still return 0."""
    PacifyFlushWrapper = type("PacifyFlushWrapper", (), {"__init__": lambda self, inner: setattr(self, "inner", inner),
                                                         "write": lambda self, text: self.inner.write(text),
                                                         "flush": lambda self: self.inner.flush()})
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    monkeypatch.setattr(sys, "stdout", PacifyFlushWrapper(sys.stdout))
    assert main(["--show-completion", "bash"]) == 0


def test_export_without_onnxruntime_names_the_extra(generator_model, tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    code = main(["export", "onnx", "--model", str(generator_model["model"]), "--out", str(tmp_path / "exported")])
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == "error: export onnx needs onnxruntime: pip install 'skinaug[onnx]' (or 'skinaug[onnx-gpu]')"
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize("package, hint", [("onnx", "pip install 'skinaug[onnx]'"), ("h5py", "reinstall skinaug with its dependencies")])
def test_any_missing_package_is_one_line_that_says_what_to_install(package, hint, capsys, monkeypatch):
    import skinaug.storage.modeldir

    def missing(*args, **kwargs):
        raise ModuleNotFoundError(f"No module named '{package}'", name=package)

    monkeypatch.setattr(skinaug.storage.modeldir, "find_models", missing)
    assert main(["models"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: this needs the package {package}, which is not installed: {hint}"
