"""`train vqvae --loss` and `--decoder-only`: plain mse stays bit for bit what it was, the ssim and hinge terms have
their textbook values, the discriminator resumes exactly, and a decoder-only model keeps the --init model's codes and
priors (so it generates at once)."""

import hashlib
import json

import pytest
import torch
from conftest import TINY_VQVAE_ARGS
from safetensors.torch import load_file

import skinaug.training.vqvae as train_module
from skinaug.cli import main
from skinaug.storage.codefile import read_codes
from skinaug.training.losses import adaptive_weight, hinge_discriminator_loss, hinge_generator_loss, ssim_loss
from skinaug.storage.trained_on import read_record

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest: tiny models, busy shared cores

CPU = ["--device", "cpu", "--quiet"]
TIMING_KEYS = ("images_per_s", "seconds")


def train_cli(dataset, out, *extra) -> int:
    return main(["train", "vqvae", str(dataset.images), "--labels", str(dataset.labels_csv), "--out", str(out),
                 *TINY_VQVAE_ARGS, "--quiet", *map(str, extra)])


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config_of(model) -> dict:
    return json.loads((model / "config.json").read_text())


def metrics_of(model) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (model / "train" / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ (a) the default is plain mse, bit for bit


def test_default_loss_is_plain_mse_bit_for_bit(tiny_model, tiny_dataset, tmp_path):
    # tiny_model: the library's train_vqvae with default TrainOptions (1 epoch, batch 4, seed 0) on the same images
    assert train_cli(tiny_dataset, tmp_path / "default", "--epochs", 1, "--batch-size", 4) == 0
    assert train_cli(tiny_dataset, tmp_path / "mse", "--epochs", 1, "--batch-size", 4, "--loss", "mse") == 0
    reference = digest(tiny_model.path / "vqvae.safetensors")
    assert digest(tmp_path / "default" / "vqvae.safetensors") == reference
    assert digest(tmp_path / "mse" / "vqvae.safetensors") == reference
    assert metrics_of(tmp_path / "mse") == metrics_of(tiny_model.path)  # no extra terms in the metrics either
    assert config_of(tmp_path / "mse")["training_data"]["loss"] == {"terms": "mse", "ssim_weight": 0.0, "gan_weight": 0.0,
                                                                    "gan_start": None}
    assert config_of(tmp_path / "mse")["training_data"]["decoder_only"] is False


# ------------------------------------------------------------------ (b), (c) the terms on known values


def test_ssim_term_is_monai_ssim_over_the_pixel_range_and_zero_for_identical_images():
    from monai.losses import SSIMLoss

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    noisy = (images + 0.3 * torch.randn(2, 3, 32, 32, generator=generator)).clamp(-1, 1)
    assert ssim_loss(noisy, images).item() == SSIMLoss(spatial_dims=2, data_range=2.0)(noisy, images).item()
    assert 0.1 < ssim_loss(noisy, images).item() < 1.0
    assert ssim_loss(images, images).item() == pytest.approx(0.0, abs=1e-6)
    # flat images: no variance, so SSIM is the luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), with
    # C1 = (0.01 x 2)^2 for the [-1, 1] range
    grey, dark = torch.full((1, 3, 32, 32), 0.5), torch.full((1, 3, 32, 32), -0.5)
    c1 = (0.01 * 2.0) ** 2
    assert ssim_loss(grey, dark).item() == pytest.approx(1 - (2 * 0.5 * -0.5 + c1) / (0.25 + 0.25 + c1), rel=1e-5)


def test_hinge_losses_on_tiny_logits():
    real = torch.tensor([2.0, 0.5, -1.0])  # margins: 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0, 1.0])  # margins: 0, 1, 2
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3.0 / 3))
    assert hinge_discriminator_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -5.0])).item() == 0.0
    assert hinge_generator_loss(fake).item() == pytest.approx(1 / 3)


def test_adaptive_weight_is_the_gradient_norm_ratio_at_the_last_layer_clamped():
    last_layer = torch.ones(4, requires_grad=True)
    reconstruction, adversarial = (2 * last_layer).sum(), (0.5 * last_layer).sum()  # gradient norms 4 and 1
    assert adaptive_weight(reconstruction, adversarial, last_layer, 0.1).item() == pytest.approx(0.1 * 4 / (1 + 1e-4))
    # an adversarial term that does not move the last layer would get an unbounded weight: clamped to 1e4
    assert adaptive_weight(reconstruction, 0 * last_layer.sum(), last_layer, 0.1).item() == pytest.approx(1e3)


# ------------------------------------------------------------------ (d) --decoder-only


