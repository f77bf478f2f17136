"""The user documentation: in the repository, generated where it can be, linking only what a clone holds, and saying
what the code does (formats, columns, methods, exit codes)."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# every page a user reads: the README, the docs, the changelog, the model cards and the models folder's note
USER_PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "models" / "README.md", *DOCS.glob("*.md"),
                     *(ROOT / "skinaug" / "models").glob("*/MODEL_CARD.md")])
# [text](target) and <img src="target">, but not links inside code spans or blocks (removed first)
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|src=\"([^\"]+)\"")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
FENCE = re.compile(r"```.*?```", re.S)


def gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def links(page: Path) -> list[str]:
    text = CODE.sub("", page.read_text(encoding="utf-8"))
    return [first or second for first, second in LINK.findall(text)]


def test_the_user_pages_exist():
    names = {page.relative_to(ROOT).as_posix() for page in USER_PAGES}
    assert {"docs/cli.md", "docs/reference.md", "docs/formats.md", "docs/python-api.md", "docs/README.md",
            "skinaug/models/ham10000-64/MODEL_CARD.md"} <= names


@pytest.mark.parametrize("name", ["reference.md", "python-api.md"])
def test_the_generated_pages_are_what_the_script_writes(name):
    module = gen_docs()
    expected = module.PAGES[name]()
    committed = (DOCS / name).read_text(encoding="utf-8") if (DOCS / name).is_file() else ""
    assert committed == expected, f"docs/{name} is out of date: run `python scripts/gen_docs.py` and commit the result"


def test_the_reference_lists_every_command_with_its_options_and_defaults():
    text = (DOCS / "reference.md").read_text(encoding="utf-8")
    for title in ("skinaug synthesize", "skinaug train vqvae", "skinaug score benefit", "skinaug export onnx"):
        assert f"## `{title}`" in text
    synthesize = text.split("## `skinaug synthesize`")[1].split("\n## ")[0]
    assert "```\nskinaug synthesize [OPTIONS]\n```" in synthesize
    assert "| `--temperature NUMBER` | Sampling temperature (lower: closer to the most likely codes). [default: 1.0] |" in synthesize
    assert "| `-n, --count N` | Images of --class to make. [x>=1] |" in synthesize and "| `--backend [torch\\|onnx]` |" in synthesize
    assert "```\nskinaug encode [OPTIONS] DATA\n```" in text  # the argument by name, not a placeholder
    assert "\x1b[" not in text and "╭" not in text  # no colour, no boxes


def test_the_generator_does_not_depend_on_the_terminal_or_the_environment(tmp_path):
    """The merger reruns the script on another machine: the same code must give the same bytes."""
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "37", "TERM": "xterm-256color", "FORCE_COLOR": "1",
           "SKINAUG_MODEL": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_check_names_a_stale_page_and_how_to_regenerate_it(tmp_path, monkeypatch):
    module = gen_docs()
    for name, render in module.PAGES.items():
        (tmp_path / name).write_text(render(), encoding="utf-8")
    (tmp_path / "reference.md").write_text("# out of date\n", encoding="utf-8")
    assert module.stale_pages(tmp_path) == ["reference.md"]


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_the_user_pages_link_nothing_outside_the_repository(page):
    text = page.read_text(encoding="utf-8")
    assert "../shared" not in text and "shared/docs" not in text, f"{page.name} points outside the repository"
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:, doi:: outside links are not files of a clone
            continue
        path = target.split("#")[0]
        if not path:  # an anchor on the same page
            continue
        resolved = (page.parent / path).resolve()
        assert resolved.is_relative_to(ROOT), f"{page.relative_to(ROOT)} links {target}, outside the repository"
        assert resolved.exists(), f"{page.relative_to(ROOT)} links {target}, which the repository does not hold"


def test_the_link_check_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text('See [the contract](docs/cli.md#x) and <img src="a.png">, not `[x](../shared/y)` or\n'
                    "```\n[z](../shared/z)\n```\n", encoding="utf-8")
    assert links(page) == ["docs/cli.md#x", "a.png"]


def test_the_anchors_the_docs_link_exist():
    for page in USER_PAGES:
        for target in links(page):
            path, _, anchor = target.partition("#")
            if not anchor or re.match(r"[a-z]+:", target) or not (path.endswith(".md") or not path):
                continue
            linked = (page.parent / path).resolve() if path else page
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", linked.read_text(encoding="utf-8")), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}  # as GitHub
            assert anchor in slugs, f"{page.relative_to(ROOT)} links {target}: no such heading"


# ----------------------------------------------------------------------------- formats.md against the code


def formats() -> str:
    return (DOCS / "formats.md").read_text(encoding="utf-8")


def test_formats_names_the_labels_columns_and_methods_the_code_writes():
    from skinaug.data.layout import AUGMENT_METHODS, LABEL_COLUMNS, METHODS

    assert "\n" + ",".join(LABEL_COLUMNS) + "\n" in formats()
    line = next(line for line in formats().splitlines() if line.startswith("The methods a row can name:"))
    assert set(re.findall(r"`([a-z-]+)`", line)) == set(METHODS) | set(AUGMENT_METHODS)


def test_formats_names_the_code_files_attributes_and_datasets():
    from skinaug.storage.codefile import model_attrs

    config = json.loads((ROOT / "skinaug" / "models" / "ham10000-64" / "config.json").read_text(encoding="utf-8"))
    line = re.search(r"^File attributes:(.*?)\.$", formats(), re.S | re.M).group(1)
    assert set(re.findall(r"`([a-z_]+)`", line)) == set(model_attrs(config))
    for dataset in ("/codes/top", "/codes/bottom", "/image", "/label", "/group"):
        assert f"\n{dataset} " in formats()


def test_formats_names_every_file_a_model_directory_may_hold():
    from skinaug.storage.fs import MODEL_ENTRIES

    layout = formats().split("## Model directory")[1].split("```")[1]
    assert {re.match(r"\s*([\w.]+)", line).group(1) for line in layout.splitlines()[2:] if line.strip()} == \
        MODEL_ENTRIES | {"trained_on.json"}


def test_formats_states_the_exit_codes_the_command_line_returns(capsys):
    from skinaug.cli import _interrupted, main
    from skinaug.errors import SkinaugError, UsageError

    table = formats().split("## Exit codes")[1].split("\n## ")[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.M)}
    assert documented == {0, SkinaugError.exit_code, UsageError.exit_code, _interrupted([])} == {0, 1, 2, 130}
    assert main(["--version"]) == 0
    assert main(["synthesize", "--out", "x", "--per-class", "1", "--device", "banana"]) == UsageError.exit_code
    capsys.readouterr()
