"""Codes and the command line end to end: `skinaug encode` (CODES.h5), Table 2 statistics, `skinaug decode`,
stdout/stderr/exit-code conventions, bad inputs, and a smoke test on real dermoscopy images."""

import csv
import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import TINY_CLASSES
from PIL import Image

from skinaug import __version__
from skinaug.cli import main
from skinaug.storage.codefile import code_statistics, read_codes
from skinaug.data.scan import load_images, scan_dataset
from skinaug.generation.encode_decode import encode_dataset
from skinaug.storage.modeldir import ModelDir
from skinaug.vqvae.model import to_model_input, to_uint8

pytestmark = pytest.mark.usefixtures("single_thread")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONTRACT_COLUMNS = ["image", "label", "method", "source_top", "source_bottom", "temperature", "seed", "model_fingerprint",
                    "path"]


@pytest.fixture(scope="module")
def tiny_codes(single_thread, tiny_model, tmp_path_factory) -> Path:
    """CODES.h5 of the tiny dataset under the two-level tiny model. Read-only."""
    out = tmp_path_factory.mktemp("codes") / "codes.h5"
    encode_dataset(tiny_model.dataset.images, out, model=tiny_model.path, labels=tiny_model.dataset.labels_csv, device="cpu")
    return out


def encode_cli(dataset, model_path, out, *extra: str, labels=True) -> int:
    args = ["encode", str(dataset.images), "--model", str(model_path), "--out", str(out), "--device", "cpu", *extra]
    return main(args + (["--labels", str(dataset.labels_csv)] if labels else []))


def reference_codes(model_path, images_uint8: np.ndarray) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """Codes and [-1, 1] reconstructions straight from the network, without the encode module."""
    model = ModelDir(model_path).load_vqvae()
    with torch.no_grad():
        _, codes, _ = model.encode(to_model_input(torch.from_numpy(images_uint8)))
        reconstruction = model.decode_codes(codes)
    return {level: values.numpy() for level, values in codes.items()}, reconstruction


def one_line(text: str) -> str:
    assert text.count("\n") == 1 and text.endswith("\n"), text
    return text.strip()


# ----------------------------------------------------------------------------------------------- encode


