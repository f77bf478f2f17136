"""augment --methods classic: albumentations copies of the inputs with provenance, seeded, resumable; a user's own
pipeline from a file."""

import csv

import numpy as np
import pytest
from PIL import Image

from skinaug.data.classic import augment_images, default_transforms
from skinaug.cli import main
from skinaug.storage.codefile import read_codes


def rows_of(out):
    with open(out / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def augment(data, model, out, *extra):
    return main([str(a) for a in ["augment", data.images, "--labels", data.labels_csv, "--model", model, "--out", out,
                                  "--factor", "2", "--device", "cpu", "--quiet", *extra]])


def test_classic_copies_carry_their_source_and_the_codes_of_what_was_written(generator_model, tmp_path):
    data, model = generator_model["data"], generator_model["model"]
    out = tmp_path / "aug"
    assert augment(data, model, out, "--methods", "classic") == 0
    rows = rows_of(out)
    classic = [r for r in rows if r["method"] == "classic"]
    label_of = dict(zip(data.names, data.labels))
    assert len(classic) == 12 and sorted(r["source_top"] for r in classic) == sorted(data.names)  # each input once
    assert all(r["source_top"] == r["source_bottom"] and r["label"] == label_of[r["source_top"]] and r["temperature"] == ""
               for r in classic)
    # the codes kept are the VQ-VAE's codes of the written image
    import skinaug

    written = read_codes(out / "codes.h5")
    index = {name: i for i, name in enumerate(written.images)}
    files = np.stack([np.asarray(Image.open(out / "images" / f"{r['image']}.png").convert("RGB")) for r in classic])
    encoded = skinaug.load_model(model, device="cpu").encode(files)
    for level in ("top", "bottom"):
        np.testing.assert_array_equal(encoded[level], written.codes[level][[index[r["image"]] for r in classic]])
    # seeded: the same command gives the same images
    again = tmp_path / "again"
    assert augment(data, model, again, "--methods", "classic") == 0
    for r in classic:
        assert (out / "images" / f"{r['image']}.png").read_bytes() == (again / "images" / f"{r['image']}.png").read_bytes()


def test_a_pipeline_file_replaces_the_default(generator_model, tmp_path):
    import albumentations as A

    data, model = generator_model["data"], generator_model["model"]
    flip = tmp_path / "flip.yaml"
    A.save(A.Compose([A.HorizontalFlip(p=1.0)]), str(flip), data_format="yaml")
    out = tmp_path / "flipped"
    assert augment(data, model, out, "--methods", "classic", "--classic-config", flip) == 0
    from skinaug.data.scan import load_image

    classic = [r for r in rows_of(out) if r["method"] == "classic"]
    assert len(classic) == 12
    for row in classic:  # exactly the mirrored input at the model's side
        made = np.asarray(Image.open(out / "images" / f"{row['image']}.png"))
        np.testing.assert_array_equal(made, load_image(data.images / f"{row['source_top']}.png", 32)[:, ::-1])


@pytest.mark.parametrize("extra, message", [
    (["--methods", "mix", "--classic-config", "PIPE"], "add classic to --methods"),
    (["--methods", "classic", "--classic-config", "NOPE"], "is not a file"),
    (["--methods", "classic", "--classic-config", "BAD"], "is not an albumentations pipeline"),
])
def test_bad_classic_options_are_usage_errors(generator_model, tmp_path, capsys, extra, message):
    import albumentations as A

    A.save(A.Compose([A.HorizontalFlip()]), str(tmp_path / "pipe.yaml"), data_format="yaml")
    (tmp_path / "bad.yaml").write_text("transform: [1, 2\n")
    paths = {"PIPE": tmp_path / "pipe.yaml", "NOPE": tmp_path / "nope.yaml", "BAD": tmp_path / "bad.yaml"}
    extra = [str(paths.get(e, e)) for e in extra]
    assert augment(generator_model["data"], generator_model["model"], tmp_path / "o", *extra) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_the_default_pipeline_keeps_shape_and_type_and_is_seeded():
    images = np.random.default_rng(0).integers(0, 255, (5, 24, 24, 3), dtype=np.uint8)
    first = augment_images(images, seed=7)
    assert first.shape == images.shape and first.dtype == np.uint8
    assert np.array_equal(first, augment_images(images, seed=7)) and not np.array_equal(first, augment_images(images, seed=8))
    assert len(default_transforms()) == 7 and augment_images(images[:0], seed=1).shape == (0, 24, 24, 3)


def test_a_pipeline_that_does_not_give_uint8_images_is_refused(generator_model, tmp_path, capsys):
    import albumentations as A

    normalize = tmp_path / "normalize.yaml"
    A.save(A.Compose([A.Normalize()]), str(normalize), data_format="yaml")
    assert augment(generator_model["data"], generator_model["model"], tmp_path / "o", "--methods", "classic",
                   "--classic-config", normalize) == 2
    assert "must give uint8 images" in capsys.readouterr().err and not (tmp_path / "o").exists()
