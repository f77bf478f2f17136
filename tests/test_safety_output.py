"""Outputs never destroy inputs or foreign folders, --overwrite replaces only a finished earlier output of the same
kind, one writer per output, files follow the umask, and a refused command leaves nothing behind."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import skinaug
from skinaug.cli import main
from skinaug.errors import SkinaugError
from skinaug.storage.fs import CODE_FILE, claim_output

from conftest import TINY_VQVAE, TINY_VQVAE_ARGS, make_tiny_dataset


def run(*args) -> int:
    return main([str(a) for a in args])


def one_line(text: str) -> str:
    assert text.count("\n") == 1 and text.startswith("error: "), text
    return text.strip()


def snapshot(folder: Path) -> dict:
    """relative path -> (sha256, mtime_ns) of every file under folder: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """skinaug's lock files and staging folders in `folder`."""
    return sorted(p.name for p in folder.iterdir() if ".skinaug" in p.name)


@pytest.fixture
def project(generator_model, tiny_dataset, tmp_path):
    """A private copy of the model (with priors) and its code file in one folder P, and the tiny data: a missing
    refusal then destroys only this test's copies, not the session's shared fixtures."""
    folder = tmp_path / "project"
    folder.mkdir()
    model = Path(shutil.copytree(generator_model["model"], folder / "model"))
    codes = Path(shutil.copy(generator_model["codes"], folder / "codes.h5"))
    return {"folder": folder, "model": model, "codes": codes, "data": tiny_dataset}


def synthesize(model, out, *extra):
    return run("synthesize", "--model", model, "--out", out, "--class", "bkl", "-n", 6, "--batch-size", 2,
               "--device", "cpu", "--quiet", *extra)


@pytest.fixture
def umask():
    """Sets the process umask for one test, then restores it."""
    before = os.umask(0o022)
    yield os.umask
    os.umask(before)


# ------------------------------------------------------------------------- --out over an input


def test_augment_into_its_own_data_folder_is_refused_and_deletes_nothing(project, capsys):
    data = project["data"]
    before = snapshot(data.images.parent)
    assert run("augment", data.images, "--labels", data.labels_csv, "--model", project["model"], "--out", data.images,
               "--factor", 2, "--device", "cpu", "--quiet", "--overwrite") == 1
    assert "is the input" in one_line(capsys.readouterr().err)
    assert snapshot(data.images.parent) == before


@pytest.mark.parametrize("command", ["synthesize", "mix", "decode", "train"])
def test_an_output_that_is_or_holds_an_input_is_refused(project, command, capsys):
    folder, model, codes, data = project["folder"], project["model"], project["codes"], project["data"]
    args = {
        "synthesize": ["synthesize", "--model", model, "--out", model, "--class", "bkl", "-n", 2],  # the model itself
        "mix": ["mix", "--codes", codes, "--model", model, "--out", folder, "-n", 4],  # the folder of model and codes
        "decode": ["decode", codes, "--model", model, "--out", folder],  # the folder of its code file
        "train": ["train", "vqvae", data.images, "--out", data.images.parent, "--epochs", 1],  # the parent of DATA
    }[command]
    before = {"project": snapshot(folder), "data": snapshot(data.images.parent)}
    assert run(*args, "--device", "cpu", "--quiet", "--overwrite") == 1
    assert "choose another --out" in one_line(capsys.readouterr().err)
    assert {"project": snapshot(folder), "data": snapshot(data.images.parent)} == before
    assert leftovers(folder) == [] and leftovers(folder.parent) == []


def test_a_symlink_to_an_input_is_seen_through(project, capsys):
    link = project["folder"].parent / "link_to_model"
    link.symlink_to(project["model"], target_is_directory=True)
    before = snapshot(project["model"])
    assert synthesize(project["model"], link, "--overwrite") == 1
    assert "is the input" in one_line(capsys.readouterr().err)
    assert snapshot(project["model"]) == before and link.is_symlink()


