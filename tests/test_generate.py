"""The augmentation commands on a tiny model with tiny priors: provenance, labels, determinism, resume, errors."""

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import interrupted_after_batches
from PIL import Image

from skinaug.cli import main
from skinaug.storage.codefile import read_codes


def read_rows(out):
    with open(out / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def run(args):
    return main([str(a) for a in args])


def label_of(data):
    return dict(zip(data.names, data.labels))


def test_mix_never_crosses_labels_and_takes_each_level_from_its_source(generator_model, tmp_path):
    out = tmp_path / "mix"
    assert run(["mix", "--codes", generator_model["codes"], "--model", generator_model["model"], "--out", out, "-n", 20,
                "--device", "cpu", "--quiet"]) == 0
    rows = read_rows(out)
    labels = label_of(generator_model["data"])
    assert len(rows) == 20
    source = read_codes(generator_model["codes"])
    made = read_codes(out / "codes.h5")
    index = {name: i for i, name in enumerate(source.images)}
    for i, row in enumerate(rows):
        assert row["method"] == "mix"
        assert labels[row["source_top"]] == labels[row["source_bottom"]] == row["label"]
        assert row["source_top"] != row["source_bottom"]  # every class has several images
        assert made.images[i] == row["image"]
        np.testing.assert_array_equal(made.codes["top"][i], source.codes["top"][index[row["source_top"]]])
        np.testing.assert_array_equal(made.codes["bottom"][i], source.codes["bottom"][index[row["source_bottom"]]])


def test_any_label_may_cross_labels_and_is_recorded(generator_model, tmp_path):
    out = tmp_path / "mix"
    assert run(["mix", "--codes", generator_model["codes"], "--model", generator_model["model"], "--out", out, "-n", 40,
                "--any-label", "--device", "cpu", "--quiet"]) == 0
    labels = label_of(generator_model["data"])
    rows = read_rows(out)
    assert any(labels[r["source_top"]] != labels[r["source_bottom"]] for r in rows)
    assert all(r["label"] == labels[r["source_top"]] for r in rows)
    assert json.loads((out / "run.json").read_text())["any_label"] is True


@pytest.mark.parametrize("method, kept_level, replaced_level", [
    ("resample", "top", "bottom"), ("rand-bottom", "top", "bottom"), ("rand-top", "bottom", "top")])
def test_per_image_methods_keep_one_level_of_their_source(generator_model, tmp_path, method, kept_level, replaced_level):
    out = tmp_path / method
    assert run(["resample", "--codes", generator_model["codes"], "--model", generator_model["model"], "--out", out,
                "--method", method, "--per-image", 2, "--device", "cpu", "--quiet"]) == 0
    rows = read_rows(out)
    source = read_codes(generator_model["codes"])
    made = read_codes(out / "codes.h5")
    index = {name: i for i, name in enumerate(source.images)}
    assert len(rows) == 2 * len(source)
    changed = 0
    for i, row in enumerate(rows):
        assert row["method"] == method and row["source_top"] == row["source_bottom"]
        src = index[row["source_top"]]
        assert row["label"] == generator_model["data"].labels[generator_model["data"].names.index(row["source_top"])]
        np.testing.assert_array_equal(made.codes[kept_level][i], source.codes[kept_level][src])
        changed += int((made.codes[replaced_level][i] != source.codes[replaced_level][src]).any())
    assert changed > len(rows) // 2
    assert all(r["temperature"] == ("1.0" if method == "resample" else "") for r in rows)


def test_synthesize_makes_the_requested_class_and_counts(generator_model, tmp_path):
    out = tmp_path / "synth"
    assert run(["synthesize", "--model", generator_model["model"], "--out", out, "--class", "melanoma", "-n", 5,
                "--device", "cpu", "--quiet"]) == 0
    rows = read_rows(out)
    assert [r["label"] for r in rows] == ["melanoma"] * 5
    assert all(r["method"] == "synthesize" and r["source_top"] == "" for r in rows)
    out2 = tmp_path / "per_class"
    assert run(["synthesize", "--model", generator_model["model"], "--out", out2, "--per-class", 3, "--device", "cpu", "--quiet"]) == 0
    counts = {}
    for row in read_rows(out2):
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    assert counts == {"bkl": 3, "melanoma": 3, "nevus": 3}


def test_every_row_names_a_file_that_opens_with_provenance(generator_model, tmp_path):
    out = tmp_path / "synth"
    assert run(["synthesize", "--model", generator_model["model"], "--out", out, "--per-class", 2, "--device", "cpu",
                "--format", "jpg", "--quality", "90", "--quiet"]) == 0
    rows = read_rows(out)
    fingerprint = json.loads((generator_model["model"] / "config.json").read_text())["fingerprint"]
    assert list(rows[0]) == ["image", "label", "method", "source_top", "source_bottom", "temperature", "seed",
                             "model_fingerprint", "path"]
    for row in rows:
        assert row["path"] == f"images/{row['image']}.jpg"
        with Image.open(out / row["path"]) as image:
            assert image.format == "JPEG" and image.size == (32, 32)
        assert row["model_fingerprint"] == fingerprint and int(row["seed"]) >= 0
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["images"] == 6 and run_info["counts"]["nevus"] == {"synthesize": 2}
    assert "torch" in run_info["versions"] and run_info["argv"]
    assert not (out / ".progress").exists()


def test_same_seed_same_images_and_another_seed_differs(generator_model, tmp_path):
    def synthesize(name, seed):
        out = tmp_path / name
        assert run(["synthesize", "--model", generator_model["model"], "--out", out, "--class", "nevus", "-n", 4,
                    "--seed", seed, "--device", "cpu", "--quiet"]) == 0
        return np.stack([np.asarray(Image.open(out / "images" / f"{r['image']}.png")) for r in read_rows(out)]), read_codes(out / "codes.h5")

    first, first_codes = synthesize("a", 7)
    again, again_codes = synthesize("b", 7)
    other, other_codes = synthesize("c", 8)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first_codes.codes["bottom"], again_codes.codes["bottom"])
    assert (first_codes.codes["top"] != other_codes.codes["top"]).any()


