"""Stage-1 training, through the library and `skinaug train vqvae`: the model directory, exact resume,
existing outputs, divergence and the low code-usage warning."""

import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import TINY_CLASSES, TINY_VQVAE_ARGS
from PIL import Image
from safetensors.torch import load_file

import skinaug.training.vqvae as train_module
from skinaug.cli import main
from skinaug.storage.modeldir import ModelDir, fingerprint, vqvae_config
from skinaug.training.loop import lr_factor
from skinaug.vqvae.model import VQVAE2, VQVAEConfig

pytestmark = pytest.mark.usefixtures("single_thread")

TIMING_KEYS = ("images_per_s", "seconds")


def train_cli(dataset, out, *extra: str) -> int:
    return main(["train", "vqvae", str(dataset.images), "--labels", str(dataset.labels_csv), "--out", str(out),
                 *TINY_VQVAE_ARGS, *extra])


def read_metrics(model_dir) -> list[dict]:
    return [json.loads(line) for line in (model_dir / "train" / "metrics.jsonl").read_text().splitlines()]


def without_timings(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in lines]


def snapshot(folder) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, mtime_ns) of every file under folder."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


class Interrupted(Exception):
    """Stands in for a crash (power cut, kill) at a chosen point of training."""


def interrupt_on_call(monkeypatch, name: str, call: int):
    """Makes skinaug.train_vqvae.<name> raise Interrupted on its call-th call (1-based)."""
    original = getattr(train_module, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise Interrupted(f"{name} call {call}")
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, name, wrapper)


