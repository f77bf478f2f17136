"""Issue 21, trust round two: faults that ended in a crash, a traceback or `internal error` now end in one line and a
non-zero exit, with nothing left behind (no temporary file, no lock, no stub)."""

import argparse
import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import error_line, run_cli

from skinaug.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]


run = run_cli  # (exit code, stderr) of one CLI call


def leftovers(folder: Path) -> list[str]:
    """Hidden files (temporaries, locks, staging folders) under `folder`."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob(".*"))


# ------------------------------------------------------------------------------------ item 7: a full disk


def _limit_file_size(limit: int):
    def apply() -> None:
        # a file may not grow past `limit`: write() fails with EFBIG, as it fails with ENOSPC on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_disk_filling_up_inside_hdf5_is_one_line_and_leaves_neither_temporary_nor_lock(tiny_model, tmp_path):
    # a real failing write inside HDF5 (not a monkeypatch): it used to end in a segfault (exit -11/139), leaving the
    # temporary code file and the lock behind
    data, out = tiny_model.dataset, tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "skinaug", "encode", str(data.images), "--labels", str(data.labels_csv), "--model",
         str(tiny_model.path), "--out", str(out / "codes.h5"), "--device", "cpu", "--quiet"],
        preexec_fn=_limit_file_size(4000), env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 1, result.stderr
    line = error_line(result.stderr)
    assert f"cannot write {os.path.realpath(out / 'codes.h5')}: File too large" in line
    assert list(out.iterdir()) == []


def test_a_code_file_written_in_memory_reads_back_the_same(tiny_model, tmp_path, capsys):
    from skinaug.storage.codefile import read_codes

    data, out = tiny_model.dataset, tmp_path / "codes.h5"
    code, err = run(["encode", data.images, "--labels", data.labels_csv, "--model", tiny_model.path, "--out", out,
                     "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    codes = read_codes(out)
    assert codes.images == data.names and codes.codes["bottom"].shape[0] == 12
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------ item 12: what a killed run leaves


def test_a_killed_encodes_temporary_file_is_removed_by_the_next_run(tiny_model, tmp_path, capsys):
    data, out = tiny_model.dataset, tmp_path / "codes.h5"
    stale = tmp_path / ".codes.h5.k2j4x9q1.tmp"  # atomic_path's temporary, left by a SIGKILL
    stale.write_bytes(b"\0" * 45_000)
    code, err = run(["encode", data.images, "--labels", data.labels_csv, "--model", tiny_model.path, "--out", out,
                     "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert not stale.exists() and leftovers(tmp_path) == []


def test_only_this_outputs_own_temporaries_are_removed(tiny_model, tmp_path, capsys):
    """Another output's temporary (`preview --out codes.h5.png` writing beside it) and a user's own dot-file are
    not the killed run's: they stay."""
    data, out = tiny_model.dataset, tmp_path / "codes.h5"
    others = [tmp_path / ".codes.h5.png.k2j4x9q1.tmp", tmp_path / ".codes.h5.my-notes.tmp", tmp_path / ".codes.h5.tmp"]
    for path in others:
        path.write_bytes(b"mine")
    stale = tmp_path / ".codes.h5.k2j4x9q1.tmp"
    stale.write_bytes(b"\0")
    code, err = run(["encode", data.images, "--labels", data.labels_csv, "--model", tiny_model.path, "--out", out,
                     "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert not stale.exists() and all(path.read_bytes() == b"mine" for path in others)


def test_ctrl_c_during_encode_does_not_advise_a_resume_it_lacks(tiny_model, tmp_path, monkeypatch, capsys):
    import skinaug.storage.codefile as codes_module

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(codes_module.CodeWriter, "append", interrupted)
    data, out = tiny_model.dataset, tmp_path / "codes.h5"
    code, err = run(["encode", data.images, "--labels", data.labels_csv, "--model", tiny_model.path, "--out", out,
                     "--device", "cpu", "--quiet"], capsys)
    assert code == 130
    assert err.startswith("interrupted:") and "--resume" not in err and "run the same command again" in err
    assert leftovers(tmp_path) == [] and not out.exists()


# ------------------------------------------------------------------------------------ item 9: links leaving DATA


def _entered_folders(monkeypatch) -> list[str]:
    """The folders the intake walker lists (os.scandir), recorded as real paths."""
    from skinaug.data import scan as data

    entered, real_scandir = [], os.scandir

    def scandir(path="."):
        entered.append(os.path.realpath(path))
        return real_scandir(path)

    monkeypatch.setattr(data.os, "scandir", scandir)
    return entered


def test_a_folder_link_to_the_root_or_a_system_folder_is_not_walked(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from skinaug.data.scan import scan_dataset

    root = tmp_path / "data"
    (root / "nevus").mkdir(parents=True)
    Image.new("RGB", (16, 16), "blue").save(root / "nevus" / "n1.png")
    (root / "everything").symlink_to("/", target_is_directory=True)
    (root / "home").symlink_to(tmp_path, target_is_directory=True)  # a folder that holds DATA
    (root / "processes").symlink_to("/proc", target_is_directory=True)
    elsewhere = tmp_path / "elsewhere" / "mel"
    elsewhere.mkdir(parents=True)
    Image.new("RGB", (16, 16), "red").save(elsewhere / "m1.png")
    (elsewhere / "up").symlink_to("/proc/self", target_is_directory=True)  # leaves the linked folder again
    (root / "melanoma").symlink_to(elsewhere, target_is_directory=True)  # a class folder kept elsewhere: followed
    entered = _entered_folders(monkeypatch)
    dataset = scan_dataset(root)
    assert [(s.name, dataset.class_names[s.label]) for s in dataset.samples] == [("m1", "melanoma"), ("n1", "nevus")]
    assert sorted(entered) == sorted(os.path.realpath(p) for p in (root, root / "nevus", elsewhere))
    reasons = dict(dataset.skipped)
    assert reasons["everything"] == "folder link not followed: / holds DATA itself"
    assert reasons["home"] == f"folder link not followed: {os.path.realpath(tmp_path)} holds DATA itself"
    assert reasons["processes"] == "folder link not followed: /proc is a system folder"
    assert reasons["melanoma/up"].startswith("folder link not followed: it leaves the linked folder")
    err = capsys.readouterr().err
    assert "folder link not followed: 4" in err and "/proc/1/" not in err


def test_files_that_are_links_out_of_data_stay_readable(tmp_path, monkeypatch):
    from PIL import Image

    from skinaug.data.scan import scan_dataset

    root = tmp_path / "data"
    (root / "nevus").mkdir(parents=True)
    Image.new("RGB", (16, 16), "blue").save(tmp_path / "n1.png")
    (root / "nevus" / "n1.png").symlink_to(tmp_path / "n1.png")
    dataset = scan_dataset(root)
    assert [s.name for s in dataset.samples] == ["n1"] and dataset.skipped == []


# ------------------------------------------------------------------------------------ item 8: upper bounds


@pytest.fixture
def refuse_allocation(monkeypatch):
    """Fails the test if a large image is allocated: a refusal must come before the allocation."""
    from PIL import Image

    real_new = Image.new

    def new(mode, size, *args, **kwargs):
        assert size[0] * size[1] < 10**8, f"allocated a {size} image"
        return real_new(mode, size, *args, **kwargs)

    monkeypatch.setattr(Image, "new", new)


def test_a_huge_contact_sheet_is_refused_before_it_is_allocated(generator_model, tmp_path, refuse_allocation, capsys):
    out = tmp_path / "synth"
    assert run(["synthesize", "--model", generator_model["model"], "--out", out, "--class", "nevus", "-n", 2,
                "--device", "cpu", "--quiet"], capsys)[0] == 0
    code, err = run(["preview", out, "--out", tmp_path / "sheet.png", "--size", 100000], capsys)
    line = error_line(err)
    assert code == 2
    assert "contact sheet" in line and "GiB of memory, over the limit of" in line and "--size" in line
    assert not (tmp_path / "sheet.png").exists() and leftovers(tmp_path) == []


def test_a_preview_names_its_png_format(generator_model, tmp_path, capsys):
    out = tmp_path / "synth"
    assert run(["synthesize", "--model", generator_model["model"], "--out", out, "--class", "nevus", "-n", 1,
                "--device", "cpu", "--quiet"], capsys)[0] == 0
    code, err = run(["preview", out, "--out", tmp_path / "sheet.jpg"], capsys)
    assert code == 2 and "a contact sheet is a PNG file" in error_line(err)
    assert not (tmp_path / "sheet.jpg").exists()


@pytest.mark.parametrize("args", [
    ["synthesize", "--class", "nevus", "-n", "1000000000"],
    ["synthesize", "--per-class", "400000000"],
])
def test_a_huge_image_count_is_refused_with_the_limit(generator_model, tmp_path, args, capsys):
    out = tmp_path / "out"
    code, err = run([*args, "--model", generator_model["model"], "--out", out, "--device", "cpu", "--quiet"], capsys)
    line = error_line(err)
    assert code == 2 and "images would take" in line and "over the limit of" in line
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_huge_augment_factor_is_refused_in_a_dry_run_too(generator_model, tmp_path, capsys):
    data, out = generator_model["data"], tmp_path / "out"
    code, err = run(["augment", data.images, "--labels", data.labels_csv, "--model", generator_model["model"], "--out",
                     out, "--factor", "1e9", "--dry-run", "--device", "cpu", "--quiet"], capsys)
    assert code == 2 and "planning 12000000000 images would take" in error_line(err)
    assert not out.exists()


def test_the_memory_limit_can_be_set_and_names_itself(generator_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SKINAUG_MEMORY_LIMIT", "64K")
    code, err = run(["synthesize", "--model", generator_model["model"], "--out", tmp_path / "out", "--class", "nevus",
                     "-n", 100, "--device", "cpu", "--quiet"], capsys)
    assert code == 2 and "over the limit of 64.0 KiB (SKINAUG_MEMORY_LIMIT)" in error_line(err)


def test_a_code_file_declaring_more_maps_than_it_stores_is_refused_before_reading(generator_model, tmp_path, capsys):
    import h5py

    codes = tmp_path / "codes.h5"
    with h5py.File(generator_model["codes"], "r") as source, h5py.File(codes, "w") as file:
        for key, value in source.attrs.items():
            file.attrs[key] = value
        for name in ("codes/top", "codes/bottom", "image", "label", "group"):
            shape = (40_000_000, *source[name].shape[1:])  # declared, never written: the file stays a few KB
            file.create_dataset(name, shape=shape, dtype=source[name].dtype, chunks=(64, *source[name].shape[1:]))
    assert codes.stat().st_size < 100_000
    out = tmp_path / "out"
    code, err = run(["decode", codes, "--model", generator_model["model"], "--out", out, "--device", "cpu", "--quiet"],
                    capsys)
    line = error_line(err)
    assert code == 1 and "declares 40000000 entries" in line and "damaged or not from skinaug" in line
    assert not out.exists()


def test_training_an_absurdly_wide_vqvae_is_refused_before_anything_is_made(tiny_dataset, tmp_path,
                                                                            capsys):
    # 100000 channels are 5 TiB of weights and optimiser state: counted on the meta device, never allocated
    out = tmp_path / "model"
    code, err = run(["train", "vqvae", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--out", out,
                     "--channels", 100000, "--image-size", 32, "--epochs", 1, "--device", "cpu", "--quiet"], capsys)
    line = error_line(err)
    assert code == 2 and "training a VQ-VAE of" in line and "over the limit of" in line and "--channels" in line
    assert not out.exists() and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------ item 11: nameable causes


def _edited_model(generator_model, tmp_path, change) -> Path:
    import json
    import shutil

    model = Path(shutil.copytree(generator_model["model"], tmp_path / "model"))
    config = json.loads((model / "config.json").read_text())
    change(config)
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize("change, expected", [
    (lambda c: c["class_names"].append("zzz"), "priors.top.num_classes is 3 but class_names lists 4 classes"),
    (lambda c: c["priors"]["top"].update(arch="transformer"), "priors.top: invalid prior config: arch must be one of"),
    (lambda c: c["priors"]["top"].update(channels=10**6), "prior_top.safetensors does not match its config.json"),
    (lambda c: c["vqvae"].update(channels=10**6), "vqvae.safetensors does not match its config.json"),
], ids=["extra-class", "unknown-arch", "absurd-prior-width", "absurd-vqvae-width"])
def test_an_edited_config_json_is_named_not_an_internal_error(generator_model, tmp_path, change, expected, capsys):
    model = _edited_model(generator_model, tmp_path, change)
    code, err = run(["synthesize", "--model", model, "--out", tmp_path / "out", "--per-class", 1, "--device", "cpu",
                     "--quiet"], capsys)
    line = error_line(err)
    assert code == 1 and expected in line and str(model) in line


def test_method_weights_near_the_float_limit_split_like_small_ones():
    from skinaug.generation.commands import parse_methods, weighted_counts

    huge = weighted_counts(10, parse_methods("mix:1e308,resample:1e308,synthesize:2e307"))
    assert huge == weighted_counts(10, parse_methods("mix:10,resample:10,synthesize:2")) == {"mix": 5, "resample": 4,
                                                                                              "synthesize": 1}


def test_a_code_file_attribute_stored_as_an_array_is_named(generator_model, tmp_path, capsys):
    import shutil

    import h5py

    codes = Path(shutil.copy(generator_model["codes"], tmp_path / "codes.h5"))
    with h5py.File(codes, "a") as file:
        file.attrs["codebook_size"] = [16, 16]
    code, err = run(["decode", codes, "--model", generator_model["model"], "--out", tmp_path / "out", "--device", "cpu",
                     "--quiet"], capsys)
    assert code == 1 and "the codebook_size attribute is an array of shape (2,)" in error_line(err)


def _png_with_huge_text_chunk(path: Path) -> None:
    """A valid PNG whose zTXt chunk inflates past Pillow's limit for text (ValueError on open, not an OSError)."""
    import struct
    import zlib

    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(path)
    data = path.read_bytes()
    payload = b"Comment\0\0" + zlib.compress(b"x" * (64 * 2**20))
    chunk = struct.pack(">I", len(payload)) + b"zTXt" + payload
    chunk += struct.pack(">I", zlib.crc32(b"zTXt" + payload) & 0xFFFFFFFF)
    path.write_bytes(data[:33] + chunk + data[33:])  # after the 8-byte signature and the 25-byte IHDR chunk


def test_a_png_with_an_oversized_text_chunk_is_skipped_as_unreadable(tiny_dataset, tiny_model, tmp_path, capsys):
    _png_with_huge_text_chunk(tiny_dataset.images / "img_00.png")
    out = tmp_path / "codes.h5"
    code, err = run(["encode", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--model", tiny_model.path,
                     "--out", out, "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert "internal error" not in err and "img_00 (truncated or corrupt" in err
    from skinaug.storage.codefile import read_codes

    assert len(read_codes(out)) == 11


def test_a_decompression_bomb_mask_is_one_line(generator_model, tmp_path, monkeypatch, capsys):
    from PIL import Image

    masks = tmp_path / "masks"
    masks.mkdir()
    for name in generator_model["data"].names:
        Image.new("L", (64, 64), 255).save(masks / f"{name}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own limit: a 64x64 mask is then a bomb
    code, err = run(["resample", "--codes", generator_model["codes"], "--model", generator_model["model"], "--out",
                     tmp_path / "out", "--mask-dir", masks, "--device", "cpu", "--quiet"], capsys)
    line = error_line(err)
    assert code == 1 and "cannot read mask" in line and "decompression bomb" in line


@pytest.mark.parametrize("where", ["labels", "generated"])
def test_a_csv_cell_over_the_csv_limit_is_named(tiny_dataset, generator_model, tmp_path, where, capsys):
    huge = "x" * 131_073
    if where == "labels":
        tiny_dataset.labels_csv.write_text(tiny_dataset.labels_csv.read_text() + f"{huge},nevus,l9\n")
        args = ["encode", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--model", generator_model["model"],
                "--out", tmp_path / "codes.h5", "--device", "cpu", "--quiet"]
        named = tiny_dataset.labels_csv
    else:
        out = tmp_path / "synth"
        assert run(["synthesize", "--model", generator_model["model"], "--out", out, "--class", "nevus", "-n", 1,
                    "--device", "cpu", "--quiet"], capsys)[0] == 0
        with open(out / "labels.csv", "a") as handle:
            handle.write(f'"{huge}",nevus,synthesize,,,1.0,0,x\n')
        args, named = ["preview", out, "--out", tmp_path / "sheet.png"], out / "labels.csv"
    code, err = run(args, capsys)
    line = error_line(err)
    assert code == 1 and f"{named} cannot be read as CSV (field larger than field limit (131072))" in line


@pytest.mark.parametrize("command", ["encode", "encode-stdin", "augment", "resample"])
def test_an_image_whose_name_is_not_utf8_is_left_out_with_a_word(generator_model, tiny_dataset, tmp_path, command,
                                                                  monkeypatch, capsys):
    import io
    import shutil

    from skinaug.data.scan import _stdin_files

    bad = os.fsdecode(b"bad\xff.png")  # what os.listdir gives for these bytes
    shutil.copy(tiny_dataset.images / "img_00.png", tiny_dataset.images / bad)
    model, images, labels = generator_model["model"], tiny_dataset.images, tiny_dataset.labels_csv
    out = tmp_path / "out"
    args = {
        "encode": ["encode", images, "--model", model, "--out", out],
        "encode-stdin": ["encode", "-", "--model", model, "--out", out],
        "augment": ["augment", images, "--model", model, "--out", out, "--factor", 2, "--dry-run"],
        "resample": ["resample", images, "--labels", labels, "--model", model, "--out", out],
    }[command]
    if command == "encode-stdin":
        _stdin_files.cache_clear()
        paths = [os.path.join(images, name) for name in (bad, "img_01.png")]
        monkeypatch.setattr(sys, "stdin", io.StringIO("".join(path + "\n" for path in paths)))
    elif command == "augment":
        (images / "nevus").mkdir()  # class folders: augment needs labels
        for name in (bad, "img_01.png", "img_02.png"):
            shutil.move(images / name, images / "nevus" / name)
    try:
        code, err = run([*args, "--device", "cpu", "--quiet"], capsys)
    finally:
        _stdin_files.cache_clear()
    assert code == 0, err
    shown = "nevus/bad?.png" if command == "augment" else "bad?.png"
    assert "internal error" not in err and f"file name not UTF-8: 1 ({shown})" in err


# ------------------------------------------------------------------------------------ item 12: the rest


def test_csv_names_with_braces_are_shown_as_they_are(tiny_dataset, tiny_model, tmp_path, capsys):
    tiny_dataset.labels_csv.write_text(tiny_dataset.labels_csv.read_text() + "{overwrite},nevus,l9\n")
    (tiny_dataset.images / "{strict=True}.png").write_bytes(b"not an image")
    code, err = run(["encode", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--model", tiny_model.path,
                     "--out", tmp_path / "codes.h5", "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert "no image file: 1 ({overwrite})" in err and "--overwrite" not in err


def test_pillow_warnings_are_hidden_by_quiet_and_one_line_otherwise(tiny_dataset, tiny_model, tmp_path, monkeypatch,
                                                                    capsys):
    import warnings

    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 48x40 images: Pillow's DecompressionBombWarning
    args = ["encode", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--model", tiny_model.path, "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, err = run([*args, "--out", tmp_path / "a.h5", "--quiet"], capsys)
        assert code == 0 and err == ""
        code, err = run([*args, "--out", tmp_path / "b.h5"], capsys)
    assert code == 0
    shown = [line for line in err.splitlines() if "DecompressionBomb" in line or "exceeds limit" in line]
    assert shown and all(line.startswith("Pillow: Image size (1920 pixels) exceeds limit") for line in shown)


def test_a_closed_stdout_ends_quietly_and_leaves_the_output_marked_unfinished(generator_model, tmp_path, monkeypatch,
                                                                               capsys):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

        def flush(self):
            pass

    out = tmp_path / "out"
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", ClosedPipe())
        code = main(["synthesize", "--model", str(generator_model["model"]), "--out", str(out), "--class", "nevus",
                     "-n", "4", "--batch-size", "2", "--jsonl", "--device", "cpu", "--quiet"])
    assert code == 141 and capsys.readouterr().err == ""
    assert (out / ".progress").is_dir() and not (out / "run.json").exists()  # unfinished, and says so: --resume
    assert not (tmp_path / ".out.skinaug.lock").exists()


def test_a_read_only_folder_is_blamed_not_the_lock_file(tiny_dataset, tiny_model, tmp_path, monkeypatch, capsys):
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if os.fsdecode(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", read_only)
    code, err = run(["encode", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--model", tiny_model.path,
                     "--out", tmp_path / "ro" / "codes.h5", "--device", "cpu", "--quiet"], capsys)
    line = error_line(err)
    assert code == 1 and f"in {tmp_path / 'ro'}: Read-only file system" in line and "lock" not in line


@pytest.mark.parametrize("value", ["/nonexistent/model", "a-folder"])
def test_models_lists_the_others_when_skinaug_model_is_bad(tmp_path, monkeypatch, value, capsys):
    (tmp_path / "a-folder").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKINAUG_MODEL", value)
    capsys.readouterr()
    code = main(["models"])
    captured = capsys.readouterr()
    assert code == 0 and "ham10000-64" in captured.out
    assert captured.err.startswith(f"warning: ") and value in captured.err and "the other models are listed" in captured.err
    assert "--resume" in captured.err or "no such model" in captured.err


def test_an_existing_folder_is_not_called_an_output_of_the_kind(tiny_dataset, tiny_model, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, err = run(["train", "vqvae", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--out", mine,
                     "--image-size", 32, "--epochs", 1, "--device", "cpu", "--quiet"], capsys)
    line = error_line(err)
    assert code == 1 and f"{mine} already exists and is not a model directory" in line
    assert "model directory " + str(mine) not in line and (mine / "notes.txt").read_text() == "mine"


def test_no_originals_with_copy_originals_is_a_usage_error(generator_model, tmp_path, capsys):
    data, out = generator_model["data"], tmp_path / "out"
    code, err = run(["augment", data.images, "--labels", data.labels_csv, "--model", generator_model["model"], "--out", out,
                     "--factor", 2, "--no-originals", "--copy-originals", "--device", "cpu", "--quiet"], capsys)
    line = error_line(err)
    assert code == 2 and "--no-originals" in line and "--copy-originals" in line
    assert not out.exists()


def test_without_validation_images_no_training_error_is_stored_as_validation(tiny_dataset, tmp_path, capsys):
    import json

    out = tmp_path / "model"
    code, err = run(["train", "vqvae", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--out", out,
                     "--image-size", 32, "--channels", 8, "--res-channels", 4, "--codebook-size", 16, "--code-dim", 4,
                     "--epochs", 1, "--batch-size", 4, "--val-fraction", 0, "--device", "cpu"], capsys)
    assert code == 0, err
    assert "val MSE none (no validation images)" in err
    line = json.loads((out / "train" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["val_mse"] is None and 0 < line["train_sample_mse"] < 1
    assert json.loads((out / "config.json").read_text())["metrics"]["val_mse"] is None


@pytest.mark.parametrize("reader", ["checkpoint", "classifier weights"])
def test_a_refused_weights_file_does_not_repeat_pytorchs_advice(tmp_path, reader):
    import torch

    from skinaug.errors import SkinaugError

    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2), "extra": argparse.Namespace(a=1)}, path)  # an object: pickle only
    with pytest.raises(SkinaugError) as caught:
        if reader == "checkpoint":
            from skinaug.training.loop import load_checkpoint

            load_checkpoint(path)
        else:
            from skinaug.scores.classifier import read_weights

            read_weights(path)
    message = str(caught.value)
    assert "weights_only" not in message and "False" not in message and "\x1b" not in message
    assert f"cannot read" in message and str(path) in message and "nothing is unpickled" in message


def test_an_all_zero_mask_gives_a_row_labelled_reconstruction_not_resample(generator_model, tmp_path, capsys):
    import csv
    import json

    from PIL import Image

    masks = tmp_path / "masks"
    masks.mkdir()
    for index, name in enumerate(generator_model["data"].names):
        Image.new("L", (64, 64), 0 if index == 3 else 255).save(masks / f"{name}.png")
    out = tmp_path / "out"
    code, err = run(["resample", "--codes", generator_model["codes"], "--model", generator_model["model"], "--out", out,
                     "--mask-dir", masks, "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert "1 masks mark no part of their image" in err and "img_03 are labelled reconstruction" in err
    with open(out / "labels.csv", newline="") as handle:
        methods = {row["source_top"]: (row["method"], row["temperature"]) for row in csv.DictReader(handle)}
    assert methods.pop("img_03") == ("reconstruction", "")
    assert {method for method, _ in methods.values()} == {"resample"}
    assert json.loads((out / "run.json").read_text())["counts"]["bkl"] == {"reconstruction": 1, "resample": 3}


@pytest.fixture(scope="module")
def onnx_model(generator_model, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    import shutil

    model = tmp_path_factory.mktemp("onnx") / "model"
    shutil.copytree(generator_model["model"], model)
    assert main(["export", "onnx", "--model", str(model), "--quiet"]) == 0
    return model


@pytest.mark.parametrize("damage, expected", [
    ("truncated", "onnxruntime cannot load"),
    ("missing", "is missing: the ONNX export"),
    ("swapped", "is not the graph the export recorded under that name"),
    ("external", "External data path validation failed"),
])
def test_a_damaged_onnx_export_is_named(onnx_model, generator_model, tmp_path, damage, expected, capsys):
    import shutil

    model = Path(shutil.copytree(onnx_model, tmp_path / "model"))
    graphs = model / "onnx"
    encoder, decoder = graphs / "encoder.onnx", graphs / "decoder.onnx"
    if damage == "truncated":
        encoder.write_bytes(encoder.read_bytes()[:1000])
    elif damage == "missing":
        encoder.unlink()
    elif damage == "swapped":
        encoder.write_bytes(decoder.read_bytes())
    else:
        onnx = pytest.importorskip("onnx")
        graph = onnx.load(str(encoder))
        weight = next(init for init in graph.graph.initializer if init.raw_data)
        weight.data_location = onnx.TensorProto.EXTERNAL
        del weight.external_data[:]
        weight.external_data.add(key="location", value="/etc/hostname")  # outside the model: refused by onnxruntime
        weight.ClearField("raw_data")
        onnx.save(graph, str(encoder))
    data = generator_model["data"]
    code, err = run(["encode", data.images, "--labels", data.labels_csv, "--model", model, "--backend", "onnx", "--out",
                     tmp_path / "codes.h5", "--device", "cpu", "--quiet"], capsys)
    line = error_line(err)
    assert code == 1 and expected in line and str(encoder) in line and "export onnx" in line
    assert not (tmp_path / "codes.h5").exists()


def test_training_an_absurdly_wide_prior_is_refused_before_anything_is_written(generator_model, tmp_path, capsys):
    import shutil

    model = Path(shutil.copytree(generator_model["model"], tmp_path / "model"))
    (model / "prior_top.safetensors").unlink()
    before = sorted(path.name for path in model.rglob("*"))
    code, err = run(["train", "prior", "--model", model, "--codes", generator_model["codes"], "--level", "top",
                     "--channels", 200000, "--epochs", 1, "--device", "cpu", "--quiet"], capsys)
    line = error_line(err)
    assert code == 2 and "training the top prior of" in line and "over the limit of" in line and "--channels" in line
    assert sorted(path.name for path in model.rglob("*")) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("link, copy, message", [
    (True, False, "{no_originals=True} leaves the originals out, so {link_originals=True} has nothing to link"),
    (False, True, "{no_originals=True} leaves the originals out, so {copy_originals=True} has nothing to copy"),
])
def test_no_originals_contradicts_linking_or_copying_them_for_every_generator(link, copy, message):
    """One check, which both generators' augment (VQ-VAE-2 and baselines) call before anything is written."""
    from skinaug.errors import UsageError
    from skinaug.generation.commands import linking_originals

    with pytest.raises(UsageError) as refused:
        linking_originals(link, copy, no_originals=True)
    assert refused.value.args == (f"{message}: choose one",)  # str() spells the parameters as Python does
    assert linking_originals(link, copy, no_originals=False) is link
