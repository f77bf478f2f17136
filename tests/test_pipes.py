"""Pipes: --jsonl writes one JSON line per finished image, DATA '-' reads image paths from stdin, and the README's
pipeline runs."""

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from skinaug.cli import main
from skinaug.storage.codefile import read_codes
from skinaug.data.scan import _stdin_files

README = Path(__file__).resolve().parents[1] / "README.md"


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_jsonl_gives_one_line_per_image_on_disk_and_nothing_else(generator_model, tmp_path, capsys):
    out = tmp_path / "synth"
    code, stdout, stderr = run(capsys, "synthesize", "--model", generator_model["model"], "--out", out, "--per-class", "2",
                               "--batch-size", "4", "--jsonl", "--device", "cpu", "--quiet")
    assert code == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert len(lines) == 6 and sorted(line["label"] for line in lines) == ["bkl", "bkl", "melanoma", "melanoma", "nevus", "nevus"]
    for line in lines:
        assert Path(line["path"]).is_file() and Path(line["path"]).parent == out / "images"
        assert line["method"] == "synthesize" and line["source_top"] == line["source_bottom"] == ""
    assert {Path(line["path"]).stem for line in lines} == {p.stem for p in (out / "images").iterdir()}

    code, stdout, stderr = run(capsys, "augment", generator_model["data"].images, "--labels", generator_model["data"].labels_csv,
                               "--model", generator_model["model"], "--out", tmp_path / "aug", "--factor", "1.5",
                               "--methods", "mix", "--jsonl", "--device", "cpu", "--quiet")
    assert code == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert sum(line["method"] == "original" for line in lines) == 12 and sum(line["method"] == "mix" for line in lines) == 6
    assert all(Path(line["path"]).is_file() for line in lines)


def test_json_and_jsonl_together_are_a_usage_error(generator_model, tmp_path, capsys):
    code, _, stderr = run(capsys, "synthesize", "--model", generator_model["model"], "--out", tmp_path / "s", "--per-class", "1",
                          "--json", "--jsonl")
    assert code == 2 and "--json and --jsonl both write stdout" in stderr and not (tmp_path / "s").exists()


def test_data_dash_reads_image_paths_from_stdin_with_class_folders_or_labels(generator_model, tiny_dataset, tmp_path, capsys,
                                                                             monkeypatch):
    # class sub-folders, as a folder scan would see them
    folders = tmp_path / "by_class"
    for name, label in zip(tiny_dataset.names, tiny_dataset.labels):
        (folders / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny_dataset.images / f"{name}.png", folders / label / f"{name}.png")
    paths = sorted(str(p) for p in folders.rglob("*.png"))
    for labels in (None, tiny_dataset.labels_csv):
        _stdin_files.cache_clear()
        monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(paths[:9]) + "\n\n" + str(folders / "nevus" / "missing.png") + "\n"))
        codes = tmp_path / f"codes_{labels is None}.h5"
        code, _, stderr = run(capsys, "encode", "-", *(["--labels", labels] if labels else []), "--model",
                              generator_model["model"], "--out", codes, "--device", "cpu")
        assert code == 0, stderr
        written = read_codes(codes)
        assert sorted(written.images) == sorted(Path(p).stem for p in paths[:9])
        label_of = dict(zip(tiny_dataset.names, tiny_dataset.labels))
        assert all(written.class_names[label] == label_of[name] for name, label in zip(written.images, written.labels))
        if labels is None:  # the missing file is said, not dropped in silence
            assert "missing.png" in stderr
    _stdin_files.cache_clear()


@pytest.mark.skipif(shutil.which("jq") is None, reason="the README pipeline uses jq")
def test_the_readme_pipeline_runs(generator_model, tmp_path):
    block = re.search(r"```bash\n# a pipeline\n(.*?)```", README.read_text(), flags=re.S)
    assert block, "the README shows a pipeline"
    script = block.group(1).replace("skinaug ", f"{sys.executable} -m skinaug ")
    # this checkout's skinaug, whichever one the interpreter has installed
    env = {"SKINAUG_MODEL": str(generator_model["model"]), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    codes = read_codes(tmp_path / "melanoma-codes.h5")
    assert len(codes.images) == 8 and {codes.class_names[label] for label in codes.labels} == {"melanoma"}


def test_jsonl_with_an_overwrite_that_would_stage_is_refused(generator_model, tmp_path, capsys):
    out = tmp_path / "synth"
    args = ["synthesize", "--model", generator_model["model"], "--out", out, "--per-class", "1", "--device", "cpu", "--quiet"]
    assert run(capsys, *args)[0] == 0
    code, stdout, stderr = run(capsys, *args, "--overwrite", "--jsonl")
    assert code == 2 and stdout == "" and "--overwrite lands them only when the run ends" in stderr
