"""The Python API: skinaug.load_model() (encode, decode, synthesize, mix, resample) and skinaug.GeneratedDataset."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import skinaug
from skinaug.cli import main
from skinaug.storage.codefile import read_codes
from skinaug.data.scan import load_image
from skinaug.errors import SkinaugError

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def model(generator_model):
    return skinaug.load_model(generator_model["model"], device="cpu")


def tiny_images(data, size=32):
    return np.stack([load_image(data.images / f"{name}.png", size) for name in data.names])


def test_the_model_says_what_it_is(model, generator_model):
    assert model.class_names == ["bkl", "melanoma", "nevus"] and model.image_size == 32
    assert model.fingerprint == read_codes(generator_model["codes"]).attrs["model_fingerprint"]


def test_encode_gives_the_codes_of_skinaug_encode_and_decode_inverts_the_code_maps(model, generator_model):
    data = generator_model["data"]
    codes = model.encode(tiny_images(data))
    written = read_codes(generator_model["codes"])
    order = [written.images.index(name) for name in data.names]
    for level in ("top", "bottom"):
        assert codes[level].dtype == np.uint16
        np.testing.assert_array_equal(codes[level], written.codes[level][order])
    images = model.decode(codes)
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(model.decode({k: v[:3] for k, v in codes.items()}), images[:3])  # batch-independent


def test_synthesize_gives_the_images_of_the_command_with_the_same_seed(model, generator_model, tmp_path):
    out = tmp_path / "synth"
    assert main(["synthesize", "--model", str(generator_model["model"]), "--out", str(out), "--class", "melanoma", "-n", "5",
                 "--seed", "3", "--device", "cpu", "--quiet"]) == 0
    written = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in sorted((out / "images").glob("*.png"))])
    made = model.synthesize("melanoma", 5, seed=3)
    assert made.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(made, written)
    assert not np.array_equal(model.synthesize(1, 5, seed=4), made)  # a class index works too; another seed differs
    assert model.synthesize("nevus", 0).shape == (0, 32, 32, 3)


def test_the_generating_commands_are_library_functions_that_write_what_the_commands_write(generator_model, tmp_path):
    from skinaug.generation import commands as generate

    model, codes = str(generator_model["model"]), str(generator_model["codes"])
    assert main(["mix", "--codes", codes, "--model", model, "--out", str(tmp_path / "cli"), "-n", "6", "--seed", "2",
                 "--batch-size", "4", "--device", "cpu", "--quiet"]) == 0
    summary = generate.mix(tmp_path / "lib", 6, model=model, inputs=generate.InputOptions(codes=codes),
                           run=generate.RunOptions(seed=2, batch_size=4, device="cpu"))
    assert summary["images"] == 6 and summary["out"] == str(tmp_path / "lib")
    rows = {name: _rows(tmp_path / name) for name in ("cli", "lib")}
    assert rows["lib"] == rows["cli"] and len(rows["lib"]) == 6
    for row in rows["lib"]:
        file = f"images/{row['image']}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "lib" / file)), np.asarray(Image.open(tmp_path / "cli" / file)))

    data = generator_model["data"]
    plan = generate.augment(data.images, tmp_path / "aug", model=model, factor=2.5, methods={"mix": 1, "resample": 3},
                            inputs=generate.InputOptions(labels=data.labels_csv), run=generate.RunOptions(device="cpu"),
                            output=generate.OutputOptions(dry_run=True))["plan"]
    assert plan["nevus"] == {"originals": 4, "mix": 2, "resample": 4, "total": 10} and not (tmp_path / "aug").exists()


def _rows(out):
    import csv

    with open(out / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_mix_takes_the_top_of_one_image_and_the_bottom_of_the_other(model, generator_model):
    images = tiny_images(generator_model["data"])
    first, second = images[:4], images[4:8]
    a, b = model.encode(first), model.encode(second)
    np.testing.assert_array_equal(model.mix(first, second), model.decode({"top": a["top"], "bottom": b["bottom"]}))
    with pytest.raises(SkinaugError, match="one to one"):
        model.mix(first, second[:3])


def test_resample_is_seeded_and_checks_its_labels(model, generator_model):
    images = tiny_images(generator_model["data"])[:4]
    once = model.resample(images, "bkl", seed=0)
    assert once.shape == images.shape
    np.testing.assert_array_equal(model.resample(images, ["bkl"] * 4, seed=0), once)
    assert not np.array_equal(model.resample(images, "bkl", seed=1), once)
    with pytest.raises(SkinaugError, match="2 labels for 4 images"):
        model.resample(images, ["bkl", "nevus"])


@pytest.mark.parametrize("call, message", [
    (lambda m: m.encode(np.zeros((2, 16, 16, 3), np.uint8)), r"images must be uint8 \(N, 32, 32, 3\)"),
    (lambda m: m.encode(np.zeros((2, 32, 32, 3), np.float32)), "images must be uint8"),
    (lambda m: m.synthesize("vasc", 2), "'vasc' is not one of this model's classes"),
    (lambda m: m.synthesize(7, 2), "an index below 3"),
    (lambda m: m.synthesize("bkl", 2, temperature=0), "temperature"),
    (lambda m: m.decode({"top": np.zeros((1, 4, 4), np.uint16)}), "levels"),
    (lambda m: m.decode({"top": np.zeros((1, 4, 4), np.uint16), "bottom": np.full((1, 8, 8), 99, np.uint16)}), r"\[0, 16\)"),
])
def test_bad_input_is_one_clear_error(model, call, message):
    with pytest.raises(SkinaugError, match=message):
        call(model)


def test_a_generated_folder_and_real_data_read_as_one_torch_dataset(generator_model, tmp_path):
    import torch

    out = tmp_path / "synth"
    assert main(["synthesize", "--model", str(generator_model["model"]), "--out", str(out), "--per-class", "2",
                 "--device", "cpu", "--quiet"]) == 0
    generated = skinaug.GeneratedDataset(out)
    assert len(generated) == 6 and generated.class_names == ["bkl", "melanoma", "nevus"]
    image, label = generated[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    info = generated.info(0)
    assert info["method"] == "synthesize" and info["label"] == generated.class_names[label] and info["sources"] == []
    expected = np.asarray(Image.open(info["path"]).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-7)

    data = generator_model["data"]
    real = skinaug.GeneratedDataset(data.images, data.labels_csv, image_size=32)
    assert len(real) == 12 and real.info(0)["method"] == "real" and real.info(0)["group"] == "lesion_0"
    both = torch.utils.data.ConcatDataset([real, generated])
    images, labels = next(iter(torch.utils.data.DataLoader(both, batch_size=18)))
    assert images.shape == (18, 3, 32, 32) and labels.tolist().count(0) == 4 + 2


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a Python example"
    monkeypatch.chdir(README.parent)  # its paths are the repository's
    monkeypatch.delenv("SKINAUG_MODEL", raising=False)
    exec(compile(blocks[0], "README.md", "exec"), {})


def test_seed_none_draws_fresh_images_and_an_int_or_a_generator_reproduces_them(model):
    fresh = [model.synthesize("melanoma", 3) for _ in range(2)]
    assert not np.array_equal(fresh[0], fresh[1])  # seed=None: new images on every call
    np.testing.assert_array_equal(model.synthesize("melanoma", 3, seed=5), model.synthesize("melanoma", 3, seed=5))
    from_generator = [model.synthesize("melanoma", 3, seed=np.random.default_rng(11)) for _ in range(2)]
    np.testing.assert_array_equal(*from_generator)
    images = fresh[0]
    np.testing.assert_array_equal(model.resample(images, "melanoma", seed=np.random.default_rng(2)),
                                  model.resample(images, "melanoma", seed=np.random.default_rng(2)))
    assert not np.array_equal(model.resample(images, "melanoma"), model.resample(images, "melanoma"))
    with pytest.raises(SkinaugError, match="seed must be None, a non-negative int or a numpy.random.Generator"):
        model.synthesize("melanoma", 1, seed=-1)
