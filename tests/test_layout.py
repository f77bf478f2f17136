"""--layout imagefolder: one folder per class (torchvision's ImageFolder, Hugging Face's imagefolder), with labels.csv
and metadata.csv beside them; still DATA for the next command, resumable, and read by GeneratedDataset."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import interrupted_after_batches
from PIL import Image

import skinaug
from skinaug.cli import main

IMAGE_TYPES = (".png", ".jpg", ".jpeg")


def run(args):
    return main([str(a) for a in args])


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def image_folder_samples(root: Path):
    """What torchvision's ImageFolder finds, by its convention: root/<class>/<file>, classes the sorted sub-folders,
    class_to_idx their positions, samples (path, class index) in sorted order."""
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    class_to_idx = {name: i for i, name in enumerate(classes)}
    samples = [(path, class_to_idx[name]) for name in classes for path in sorted((root / name).iterdir())
               if path.suffix.lower() in IMAGE_TYPES]
    return classes, class_to_idx, samples


def synthesize(generator_model, out, *extra):
    return run(["synthesize", "--model", generator_model["model"], "--out", out, "--per-class", 2, "--device", "cpu",
                "--quiet", *extra])


def test_imagefolder_layout_files_each_image_under_its_class_with_labels_and_metadata(generator_model, tmp_path):
    out = tmp_path / "synth"
    assert synthesize(generator_model, out, "--layout", "imagefolder") == 0
    assert not (out / "images").exists()
    classes, class_to_idx, samples = image_folder_samples(out)
    assert classes == ["bkl", "melanoma", "nevus"] and len(samples) == 6
    rows = {row["image"]: row for row in read_csv(out / "labels.csv")}
    assert len(rows) == 6
    for path, index in samples:  # the folder an image lies in is its labels.csv label
        assert rows[path.stem]["label"] == classes[index] and rows[path.stem]["method"] == "synthesize"
    metadata = read_csv(out / "metadata.csv")
    assert sorted(row["file_name"] for row in metadata) == sorted(str(p.relative_to(out)) for p, _ in samples)
    assert all(row["file_name"] == f"{row['label']}/{row['image']}.png" for row in metadata)
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["layout"] == "imagefolder" and run_json["class_names"] == ["bkl", "melanoma", "nevus"]

    data = skinaug.GeneratedDataset(out)  # our reader: the same images with the same labels
    assert sorted((Path(data.info(i)["path"]).parent.name, data.classes[data.targets[i]]) for i in range(len(data))) \
        == sorted((path.parent.name, classes[index]) for path, index in samples)
    assert all(Path(data.info(i)["path"]).parent.name == data.classes[data.targets[i]] for i in range(len(data)))


def test_the_default_layout_is_unchanged_and_the_same_images_lie_in_images(generator_model, tmp_path):
    assert synthesize(generator_model, tmp_path / "flat") == 0
    assert synthesize(generator_model, tmp_path / "folders", "--layout", "imagefolder") == 0
    flat = sorted((tmp_path / "flat" / "images").glob("*.png"))
    assert len(flat) == 6 and not (tmp_path / "flat" / "metadata.csv").exists()
    assert json.loads((tmp_path / "flat" / "run.json").read_text())["layout"] == "images"
    for path in flat:  # the same seed gives the same pixels in either layout
        label = next(r["label"] for r in read_csv(tmp_path / "flat" / "labels.csv") if r["image"] == path.stem)
        np.testing.assert_array_equal(np.asarray(Image.open(path)),
                                      np.asarray(Image.open(tmp_path / "folders" / label / path.name)))


def test_an_imagefolder_output_is_data_for_augment_and_scores(generator_model, tmp_path, capsys):
    first = tmp_path / "synth"
    assert synthesize(generator_model, first, "--layout", "imagefolder") == 0
    out = tmp_path / "more"
    assert run(["augment", first, "--model", generator_model["model"], "--out", out, "--factor", 2,
                "--methods", "resample", "--layout", "imagefolder", "--device", "cpu", "--quiet"]) == 0
    rows = read_csv(out / "labels.csv")
    kept = [row for row in rows if row["method"] == "synthesize"]  # the first run's images keep their provenance
    assert len(rows) == 12 and len(kept) == 6 and not any(row["method"] == "original" for row in rows)
    source_rows = {row["image"]: row["label"] for row in read_csv(first / "labels.csv")}
    resampled = [row for row in rows if row["method"] == "resample"]
    assert len(resampled) == 6  # labels came from the folder's CSV
    assert all(source_rows[row["source_top"]] == row["label"] for row in resampled)
    _, _, samples = image_folder_samples(out)
    assert len(samples) == 12
    capsys.readouterr()
    assert run(["score", "memorization", first, generator_model["data"].images, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["generated_images"] == 6


def test_an_interrupted_imagefolder_run_resumes_without_loss_or_duplicates(generator_model, tmp_path, monkeypatch):
    args = ["--layout", "imagefolder", "--batch-size", 2]
    assert synthesize(generator_model, tmp_path / "whole", *args) == 0
    with interrupted_after_batches(monkeypatch, 2):
        assert synthesize(generator_model, tmp_path / "cut", *args) == 130
    assert len(image_folder_samples(tmp_path / "cut")[2]) == 4
    assert synthesize(generator_model, tmp_path / "cut", "--batch-size", 2, "--resume") == 1  # another layout: refused
    assert synthesize(generator_model, tmp_path / "cut", *args, "--resume") == 0
    assert read_csv(tmp_path / "whole" / "labels.csv") == read_csv(tmp_path / "cut" / "labels.csv")
    whole, cut = image_folder_samples(tmp_path / "whole")[2], image_folder_samples(tmp_path / "cut")[2]
    assert [p.relative_to(tmp_path / "whole") for p, _ in whole] == [p.relative_to(tmp_path / "cut") for p, _ in cut]
    for (a, _), (b, _) in zip(whole, cut):
        np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_imagefolder_needs_a_class_for_every_image_and_a_known_layout(generator_model, tmp_path, capsys):
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for name in generator_model["data"].names[:4]:
        (unlabelled / f"{name}.png").write_bytes((generator_model["data"].images / f"{name}.png").read_bytes())
    out = tmp_path / "out"
    assert run(["resample", unlabelled, "--model", generator_model["model"], "--out", out, "--method", "rand-bottom",
                "--layout", "imagefolder", "--device", "cpu", "--quiet"]) == 2
    assert "files every image under its class" in capsys.readouterr().err and not out.exists()
    assert synthesize(generator_model, out, "--layout", "folders") == 2
    assert not out.exists()


@pytest.mark.parametrize("name", ["images", "labels.csv"])
def test_a_class_named_like_a_file_of_the_output_gets_a_folder_of_its_own(name):
    from skinaug.data.layout import class_folders

    folders = class_folders([name, "nevus"])
    assert folders["nevus"] == "nevus" and folders[name] != name and "/" not in folders[name]


def test_decode_writes_the_reconstructions_in_class_folders(generator_model, tmp_path):
    out = tmp_path / "recon"
    assert run(["decode", generator_model["codes"], "--model", generator_model["model"], "--out", out, "--layout",
                "imagefolder", "--device", "cpu", "--quiet"]) == 0
    classes, _, samples = image_folder_samples(out)
    data = generator_model["data"]
    assert classes == ["bkl", "melanoma", "nevus"]
    assert sorted((path.stem, classes[index]) for path, index in samples) \
        == sorted((f"{name}_rec", label) for name, label in zip(data.names, data.labels))


def test_preview_reads_an_imagefolder_output_and_keeps_its_sheet_out_of_the_class_folders(generator_model, tmp_path,
                                                                                        capsys):
    out = tmp_path / "synth"
    assert synthesize(generator_model, out, "--layout", "imagefolder") == 0
    sheet = out / "sheet.png"  # beside the class folders, where no reader takes it for an image of a class
    assert run(["preview", out, "--out", sheet, "--by", "label", "--quiet"]) == 0
    assert Image.open(sheet).size[0] > 0
    capsys.readouterr()
    assert run(["preview", out, "--out", out / "nevus" / "sheet.png", "--quiet"]) == 2
    assert "where it would be read as a generated image" in capsys.readouterr().err


def test_preview_of_an_imagefolder_output_never_takes_the_outputs_own_files_for_images(generator_model, tmp_path):
    from skinaug.reports.preview import _image_file

    out = tmp_path / "synth"
    assert synthesize(generator_model, out, "--layout", "imagefolder") == 0
    rows = read_csv(out / "labels.csv")
    assert all(_image_file(out, row["image"]) == out / row["label"] / f"{row['image']}.png" for row in rows)
    # images named like the output's own files find nothing of the output's own
    assert _image_file(out, "labels") is None and _image_file(out, "run") is None and _image_file(out, "plan") is None
