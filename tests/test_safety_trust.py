"""Issue 21, "Trust, round two": what a run may read and write. Inputs listed on stdin are seen one by one, an output
never lies inside an input, originals are copies, labels in code files travel by class name, provenance survives any
number of augment passes, and --resume refuses a run that would mix two plans."""

import csv
import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from skinaug.cli import main
from skinaug.data.scan import _stdin_files

from conftest import interrupted_after_batches, make_tiny_dataset


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def digests(folder: Path) -> dict:
    """relative path -> sha256 of every file under folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(out: Path) -> dict:
    with open(out / "labels.csv", encoding="utf-8", newline="") as handle:
        return {row["image"]: row for row in csv.DictReader(handle)}


@pytest.fixture
def model(generator_model, tmp_path):
    """A private copy of the model with priors (a test may then be refused into it without risk)."""
    return Path(shutil.copytree(generator_model["model"], tmp_path / "model"))


# ------------------------------------------------------------------------- 1: DATA '-' and --overwrite


def test_overwrite_never_deletes_an_image_listed_on_stdin_from_inside_the_output(model, tmp_path, capsys, monkeypatch):
    """`find st -name '*.png' | skinaug resample - --out st/gen --overwrite`: the listed images' common folder (st)
    lies outside st/gen, but some of them lie inside it."""
    st = tmp_path / "st"
    data = make_tiny_dataset(st / "data")
    gen = st / "gen"
    code, _, err = run(capsys, "synthesize", "--model", model, "--out", gen, "--class", "bkl", "-n", 2, "--device", "cpu",
                       "--quiet")
    assert code == 0, err
    labels = tmp_path / "labels.csv"
    labels.write_text(data.labels_csv.read_text() + "".join(f"{p.stem},bkl,\n" for p in (gen / "images").iterdir()))
    before = digests(gen)
    _stdin_files.cache_clear()
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{p}\n" for p in sorted(st.rglob("*.png")))))
    try:
        code, _, err = run(capsys, "resample", "-", "--labels", labels, "--model", model, "--out", gen, "--overwrite",
                           "--device", "cpu", "--quiet")
    finally:
        _stdin_files.cache_clear()
    assert code == 1 and "holds the input" in err and "gen/images/" in err and err.count("\n") == 1, err
    assert digests(gen) == before


# ------------------------------------------------------------------------- 10: --out inside an input


def test_an_output_inside_the_data_folder_is_refused(model, tiny_dataset, capsys):
    before = digests(tiny_dataset.images)
    code, _, err = run(capsys, "augment", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--model", model,
                       "--out", tiny_dataset.images / "aug", "--factor", 2, "--device", "cpu", "--quiet")
    assert code == 1 and "lies inside the input" in err and err.count("\n") == 1, err
    assert digests(tiny_dataset.images) == before and not (tiny_dataset.images / "aug").exists()
    assert not any(".skinaug" in p.name for p in tiny_dataset.images.iterdir())


@pytest.mark.parametrize("command", ["encode", "synthesize"])
def test_nothing_is_written_into_a_users_model_directory(model, tiny_dataset, capsys, command):
    before = digests(model)
    args = {"encode": ["encode", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--out", model / "codes.h5"],
            "synthesize": ["synthesize", "--class", "bkl", "-n", 1, "--out", model / "synth"]}[command]
    code, _, err = run(capsys, *args, "--model", model, "--device", "cpu", "--quiet")
    assert code == 1 and "lies inside the input" in err, err
    assert digests(model) == before and sorted(p.name for p in model.iterdir() if ".skinaug" in p.name) == []


# ------------------------------------------------------------------------- 3: originals are copies


def test_augment_copies_its_kept_originals_so_editing_the_output_leaves_the_input_alone(model, tiny_dataset, tmp_path,
                                                                                        capsys):
    before = digests(tiny_dataset.images)
    out = tmp_path / "aug"
    code, _, err = run(capsys, "augment", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--model", model,
                       "--out", out, "--factor", 1.25, "--methods", "mix", "--keep-originals", "--device", "cpu",
                       "--quiet")
    assert code == 0, err
    name = tiny_dataset.names[0]
    copied = out / "images" / f"{name}.png"
    assert copied.read_bytes() == (tiny_dataset.images / f"{name}.png").read_bytes()
    assert not os.path.samefile(copied, tiny_dataset.images / f"{name}.png")
    with open(copied, "r+b") as handle:  # an edit in place, as an image editor saving over the file does
        handle.write(b"edited")
    assert digests(tiny_dataset.images) == before


def test_link_originals_hard_links_them_and_says_so_in_the_help(model, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "aug"
    code, _, err = run(capsys, "augment", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--model", model,
                       "--out", out, "--factor", 1.25, "--methods", "mix", "--link-originals", "--device", "cpu", "--quiet")
    assert code == 0, err
    name = tiny_dataset.names[0]
    assert os.path.samefile(out / "images" / f"{name}.png", tiny_dataset.images / f"{name}.png")
    code, out_text, _ = run(capsys, "augment", "--help")
    help_text = " ".join(out_text.replace("│", " ").split())
    assert code == 0 and "--link-originals" in help_text and "your input too" in help_text


# ------------------------------------------------------------------------- 2: labels in code files travel by name


def with_classes(model: Path, class_names: list[str]) -> Path:
    """The model with other class names in config.json (the same VQ-VAE, hence the same fingerprint)."""
    config = json.loads((model / "config.json").read_text())
    config["class_names"] = class_names
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_mix_from_codes_labels_by_class_name_under_a_model_with_another_class_order(model, generator_model, tmp_path,
                                                                                    capsys):
    data = generator_model["data"]
    with_classes(model, ["nevus", "melanoma", "bkl"])  # the code file says bkl, melanoma, nevus
    out = tmp_path / "mix"
    code, _, err = run(capsys, "mix", "--codes", generator_model["codes"], "--model", model, "--out", out, "-n", 12,
                       "--device", "cpu", "--quiet")
    assert code == 0, err
    label_of = dict(zip(data.names, data.labels))
    made = rows(out).values()
    assert len(made) == 12
    for row in made:
        assert row["label"] == label_of[row["source_top"]] == label_of[row["source_bottom"]]
        assert row["image"].startswith(f"mix_{row['label']}_")


def test_codes_labelled_with_a_class_the_model_does_not_know_are_refused(model, generator_model, tmp_path, capsys):
    with_classes(model, ["melanoma", "nevus"])
    out = tmp_path / "resample"
    code, _, err = run(capsys, "resample", "--codes", generator_model["codes"], "--model", model, "--out", out,
                       "--method", "rand-bottom", "--device", "cpu", "--quiet")
    assert code == 1 and "bkl" in err and "does not know" in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_code_file_without_class_names_reads_its_labels_as_the_models_classes(model, generator_model, tmp_path, capsys):
    import h5py

    old = Path(shutil.copyfile(generator_model["codes"], tmp_path / "old.h5"))
    with h5py.File(old, "a") as file:
        del file.attrs["class_names"]
    out = tmp_path / "mix"
    code, _, err = run(capsys, "mix", "--codes", old, "--model", model, "--out", out, "-n", 6, "--device", "cpu")
    assert code == 0 and "records no class names" in err, err
    label_of = dict(zip(generator_model["data"].names, generator_model["data"].labels))
    assert all(row["label"] == label_of[row["source_top"]] for row in rows(out).values())


# ------------------------------------------------------------------------- 5: provenance through augment passes

PROVENANCE = ("label", "method", "source_top", "source_bottom", "seed", "model_fingerprint")


def test_augmenting_a_generated_folder_again_keeps_each_images_method_and_sources(model, tiny_dataset, tmp_path, capsys):
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    code, _, err = run(capsys, "augment", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--model", model,
                       "--out", first, "--factor", 1.5, "--methods", "mix", "--device", "cpu", "--quiet")
    assert code == 0, err
    made = rows(first)
    assert sorted(r["method"] for r in made.values()) == ["mix"] * 6 + ["original"] * 12
    # a generated folder as DATA (its own labels.csv), then its images/ with its labels.csv given
    for earlier, later, source in ((first, second, [first]), (second, third, [second / "images", "--labels",
                                                                              second / "labels.csv"])):
        code, _, err = run(capsys, "augment", *source, "--model", model, "--out", later, "--factor", 1.2,
                           "--methods", "resample", "--device", "cpu", "--quiet")
        assert code == 0, err
        again = rows(later)
        for name, row in rows(earlier).items():  # every earlier image, as it was
            assert {k: again[name][k] for k in PROVENANCE} == {k: row[k] for k in PROVENANCE}
    summary = json.loads((third / "run.json").read_text())
    assert sum(summary["counts"][label].get("mix", 0) for label in summary["counts"]) == 6
    assert sum(summary["counts"][label].get("original", 0) for label in summary["counts"]) == 12


# ------------------------------------------------------------------------- 6: --resume never mixes two runs


def test_resume_with_another_model_of_the_same_vqvae_is_refused(model, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file, save_file

    other = Path(shutil.copytree(model, tmp_path / "other"))  # the same VQ-VAE (fingerprint), another top prior
    weights = load_file(other / "prior_top.safetensors")
    save_file({name: tensor + 0.01 if tensor.is_floating_point() else tensor for name, tensor in weights.items()},
              other / "prior_top.safetensors")
    out = tmp_path / "synth"
    args = ["synthesize", "--class", "bkl", "-n", 6, "--batch-size", 2, "--out", out, "--device", "cpu", "--quiet"]
    with interrupted_after_batches(monkeypatch, 1):
        assert run(capsys, *args, "--model", model)[0] == 130
    code, _, err = run(capsys, *args, "--model", other, "--resume")
    assert code == 1 and "different command or options, or of other inputs" in err and err.count("\n") == 1, err
    assert str(model) in err or str(other) in err, err
    assert len(list((out / "images").glob("*.png"))) == 2
    assert run(capsys, *args, "--model", model, "--resume")[0] == 0  # the same model finishes it
    assert {row["model_fingerprint"] for row in rows(out).values()} == {json.loads((model / "config.json").read_text())["fingerprint"]}


def test_resume_after_an_input_image_changed_is_refused_naming_it(model, tiny_dataset, tmp_path, capsys, monkeypatch):
    from PIL import Image

    out = tmp_path / "resampled"
    args = ["resample", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--model", model, "--out", out,
            "--batch-size", 4, "--device", "cpu", "--quiet"]
    with interrupted_after_batches(monkeypatch, 1):
        assert run(capsys, *args)[0] == 130
    changed = tiny_dataset.images / f"{tiny_dataset.names[-1]}.png"
    Image.new("RGB", (48, 40), (1, 2, 3)).save(changed)
    code, _, err = run(capsys, *args, "--resume")
    assert code == 1 and f"the input {changed} changed since the run began" in err, err
    assert len(list((out / "images").glob("*.png"))) == 4


def train_vqvae_cli(data, out, *extra, image_size="32"):
    from conftest import TINY_VQVAE_ARGS

    args = list(TINY_VQVAE_ARGS)
    args[args.index("--image-size") + 1] = image_size
    return main(["train", "vqvae", str(data.images), "--labels", str(data.labels_csv), "--out", str(out), *args,
                 "--epochs", "1", "--batch-size", "4", "--quiet", *map(str, extra)])


@pytest.fixture
def trained(tiny_dataset, tmp_path, single_thread):
    out = tmp_path / "vqvae"
    assert train_vqvae_cli(tiny_dataset, out) == 0
    return out


def test_train_vqvae_resume_with_other_data_is_refused_and_keeps_the_model(trained, tmp_path, capsys):
    other = make_tiny_dataset(tmp_path / "other")
    before = digests(trained)
    assert train_vqvae_cli(other, trained, "--resume") == 1
    err = capsys.readouterr().err
    assert "continues a run on the data it began with, but DATA was" in err and str(other.images) in err, err
    assert digests(trained) == before


def test_train_vqvae_resume_after_an_image_changed_is_refused(trained, tiny_dataset, capsys):
    from PIL import Image

    Image.new("RGB", (48, 40), (1, 2, 3)).save(tiny_dataset.images / f"{tiny_dataset.names[0]}.png")
    before = digests(trained)
    assert train_vqvae_cli(tiny_dataset, trained, "--resume") == 1
    assert "the images of DATA changed" in capsys.readouterr().err
    assert digests(trained) == before


def test_train_vqvae_resume_with_a_contradicting_image_size_is_refused(trained, tiny_dataset, capsys):
    before = digests(trained)
    assert train_vqvae_cli(tiny_dataset, trained, "--resume", image_size="64") == 2
    err = capsys.readouterr().err
    assert "--image-size 32" in err and "--image-size 64 contradicts it" in err, err
    assert digests(trained) == before
    assert json.loads((trained / "config.json").read_text())["image_size"] == 32


def test_train_vqvae_resume_with_another_downsample_is_refused(trained, tiny_dataset, capsys):
    """The checkpoint's config leaves downsample out at its default (4): a resume asking for 8 still contradicts it."""
    before = digests(trained)
    assert train_vqvae_cli(tiny_dataset, trained, "--resume", "--downsample", "8") == 2
    err = capsys.readouterr().err
    assert "--downsample 4" in err and "--downsample 8 contradicts it" in err, err
    assert digests(trained) == before


def test_decode_of_a_code_file_without_class_names_labels_its_images_with_the_models_classes(model, generator_model,
                                                                                                tmp_path, capsys):
    import h5py

    old = Path(shutil.copyfile(generator_model["codes"], tmp_path / "old.h5"))
    with h5py.File(old, "a") as file:
        del file.attrs["class_names"]
    out = tmp_path / "decoded"
    code, _, err = run(capsys, "decode", old, "--model", model, "--out", out, "--layout", "imagefolder")
    assert code == 0 and "records no class names" in err, err
    label_of = dict(zip(generator_model["data"].names, generator_model["data"].labels))
    decoded = rows(out)
    assert len(decoded) == len(label_of) and all(row["label"] for row in decoded.values())
    assert all(row["label"] == label_of[row["source_top"]] for row in decoded.values())