def test_resume_after_an_interruption_neither_duplicates_nor_loses(generator_model, tmp_path, monkeypatch):
    args = ["synthesize", "--model", generator_model["model"], "--class", "bkl", "-n", 7, "--batch-size", 2,
            "--device", "cpu", "--quiet"]
    assert run([*args, "--out", tmp_path / "whole"]) == 0

    with interrupted_after_batches(monkeypatch, 2):
        assert run([*args, "--out", tmp_path / "cut"]) == 130
    assert len(list((tmp_path / "cut" / "images").glob("*.png"))) == 4
    assert run([*args, "--out", tmp_path / "cut"]) == 1  # exists: needs --resume
    assert run([*args, "--out", tmp_path / "cut", "--resume"]) == 0

    whole, cut = read_rows(tmp_path / "whole"), read_rows(tmp_path / "cut")
    assert whole == cut and len(cut) == 7 and len({r["image"] for r in cut}) == 7
    for row in whole:
        a = np.asarray(Image.open(tmp_path / "whole" / "images" / f"{row['image']}.png"))
        b = np.asarray(Image.open(tmp_path / "cut" / "images" / f"{row['image']}.png"))
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in (tmp_path / "cut" / "images").iterdir()) == sorted(f"{r['image']}.png" for r in cut)
    assert run([*args, "--out", tmp_path / "cut", "--resume"]) == 1  # complete: nothing to resume


def test_mask_limits_resampling_to_the_lesion(generator_model, tmp_path):
    data = generator_model["data"]
    nothing, everything = tmp_path / "none", tmp_path / "all"
    nothing.mkdir()
    everything.mkdir()
    for name in data.names:
        Image.new("L", (40, 40), 0).save(nothing / f"{name}.png")
        Image.new("L", (40, 40), 255).save(everything / f"{name}.png")
    source = read_codes(generator_model["codes"])
    for masks, expect_same in ((nothing, True), (everything, False)):
        out = tmp_path / f"out_{masks.name}"
        assert run(["resample", "--codes", generator_model["codes"], "--model", generator_model["model"], "--out", out,
                    "--mask-dir", masks, "--device", "cpu", "--quiet"]) == 0
        made = read_codes(out / "codes.h5")
        same = np.array_equal(made.codes["bottom"], source.codes["bottom"])
        assert same == expect_same


