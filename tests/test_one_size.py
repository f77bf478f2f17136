"""Training-ready output at one size (issue 23): every image of OUT_DIR at the model's side or --image-size, originals
resized unless kept byte for byte, labels.csv's `path` column, and GeneratedDataset reading one side or refusing."""

import csv
import json
import os

import numpy as np
import pytest
from conftest import error_line, run_cli
from PIL import Image

import skinaug
from skinaug.cli import main
from skinaug.data.scan import load_image
from skinaug.errors import SkinaugError

MODEL_SIDE = 32  # the tiny model's; the tiny data's originals are 48x40 PNGs


def run(args):
    return main([str(a) for a in args])


def read_rows(out):
    with open(out / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def sizes_by_method(out) -> dict[str, set]:
    """Each method's image sizes, every file opened through labels.csv's `path` (as a pandas user would)."""
    sizes: dict[str, set] = {}
    for row in read_rows(out):
        with Image.open(out / row["path"]) as image:
            sizes.setdefault(row["method"], set()).add(image.size)
    return sizes


def augment(generator_model, out, *extra):
    data = generator_model["data"]
    return run(["augment", data.images, "--labels", data.labels_csv, "--model", generator_model["model"], "--out", out,
                "--factor", 2, "--methods", "mix,resample,synthesize", "--device", "cpu", "--quiet", *extra])


def test_augment_writes_the_originals_at_the_models_size_as_pngs_like_the_generated_ones(generator_model, tmp_path):
    out = tmp_path / "aug"
    assert augment(generator_model, out) == 0
    sizes = sizes_by_method(out)
    assert set(sizes) == {"original", "mix", "resample", "synthesize"}
    assert all(found == {(MODEL_SIDE, MODEL_SIDE)} for found in sizes.values())
    rows = read_rows(out)
    assert all(row["path"] == f"images/{row['image']}.png" for row in rows)
    assert sorted(path.name for path in (out / "images").iterdir()) == sorted(f"{row['image']}.png" for row in rows)
    data = generator_model["data"]
    for row in (row for row in rows if row["method"] == "original"):  # read as every command reads images
        expected = load_image(data.images / f"{row['image']}.png", MODEL_SIDE)
        np.testing.assert_array_equal(np.asarray(Image.open(out / row["path"])), expected)
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["image_size"] == MODEL_SIDE and "originals_kept" not in run_info
    # the folder is one size: GeneratedDataset takes it from run.json, for real and generated items alike
    dataset = skinaug.GeneratedDataset(out)
    assert dataset.image_size == MODEL_SIDE and {dataset.image(i).shape for i in range(len(dataset))} == {(32, 32, 3)}


def test_image_size_gives_every_file_that_side_in_the_chosen_format(generator_model, tmp_path):
    out = tmp_path / "aug"
    assert augment(generator_model, out, "--image-size", 40, "--format", "jpg", "--layout", "imagefolder") == 0
    sizes = sizes_by_method(out)
    assert len(sizes) == 4 and all(found == {(40, 40)} for found in sizes.values())
    for row in read_rows(out):  # <class>/<image>.jpg, originals included
        assert row["path"] == f"{row['label']}/{row['image']}.jpg"
    assert json.loads((out / "run.json").read_text())["image_size"] == 40
    assert skinaug.GeneratedDataset(out).image_size == 40


@pytest.mark.parametrize("flag", ["--keep-originals", "--link-originals", "--copy-originals"])
def test_kept_originals_are_byte_for_byte_and_the_dataset_refuses_their_other_size(generator_model, tmp_path, flag):
    out, data = tmp_path / "aug", generator_model["data"]
    assert augment(generator_model, out, flag) == 0
    rows = read_rows(out)
    originals = [row for row in rows if row["method"] == "original"]
    assert len(originals) == 12
    for row in originals:
        assert (out / row["path"]).read_bytes() == (data.images / f"{row['image']}.png").read_bytes()
        assert os.path.samefile(out / row["path"], data.images / f"{row['image']}.png") == (flag == "--link-originals")
    assert sizes_by_method(out)["original"] == {(48, 40)} and sizes_by_method(out)["mix"] == {(32, 32)}
    assert json.loads((out / "run.json").read_text())["originals_kept"] is True
    # real 48x40 beside generated 32x32: never one of them silently resized and not the other
    with pytest.raises(SkinaugError) as refused:
        skinaug.GeneratedDataset(out)
    message = str(refused.value)
    assert "12 of 48x40" in message and "x32" in message and "image_size=S" in message
    dataset = skinaug.GeneratedDataset(out, image_size=MODEL_SIDE)
    assert {dataset.image(i).shape for i in range(len(dataset))} == {(32, 32, 3)}


@pytest.mark.parametrize("command", ["mix", "resample", "synthesize", "decode"])
def test_every_generating_command_resizes_its_images_to_image_size(generator_model, tmp_path, command):
    data, model, out = generator_model["data"], generator_model["model"], tmp_path / command
    args = {"mix": ["mix", "--codes", generator_model["codes"], "-n", 4],
            "resample": ["resample", "--codes", generator_model["codes"]],
            "synthesize": ["synthesize", "--per-class", 1],
            "decode": ["decode", generator_model["codes"]]}[command]
    assert run([*args, "--model", model, "--out", out, "--image-size", 24, "--device", "cpu", "--quiet"]) == 0
    assert set().union(*sizes_by_method(out).values()) == {(24, 24)}
    assert json.loads((out / "run.json").read_text())["image_size"] == 24
    assert len(read_rows(out)) == {"mix": 4, "synthesize": 3}.get(command, len(data.names))


def test_a_real_folder_is_read_at_its_one_size_or_refused_when_sizes_differ(generator_model, tmp_path):
    data = generator_model["data"]
    real = skinaug.GeneratedDataset(data.images, data.labels_csv)
    assert real.image_size == 40 and real.image(0).shape == (40, 40, 3)  # the shorter side: nothing upsampled
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for index, side in enumerate((32, 32, 64)):
        Image.new("RGB", (side, side), (index * 40, 90, 20)).save(mixed / f"x{index}.png")
    (mixed / "labels.csv").write_text("image,label\nx0,nevus\nx1,nevus\nx2,melanoma\n")
    with pytest.raises(SkinaugError, match=r"differ in size \(2 of 32x32, 1 of 64x64\).*image_size=S"):
        skinaug.GeneratedDataset(mixed, mixed / "labels.csv")
    assert skinaug.GeneratedDataset(mixed, mixed / "labels.csv", image_size=16).image(2).shape == (16, 16, 3)


@pytest.mark.parametrize("extra, named", [
    (["--image-size", 0], "--image-size must be a side in pixels from 8 to 4096, not 0"),
    (["--image-size", 5000], "--image-size must be a side in pixels from 8 to 4096, not 5000"),
    (["--no-originals", "--keep-originals"], "--no-originals leaves the originals out, so --keep-originals has nothing"),
])
def test_bad_size_and_originals_options_are_one_line_usage_errors(generator_model, tmp_path, capsys, extra, named):
    data, out = generator_model["data"], tmp_path / "aug"
    code, err = run_cli(["augment", data.images, "--labels", data.labels_csv, "--model", generator_model["model"],
                         "--out", out, "--factor", 2, "--device", "cpu", "--quiet", *extra], capsys)
    assert code == 2 and named in error_line(err)
    assert not out.exists()


def test_decode_refuses_a_bad_image_size_with_one_line(generator_model, tmp_path, capsys):
    code, err = run_cli(["decode", generator_model["codes"], "--model", generator_model["model"], "--out",
                         tmp_path / "rec", "--image-size", 7, "--device", "cpu", "--quiet"], capsys)
    assert code == 2 and "--image-size must be a side in pixels from 8 to 4096, not 7" in error_line(err)


def test_the_plan_records_a_size_only_when_something_is_resized():
    """Runs begun before sizes were recorded resume: nothing resized, nothing added to their plans."""
    from skinaug.data.layout import plan_size

    assert plan_size(None, 32) == {} and plan_size(32, 32) == {} and plan_size(None, 32, "copy") == {}
    assert plan_size(None, 32, "none") == {} and plan_size(None, 32, "link") == {}
    assert plan_size(48, 32) == {"image_size": 48}
    assert plan_size(None, 32, "resize") == {"originals": "resize", "image_size": 32}


def test_resume_with_another_image_size_is_refused(generator_model, tmp_path, monkeypatch, capsys):
    from conftest import interrupted_after_batches

    args = ["synthesize", "--model", generator_model["model"], "--class", "bkl", "-n", 4, "--batch-size", 2,
            "--out", tmp_path / "cut", "--device", "cpu", "--quiet"]
    with interrupted_after_batches(monkeypatch, 1):
        assert run([*args, "--image-size", 24]) == 130
    code, err = run_cli([*args, "--resume"], capsys)
    assert code == 1 and "image_size was 24, now absent" in error_line(err)
    assert run([*args, "--image-size", 24, "--resume"]) == 0
    assert set().union(*sizes_by_method(tmp_path / "cut").values()) == {(24, 24)}
