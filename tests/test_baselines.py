"""The baseline generators (skinaug/baselines/): `train baseline` for every arch (model directory, bit-exact resume),
`synthesize` and `augment --methods synthesize` with them (labels, provenance, no codes.h5), the loss maths, and the
commands that need codes refusing them."""

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import skinaug.baselines.networks as networks
from skinaug.baselines.config import ARCHS, baseline_config, msssim_window
from skinaug.baselines.dcgan import REAL_TARGET, discriminator_loss, generator_loss
from skinaug.generation.baseline_sampler import BaselineSampler
from skinaug.baselines.vae import kl_divergence, msssim_loss
from skinaug.cli import main
from skinaug.errors import UsageError
from skinaug.generation.commands import batch_seed
from skinaug.storage.modeldir import fingerprint, load_weights
from skinaug.generation.sampler import SamplingOptions
from skinaug.storage.trained_on import read_record

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSES = ("bkl", "melanoma", "nevus")
SIDE = {arch: 48 if arch == "msssim-vae" else 32 for arch in ARCHS}  # MS-SSIM's five scales need 40px or more
TINY = ["--widths", "8,16", "--latent-dim", "8", "--hidden", "16", "--batch-size", "8", "--epochs", "2", "--seed", "1",
        "--device", "cpu", "--quiet"]
TIMING_KEYS = ("images_per_s", "seconds")