def test_half_mask_keeps_the_codes_outside_it(generator_model, tmp_path):
    data = generator_model["data"]
    masks = tmp_path / "masks"
    masks.mkdir()
    half = np.zeros((32, 32), np.uint8)
    half[16:] = 255  # the lower half of the image is "lesion"
    for name in data.names:
        Image.fromarray(half).save(masks / f"{name}.png")
    out = tmp_path / "out"
    assert run(["resample", "--codes", generator_model["codes"], "--model", generator_model["model"], "--out", out,
                "--mask-dir", masks, "--per-image", 2, "--device", "cpu", "--quiet"]) == 0
    source, made = read_codes(generator_model["codes"]), read_codes(out / "codes.h5")
    index = {name: i for i, name in enumerate(source.images)}
    rows = read_rows(out)
    rows_src = [index[r["source_top"]] for r in rows]
    np.testing.assert_array_equal(made.codes["bottom"][:, :4], source.codes["bottom"][rows_src, :4])
    assert (made.codes["bottom"][:, 4:] != source.codes["bottom"][rows_src, 4:]).any()


def test_augment_balance_brings_every_class_to_the_largest(generator_model, tmp_path):
    data = generator_model["data"]
    # make the classes unequal: drop two bkl images from the CSV
    lines = data.labels_csv.read_text().splitlines()
    skewed = tmp_path / "skewed.csv"
    skewed.write_text("\n".join(lines[:1] + lines[3:]) + "\n")
    out = tmp_path / "aug"
    assert run(["augment", data.images, "--labels", skewed, "--model", generator_model["model"], "--out", out, "--balance",
                "--methods", "mix:1,resample:1,synthesize:1", "--device", "cpu", "--quiet"]) == 0
    rows = read_rows(out)
    counts = {}
    for row in rows:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
        path = next((out / "images").glob(f"{row['image']}.*"))
        Image.open(path).verify()
    assert counts == {"bkl": 4, "melanoma": 4, "nevus": 4}
    originals = [r for r in rows if r["method"] == "original"]
    assert len(originals) == 10
    assert {r["method"] for r in rows if r["label"] == "bkl"} <= {"original", "mix", "resample", "synthesize"}
    assert len(read_codes(out / "codes.h5")) == len(rows)


