"""Bad inputs and failing disks reach the user as one clear line: exit 1 for runtime faults (naming the file and
the cause), exit 2 for usage errors (naming the flag); never `internal error` or a traceback."""

import builtins
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import error_line, run_cli


pytestmark = pytest.mark.usefixtures("single_thread")


run = run_cli  # (exit code, stderr) of one CLI call


def synthesize_args(model, out, *extra):
    return ["synthesize", "--model", model, "--out", out, "--class", "nevus", "-n", 1, "--device", "cpu", "--quiet", *extra]


# ------------------------------------------------------------------------------------ failing writes


def _refuse_writes_under(folder: Path, monkeypatch) -> None:
    """Root ignores folder permissions: refuse writes inside `folder` as the kernel does for everyone else."""
    inside = lambda path: os.path.abspath(os.fsdecode(path)).startswith(f"{folder}{os.sep}")  # noqa: E731
    denied = lambda path: PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))  # noqa: E731
    real_mkdir, real_os_open, real_open = os.mkdir, os.open, builtins.open

    def mkdir(path, *args, **kwargs):
        if inside(path):
            raise denied(path)
        return real_mkdir(path, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise denied(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and inside(file):
            raise denied(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)  # pathlib opens files through io.open


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        _refuse_writes_under(folder, monkeypatch)
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("command", ["synthesize into it", "synthesize below it", "encode below it"])
def test_a_read_only_output_folder_is_named_with_the_cause(command, generator_model, read_only_folder, capsys):
    model, data = generator_model["model"], generator_model["data"]
    args = {
        # an empty folder made for the output: the lock beside it is taken, the first image folder is refused
        "synthesize into it": synthesize_args(model, read_only_folder),
        "synthesize below it": synthesize_args(model, read_only_folder / "out"),
        "encode below it": ["encode", data.images, "--labels", data.labels_csv, "--model", model, "--out",
                            read_only_folder / "codes.h5", "--device", "cpu", "--quiet"],
    }[command]
    code, err = run(args, capsys)
    line = error_line(err)
    assert code == 1
    assert str(read_only_folder) in line and "Permission denied" in line
    assert list(read_only_folder.iterdir()) == []


def test_a_full_disk_while_writing_images_names_the_image(generator_model, tmp_path, monkeypatch, capsys):
    from PIL import Image

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises it: no file name

    monkeypatch.setattr(Image.Image, "save", disk_full)
    out = tmp_path / "out"
    code, err = run(synthesize_args(generator_model["model"], out), capsys)
    line = error_line(err)
    assert code == 1
    assert f"cannot write {os.path.realpath(out)}{os.sep}images{os.sep}synthesize_nevus_000000.png: No space left on device" in line


def test_a_full_disk_while_copying_originals_names_the_copy(generator_model, tmp_path, monkeypatch, capsys):
    def disk_full(source, target, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    data, out = generator_model["data"], tmp_path / "out"
    code, err = run(["augment", data.images, "--labels", data.labels_csv, "--model", generator_model["model"], "--out", out,
                     "--factor", "2", "--methods", "mix", "--copy-originals", "--device", "cpu", "--quiet"], capsys)
    line = error_line(err)
    assert code == 1
    assert f"cannot write {os.path.realpath(out)}{os.sep}images{os.sep}img_00.png: No space left on device" in line


def test_a_full_disk_while_writing_a_code_file_names_the_code_file(generator_model, tmp_path, monkeypatch, capsys):
    def disk_full(self, key, value):
        # HDF5 reports the failed system call inside its message and leaves the exception's errno empty
        raise OSError("Can't write data (file write failed: time = Thu Jan  1 00:00:00 1970, filename = 'x', "
                      "file descriptor = 5, errno = 28, error message = 'No space left on device', buf = 0x1)")

    monkeypatch.setattr(h5py.Dataset, "__setitem__", disk_full)
    data, out = generator_model["data"], tmp_path / "codes.h5"
    code, err = run(["encode", data.images, "--labels", data.labels_csv, "--model", generator_model["model"], "--out", out,
                     "--device", "cpu", "--quiet"], capsys)
    line = error_line(err)
    assert code == 1
    assert f"cannot write {os.path.realpath(out)}: No space left on device" in line
    assert not out.exists()


def test_an_output_below_a_file_is_named_with_the_cause(generator_model, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    code, err = run(synthesize_args(generator_model["model"], a_file / "out"), capsys)
    line = error_line(err)
    assert code == 1
    assert str(a_file) in line and "Not a directory" in line


LOCK_HOLDER = """
import sys

from skinaug.storage.fs import claim_output
from skinaug.storage.writer import GENERATED_DATASET

claim = claim_output(sys.argv[1], kind=GENERATED_DATASET)
print("claimed", flush=True)
sys.stdin.read()  # holds the output until the test closes stdin
claim.release()
"""


def test_the_loser_of_a_concurrent_run_gets_one_line(generator_model, tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LOCK_HOLDER), str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        code, err = run(synthesize_args(generator_model["model"], out), capsys)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    line = error_line(err)
    assert code == 1
    assert "is being written by another skinaug process" in line and f"pid {holder.pid}" in line


# ------------------------------------------------------------------------------------ a damaged config.json


def _set(**changes):
    def mutate(config):
        for key, value in changes.items():
            if value is None:
                del config[key]
            else:
                config[key] = value
        return config

    return mutate


CONFIG_FAULTS = {
    "image_size is text": (_set(image_size="big"), "image_size must be a positive multiple of 8, not 'big'"),
    "three levels": (_set(levels=3), "levels must be 1 or 2, not 3"),
    "codebook of 0": (_set(codebook_size=0), "codebook_size must be an integer from 2 to 65535, not 0"),
    "negative code_dim": (_set(code_dim=-1), "code_dim must be a positive integer, not -1"),
    "class_names is text": (_set(class_names="nevus"), "class_names must be a list of distinct, non-empty strings, not 'nevus'"),
    "class_names are numbers": (_set(class_names=[1, 2, 3]), "class_names must be a list of distinct, non-empty strings"),
    "class_names repeat": (_set(class_names=["nevus", "nevus", "bkl"]), "class_names must be a list of distinct"),
    "no grid": (_set(grid=None), "lacks grid"),
    "grid without top": (_set(grid={"bottom": [8, 8]}), "grid must give the shape of each level (bottom, top)"),
    "grid of text": (_set(grid={"bottom": [8, 8], "top": "4x4"}), "grid.top must be [height, width] in codes"),
    "no fingerprint": (_set(fingerprint=None), "lacks fingerprint"),
    "vqvae disagrees": (lambda c: {**c, "vqvae": {**c["vqvae"], "codebook_size": 32}}, "vqvae.codebook_size is 32 but codebook_size is 16"),
    "vqvae channels text": (lambda c: {**c, "vqvae": {**c["vqvae"], "channels": "wide"}}, "vqvae.channels must be a non-negative integer"),
    "priors is text": (_set(priors="none"), "priors must be an object with a config object per level"),
    "format_version text": (_set(format_version="1"), "format_version must be a non-negative integer, not '1'"),
    "a list": (lambda c: [c], "is not a skinaug model config: expected a JSON object"),
}


@pytest.mark.parametrize("fault", list(CONFIG_FAULTS))
def test_a_config_json_with_a_bad_field_is_refused_naming_it(fault, tiny_model, tmp_path, capsys):
    mutate, message = CONFIG_FAULTS[fault]
    model = tmp_path / "model"
    shutil.copytree(tiny_model.path, model)
    config_path = model / "config.json"
    config_path.write_text(json.dumps(mutate(json.loads(config_path.read_text()))))
    code, err = run(synthesize_args(model, tmp_path / "out"), capsys)
    line = error_line(err)
    assert code == 1
    assert line.startswith(f"error: {config_path}") and message in line
    assert not (tmp_path / "out").exists()


def test_a_config_json_that_is_not_utf8_is_refused(tiny_model, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model.path, model)
    (model / "config.json").write_bytes(b"\xff\xfe{")
    code, err = run(synthesize_args(model, tmp_path / "out"), capsys)
    assert code == 1 and error_line(err) == f"error: {model / 'config.json'} is not UTF-8 text, so not JSON written by skinaug"


# ------------------------------------------------------------------------------------ a damaged code file


def _replace(name, make):
    """Replaces dataset `name` by make(its values)."""

    def mutate(file):
        values = file[name][:]
        del file[name]
        file.create_dataset(name, data=make(values))

    return mutate


def _poke(name, index, value):
    def mutate(file):
        values = file[name][:]
        values[index] = value
        file[name][...] = values

    return mutate


CODE_FAULTS = {
    "a code >= K": (_poke("codes/bottom", (0, 0, 0), 99), "/codes/bottom holds code 99, outside the codebook's 0..15"),
    "no /image": (lambda file: file.__delitem__("image"), "lacks /image: it is not a complete skinaug code file"),
    "no /label": (lambda file: file.__delitem__("label"), "lacks /label"),
    "a label past the classes": (_poke("label", 0, 7), "/label holds 7, outside -1..2"),
    "a label below -1": (_poke("label", 0, -5), "/label holds -5, outside -1..2"),
    "fewer names than codes": (_replace("image", lambda names: names[:5]), "must hold one entry per image"),
    "codes as floats": (_replace("codes/bottom", lambda codes: codes.astype("float32")), "/codes/bottom must be (N, H, W) integer codes"),
    "no top codes": (lambda file: file.__delitem__("codes/top"), "says levels=2 but holds /codes/bottom"),
    "another grid": (_replace("codes/bottom", lambda codes: codes[:, :4, :4]), "this model's grids are bottom 8x8, top 4x4"),
    "class_names not JSON": (lambda file: file.attrs.__setitem__("class_names", "nevus"), "the class_names attribute must be a JSON list"),
}


@pytest.mark.parametrize("fault", list(CODE_FAULTS))
def test_a_damaged_code_file_is_refused_naming_the_fault(fault, generator_model, tmp_path, capsys):
    mutate, message = CODE_FAULTS[fault]
    codes = tmp_path / "codes.h5"
    shutil.copy(generator_model["codes"], codes)
    with h5py.File(codes, "a") as file:
        mutate(file)
    code, err = run(["decode", codes, "--model", generator_model["model"], "--out", tmp_path / "out", "--device", "cpu",
                     "--quiet"], capsys)
    line = error_line(err)
    assert code == 1
    assert str(codes) in line and message in line
    assert not (tmp_path / "out").exists()


def test_labels_out_of_range_are_refused_rather_than_mixed_across_classes(generator_model, tmp_path, capsys):
    codes = tmp_path / "codes.h5"
    shutil.copy(generator_model["codes"], codes)
    with h5py.File(codes, "a") as file:
        file["label"][...] = np.full(file["label"].shape, 3, np.int16)  # one past the three classes
    code, err = run(["mix", "--codes", codes, "--model", generator_model["model"], "--out", tmp_path / "out", "-n", 2,
                     "--device", "cpu", "--quiet"], capsys)
    assert code == 1 and "/label holds 3, outside -1..2" in error_line(err)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ other named causes


def test_causes_that_already_had_a_line_keep_it(generator_model, tmp_path, capsys):
    model, data = generator_model["model"], generator_model["data"]
    truncated = tmp_path / "truncated"
    shutil.copytree(model, truncated)
    weights = truncated / "vqvae.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("image,label\nimg_00,n\xe9vus\n".encode("latin-1"))
    cases = [
        (synthesize_args(truncated, tmp_path / "a"), f"{weights} is not a readable safetensors file"),
        (["encode", data.images, "--labels", latin1, "--model", model, "--out", tmp_path / "b.h5", "--device", "cpu"],
         f"{latin1} is not UTF-8 text"),
    ]
    for args, message in cases:
        code, err = run(args, capsys)
        assert code == 1 and message in error_line(err)


def test_preview_of_a_labels_csv_that_is_not_utf8_names_it(tmp_path, capsys):
    folder = tmp_path / "generated"
    (folder / "images").mkdir(parents=True)
    (folder / "labels.csv").write_bytes("image,label,method\nx,n\xe9vus,mix\n".encode("latin-1"))
    code, err = run(["preview", folder, "--out", tmp_path / "sheet.png"], capsys)
    assert code == 1 and error_line(err) == f"error: {folder / 'labels.csv'} is not UTF-8 text: give folders written by skinaug"


# ------------------------------------------------------------------------------------ usage errors: exit 2


# case -> (the flag its one-line message names, its arguments given a context of the tiny model's paths)
USAGE_ERRORS = {
    "--format gif": ("--format", lambda c: synthesize_args(c.model, c.out, "--format", "gif")),
    "decode --format gif": ("--format", lambda c: ["decode", c.codes, "--model", c.model, "--out", c.out, "--format", "gif"]),
    "--device banana": ("--device", lambda c: synthesize_args(c.model, c.out, "--device", "banana")),
    "--device cuda:x": ("--device", lambda c: ["encode", *c.source, "--model", c.model, "--out", c.tmp / "c.h5", "--device", "cuda:x"]),
    "--device mps": ("--device", lambda c: synthesize_args(c.model, c.out, "--device", "mps")),
    "--temperature inf": ("--temperature", lambda c: synthesize_args(c.model, c.out, "--temperature", "inf")),
    "--temperature nan": ("--temperature", lambda c: synthesize_args(c.model, c.out, "--temperature", "nan")),
    "--temperature 0": ("--temperature", lambda c: synthesize_args(c.model, c.out, "--temperature", "0")),
    "resample --temperature -1": ("--temperature", lambda c: ["resample", "--codes", c.codes, "--model", c.model, "--out", c.out,
                                                              "--temperature", "-1"]),
    "--factor nan": ("--factor", lambda c: ["augment", *c.source, "--model", c.model, "--out", c.out, "--factor", "nan"]),
    "--factor inf": ("--factor", lambda c: ["augment", *c.source, "--model", c.model, "--out", c.out, "--factor", "inf"]),
    "--methods mix:nan": ("--methods", lambda c: ["augment", *c.source, "--model", c.model, "--out", c.out, "--factor", "2",
                                                  "--methods", "mix:nan"]),
    "synthesize --class zebra": ("--class", lambda c: ["synthesize", "--model", c.model, "--out", c.out, "--class", "zebra", "-n", 1]),
    "mix --class zebra": ("--class", lambda c: ["mix", "--codes", c.codes, "--model", c.model, "--out", c.out, "-n", 1,
                                                "--class", "zebra"]),
    "resample --class zebra": ("--class", lambda c: ["resample", "--codes", c.codes, "--model", c.model, "--out", c.out,
                                                     "--class", "zebra"]),
    "train vqvae --lr inf": ("--lr", lambda c: ["train", "vqvae", c.source[0], "--out", c.out, "--lr", "inf"]),
    "train prior --classes ,": ("--classes", lambda c: ["train", "prior", "--model", c.model, "--codes", c.codes, "--classes", ",",
                                                        "--overwrite"]),
    "preview --by colour": ("--by", lambda c: ["preview", c.codes.parent, "--out", c.out, "--by", "colour"]),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_exit_2_naming_the_flag(case, generator_model, tmp_path, capsys):
    from types import SimpleNamespace

    data = generator_model["data"]
    context = SimpleNamespace(model=generator_model["model"], codes=generator_model["codes"], out=tmp_path / "out",
                              source=[data.images, "--labels", data.labels_csv], tmp=tmp_path)
    flag, make_args = USAGE_ERRORS[case]
    code, err = run([*make_args(context), "--quiet"], capsys)
    line = error_line(err)
    assert code == 2
    assert flag in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, flag", [
    (["synthesize", "--class", "nevus", "-n", "0"], "'-n' / '--count'"),
    (["synthesize", "--per-class", "0"], "'--per-class'"),
    (["mix", "-n", "-1"], "'-n' / '--count'"),
    (["mix", "-n", "2", "--seed", "-1"], "'--seed'"),
    (["resample", "--per-image", "0"], "'--per-image'"),
    (["synthesize", "--per-class", "1", "--batch-size", "0"], "'--batch-size'"),
])
def test_counts_and_seeds_below_their_range_exit_2(args, flag, generator_model, tmp_path, capsys):
    source = [] if args[0] == "synthesize" else ["--codes", generator_model["codes"]]
    code, err = run([*args, *source, "--model", generator_model["model"], "--out", tmp_path / "out", "--quiet"], capsys)
    assert code == 2
    assert f"Invalid value for {flag}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