def make_dataset(root: Path) -> tuple[Path, Path]:
    """24 textured 40x40 images, 8 per class, two per lesion; 20 train and 4 validate (2 steps of 8 per epoch)."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["image,label,lesion_id"]
    for i in range(24):
        colour = np.roll([200, 60, 40], i % 3)
        pixels = np.clip(colour + rng.integers(-30, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"img_{i:02d}.png")
        rows.append(f"img_{i:02d},{CLASSES[i % 3]},lesion_{i // 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return images, root / "labels.csv"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("baseline_data"))


def train(data, out, arch: str, *extra: str) -> int:
    images, labels = data
    return main(["train", "baseline", str(images), "--labels", str(labels), "--arch", arch, "--out", str(out),
                 "--image-size", str(SIDE[arch]), *TINY, *extra])


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """arch -> a model directory trained for two epochs in one go."""
    root = tmp_path_factory.mktemp("baselines")
    for arch in ARCHS:
        assert train(data, root / arch, arch) == 0
    return {arch: root / arch for arch in ARCHS}


def read_metrics(model_dir) -> list[dict]:
    lines = (model_dir / "train" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def read_rows(out) -> list[dict]:
    with open(out / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------ training


@pytest.mark.parametrize("arch", ARCHS)
def test_training_writes_a_complete_model_directory(trained, arch):
    model_dir = trained[arch]
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["kind"], config["arch"], config["image_size"], config["latent_dim"]) == ("baseline", arch, SIDE[arch], 8)
    assert config["class_names"] == list(CLASSES) and config["baseline"]["num_classes"] == 3
    assert config["baseline"]["widths"] == [8, 16] and config["metrics"]["epochs"] == 2 and config["metrics"]["steps"] == 4
    # the fingerprint hashes the network's config, arch included, with its weights
    assert config["fingerprint"] == fingerprint(config["baseline"], load_weights(model_dir / "baseline.safetensors"))
    assert config["training_data"]["train_images"] == 20 and config["training_data"]["val_images"] == 4
    metrics = read_metrics(model_dir)
    assert [(m["epoch"], m["step"], m["arch"]) for m in metrics] == [(1, 2, arch), (2, 4, arch)]
    assert all(math.isfinite(value) for m in metrics for value in m.values() if isinstance(value, float))
    expected = {"dcgan": {"val_d_real"}, "vae-gan": {"val_mse", "val_kl", "val_d_real"}}.get(arch, {"val_mse", "val_kl"})
    assert {key for key in metrics[-1] if key.startswith("val_")} == expected
    vae_terms = ["loss", "reconstruction", "kl"]
    terms = {"dcgan": ["generator", "discriminator"],
             "vae-gan": [*vae_terms, "adversarial", "discriminator"]}.get(arch, vae_terms)
    assert [key for key in metrics[-1] if key.startswith("train_")] == [f"train_{term}" for term in terms]
    assert list(metrics[-1])[:5] == ["stage", "arch", "epoch", "step", "lr"] and metrics[-1]["stage"] == "baseline"
    grid = np.asarray(Image.open(model_dir / "train" / "samples_epoch002.png"))
    assert grid.shape == (3 * SIDE[arch], 8 * SIDE[arch], 3)  # a row per class, 8 samples each
    record = read_record(model_dir)
    assert record.stages == ["baseline"] and len(record.image_hashes) == 24 and len(record.group_hashes) == 12
    checkpoint = torch.load(model_dir / "train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["meta"]["baseline"]["arch"] == arch


def crash_on_step(monkeypatch, call: int) -> None:
    """The step function raises on its call-th call (1-based): a crash in the middle of training."""
    real_make_step, calls = networks.make_step, []

    def make_step(model, optimizers):
        step = real_make_step(model, optimizers)

        def crashing(images, labels):
            calls.append(1)
            if len(calls) == call:
                raise RuntimeError("crash")
            return step(images, labels)

        return crashing

    monkeypatch.setattr(networks, "make_step", make_step)


@pytest.mark.parametrize("arch", ARCHS)
def test_resume_after_a_crash_is_bit_identical_to_an_uninterrupted_run(trained, data, tmp_path, monkeypatch, arch):
    out = tmp_path / arch
    with monkeypatch.context() as patch:
        crash_on_step(patch, 3)  # the first step of epoch 2
        assert train(data, out, arch) == 1
    assert not (out / "baseline.safetensors").exists()
    assert torch.load(out / "train" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert train(data, out, arch, "--resume") == 0
    straight, resumed = load_file(str(trained[arch] / "baseline.safetensors")), load_file(str(out / "baseline.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:  # every network's weights and batch-norm statistics
        assert torch.equal(straight[name], resumed[name]), name
    assert read_metrics(out) == read_metrics(trained[arch])


def test_resume_after_the_metrics_line_but_before_the_checkpoint_trains_that_epoch_once(trained, data, tmp_path,
                                                                                        monkeypatch):
    import skinaug.training.baseline as train_module

    out, real_grid, calls = tmp_path / "dcgan", train_module.sample_grid, []

    def crashing_grid(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epoch 2's metrics line is written, its checkpoint not yet
            raise RuntimeError("crash")
        return real_grid(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "sample_grid", crashing_grid)
        assert train(data, out, "dcgan") == 1
    assert train(data, out, "dcgan", "--resume") == 0
    assert read_metrics(out) == read_metrics(trained["dcgan"])
    assert (out / "config.json").read_text() == (trained["dcgan"] / "config.json").read_text().replace(
        str(trained["dcgan"]), str(out))


@pytest.mark.parametrize("arch", ["dcgan", "vae-gan"])
def test_a_non_finite_discriminator_loss_stops_training_in_one_line(data, tmp_path, monkeypatch, capsys, arch):
    """The finite-loss guard watches every term the step returns: a GAN's players share no single loss."""
    real_make_step, calls = networks.make_step, []

    def make_step(model, optimizers):
        step = real_make_step(model, optimizers)

        def poisoned(images, labels):
            calls.append(1)
            terms = step(images, labels)
            return {**terms, "discriminator": torch.tensor(float("nan"))} if len(calls) == 4 else terms

        return poisoned

    monkeypatch.setattr(networks, "make_step", make_step)
    out = tmp_path / arch
    assert train(data, out, arch) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: training diverged: the loss became nan at epoch 2, step 4; the last good checkpoint is kept in "
        f"{out / 'train'} (resume with --resume after lowering --lr)")
    assert torch.load(out / "train" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert [line["epoch"] for line in read_metrics(out)] == [1]


def test_resume_with_another_arch_is_refused(trained, data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "vae"
    with monkeypatch.context() as patch:
        crash_on_step(patch, 3)
        assert train(data, out, "vae") == 1
    capsys.readouterr()
    assert train(data, out, "cvae", "--resume") == 2
    assert "--arch cvae contradicts the checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--arch", "msssim-vae", "--image-size", "32"], "msssim-vae needs --image-size of at least 40"),
    (["--arch", "dcgan", "--kl-weight", "0.1"], "--kl-weight weighs the KL term of the VAEs; dcgan has none"),
    (["--arch", "vae", "--gan-weight", "0.1"], "--gan-weight weighs vae-gan's adversarial term"),
    (["--arch", "gan"], "--arch must be one of dcgan, cvae, vae, msssim-vae, vae-gan"),
    (["--arch", "vae", "--image-size", "40", "--widths", "8,8,8,8"], "cannot be halved 4 times"),
    (["--arch", "vae", "--widths", "8,x"], "--widths must be comma-separated integers"),
])
def test_bad_options_are_one_line_usage_errors(data, tmp_path, capsys, extra, message):
    images, labels = data
    assert main(["train", "baseline", str(images), "--labels", str(labels), "--out", str(tmp_path / "m"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_unlabelled_images_cannot_train_a_class_conditional_baseline(data, tmp_path, capsys):
    assert main(["train", "baseline", str(data[0]), "--arch", "vae", "--out", str(tmp_path / "m"), *TINY]) == 1
    assert "the baselines are class-conditional" in capsys.readouterr().err


# ------------------------------------------------------------------ generating


@pytest.mark.parametrize("arch", ARCHS)
def test_synthesize_makes_every_class_with_its_provenance_and_no_codes(trained, tmp_path, arch):
    model_dir, out = trained[arch], tmp_path / "synth"
    config = json.loads((model_dir / "config.json").read_text())
    assert main(["synthesize", "--model", str(model_dir), "--per-class", "2", "--out", str(out), "--batch-size", "4",
                 "--seed", "5", "--device", "cpu", "--quiet"]) == 0
    rows = read_rows(out)
    assert [row["label"] for row in rows] == [name for name in CLASSES for _ in range(2)]
    assert {(row["method"], row["temperature"], row["model_fingerprint"], row["source_top"]) for row in rows} == {
        ("synthesize", "1.0", config["fingerprint"], "")}
    assert [int(row["seed"]) for row in rows] == [batch_seed(5, 0)] * 4 + [batch_seed(5, 1)] * 2
    images = [np.asarray(Image.open(out / "images" / f"{row['image']}.png")) for row in rows]
    assert all(image.dtype == np.uint8 and image.shape == (SIDE[arch], SIDE[arch], 3) for image in images)
    # each batch is the model's decoding of its own seeded noise, for the rows' classes
    sampler = BaselineSampler(model_dir, "cpu")
    expected = np.concatenate([sampler.images([0, 0, 1, 1], batch_seed(5, 0)), sampler.images([2, 2], batch_seed(5, 1))])
    assert np.array_equal(np.stack(images), expected)
    assert not (out / "codes.h5").exists()
    run = json.loads((out / "run.json").read_text())
    assert (run["arch"], run["model_kind"], run["codes"], run["model_fingerprint"]) == (arch, "baseline", None, config["fingerprint"])
    assert (out / "trained_on.json").read_text() == (model_dir / "trained_on.json").read_text()


def test_temperature_scales_the_noise_and_the_label_chooses_the_class(trained):
    sampler = BaselineSampler(trained["vae"], "cpu")
    noise = torch.randn(3, 8, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        by_hand = sampler.model.generate(0.5 * noise, torch.tensor([0, 1, 2]))
    assert np.array_equal(sampler.images([0, 1, 2], 11, SamplingOptions(temperature=0.5)), ((by_hand + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy())
    with torch.no_grad():
        same_noise = sampler.model.generate(noise[:1].repeat(3, 1), torch.tensor([0, 1, 2]))
    assert not torch.equal(same_noise[0], same_noise[1]) and not torch.equal(same_noise[1], same_noise[2])


def test_synthesize_one_class_and_an_unknown_class(trained, tmp_path, capsys):
    out = tmp_path / "melanoma"
    assert main(["synthesize", "--model", str(trained["dcgan"]), "--class", "melanoma", "-n", "3", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    assert [row["label"] for row in read_rows(out)] == ["melanoma"] * 3
    assert main(["synthesize", "--model", str(trained["dcgan"]), "--class", "mel", "-n", "3", "--out",
                 str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert "--class 'mel' is not a class of this model" in capsys.readouterr().err


def test_augment_with_a_baseline_adds_synthesized_images_to_the_originals(trained, data, tmp_path):
    images, labels = data
    out = tmp_path / "augmented"
    assert main(["augment", str(images), "--labels", str(labels), "--model", str(trained["cvae"]), "--out", str(out),
                 "--factor", "1.5", "--methods", "synthesize", "--device", "cpu", "--quiet"]) == 0
    rows = read_rows(out)
    counts = {(row["label"], row["method"]) for row in rows}
    assert counts == {(name, method) for name in CLASSES for method in ("original", "synthesize")}
    for name in CLASSES:  # 8 originals per class, 4 more to reach 12
        assert sum(row["label"] == name and row["method"] == "synthesize" for row in rows) == 4
        assert sum(row["label"] == name and row["method"] == "original" for row in rows) == 8
    assert len(list((out / "images").iterdir())) == 36 and not (out / "codes.h5").exists()
    # the folder is DATA for every other command: its own labels.csv labels its images
    from skinaug.data.scan import scan_dataset

    dataset = scan_dataset(out)
    assert len(dataset.samples) == 36 and sorted(dataset.class_names) == list(CLASSES)


def test_a_baseline_writes_the_imagefolder_layout_too(trained, data, tmp_path):
    images, labels = data
    out = tmp_path / "augmented"
    assert main(["augment", str(images), "--labels", str(labels), "--model", str(trained["cvae"]), "--out", str(out),
                 "--factor", "1.5", "--methods", "synthesize", "--layout", "imagefolder", "--device", "cpu", "--quiet"]) == 0
    assert not (out / "images").exists() and sorted(p.name for p in out.iterdir() if p.is_dir()) == list(CLASSES)
    for row in read_rows(out):  # originals and synthesized images alike lie in their class's folder
        assert len(list((out / row["label"]).glob(f"{row['image']}.*"))) == 1
    assert json.loads((out / "run.json").read_text())["layout"] == "imagefolder"


@pytest.mark.parametrize("command", [
    ["mix", "{data}", "--labels", "{labels}", "--model", "{model}", "--out", "{tmp}/o", "-n", "2"],
    ["resample", "{data}", "--labels", "{labels}", "--model", "{model}", "--out", "{tmp}/o"],
    ["encode", "{data}", "--labels", "{labels}", "--model", "{model}", "--out", "{tmp}/c.h5"],
    ["decode", "{labels}", "--model", "{model}", "--out", "{tmp}/o"],
    ["train", "prior", "--model", "{model}", "{data}", "--labels", "{labels}"],
    ["export", "onnx", "--model", "{model}", "--out", "{tmp}/onnx"],
    ["inspect", "{data}", "--labels", "{labels}", "--model", "{model}", "--out", "{tmp}/report"],
    ["train", "vqvae", "{data}", "--labels", "{labels}", "--init", "{model}", "--out", "{tmp}/v"],
])
def test_commands_that_need_codes_refuse_a_baseline_in_one_line(trained, data, tmp_path, capsys, command):
    values = {"data": str(data[0]), "labels": str(data[1]), "model": str(trained["vae"]), "tmp": str(tmp_path)}
    assert main([part.format(**values) for part in command]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a vae baseline generator: it has no VQ-VAE and no codes" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, message", [
    (["augment", "{data}", "--labels", "{labels}", "--factor", "2"], "--methods mix,resample: "),
    (["synthesize", "--per-class", "2", "--top-k", "3"], "--top-k set how the priors sample codes"),
    (["synthesize", "--per-class", "2", "--backend", "onnx"], "--backend onnx set how the priors sample codes"),
])
def test_options_of_the_codes_are_refused_with_a_baseline(trained, data, tmp_path, capsys, extra, message):
    values = {"data": str(data[0]), "labels": str(data[1])}
    assert main([part.format(**values) for part in extra] + ["--model", str(trained["vae"]), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_the_python_api_refuses_a_baseline(trained):
    import skinaug
    from skinaug.errors import SkinaugError

    with pytest.raises(SkinaugError, match="baseline generator"):
        skinaug.load_model(trained["dcgan"], device="cpu")


def test_models_lists_baselines_with_their_arch(trained, capsys):
    assert main(["models", str(trained["dcgan"].parent), "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out) if not row["shipped"]}
    assert {name: row["arch"] for name, row in rows.items()} == {arch: arch for arch in ARCHS}
    assert rows["vae"]["classes"] == list(CLASSES) and rows["vae"]["image_size"] == 32


# ------------------------------------------------------------------ the maths


def test_kl_divergence_is_the_closed_form_of_torch_distributions():
    mean = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.25, -0.3]])
    log_variance = torch.tensor([[0.0, -0.5, 1.0], [0.3, -2.0, 0.1]])
    prior = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * log_variance).exp()), prior)
    assert torch.allclose(kl_divergence(mean, log_variance), expected.sum(1).mean(), atol=1e-6)
    assert kl_divergence(torch.zeros(4, 3), torch.zeros(4, 3)).item() == 0.0


def test_the_discriminator_aims_at_0_9_for_real_images_and_0_for_generated_ones():
    assert REAL_TARGET == 0.9
    real, fake = torch.tensor([1.5, -0.5]), torch.tensor([0.3, -2.0])
    sigmoid = torch.sigmoid
    expected = (-(0.9 * sigmoid(real).log() + 0.1 * (1 - sigmoid(real)).log()).mean()
                - (1 - sigmoid(fake)).log().mean())
    assert torch.allclose(discriminator_loss(real, fake), expected, atol=1e-6)
    # the real term is smallest where the discriminator says 0.9: its gradient vanishes at logit log 9
    logit = torch.tensor([math.log(9.0)], requires_grad=True)
    discriminator_loss(logit, torch.tensor([-30.0])).backward()
    assert abs(logit.grad.item()) < 1e-6
    # the generator is not smoothed: target 1
    assert math.isclose(generator_loss(torch.tensor([0.0])).item(), math.log(2.0), rel_tol=1e-6)


@pytest.mark.parametrize("side, window", [(40, 3), (64, 3), (96, 5), (128, 7), (160, 9), (176, 11), (256, 11)])
def test_msssim_window_is_the_largest_pytorch_msssim_accepts(side, window):
    assert msssim_window(side) == window
    assert (window - 1) * 16 < side <= (window + 1) * 16 or window == 11


def test_msssim_loss_at_64px_uses_every_scale_without_warnings():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pytorch-msssim warns when a scale is too small for its window
        assert msssim_loss(images, images, msssim_window(64)).item() == pytest.approx(0.0, abs=1e-6)
        noisy = (images + 0.3 * torch.randn_like(images)).clamp(-1, 1)
        assert 0.05 < msssim_loss(noisy, images, msssim_window(64)).item() < 1.0
    with pytest.raises(UsageError, match="at least 40"):
        msssim_window(32)


@pytest.mark.parametrize("arch", ARCHS)
def test_each_arch_at_64px_keeps_the_recipes_shapes(arch):
    config = baseline_config(arch, 64, num_classes=7)
    model = networks.build(config)
    assert model.generate(torch.zeros(2, config.latent_dim), torch.tensor([0, 6])).shape == (2, 3, 64, 64)
    assert config.latent_dim == (100 if arch == "dcgan" else 128)
    if arch in ("vae", "msssim-vae", "vae-gan"):  # seed 004: five stride-2 convolutions 32..512
        assert config.widths == (32, 64, 128, 256, 512) and config.kl_weight == 0.00025
    if arch == "dcgan":  # no transposed convolution upsamples (the 1x1 -> 4x4 projection does not overlap itself)
        transposed = [m for m in model.generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
        assert [(m.stride, m.kernel_size) for m in transposed] == [((1, 1), (4, 4))]