def test_library_callers_are_protected_too(project):
    """The policy lives in the functions that write, not in the CLI."""
    from skinaug.generation.encode_decode import encode_dataset
    from skinaug.storage.writer import DatasetWriter
    from skinaug.scores.cas import CasOptions, run_cas
    from skinaug.scores.memorization import check_memorization

    data, model = project["data"], project["model"]
    before = {"data": snapshot(data.images.parent), "model": snapshot(model)}
    with pytest.raises(SkinaugError, match="holds the input"):
        run_cas(data.images, data.labels_csv, ["real"], CasOptions(device="cpu"), out=data.images.parent, overwrite=True)
    with pytest.raises(SkinaugError, match="is the input"):
        check_memorization(data.images, data.images, out=data.images, overwrite=True)
    with pytest.raises(SkinaugError, match="holds the input"):
        encode_dataset(data.images, data.images.parent, model=model, labels=data.labels_csv, device="cpu", overwrite=True)
    with pytest.raises(SkinaugError, match="is the input"):
        DatasetWriter(model, model_config={}, plan={}, inputs=[model], overwrite=True)
    assert {"data": snapshot(data.images.parent), "model": snapshot(model)} == before


# ------------------------------------------------------------------------- --overwrite: same kind only, staged


def test_overwrite_refuses_a_folder_that_is_not_an_earlier_output_of_the_same_kind(project, tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("a colleague's notes")
    other_model = Path(shutil.copytree(project["model"], tmp_path / "other_model"))
    before = snapshot(other_model)

    assert synthesize(project["model"], notes, "--overwrite") == 1
    assert "replaces only an earlier generated dataset" in one_line(capsys.readouterr().err)
    assert synthesize(project["model"], other_model, "--overwrite") == 1  # a model is not a dataset
    assert "replaces only an earlier generated dataset" in one_line(capsys.readouterr().err)
    assert (notes / "todo.txt").read_text() == "a colleague's notes" and snapshot(other_model) == before

    text_file = tmp_path / "results.txt"
    text_file.write_text("keep me")
    data = project["data"]
    assert run("encode", data.images, "--labels", data.labels_csv, "--model", project["model"], "--out", text_file,
               "--device", "cpu", "--quiet", "--overwrite") == 1
    assert "replaces only an earlier code file" in one_line(capsys.readouterr().err)
    assert text_file.read_text() == "keep me"
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_an_earlier_output_of_the_same_kind(project, tmp_path):
    from skinaug.storage.codefile import read_codes

    codes = tmp_path / "codes.h5"
    shutil.copy(project["codes"], codes)
    (tmp_path / "codes.h5.txt").write_text("not touched")
    data = project["data"]
    assert run("encode", data.images, "--labels", data.labels_csv, "--model", project["model"], "--out", codes,
               "--device", "cpu", "--quiet", "--overwrite") == 0
    assert read_codes(codes).images == data.names

    out = tmp_path / "synth"
    assert synthesize(project["model"], out, "--seed", 0) == 0
    assert synthesize(project["model"], out, "--seed", 1, "--overwrite") == 0
    assert synthesize(project["model"], tmp_path / "straight", "--seed", 1) == 0
    assert (out / "labels.csv").read_text() == (tmp_path / "straight" / "labels.csv").read_text()
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(p.name for p in (tmp_path / "straight" / "images").iterdir())
    assert leftovers(tmp_path) == [] and (tmp_path / "codes.h5.txt").read_text() == "not touched"


def test_a_score_folder_is_replaced_only_by_a_score_of_its_own_kind(tiny_dataset, tmp_path):
    from skinaug.scores.memorization import check_memorization
    from skinaug.scores.options import ScoreOptions

    images, out = tiny_dataset.images, tmp_path / "memorization"
    check_memorization(images, images, out=out, options=ScoreOptions(device="cpu"))
    (out / "memorization.json").write_text("{}")  # marks the earlier output, to see it replaced
    summary = check_memorization(images, images, out=out, overwrite=True, options=ScoreOptions(device="cpu"))
    assert summary["flagged"] == 12 and '"flagged": 12' in (out / "memorization.json").read_text()

    cas = tmp_path / "cas"
    cas.mkdir()
    (cas / "cas.json").write_text('{"sets": []}')
    with pytest.raises(SkinaugError, match="replaces only an earlier memorization folder"):
        check_memorization(images, images, out=cas, overwrite=True, options=ScoreOptions(device="cpu"))
    assert sorted(p.name for p in cas.iterdir()) == ["cas.json"] and leftovers(tmp_path) == []


def test_an_invalid_option_with_overwrite_keeps_the_earlier_dataset(project, tmp_path, capsys):
    out = tmp_path / "synth"
    assert synthesize(project["model"], out) == 0
    before = snapshot(out)
    assert synthesize(project["model"], out, "--temperature", "nan", "--overwrite") == 2
    assert "--temperature" in capsys.readouterr().err
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_a_crash_under_overwrite_keeps_the_earlier_dataset_and_resume_finishes_the_replacement(project, tmp_path,
                                                                                            monkeypatch):
    from skinaug.storage import writer as output

    out, straight = tmp_path / "synth", tmp_path / "straight"
    assert synthesize(project["model"], out, "--seed", 0) == 0
    assert synthesize(project["model"], straight, "--seed", 1) == 0
    before = snapshot(out)

    original, calls = output.DatasetWriter.write_batch, []

    def crash_in_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(output.DatasetWriter, "write_batch", crash_in_second_batch)
        assert synthesize(project["model"], out, "--seed", 1, "--overwrite") == 130
    assert snapshot(out) == before  # the earlier complete dataset is untouched
    assert leftovers(tmp_path) == [".synth.skinaug-new"]  # the new one, cut off, waits beside it

    assert synthesize(project["model"], out, "--seed", 1, "--resume") == 0
    assert (out / "labels.csv").read_text() == (straight / "labels.csv").read_text()
    for image in (straight / "images").iterdir():
        assert (out / "images" / image.name).read_bytes() == image.read_bytes()
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------- one writer per output

HOLD_THE_LOCK = """
import sys
from skinaug.storage.fs import claim_output
from skinaug.storage.writer import GENERATED_DATASET
claim = claim_output(sys.argv[1], kind=GENERATED_DATASET, resume=True)
print("holding", flush=True)
sys.stdin.read()
claim.release()
"""


def test_a_second_writer_is_refused_with_the_holders_pid(project, tmp_path, capsys):
    out = tmp_path / "synth"
    assert synthesize(project["model"], out) == 0
    before = snapshot(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=Path(skinaug.__file__).parents[1])
    try:
        assert holder.stdout.readline() == "holding\n"
        for flag in ("--overwrite", "--resume"):
            assert synthesize(project["model"], out, flag) == 1
            message = one_line(capsys.readouterr().err)
            assert f"pid {holder.pid}" in message and "another skinaug process" in message
        assert snapshot(out) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert leftovers(tmp_path) == []  # the holder removed its lock file
    assert synthesize(project["model"], out, "--overwrite") == 0


def test_the_lock_lies_beside_the_output_with_the_holders_pid(tmp_path):
    out = tmp_path / "codes.h5"
    claim = claim_output(out, kind=CODE_FILE)
    lock = tmp_path / ".codes.h5.skinaug.lock"
    assert lock.read_text() == f"{os.getpid()}\n" and claim.work == out
    claim.release()
    assert not lock.exists() and not out.exists()


# ------------------------------------------------------------------------- permissions follow the umask


def modes(folder: Path) -> set[tuple[str, str]]:
    """('file' or 'folder', octal mode) of everything under folder, the folder included."""
    entries = [folder, *folder.rglob("*")]
    return {("folder" if p.is_dir() else "file", oct(p.stat().st_mode & 0o777)) for p in entries}


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o007, 0o660)])
def test_a_code_file_follows_the_umask(project, tmp_path, umask, mask, mode):
    umask(mask)
    data, codes = project["data"], tmp_path / "codes.h5"
    assert run("encode", data.images, "--labels", data.labels_csv, "--model", project["model"], "--out", codes,
               "--device", "cpu", "--quiet") == 0
    assert codes.stat().st_mode & 0o777 == mode