def test_augment_factor_and_dry_run(generator_model, tmp_path, capsys):
    data = generator_model["data"]
    out = tmp_path / "aug"
    capsys.readouterr()
    assert run(["augment", data.images, "--labels", data.labels_csv, "--model", generator_model["model"], "--out", out,
                "--factor", 2.5, "--methods", "mix:1,resample:3", "--dry-run", "--json", "--device", "cpu", "--quiet"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan["nevus"] == {"originals": 4, "mix": 2, "resample": 4, "total": 10}
    assert not out.exists()
    assert run(["augment", data.images, "--labels", data.labels_csv, "--model", generator_model["model"], "--out", out,
                "--factor", 2.5, "--methods", "mix:1,resample:3", "--no-originals", "--device", "cpu", "--quiet"]) == 0
    rows = read_rows(out)
    assert len(rows) == 30 and not any(r["method"] == "original" for r in rows)


def test_errors_are_one_line_with_exit_1(generator_model, tiny_model_one_level, tmp_path, capsys):
    model, codes = generator_model["model"], generator_model["codes"]
    cases = [  # an unknown --class is a usage error (exit 2): tests/test_safety_errors.py
        (["resample", "--codes", codes, "--model", tiny_model_one_level.path, "--out", tmp_path / "b", "--method", "rand-bottom"],
         "was written by model"),
    ]
    bare = tmp_path / "bare"
    shutil.copytree(model, bare)
    (bare / "prior_bottom.safetensors").unlink()
    cases.append((["synthesize", "--model", bare, "--out", tmp_path / "c", "--per-class", 1],
                  "prior_bottom.safetensors is missing): train it with `skinaug train prior"))
    existing = tmp_path / "exists"
    (existing / "images").mkdir(parents=True)
    cases.append((["mix", "--codes", codes, "--model", model, "--out", existing, "-n", 1], "already exists"))
    for args, message in cases:
        capsys.readouterr()
        assert run([*args, "--device", "cpu", "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err
    assert list(existing.iterdir()) == [existing / "images"]


def test_reference_sampler_through_the_cli_draws_the_same_codes_as_the_fast_one(generator_model, tmp_path):
    made = {}
    for sampler in ("fast", "reference"):
        out = tmp_path / sampler
        assert run(["synthesize", "--model", generator_model["model"], "--out", out, "--per-class", 2, "--seed", 3,
                    "--sampler", sampler, "--device", "cpu", "--quiet"]) == 0
        made[sampler] = read_codes(out / "codes.h5")
    for level in ("top", "bottom"):
        np.testing.assert_array_equal(made["fast"].codes[level], made["reference"].codes[level])


def test_preview_writes_one_captioned_row_per_method(generator_model, tmp_path, capsys):
    mix, synth = tmp_path / "mix", tmp_path / "synth"
    assert run(["mix", "--codes", generator_model["codes"], "--model", generator_model["model"], "--out", mix, "-n", 3,
                "--device", "cpu", "--quiet"]) == 0
    assert run(["synthesize", "--model", generator_model["model"], "--out", synth, "--per-class", 1, "--device", "cpu",
                "--quiet"]) == 0
    capsys.readouterr()
    assert run(["preview", mix, synth, "--out", tmp_path / "sheet.png", "--per-row", 4, "--size", 16, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == {"mix": 3, "synthesize": 3}
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (4 * 16, 2 * (16 + 14))


def test_mix_says_when_a_class_has_a_single_image_to_mix(generator_model, tmp_path, capsys):
    data = generator_model["data"]
    labels_csv = tmp_path / "labels.csv"
    kept = ["img_00", *data.names[4:]]  # bkl keeps one image
    labels_csv.write_text("image,label\n" + "".join(f"{n},{label_of(data)[n]}\n" for n in kept))
    out = tmp_path / "mix"
    assert run(["mix", data.images, "--labels", labels_csv, "--model", generator_model["model"], "--out", out, "-n", 30,
                "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "class bkl has a single source image: its mixes are reconstructions of it" in err
    rows = read_rows(out)
    assert all(r["source_top"] == r["source_bottom"] == "img_00" for r in rows if r["label"] == "bkl")
    assert all(r["source_top"] != r["source_bottom"] for r in rows if r["label"] != "bkl")
    assert any(r["label"] == "bkl" for r in rows) and err.count("single source image") == 1


def test_a_generated_folder_is_data_with_its_labels_so_commands_chain(generator_model, tmp_path):
    model = generator_model["model"]
    synth = tmp_path / "synth"
    assert run(["synthesize", "--model", model, "--out", synth, "--per-class", "2", "--device", "cpu", "--quiet"]) == 0
    made = {row["image"]: row["label"] for row in read_rows(synth)}

    codes = tmp_path / "codes.h5"  # encode reads its labels.csv: no --labels, no class named "images"
    assert run(["encode", synth, "--model", model, "--out", codes, "--device", "cpu", "--quiet"]) == 0
    written = read_codes(codes)
    assert written.class_names == ["bkl", "melanoma", "nevus"]
    assert {name: written.class_names[label] for name, label in zip(written.images, written.labels)} == made

    augmented = tmp_path / "augmented"
    assert run(["augment", synth, "--model", model, "--out", augmented, "--factor", "2", "--methods", "mix",
                "--device", "cpu", "--quiet"]) == 0
    rows = read_rows(augmented)
    originals = [r for r in rows if not r["image"].startswith("gen_")]  # synthesized, and still said to be (issue 21)
    assert {r["image"]: r["label"] for r in originals} == made and {r["method"] for r in originals} == {"synthesize"}
    assert sorted(r["label"] for r in rows if r["method"] == "mix") == sorted(made.values())


def test_generated_shares_count_every_generator_method_but_not_classic_copies():
    from skinaug.generation.commands import generated_shares

    table = {"melanoma": {"originals": 2, "mix": 3, "synthesize": 3, "classic": 2, "total": 10},
             "nevus": {"originals": 8, "resample": 1, "rand-top": 1, "total": 10}}
    assert generated_shares(table) == {"melanoma": 0.6, "nevus": 0.2}


def test_balance_warns_that_the_classes_generated_shares_differ_and_factor_does_not(generator_model, tmp_path, capsys):
    data = generator_model["data"]
    lines = data.labels_csv.read_text().splitlines()
    skewed = tmp_path / "skewed.csv"
    skewed.write_text("\n".join(lines[:1] + lines[3:]) + "\n")  # bkl 2, melanoma 4, nevus 4
    common = ["--labels", skewed, "--model", generator_model["model"], "--methods", "resample", "--dry-run", "--device",
              "cpu", "--quiet"]
    capsys.readouterr()
    assert run(["augment", data.images, "--out", tmp_path / "a", "--balance", *common]) == 0
    err = capsys.readouterr().err
    assert "generated shares differ (bkl 50%, melanoma 0%, nevus 0%)" in err and "--factor F" in err
    assert run(["augment", data.images, "--out", tmp_path / "b", "--factor", "2", *common]) == 0
    assert "generated shares" not in capsys.readouterr().err