ENCODER_SIDE = ("encode_bottom.", "encode_top.", "quantize_conv_", "quantize_bottom.", "quantize_top.", "decode_top.")
DECODER_SIDE = ("decoder.", "upsample_top.")


def test_decoder_only_keeps_encoder_codebooks_and_priors_and_generates(generator_model, tmp_path):
    source, data, out = generator_model["model"], generator_model["data"], tmp_path / "sharp"
    # the gan term from the first step: its gradients too must stop at the decoder
    assert train_cli(data, out, "--init", source, "--decoder-only", "--loss", "mse+gan", "--gan-start", 0,
                     "--epochs", 1, "--batch-size", 4) == 0
    tuned, original = load_file(out / "vqvae.safetensors"), load_file(source / "vqvae.safetensors")
    assert tuned.keys() == original.keys() and all(name.startswith(ENCODER_SIDE + DECODER_SIDE) for name in original)
    for name in original:
        if name.startswith(ENCODER_SIDE):  # weights, codebooks and EMA statistics alike
            assert torch.equal(tuned[name], original[name]), name
    changed = [name for name in original if name.startswith(DECODER_SIDE) and not torch.equal(tuned[name], original[name])]
    assert any(name.startswith("decoder.") for name in changed) and any(name.startswith("upsample_top.") for name in changed)

    config, source_config = config_of(out), config_of(source)
    assert config["fingerprint"] != source_config["fingerprint"]
    assert config["training_data"]["decoder_only"] is True and config["training_data"]["loss"]["terms"] == "mse+gan"
    assert config["training_data"]["init"]["fingerprint"] == source_config["fingerprint"]
    for level in ("top", "bottom"):
        assert digest(out / f"prior_{level}.safetensors") == digest(source / f"prior_{level}.safetensors")
        entry = dict(config["priors"][level])
        init = entry.pop("init")
        assert entry == source_config["priors"][level]
        assert init["model"] == str(source.resolve()) and init["fingerprint"] == source_config["fingerprint"]
        assert init["vqvae"] == "decoder-only" and init["copied"] is True
    assert not any("discriminator" in name for name in tuned)  # the discriminator stays in the checkpoint
    record, source_record = read_record(out), read_record(source)  # what trained the priors is still on record
    assert record.stages == [f"init:{source.name}", "vqvae"]
    assert set(source_record.image_hashes.tolist()) <= set(record.image_hashes.tolist())

    # every method, with the same seed, makes the same codes with both models (same encoder, codebooks and priors);
    # the new decoder paints them differently
    def generate(model, name, *args):
        folder = tmp_path / name
        assert main([*map(str, args), "--model", str(model), "--out", str(folder), "--seed", "5", *CPU]) == 0
        images = sorted((folder / "images").glob("*.png"))
        return read_codes(folder / "codes.h5"), b"".join(path.read_bytes() for path in images), len(images)

    for method, *args in (("synthesize", "--per-class", 2), ("mix", data.images, "--labels", data.labels_csv, "-n", 4),
                          ("resample", data.images, "--labels", data.labels_csv, "--per-image", 1)):
        (new_codes, new_pixels, count), (old_codes, old_pixels, _) = (
            generate(model, f"{method}_{tag}", method, *args) for model, tag in ((out, "new"), (source, "old")))
        assert count == {"synthesize": 6, "mix": 4, "resample": 12}[method]
        for level in ("top", "bottom"):
            assert (new_codes.codes[level] == old_codes.codes[level]).all(), method
        assert new_pixels != old_pixels, method


def test_decoder_only_over_other_classes_points_to_train_prior_init(generator_model, tmp_path, capsys):
    source, data, out = generator_model["model"], generator_model["data"], tmp_path / "mine"
    relabelled = tmp_path / "vitiligo.csv"  # bkl becomes a class the source's priors never saw
    relabelled.write_text(data.labels_csv.read_text().replace(",bkl,", ",vitiligo,"))
    assert main(["train", "vqvae", str(data.images), "--labels", str(relabelled), "--init", str(source), "--decoder-only",
                 "--epochs", "1", "--batch-size", "4", "--out", str(out), *CPU]) == 0
    err = capsys.readouterr().err
    assert "warning: the priors of" in err and "are not copied" in err and f"--init {source}" in err
    assert config_of(out)["priors"] == {} and not list(out.glob("prior_*.safetensors"))
    # the advice given works: the source's priors, their class embeddings matched by name
    assert main(["train", "prior", "--model", str(out), str(data.images), "--labels", str(relabelled), "--init", str(source),
                 "--epochs", "0", *CPU]) == 0
    assert set(config_of(out)["priors"]) == {"top", "bottom"}


# ------------------------------------------------------------------ (e) exact resume with the discriminator