def test_encode_writes_the_contract_layout(tiny_model, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    assert encode_cli(tiny_model.dataset, tiny_model.path, out, "--json", "--batch-size", "5") == 0
    captured = capsys.readouterr()
    stats = json.loads(one_line(captured.out))  # one JSON object on stdout, nothing else
    assert "used top codes" in captured.err  # the Table 2 summary goes to stderr
    config = ModelDir(tiny_model.path).config()
    dataset = tiny_model.dataset

    with h5py.File(out, "r") as file:
        assert set(file) == {"codes", "image", "label", "group"} and set(file["codes"]) == {"top", "bottom"}
        top, bottom = file["codes/top"], file["codes/bottom"]
        assert (top.shape, top.dtype) == ((12, 4, 4), np.uint16)
        assert (bottom.shape, bottom.dtype) == ((12, 8, 8), np.uint16)
        assert top.chunks is not None and top.compression == "gzip"
        assert file["label"].dtype == np.int16 and file["label"].shape == (12,)
        for name in ("image", "group"):
            assert h5py.check_string_dtype(file[name].dtype).encoding == "utf-8"
        assert [s.decode() for s in file["image"][:]] == dataset.names
        assert file["label"][:].tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert [s.decode() for s in file["group"][:]] == dataset.lesions
        attrs = dict(file.attrs)
        assert attrs["format_version"] == 1 and attrs["model_fingerprint"] == config["fingerprint"]
        assert (attrs["codebook_size"], attrs["code_dim"], attrs["levels"], attrs["image_size"]) == (16, 4, 2, 32)
        assert json.loads(attrs["class_names"]) == list(TINY_CLASSES)
        codes = {"top": top[:], "bottom": bottom[:]}

    # the codes are the network's own codes for these images
    images, kept, _ = load_images(scan_dataset(dataset.images, dataset.labels_csv), 32)
    assert [s.name for s in kept] == dataset.names
    expected, reconstruction = reference_codes(tiny_model.path, images)
    for level in ("top", "bottom"):
        assert np.array_equal(codes[level], expected[level].astype(np.uint16))
        assert codes[level].max() < 16

    assert stats["codes"] == str(out) and (stats["images"], stats["skipped"]) == (12, 0)
    assert {k: stats[k] for k in code_statistics(codes, 16)} == code_statistics(codes, 16)
    mse = float(((reconstruction.clamp(-1, 1) - to_model_input(torch.from_numpy(images))) ** 2).mean() / 4)
    assert stats["mse"] == pytest.approx(mse, rel=1e-4) and 0 < stats["mse"] < 0.25

    code_file = read_codes(out)
    assert (code_file.images, code_file.groups, code_file.class_names) == (dataset.names, dataset.lesions, list(TINY_CLASSES))
    assert code_file.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and code_file.fingerprint == config["fingerprint"]


def test_encode_prints_only_the_output_path_without_json(tiny_model, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    assert encode_cli(tiny_model.dataset, tiny_model.path, out, "--quiet") == 0
    captured = capsys.readouterr()
    assert captured.out == f"{out}\n" and captured.err == ""


def test_one_level_model_writes_bottom_codes_only(tiny_model_one_level, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    assert encode_cli(tiny_model_one_level.dataset, tiny_model_one_level.path, out, "--json", "--quiet") == 0
    stats = json.loads(one_line(capsys.readouterr().out))
    with h5py.File(out, "r") as file:
        assert set(file["codes"]) == {"bottom"} and file["codes/bottom"].shape == (12, 8, 8)
        assert file.attrs["levels"] == 1
    assert "used_codes_top" not in stats and "co_occurring_pairs" not in stats and 1 <= stats["used_codes_bottom"] <= 16


def test_encode_of_an_unlabelled_folder_keeps_the_model_classes(tiny_model, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    assert encode_cli(tiny_model.dataset, tiny_model.path, out, "--quiet", labels=False) == 0
    code_file = read_codes(out)
    assert code_file.labels.tolist() == [-1] * 12 and code_file.groups == [""] * 12
    assert code_file.class_names == list(TINY_CLASSES)


def test_bad_images_are_skipped_and_listed_or_fatal_with_strict(tiny_model, tiny_dataset, tmp_path, capsys):
    (tiny_dataset.images / "empty.png").write_bytes(b"")
    (tiny_dataset.images / "notes.png").write_text("these are notes, not pixels\n")
    with open(tiny_dataset.labels_csv, "a") as handle:
        handle.write("empty,bkl,lesion_90\nnotes,nevus,lesion_91\n")

    out = tmp_path / "codes.h5"
    assert encode_cli(tiny_dataset, tiny_model.path, out, "--json") == 0
    captured = capsys.readouterr()
    assert "skipped empty: empty file" in captured.err and "skipped notes: not an image" in captured.err
    stats = json.loads(one_line(captured.out))
    assert (stats["images"], stats["skipped"]) == (12, 2)
    assert read_codes(out).images == tiny_dataset.names

    strict_out = tmp_path / "strict.h5"
    assert encode_cli(tiny_dataset, tiny_model.path, strict_out, "--strict") == 1
    captured = capsys.readouterr()
    message = one_line(captured.err)
    assert message.startswith("error: unusable image") and "--strict" in message
    assert ("empty.png" in message) or ("notes.png" in message)
    assert captured.out == "" and not strict_out.exists() and list(tmp_path.glob(".strict.h5*")) == []


def test_encode_never_overwrites_without_overwrite(tiny_model, tiny_codes, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    shutil.copyfile(tiny_codes, out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert encode_cli(tiny_model.dataset, tiny_model.path, out) == 1
    assert "already exists" in one_line(capsys.readouterr().err)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert encode_cli(tiny_model.dataset, tiny_model.path, out, "--overwrite", "--quiet") == 0


# -------------------------------------------------------------------------------------- Table 2 statistics


def test_code_statistics_match_a_hand_count():
    top = np.array([[[0, 1],
                     [1, 1]]], dtype=np.uint16)
    bottom = np.array([[[0, 0, 2, 2],
                        [0, 3, 2, 2],
                        [1, 1, 2, 2],
                        [1, 1, 2, 3]]], dtype=np.uint16)
    stats = code_statistics({"top": top, "bottom": bottom}, codebook_size=4)
    # each top code covers the 2x2 bottom block below it: pairs (0,0) (0,3) | (1,2) | (1,1) (1,3)
    assert stats["co_occurring_pairs"] == 5
    assert (stats["used_codes_top"], stats["used_codes_bottom"]) == (2, 4)
    # perplexity = exp(entropy of the code frequencies): top 1/4, 3/4; bottom 3, 4, 7, 2 of 16
    assert stats["perplexity_top"] == pytest.approx(math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))))
    frequencies = np.array([3, 4, 7, 2]) / 16
    assert stats["perplexity_bottom"] == pytest.approx(math.exp(-(frequencies * np.log(frequencies)).sum()))


def test_code_statistics_extremes():
    every_code = np.arange(16, dtype=np.uint16).reshape(1, 4, 4)
    stats = code_statistics({"bottom": every_code}, codebook_size=16)
    assert stats == {"used_codes_bottom": 16, "perplexity_bottom": pytest.approx(16.0)}  # uniform: perplexity is K
    one_code = {"top": np.full((3, 2, 2), 7, np.uint16), "bottom": np.full((3, 4, 4), 9, np.uint16)}
    stats = code_statistics(one_code, codebook_size=16)
    assert stats["used_codes_top"] == stats["used_codes_bottom"] == stats["co_occurring_pairs"] == 1
    assert stats["perplexity_top"] == stats["perplexity_bottom"] == 1.0
    # pairs are counted across images: image 2 pairs top 7 with a new bottom code
    one_code["bottom"][2, 0, 0] = 3
    assert code_statistics(one_code, codebook_size=16)["co_occurring_pairs"] == 2


# ----------------------------------------------------------------------------------------------- decode


def test_decode_writes_the_reconstruction_set(tiny_model, tiny_codes, tmp_path, capsys):
    out = tmp_path / "recon"
    args = ["decode", str(tiny_codes), "--model", str(tiny_model.path), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--batch-size", "5", "--json"]) == 0  # 3 batches, the last one short
    summary = json.loads(one_line(capsys.readouterr().out))
    config = ModelDir(tiny_model.path).config()
    source = read_codes(tiny_codes)
    names = tiny_model.dataset.names

    assert summary["images"] == 12 and summary["model_fingerprint"] == config["fingerprint"]
    assert summary["counts"] == {label: {"reconstruction": 4} for label in TINY_CLASSES}
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{name}_rec.png" for name in names]
    assert not (out / ".progress").exists() and sorted(p.name for p in out.iterdir()) == [
        "codes.h5", "images", "labels.csv", "run.json", "trained_on.json"]  # the model's training record too

    # every image is the decoder's output for its codes
    model = ModelDir(tiny_model.path).load_vqvae()
    with torch.no_grad():
        decoded = model.decode_codes({level: torch.from_numpy(v.astype(np.int64)) for level, v in source.codes.items()})
    expected = to_uint8(decoded.clamp(-1, 1))
    for i, name in enumerate(names):
        with Image.open(out / "images" / f"{name}_rec.png") as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))
            assert np.array_equal(np.asarray(image), expected[i].numpy())

    with open(out / "labels.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == CONTRACT_COLUMNS
        rows = list(reader)
    assert [row["image"] for row in rows] == [f"{name}_rec" for name in names]
    for row, name, label in zip(rows, names, tiny_model.dataset.labels):
        assert row == {"image": f"{name}_rec", "label": label, "method": "reconstruction", "source_top": name,
                       "source_bottom": name, "temperature": "", "seed": "", "model_fingerprint": config["fingerprint"],
                       "path": f"images/{name}_rec.png"}

    written = read_codes(out / "codes.h5")
    for level in ("top", "bottom"):
        assert np.array_equal(written.codes[level], source.codes[level])
    assert written.labels.tolist() == source.labels.tolist() and written.groups == source.groups
    assert written.images == [f"{name}_rec" for name in names] and written.fingerprint == config["fingerprint"]

    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "decode" and run["images"] == 12 and run["format"] == "png" and run["device"] == "cpu"
    assert run["versions"]["skinaug"] == __version__ and run["versions"]["torch"] == torch.__version__

    # an OUT_DIR is itself a valid DATA + labels.csv input
    again = scan_dataset(out, out / "labels.csv")
    assert [s.name for s in again.samples] == [f"{name}_rec" for name in names]
    assert [again.class_names[s.label] for s in again.samples] == tiny_model.dataset.labels

    # an existing OUT_DIR is an error without --overwrite, and is left alone
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))
    assert main(args) == 1
    assert "already exists" in one_line(capsys.readouterr().err)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == before


def test_interrupted_decode_resumes_to_the_same_dataset(tiny_model, tiny_codes, tmp_path, monkeypatch, capsys):
    import skinaug.backends.torch as torch_backend

    def decode(out, *extra):
        return main(["decode", str(tiny_codes), "--model", str(tiny_model.path), "--out", str(out), "--device", "cpu",
                     "--batch-size", "5", "--quiet", *extra])

    assert decode(tmp_path / "straight") == 0
    original, calls = torch_backend.decode_batch, []

    def crash_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C after the first batch
        return original(*args, **kwargs)

    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr(torch_backend, "decode_batch", crash_on_second_batch)
        assert decode(out) in (1, 130)  # click reports Ctrl-C as "Aborted!" with 130 (older versions: 1)
    with open(out / "labels.csv", newline="") as handle:
        assert [row["image"] for row in csv.DictReader(handle)] == [f"img_{i:02d}_rec" for i in range(5)]
    assert not (out / "run.json").exists()
    assert decode(out) == 1 and "--resume" in capsys.readouterr().err  # without --resume: refused
    assert decode(out, "--batch-size", "4", "--resume") == 1  # a different plan cannot continue it
    assert "different command or options" in capsys.readouterr().err

    assert decode(out, "--resume") == 0
    assert (out / "labels.csv").read_text() == (tmp_path / "straight" / "labels.csv").read_text()
    for image in sorted((tmp_path / "straight" / "images").iterdir()):
        assert image.read_bytes() == (out / "images" / image.name).read_bytes()
    assert len(list((out / "images").iterdir())) == 12
    assert np.array_equal(read_codes(out / "codes.h5").codes["bottom"], read_codes(tiny_codes).codes["bottom"])


def test_decode_with_jpg_format(tiny_model, tiny_codes, tmp_path, capsys):
    out = tmp_path / "recon"
    assert main(["decode", str(tiny_codes), "--model", str(tiny_model.path), "--out", str(out), "--device", "cpu",
                 "--format", "jpg", "--quiet"]) == 0
    assert capsys.readouterr().out == f"{out}\n"
    files = sorted((out / "images").iterdir())
    assert len(files) == 12 and all(p.suffix == ".jpg" for p in files)
    with Image.open(files[0]) as image:
        assert (image.format, image.size) == ("JPEG", (32, 32))


def test_decoding_codes_of_another_model_is_refused(tiny_model, tiny_model_one_level, tiny_codes, tmp_path, capsys):
    out = tmp_path / "recon"
    assert main(["decode", str(tiny_codes), "--model", str(tiny_model_one_level.path), "--out", str(out), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    message = one_line(captured.err)
    assert message.startswith("error: ") and "was written by model" in message
    assert ModelDir(tiny_model.path).fingerprint() in message and ModelDir(tiny_model_one_level.path).fingerprint() in message
    assert captured.out == "" and not out.exists()


def test_decode_of_a_file_that_is_not_a_code_file(tiny_model, tmp_path, capsys):
    fake = tmp_path / "codes.h5"
    fake.write_text("not hdf5")
    assert main(["decode", str(fake), "--model", str(tiny_model.path), "--out", str(tmp_path / "o")]) == 1
    assert "not a readable HDF5 file" in one_line(capsys.readouterr().err)
    assert main(["decode", str(tmp_path / "missing.h5"), "--model", str(tiny_model.path), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in one_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------ CLI conventions


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(command in text for command in ("train", "encode", "decode"))
    assert main(["-h"]) == 0 and "encode" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"skinaug {__version__}\n"
    for command in (["encode"], ["decode"], ["train", "vqvae"]):
        assert main([*command, "--help"]) == 0
        assert "Example: skinaug" in capsys.readouterr().out


def test_help_imports_no_heavy_library():
    code = ("import sys; from skinaug.cli import main; rc = main(['--help']); "
            "print(rc, [m for m in ('torch', 'h5py', 'PIL', 'safetensors') if m in sys.modules], file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stderr.strip().splitlines()[-1] == "0 []"


@pytest.mark.parametrize("argv", [
    ["no-such-command"],
    ["encode", "data"],  # --model and --out missing
    ["encode", "data", "--model", "m", "--out", "o.h5", "--batch-size", "0"],
    ["encode", "data", "--model", "m", "--out", "o.h5", "--no-such-option"],
    ["train", "vqvae", "data", "--out", "m", "--levels", "3"],
    ["decode", "codes.h5", "--model", "m", "--out", "o", "--quality", "101"],
])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() != ""


def test_impossible_image_size_is_a_usage_error_and_creates_nothing(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["train", "vqvae", str(tiny_dataset.images), "--labels", str(tiny_dataset.labels_csv), "--out", str(out),
                 "--image-size", "33", "--device", "cpu"]) == 2
    assert "multiple of 8" in one_line(capsys.readouterr().err)
    assert not out.exists()


def test_missing_model_is_one_line_and_exit_1_without_traceback(tiny_dataset, tmp_path):
    out = tmp_path / "codes.h5"
    done = subprocess.run([sys.executable, "-m", "skinaug", "encode", str(tiny_dataset.images), "--model",
                           str(tmp_path / "no-model"), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    expected = f"error: model directory {tmp_path / 'no-model'} does not exist (train one with `skinaug train vqvae`)"
    assert one_line(done.stderr) == expected
    assert not out.exists()


def test_model_dir_without_weights_is_explained(tiny_dataset, tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    assert main(["encode", str(tiny_dataset.images), "--model", str(tmp_path / "half"), "--out", str(tmp_path / "c.h5")]) == 1
    assert "is not a trained model" in one_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------- real images


def test_smoke_train_and_encode_real_dermoscopy_images(tmp_path, capsys):
    source = SHARED_DATA / "ham10000-150"
    if not (source / "labels.csv").is_file():
        pytest.skip(f"real images not available at {source}")
    with open(source / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    subset = rows[:: max(1, len(rows) // 24)][:24]  # spread over the file: several lesions and classes
    labels = tmp_path / "subset.csv"  # the images stay where they are: only the CSV selects them
    labels.write_text("image,label,lesion_id\n" + "".join(f"{r['image']},{r['label']},{r['lesion_id']}\n" for r in subset))

    model = tmp_path / "model"
    common = ["--labels", str(labels), "--device", "cpu", "--quiet"]
    assert main(["train", "vqvae", str(source / "images"), "--out", str(model), *common, "--epochs", "1", "--batch-size", "8",
                 "--image-size", "32", "--channels", "16", "--res-channels", "8", "--res-blocks", "1",
                 "--codebook-size", "16", "--code-dim", "4"]) == 0
    config = ModelDir(model).config()
    assert config["class_names"] == sorted({r["label"] for r in subset})
    assert config["training_data"]["images"] == 24 and config["training_data"]["skipped"] == 0
    capsys.readouterr()

    codes = tmp_path / "codes.h5"
    assert main(["encode", str(source / "images"), "--model", str(model), "--out", str(codes), *common, "--json"]) == 0
    stats = json.loads(one_line(capsys.readouterr().out))
    assert (stats["images"], stats["skipped"]) == (24, 0)
    assert 0 < stats["mse"] < 0.1 and 1 <= stats["used_codes_bottom"] <= 16
    code_file = read_codes(codes)
    assert code_file.images == [r["image"] for r in subset] and code_file.groups == [r["lesion_id"] for r in subset]
    assert code_file.codes["bottom"].shape == (24, 8, 8) and code_file.codes["top"].shape == (24, 4, 4)