def test_a_dataset_and_its_replacement_follow_the_umask(project, tmp_path, umask):
    umask(0o022)
    out = tmp_path / "recon"
    assert run("decode", project["codes"], "--model", project["model"], "--out", out, "--device", "cpu", "--quiet") == 0
    assert modes(out) == {("file", "0o644"), ("folder", "0o755")}
    # a replacement is built in a staging folder that is renamed into place: it ends with the same modes
    assert run("decode", project["codes"], "--model", project["model"], "--out", out, "--device", "cpu", "--quiet",
               "--overwrite", "--format", "jpg") == 0
    assert modes(out) == {("file", "0o644"), ("folder", "0o755")} and len(list(out.glob("images/*.jpg"))) == 12


def test_a_model_directory_follows_the_umask(tmp_path, umask, single_thread):
    from skinaug.training.vqvae import TrainOptions, train_vqvae
    from skinaug.vqvae.model import VQVAEConfig

    umask(0o022)
    data = make_tiny_dataset(tmp_path / "data")
    out = tmp_path / "model"
    train_vqvae(data.images, out, labels=data.labels_csv, model_config=VQVAEConfig(**TINY_VQVAE),
                options=TrainOptions(epochs=1, batch_size=4, device="cpu"))
    assert (out / "vqvae.safetensors").stat().st_mode & 0o777 == 0o644
    assert modes(out) == {("file", "0o644"), ("folder", "0o755")}