class Interrupted(Exception):
    """Stands in for a crash at a chosen point of training."""


def crash_at_second_grid(monkeypatch):
    """The run stops after epoch 2's metrics line, before its checkpoint: the checkpoint holds epoch 1."""
    original, calls = train_module.reconstruction_grid, []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "reconstruction_grid", wrapper)


GAN_RUN = ("--epochs", 2, "--batch-size", 2, "--seed", 3, "--loss", "mse+ssim+gan", "--gan-start", 2)  # 3 steps an epoch


@pytest.mark.parametrize("decoder_only", [False, True])
def test_resume_with_gan_restores_the_discriminator(generator_model, tiny_dataset, tmp_path, monkeypatch, decoder_only):
    extra = ("--init", generator_model["model"], "--decoder-only") if decoder_only else ()
    straight, out = tmp_path / "straight", tmp_path / "resumed"
    assert train_cli(tiny_dataset, straight, *GAN_RUN, *extra) == 0
    with monkeypatch.context() as patch:
        crash_at_second_grid(patch)
        assert train_cli(tiny_dataset, out, *GAN_RUN, *extra) == 1
    checkpoint = torch.load(out / "train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["meta"]["loss"]["gan_start"] == 2
    assert checkpoint["meta"]["decoder_only"] is decoder_only
    assert set(checkpoint["adversary"]) == {"discriminator", "optimizer"}  # a trained discriminator (step 3 of 3)
    assert checkpoint["adversary"]["optimizer"]["state"]

    assert train_cli(tiny_dataset, out, *GAN_RUN[:6], "--resume") == 0  # the loss and --decoder-only: from the checkpoint
    assert digest(out / "vqvae.safetensors") == digest(straight / "vqvae.safetensors")
    assert metrics_of(out) == metrics_of(straight)
    ours, theirs = (torch.load(path / "train" / "checkpoint.pt", weights_only=True)["adversary"] for path in (out, straight))
    for name, value in theirs["discriminator"].items():
        assert torch.equal(ours["discriminator"][name], value), name
    line = metrics_of(out)[-1]
    assert line["gan_steps"] == 3 and line["train_discriminator"] > 0 and line["gan_adaptive_weight"] > 0
    assert 0 < line["train_ssim"] < 2 and line["train_gan"] is not None
    assert config_of(out)["training_data"]["loss"] == {"terms": "mse+ssim+gan", "ssim_weight": 0.2, "gan_weight": 0.1,
                                                       "gan_start": 2}
    if decoder_only:
        assert set(config_of(out)["priors"]) == {"top", "bottom"}


def test_resume_without_the_discriminator_state_would_differ(tiny_dataset, tmp_path, monkeypatch):
    """The check above can fail: a discriminator restarted from scratch changes the weights."""
    straight, out = tmp_path / "straight", tmp_path / "resumed"
    assert train_cli(tiny_dataset, straight, *GAN_RUN) == 0
    with monkeypatch.context() as patch:
        crash_at_second_grid(patch)
        assert train_cli(tiny_dataset, out, *GAN_RUN) == 1
    monkeypatch.setattr(train_module.Adversary, "load_state_dict", lambda self, state: None)
    assert train_cli(tiny_dataset, out, *GAN_RUN, "--resume") == 0
    assert digest(out / "vqvae.safetensors") != digest(straight / "vqvae.safetensors")


# ------------------------------------------------------------------ (f) bad values


@pytest.mark.parametrize("args, message", [
    (["--loss", "foo"], "--loss must be one of mse, mse+ssim, mse+gan, mse+ssim+gan, not 'foo'"),
    (["--decoder-only"], "--decoder-only needs --init MODEL"),
    (["--loss", "mse+ssim", "--ssim-weight", "-0.1"], "--ssim-weight must be a finite number of at least 0"),
    (["--loss", "mse+gan", "--gan-weight", "-1"], "--gan-weight must be a finite number of at least 0"),
    (["--loss", "mse+gan", "--gan-weight", "nan"], "--gan-weight must be a finite number of at least 0"),
    (["--loss", "mse+gan", "--gan-start", "-5"], "--gan-start must be a finite number of at least 0"),
    (["--ssim-weight", "0.5"], "--ssim-weight weighs the ssim term, which --loss mse does not have"),
    (["--loss", "mse+ssim", "--gan-start", "10"], "--gan-weight and --gan-start set the gan term"),
])
def test_bad_loss_options_are_one_line_usage_errors(tiny_dataset, tmp_path, capsys, args, message):
    out = tmp_path / "model"
    assert train_cli(tiny_dataset, out, "--epochs", 1, *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not out.exists()