def test_cli_trains_a_complete_model_directory(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "model"
    assert train_cli(tiny_dataset, out, "--epochs", "2", "--batch-size", "4", "--json") == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # stdout is the JSON summary and nothing else
    assert captured.out.count("\n") == 1 and summary["model"] == str(out) and summary["epoch"] == 2
    assert "epoch 2/2" in captured.err and "warning" not in captured.err

    config = json.loads((out / "config.json").read_text())
    assert (config["image_size"], config["levels"], config["codebook_size"], config["code_dim"]) == (32, 2, 16, 4)
    assert config["grid"] == {"bottom": [8, 8], "top": [4, 4]}
    assert config["class_names"] == list(TINY_CLASSES)
    assert config["training_data"]["images"] == 12
    assert config["training_data"]["per_class"] == {name: 4 for name in TINY_CLASSES}
    assert config["training_data"]["train_images"] + config["training_data"]["val_images"] == 12
    assert config["metrics"]["epochs"] == 2 and config["metrics"]["steps"] == 2 * (config["training_data"]["train_images"] // 4)

    weights = load_file(str(out / "vqvae.safetensors"))
    assert config["fingerprint"] == fingerprint(vqvae_config(config), weights)  # the fingerprint names these weights
    assert len(config["fingerprint"]) == 12 and int(config["fingerprint"], 16) >= 0
    model = ModelDir(out).load_vqvae()
    assert model.config == VQVAEConfig(image_size=32, levels=2, codebook_size=16, code_dim=4, channels=16,
                                       res_channels=8, n_res_blocks=1)
    assert bool(model.quantize_top.initialised) and bool(model.quantize_bottom.initialised)

    card = (out / "MODEL_CARD.md").read_text()
    assert config["fingerprint"] in card and "K=16" in card and "bottom 8x8" in card and "CC BY-NC" in card

    metrics = read_metrics(out)
    assert [line["epoch"] for line in metrics] == [1, 2]
    for line in metrics:
        assert 0 < line["train_mse"] < 1 and 0 < line["val_mse"] < 1
        for level in ("top", "bottom"):
            assert 1 <= line[f"used_codes_{level}"] <= 16
            assert 1 <= line[f"perplexity_{level}"] <= line[f"used_codes_{level}"] + 1e-9
            assert line[f"codes_restarted_{level}"] == 0  # restart_after=200 is never reached in 2 steps
        assert 1 <= line["co_occurring_pairs"] <= 16 * 16
    assert {k: v for k, v in config["metrics"].items() if k in metrics[-1]} == {
        k: v for k, v in metrics[-1].items() if k.startswith(("val_mse", "used_codes", "perplexity", "co_occurring"))}

    val_images = config["training_data"]["val_images"]
    colours = {tuple(c) for c in tiny_dataset.colours}
    for epoch in (1, 2):
        grid = np.asarray(Image.open(out / "train" / f"reconstructions_epoch{epoch:03d}.png"))
        assert grid.shape == (64, 32 * min(8, val_images), 3)  # originals above reconstructions
        for i in range(min(8, val_images)):
            tile = grid[:32, 32 * i : 32 * (i + 1)].reshape(-1, 3)
            assert (tile == tile[0]).all() and tuple(int(v) for v in tile[0]) in colours

    checkpoint = torch.load(out / "train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == config["metrics"]["steps"]
    assert checkpoint["meta"]["class_names"] == list(TINY_CLASSES)
    for name, value in checkpoint["model"].items():
        assert torch.equal(value, weights[name]), name


def test_library_and_cli_train_the_same_model(tiny_model, tiny_dataset, tmp_path):
    # tiny_model is trained by the library (1 epoch, batch 4, seed 0) on its own copy of the same images
    assert train_cli(tiny_dataset, tmp_path / "cli", "--epochs", "1", "--batch-size", "4", "--seed", "0", "--quiet") == 0
    assert ModelDir(tmp_path / "cli").fingerprint() == ModelDir(tiny_model.path).fingerprint()
    assert without_timings(read_metrics(tmp_path / "cli")) == without_timings(read_metrics(tiny_model.path))


RESUME_ARGS = ("--epochs", "2", "--batch-size", "2", "--seed", "3", "--quiet")  # 6 training images: 3 steps per epoch


@pytest.fixture(scope="module")
def uninterrupted_run(single_thread, tmp_path_factory):
    """A model trained with RESUME_ARGS in one go, on its own copy of the tiny dataset."""
    from conftest import make_tiny_dataset

    root = tmp_path_factory.mktemp("uninterrupted")
    assert train_cli(make_tiny_dataset(root / "data"), root / "model", *RESUME_ARGS) == 0
    return root / "model"


@pytest.mark.parametrize("crash_in, call", [
    ("vqvae_loss", 5),  # second step of epoch 2 (3 steps per epoch)
    ("reconstruction_grid", 2),  # after epoch 2's metrics line was written but before its checkpoint
])
def test_resume_after_a_crash_is_bit_identical_to_an_uninterrupted_run(uninterrupted_run, tiny_dataset, tmp_path, monkeypatch,
                                                                      crash_in, call):
    args = RESUME_ARGS
    out = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_on_call(patch, crash_in, call)
        assert train_cli(tiny_dataset, out, *args) == 1  # a crash inside a command is one error line, exit 1
    assert not (out / "vqvae.safetensors").exists()
    assert torch.load(out / "train" / "checkpoint.pt", weights_only=True)["epoch"] == 1

    assert train_cli(tiny_dataset, out, *args, "--resume") == 0
    straight = load_file(str(uninterrupted_run / "vqvae.safetensors"))
    resumed = load_file(str(out / "vqvae.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:  # weights, codebooks and EMA state alike
        assert torch.equal(straight[name], resumed[name]), name
    assert ModelDir(out).fingerprint() == ModelDir(uninterrupted_run).fingerprint()
    # one metrics line per epoch, with the same values: nothing repeated from the cut-off epoch
    assert without_timings(read_metrics(out)) == without_timings(read_metrics(uninterrupted_run))


def test_resume_takes_the_shape_defining_config_from_the_checkpoint(tiny_dataset, tmp_path):
    out = tmp_path / "model"
    assert train_cli(tiny_dataset, out, "--epochs", "1", "--batch-size", "4", "--quiet") == 0
    # a different --codebook-size on resume contradicts the checkpoint: refused (issue 21; it used to be ignored)
    assert train_cli(tiny_dataset, out, "--epochs", "2", "--batch-size", "4", "--quiet", "--resume",
                     "--codebook-size", "64") == 2
    assert train_cli(tiny_dataset, out, "--epochs", "2", "--batch-size", "4", "--quiet", "--resume") == 0
    config = ModelDir(out).config()
    assert config["codebook_size"] == 16 and config["metrics"]["epochs"] == 2
    assert [line["epoch"] for line in read_metrics(out)] == [1, 2]


def test_resume_without_a_checkpoint_is_an_error(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("not a training run")
    assert train_cli(tiny_dataset, out, "--epochs", "1", "--resume") == 1
    assert "no checkpoint to resume" in capsys.readouterr().err


def test_existing_model_is_never_overwritten_without_overwrite(tiny_model, tmp_path, capsys):
    before = snapshot(tiny_model.path)
    assert train_cli(tiny_model.dataset, tiny_model.path, "--epochs", "1") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--overwrite" in err
    assert snapshot(tiny_model.path) == before

    # --overwrite with --resume asks for two contradictory things: a usage error, nothing touched
    assert train_cli(tiny_model.dataset, tiny_model.path, "--epochs", "1", "--overwrite", "--resume") == 2
    assert "contradict" in capsys.readouterr().err
    assert snapshot(tiny_model.path) == before


def test_overwrite_replaces_an_existing_model(tiny_dataset, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text('{"format_version": 1}')  # an earlier model directory (--overwrite replaces no other)
    (out / "stale.txt").write_text("from an older run")
    assert train_cli(tiny_dataset, out, "--epochs", "1", "--batch-size", "4", "--quiet", "--overwrite") == 0
    assert not (out / "stale.txt").exists() and ModelDir(out).exists()


def poison_loss_on_call(monkeypatch, call: int):
    """The call-th loss (1-based) becomes NaN, as after an exploding step."""
    original = train_module.vqvae_loss
    calls = []

    def wrapper(outputs, images, weight):
        calls.append(1)
        loss, mse = original(outputs, images, weight)
        if len(calls) == call:
            loss = loss * float("nan")
        return loss, mse

    monkeypatch.setattr(train_module, "vqvae_loss", wrapper)


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model"
    args = ("--epochs", "2", "--batch-size", "4", "--quiet")  # one step per epoch
    with monkeypatch.context() as patch:
        poison_loss_on_call(patch, call=2)  # epoch 2
        assert train_cli(tiny_dataset, out, *args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: training diverged") and "epoch 2" in err and "--resume" in err
    checkpoint = torch.load(out / "train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values() if value.is_floating_point())
    assert not (out / "vqvae.safetensors").exists()
    assert [line["epoch"] for line in read_metrics(out)] == [1]

    # the kept checkpoint is good: resuming (here without the fault) finishes the run
    assert train_cli(tiny_dataset, out, *args, "--resume") == 0
    assert ModelDir(out).config()["metrics"]["epochs"] == 2


def test_divergence_in_the_first_epoch_does_not_promise_a_checkpoint(tiny_dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model"
    poison_loss_on_call(monkeypatch, call=1)
    assert train_cli(tiny_dataset, out, "--epochs", "1", "--batch-size", "4", "--quiet") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: training diverged") and "epoch 1" in err
    assert "no checkpoint" in err and not (out / "train" / "checkpoint.pt").exists()


def test_low_code_usage_is_warned_about(tiny_dataset, tmp_path, capsys):
    # twelve solid-colour images cannot use 10% of 512 codes
    out = tmp_path / "model"
    assert train_cli(tiny_dataset, out, "--epochs", "1", "--batch-size", "4", "--codebook-size", "512", "--quiet") == 0
    err = capsys.readouterr().err
    (metrics,) = read_metrics(out)
    assert metrics["used_codes_top"] < 51
    assert (f"warning: the top level uses only {metrics['used_codes_top']} of 512 codes (under 10%)") in err
    assert ("warning: the bottom level" in err) == (metrics["used_codes_bottom"] < 51.2)


@pytest.mark.parametrize("step, expected", [(0, 0.25), (3, 1.0), (4, 1.0), (10, 0.5), (16, 0.0), (40, 0.0)])
def test_lr_warms_up_linearly_then_decays_by_cosine(step, expected):
    # 4 warm-up steps to the peak, then a cosine from step 4 to 0 at step 16 (half-way at step 10)
    assert lr_factor(step, warmup_steps=4, total_steps=16) == pytest.approx(expected, abs=1e-12)


def test_augmentation_keeps_solid_images_in_range_and_is_seeded():
    from skinaug.training.loop import augment_batch

    images = torch.linspace(-1, 1, 4).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    torch.manual_seed(0)
    first = augment_batch(images)
    torch.manual_seed(0)
    assert torch.equal(first, augment_batch(images))
    assert first.shape == images.shape and first.min() >= -1 and first.max() <= 1
    # flips and rotations move no colour in a solid image; the jitter is mild (brightness and contrast +-10%)
    assert (first - images).abs().max() <= 0.25


def test_training_models_differ_by_seed_and_load_into_the_network(tiny_model, tiny_model_one_level):
    assert ModelDir(tiny_model.path).fingerprint() != ModelDir(tiny_model_one_level.path).fingerprint()
    one_level = ModelDir(tiny_model_one_level.path).load_vqvae()
    assert isinstance(one_level, VQVAE2) and set(one_level.quantizers) == {"bottom"}
    assert ModelDir(tiny_model_one_level.path).config()["grid"] == {"bottom": [8, 8]}


def test_downsample_8_trains_a_model_whose_codes_are_half_as_wide(tiny_dataset, tmp_path):
    out = tmp_path / "model"
    assert train_cli(tiny_dataset, out, "--downsample", "8", "--epochs", "1", "--batch-size", "4", "--quiet") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["grid"] == {"bottom": [4, 4], "top": [2, 2]} and config["vqvae"]["downsample"] == 8
    model = ModelDir(out).load_vqvae()
    assert model.config.downsample == 8
    assert config["fingerprint"] == fingerprint(vqvae_config(config), load_file(str(out / "vqvae.safetensors")))
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    assert {level: tuple(c.shape) for level, c in model.eval().encode(images)[1].items()} == {
        "bottom": (3, 4, 4), "top": (3, 2, 2)}


@pytest.mark.parametrize("extra, message", [
    (["--downsample", "5"], "{downsample} must be one of 4, 8"),
    (["--downsample", "8", "--image-size", "40"], "must be a multiple of 16"),
])
def test_a_downsample_the_grids_cannot_use_is_a_usage_error(tiny_dataset, tmp_path, capsys, extra, message):
    assert train_cli(tiny_dataset, tmp_path / "model", *extra, "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert message.replace("{downsample}", "--downsample") in err and "Traceback" not in err
    assert not (tmp_path / "model" / "config.json").exists()


def test_a_config_with_an_unknown_downsample_is_refused(tiny_model, tmp_path):
    import shutil

    from skinaug.errors import SkinaugError

    copy = tmp_path / "model"
    shutil.copytree(tiny_model.path, copy)
    config = json.loads((copy / "config.json").read_text())
    config["vqvae"]["downsample"] = 3
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(SkinaugError, match="vqvae.downsample must be one of 4, 8, not 3"):
        ModelDir(copy).config()


def test_a_resumed_run_takes_its_checkpoints_settings_and_leaves_the_callers_options_as_they_were(tiny_dataset, tmp_path):
    from dataclasses import replace

    from conftest import TINY_VQVAE

    from skinaug.training.vqvae import TrainOptions, train_vqvae

    out = tmp_path / "model"
    assert train_cli(tiny_dataset, out, "--epochs", "1", "--batch-size", "4", "--quiet") == 0  # seed 0, mse
    (out / "vqvae.safetensors").unlink()  # as if cut off after its checkpoint: --resume continues it
    options = TrainOptions(epochs=2, batch_size=4, seed=7, device="cpu", loss="mse+ssim")
    asked = replace(options)
    train_vqvae(tiny_dataset.images, out, labels=tiny_dataset.labels_csv, model_config=VQVAEConfig(**TINY_VQVAE),
                options=options, resume=True)
    assert options == asked  # seed 7 and mse+ssim, as the caller made them
    run = json.loads((out / "train" / "train_config.json").read_text())
    assert (run["seed"], run["loss"]["terms"], run["options"]["seed"]) == (0, "mse", 0)  # the checkpoint's


def test_a_config_with_an_unknown_vqvae_key_is_refused_naming_the_file_and_the_key(tiny_model, tmp_path, capsys):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model.path, copy)
    config = json.loads((copy / "config.json").read_text())
    config["vqvae"]["dropout"] = 0.1  # no VQ-VAE field: it used to be dropped without a word
    (copy / "config.json").write_text(json.dumps(config))
    code = main(["encode", str(tiny_model.dataset.images), "--model", str(copy), "--out", str(tmp_path / "codes.h5"),
                 "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0] == f"error: {copy / 'config.json'}: vqvae: unknown VQ-VAE config keys: dropout"