# ------------------------------------------------------------------------- a refused command leaves nothing


def test_a_command_failing_validation_leaves_no_output(project, tmp_path, capsys):
    out = tmp_path / "new" / "synth"
    assert synthesize(project["model"], out, "--temperature", "nan") == 2
    assert not out.exists()

    masks = tmp_path / "masks"
    masks.mkdir()  # holds no mask at all
    assert run("resample", "--codes", project["codes"], "--model", project["model"], "--out", out, "--mask-dir", masks,
               "--device", "cpu", "--quiet") == 1
    assert "no mask for" in capsys.readouterr().err.splitlines()[-1]
    assert not out.exists()

    # the rerun with valid options is not blocked by anything the failed ones left
    assert synthesize(project["model"], out) == 0
    assert len(list((out / "images").iterdir())) == 6


def test_a_released_claim_leaves_neither_folders_nor_lock(tmp_path):
    claim = claim_output(tmp_path / "a" / "b" / "codes.h5", kind=CODE_FILE)
    assert (tmp_path / "a" / "b").is_dir()
    claim.release()  # as after a failure before anything was written
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- found in review


def test_a_planted_lock_link_never_truncates_its_target(tmp_path):
    from skinaug.errors import SkinaugError
    from skinaug.storage.fs import CODE_FILE, claim_output

    victim = tmp_path / "victim.txt"
    victim.write_text("precious data")
    (tmp_path / ".out.h5.skinaug.lock").symlink_to(victim)
    with pytest.raises(SkinaugError, match="not be opened as a plain file|not a plain file"):
        claim_output(tmp_path / "out.h5", kind=CODE_FILE)
    assert victim.read_text() == "precious data"


def test_nothing_is_written_over_a_shipped_model(tmp_path, monkeypatch, generator_model):
    import shutil

    from skinaug.storage import fs as skinaug_io
    from skinaug.cli import main

    shipped = tmp_path / "installed" / "ham10000-64"
    shutil.copytree(generator_model["model"], shipped, ignore=shutil.ignore_patterns("train"))
    monkeypatch.setattr(skinaug_io, "SHIPPED_MODELS", shipped.parent)
    before = {f.name: f.read_bytes() for f in shipped.iterdir() if f.is_file()}
    data = generator_model["data"]
    for argv in (["train", "vqvae", str(data.images), "--labels", str(data.labels_csv), "--out", str(shipped),
                  "--overwrite", "--epochs", "1", *TINY_VQVAE_ARGS],
                 ["synthesize", "--class", "melanoma", "-n", "2", "--out", str(shipped / "synth")]):
        assert main([*argv, "--quiet"]) == 1
    assert {f.name: f.read_bytes() for f in shipped.iterdir() if f.is_file()} == before
    assert not (shipped / "synth").exists() and not list(shipped.parent.glob(".ham10000-64.skinaug-*"))


def test_resume_never_retrains_a_vqvae_under_its_priors(tmp_path, generator_model, capsys):
    import shutil

    from skinaug.cli import main

    model = tmp_path / "model"
    shutil.copytree(generator_model["model"], model)
    before = (model / "config.json").read_bytes()
    data = generator_model["data"]
    capsys.readouterr()
    assert main(["train", "vqvae", str(data.images), "--labels", str(data.labels_csv), "--out", str(model), "--resume",
                 "--epochs", "2", *TINY_VQVAE_ARGS, "--quiet"]) == 1
    assert "with trained priors" in capsys.readouterr().err
    assert (model / "config.json").read_bytes() == before
