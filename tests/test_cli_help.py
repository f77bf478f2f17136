"""Help pages read like a Click tool's: plain metavars (DATA, CODES, N, PATH), choices shown as choices and offered
by completion, the Example: lines kept."""

import re
from enum import Enum
from typing import Annotated, Literal, Optional

import pytest
import typer

from skinaug.cli import main, plain_metavar
from tests.test_cli_polish import _every_command

TYPER_STYLE = re.compile(r"\{|<list\[|<int|<float>|<str>|<path>|<bool>|<text>")


@pytest.mark.parametrize("command", _every_command(), ids=" ".join)
def test_no_help_page_shows_typer_style_metavars(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main([*command, "--help"]) == 0
    page = capsys.readouterr().out
    assert TYPER_STYLE.findall(page) == []
    usage = page.split("Usage: ", 1)[1].splitlines()[0]
    assert usage == usage.replace(usage.split("[OPTIONS]")[-1], usage.split("[OPTIONS]")[-1].upper())  # DATA, CODES


def _help(command, monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", "200")
    assert main([*command, "--help"]) == 0
    return capsys.readouterr().out


def _option_line(page: str, flag: str) -> str:
    return next(line for line in page.splitlines() if re.match(rf"│ [* ]*{re.escape(flag)}\s", line))


def test_usage_lines_and_options_use_plain_metavars(capsys, monkeypatch):
    assert "Usage: skinaug encode [OPTIONS] DATA" in _help(["encode"], monkeypatch, capsys)
    assert "Usage: skinaug score codes [OPTIONS] CODES" in _help(["score", "codes"], monkeypatch, capsys)
    assert "Usage: skinaug models [OPTIONS] [MODEL_DIR]..." in _help(["models"], monkeypatch, capsys)
    page = _help(["augment"], monkeypatch, capsys)
    assert "Example: skinaug augment" in page
    assert re.search(r"--top-k\s+N \[x>=1\]", _option_line(page, "--top-k"))
    assert re.search(r"--out\s+PATH", _option_line(page, "--out"))
    assert re.search(r"--model\s+MODEL\s", _option_line(page, "--model"))
    assert re.search(r"--labels\s+CSV\s", _option_line(page, "--labels"))
    assert re.search(r"--temperature\s+NUMBER", _option_line(page, "--temperature"))


@pytest.mark.parametrize("command, flag, shown", [
    (["augment"], "--device", "[auto|cpu|cuda|cuda:N]"),
    (["augment"], "--backend", "[torch|onnx]"),
    (["train", "baseline"], "--arch", "[dcgan|cvae|vae|msssim-vae|vae-gan]"),
    (["train", "prior"], "--arch", "[pixelsnail|gated-pixelcnn]"),
    (["train", "vqvae"], "--loss", "[mse|mse+ssim|mse+gan|mse+ssim+gan]"),
    (["score", "cas"], "--arch", "[efficientnet-b0|resnet10|resnet18]"),
])
def test_choices_are_shown_as_choices(command, flag, shown, capsys, monkeypatch):
    assert shown in _option_line(_help(command, monkeypatch, capsys), flag)


@pytest.mark.parametrize("command, flag, typed, offered", [
    (["augment"], "--backend", "o", ["onnx"]),
    (["train", "baseline"], "--arch", "v", ["vae", "vae-gan"]),
    (["synthesize"], "--device", "c", ["cpu", "cuda"]),
])
def test_completion_offers_the_choices(command, flag, typed, offered):
    from skinaug.cli import app

    group = typer.main.get_command(app)
    for name in command:
        group = group.commands[name]
    option = next(param for param in group.params if flag in param.opts)
    completed = option.shell_complete(typer.Context(group), typed)
    assert [item.value for item in completed] == offered


class Layout(str, Enum):
    flat = "flat"
    imagefolder = "imagefolder"


def test_a_new_enum_or_literal_option_renders_its_choices():
    """An option another change adds (an Enum such as --layout) needs no metavar of its own to read well."""
    demo = typer.Typer(add_completion=False)

    @demo.command()
    def run(layout: Annotated[Optional[Layout], typer.Option("--layout")] = None,
            count: Annotated[int, typer.Option("--count", min=1)] = 1, paths: Optional[list[str]] = None,
            mode: Annotated[Literal["fast", "exact"], typer.Option("--mode")] = "fast"):
        pass

    command = typer.main.get_command(demo)
    shown = {param.name: plain_metavar(param, None) for param in command.params}
    assert shown == {"layout": "[flat|imagefolder]", "count": "N", "paths": "TEXT...", "mode": "[fast|exact]"}
