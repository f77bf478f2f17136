"""`skinaug train prior`: weights and config in the model directory, metrics, resume exactness, class subsets."""

import json
import shutil

import pytest
from safetensors.torch import load_file

from skinaug.cli import main

from conftest import interrupted_at_validation

TINY_PRIOR = ["--channels", "16", "--blocks", "1", "--res-blocks", "1", "--kernel-size", "3", "--batch-size", "4",
              "--device", "cpu", "--quiet"]


@pytest.fixture
def model_with_codes(tiny_model, tmp_path):
    """A writable copy of the tiny VQ-VAE and its code file."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model.path, model)
    codes = tmp_path / "codes.h5"
    data = tiny_model.dataset
    assert main(["encode", str(data.images), "--labels", str(data.labels_csv), "--model", str(model), "--out", str(codes),
                 "--device", "cpu", "--quiet"]) == 0
    return model, codes, data


def run(*args):
    return main([str(a) for a in args])


@pytest.mark.parametrize("arch", ["pixelsnail", "gated-pixelcnn"])
def test_training_both_levels_writes_weights_config_and_metrics(model_with_codes, arch):
    model, codes, _ = model_with_codes
    assert run("train", "prior", "--model", model, "--codes", codes, "--arch", arch, "--epochs", 3, "--lr", "0.01", *TINY_PRIOR) == 0
    config = json.loads((model / "config.json").read_text())
    for level, grid in (("top", 4), ("bottom", 8)):
        entry = config["priors"][level]
        assert entry["arch"] == arch and entry["height"] == entry["width"] == grid and entry["num_classes"] == 3
        assert entry["metrics"]["epoch"] == 3 and entry["metrics"]["val_bits_per_code"] > 0
        assert any(name.endswith("weight") for name in load_file(model / f"prior_{level}.safetensors"))
    assert config["priors"]["bottom"]["condition_height"] == 4 and config["priors"]["top"]["condition_codebook_size"] == 0
    lines = [json.loads(line) for line in (model / "train" / "metrics.jsonl").read_text().splitlines()]
    prior_lines = [line for line in lines if line["stage"].startswith("prior")]
    assert [(line["stage"], line["epoch"]) for line in prior_lines] == [
        ("prior_top", 1), ("prior_top", 2), ("prior_top", 3), ("prior_bottom", 1), ("prior_bottom", 2), ("prior_bottom", 3)]
    top = [line["train_bits_per_code"] for line in prior_lines if line["stage"] == "prior_top"]
    assert top[-1] < top[0]  # learning: 16 codes are 4 bits each when uniform
    assert all(0.0 <= line["val_accuracy"] <= 1.0 for line in prior_lines)


def test_resume_after_an_interruption_is_bit_exact(model_with_codes, tmp_path, monkeypatch):
    model, codes, _ = model_with_codes
    straight = tmp_path / "straight"
    shutil.copytree(model, straight)
    assert run("train", "prior", "--model", straight, "--codes", codes, "--level", "top", "--epochs", 2, *TINY_PRIOR) == 0
    with interrupted_at_validation(monkeypatch, 2):
        assert run("train", "prior", "--model", model, "--codes", codes, "--level", "top", "--epochs", 2, *TINY_PRIOR) == 130
    assert not (model / "prior_top.safetensors").exists()
    assert run("train", "prior", "--model", model, "--codes", codes, "--level", "top", "--epochs", 2, "--resume", *TINY_PRIOR) == 0
    resumed, reference = load_file(model / "prior_top.safetensors"), load_file(straight / "prior_top.safetensors")
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert resumed[name].equal(reference[name]), name


def test_class_subset_and_unconditional(model_with_codes, tmp_path, capsys):
    model, codes, _ = model_with_codes
    assert run("train", "prior", "--model", model, "--codes", codes, "--classes", "melanoma,nevus", "--epochs", 1, *TINY_PRIOR) == 0
    config = json.loads((model / "config.json").read_text())
    assert config["priors"]["top"]["classes"] == ["melanoma", "nevus"]
    capsys.readouterr()
    assert run("synthesize", "--model", model, "--out", tmp_path / "s", "--class", "bkl", "-n", 1, "--device", "cpu") == 1
    assert "trained on melanoma, nevus only, not on bkl" in capsys.readouterr().err
    assert run("synthesize", "--model", model, "--out", tmp_path / "s2", "--class", "nevus", "-n", 2, "--device", "cpu", "--quiet") == 0

    assert run("train", "prior", "--model", model, "--codes", codes, "--unconditional", "--overwrite", "--epochs", 1, *TINY_PRIOR) == 0
    assert json.loads((model / "config.json").read_text())["priors"]["top"]["num_classes"] == 0
    assert run("synthesize", "--model", model, "--out", tmp_path / "s3", "--class", "bkl", "-n", 2, "--device", "cpu", "--quiet") == 0


def test_priors_from_images_encoded_on_the_fly_and_errors(model_with_codes, capsys):
    model, codes, data = model_with_codes
    assert run("train", "prior", "--model", model, data.images, "--labels", data.labels_csv, "--level", "bottom",
               "--epochs", 1, *TINY_PRIOR) == 0
    assert (model / "prior_bottom.safetensors").is_file() and not (model / "prior_top.safetensors").exists()
    for args, message in [
        (["--codes", codes, "--level", "bottom"], "already exists: pass --overwrite"),
        (["--codes", codes, "--classes", "psoriasis"], "unknown class(es) psoriasis"),
        ([], "give either --codes"),
    ]:
        capsys.readouterr()
        code = run("train", "prior", "--model", model, *args, "--epochs", 1, *TINY_PRIOR)
        err = capsys.readouterr().err
        assert code in (1, 2) and message in err and "Traceback" not in err


@pytest.mark.parametrize("overrides, message", [
    ({"kernel_size": 4}, "kernel_size must be odd and at least 3, not 4"),
    ({"channels": 12}, "channels (12) must be divisible by n_heads (8)"),
    ({"widths": 3}, "unknown prior config keys: widths"),
])
def test_the_options_sizes_are_checked_like_any_prior_config(overrides, message):
    from skinaug.errors import UsageError
    from skinaug.spec import ModelSpec
    from skinaug.training.prior import PriorOptions, prior_config_for

    spec = ModelSpec(image_size=32, levels=2, codebook_size=16, code_dim=4, grid={"bottom": (8, 8), "top": (4, 4)},
                     class_names=("a", "b"))
    assert prior_config_for("top", spec, PriorOptions(overrides={"channels": 16, "kernel_size": 3})).channels == 16
    with pytest.raises(UsageError) as raised:
        prior_config_for("top", spec, PriorOptions(overrides=overrides))
    assert message in str(raised.value)
