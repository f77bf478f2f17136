"""Shared fixtures: tiny generated datasets that any test can build in a temporary folder."""

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@dataclass
class TinyDataset:
    images: Path  # the DATA folder
    labels_csv: Path  # generic dialect: image,label,lesion_id
    names: list[str]  # file stems, in CSV order
    labels: list[str]  # label string of each name
    lesions: list[str]  # lesion_id of each name
    colours: list[tuple[int, int, int]]  # the solid RGB colour of each image


TINY_CLASSES = ("bkl", "melanoma", "nevus")


def make_tiny_dataset(root: Path) -> TinyDataset:
    """Writes the tiny dataset under root (root/images, root/labels.csv); see `tiny_dataset`."""
    images = root / "images"
    images.mkdir(parents=True)
    names, labels, lesions, colours = [], [], [], []
    for i in range(12):
        label = TINY_CLASSES[i // 4]
        colour = tuple(int(v) for v in np.roll([200 - 10 * i, 40 + 5 * i, 30], i // 4))
        name = f"img_{i:02d}"
        Image.new("RGB", (48, 40), colour).save(images / f"{name}.png")
        names.append(name)
        labels.append(label)
        lesions.append(f"lesion_{i // 2}")
        colours.append(colour)
    labels_csv = root / "labels.csv"
    rows = ["image,label,lesion_id"] + [f"{n},{l},{g}" for n, l, g in zip(names, labels, lesions)]
    labels_csv.write_text("\n".join(rows) + "\n")
    return TinyDataset(images, labels_csv, names, labels, lesions, colours)


@pytest.fixture
def tiny_dataset(tmp_path) -> TinyDataset:
    """Twelve 48x40 solid-colour PNGs (lossless, so colours can be asserted exactly): three classes of four
    images, two images per lesion, listed in a generic labels.csv."""
    return make_tiny_dataset(tmp_path / "data")


# ------------------------------------------------------------------------- tiny trained VQ-VAE models


@contextlib.contextmanager
def torch_threads(count: int):
    """Runs the block with `count` intra-op threads, then restores the previous setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a test module: tiny convolutions spend more time synchronising threads than computing
    (5x slower with two threads on a busy 2-core machine), and bit-exact comparisons need one thread count."""
    with torch_threads(1):
        yield


@contextlib.contextmanager
def interrupted_at_validation(monkeypatch, call: int):
    """`train prior` stops with Ctrl-C at its `call`-th validation: the end of that epoch, before its checkpoint."""
    from skinaug.training import prior as train_prior

    real_evaluate, calls = train_prior.evaluate, {"n": 0}

    def evaluate_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_prior, "evaluate", evaluate_then_interrupt)
    try:
        yield
    finally:
        monkeypatch.setattr(train_prior, "evaluate", real_evaluate)


# The smallest VQ-VAE that still has every part: 32px images, bottom grid 8x8, top grid 4x4.
TINY_VQVAE = dict(image_size=32, channels=16, res_channels=8, n_res_blocks=1, codebook_size=16, code_dim=4)
TINY_VQVAE_ARGS = ["--image-size", "32", "--channels", "16", "--res-channels", "8", "--res-blocks", "1",
                   "--codebook-size", "16", "--code-dim", "4", "--device", "cpu"]


@dataclass
class TinyModel:
    path: Path  # the model directory
    dataset: TinyDataset  # what it was trained on (its own copy, shared by the session: do not modify)
    levels: int


def _train_tiny_model(tmp_path_factory, levels: int, seed: int) -> TinyModel:
    from skinaug.training.vqvae import TrainOptions, train_vqvae
    from skinaug.vqvae.model import VQVAEConfig

    root = tmp_path_factory.mktemp(f"tiny_model_{levels}level")
    dataset = make_tiny_dataset(root / "data")
    out = root / "model"
    with torch_threads(1):  # as in the modules that compare against it (see `single_thread`)
        train_vqvae(dataset.images, out, labels=dataset.labels_csv, model_config=VQVAEConfig(levels=levels, **TINY_VQVAE),
                    options=TrainOptions(epochs=1, batch_size=4, seed=seed, device="cpu"))
    return TinyModel(out, dataset, levels)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    """A two-level VQ-VAE trained for one epoch on (a session copy of) the tiny dataset. Read-only."""
    return _train_tiny_model(tmp_path_factory, levels=2, seed=0)


@pytest.fixture(scope="session")
def tiny_model_one_level(tmp_path_factory) -> TinyModel:
    """A one-level VQ-VAE (bottom codes only), trained like `tiny_model` with another seed. Read-only."""
    return _train_tiny_model(tmp_path_factory, levels=1, seed=1)


# ------------------------------------------------------------------------- a tiny model with both priors

PRIOR_ARGS = ["--channels", "16", "--blocks", "1", "--res-blocks", "1", "--kernel-size", "3", "--epochs", "1",
              "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="session")
def generator_model(tiny_model, tmp_path_factory):
    """A copy of the tiny VQ-VAE with both priors trained for one epoch, and the tiny data's code file."""
    import shutil

    from skinaug.cli import main

    root = tmp_path_factory.mktemp("generator")
    model = root / "model"
    shutil.copytree(tiny_model.path, model)
    codes = root / "codes.h5"
    data = tiny_model.dataset
    assert main(["encode", str(data.images), "--labels", str(data.labels_csv), "--model", str(model), "--out", str(codes),
                 "--device", "cpu", "--quiet"]) == 0
    assert main(["train", "prior", "--model", str(model), "--codes", str(codes), "--quiet", *PRIOR_ARGS]) == 0
    return {"model": model, "codes": codes, "data": data}


# ------------------------------------------------------------------- one CLI call and its one error line


def run_cli(args, capsys) -> tuple[int, str]:
    """(exit code, stderr) of one CLI call."""
    capsys.readouterr()
    from skinaug.cli import main

    code = main([str(arg) for arg in args])
    return code, capsys.readouterr().err


def error_line(err: str) -> str:
    """The one `error:` line the contract promises, checked to be neither a bug report nor a traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "internal error" not in lines[0] and "Traceback" not in err, err
    return lines[0]


@contextlib.contextmanager
def interrupted_after_batches(monkeypatch, batches: int):
    """Ctrl-C as a generated dataset's writer is about to write batch `batches` + 1 (the first `batches` land)."""
    from skinaug.storage import writer as output

    original, calls = output.DatasetWriter.write_batch, {"n": 0}

    def interrupted(self, *args, **kwargs):
        if calls["n"] == batches:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(output.DatasetWriter, "write_batch", interrupted)
    try:
        yield
    finally:
        monkeypatch.setattr(output.DatasetWriter, "write_batch", original)
