"""Which model a command reads (--model > $SKINAUG_MODEL > the shipped default), `skinaug models`, float16 weights,
and the shipped model itself (config, fingerprint, every class synthesizes)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from skinaug.storage import fs as skinaug_io
from skinaug.storage import modeldir
from skinaug.cli import main
from skinaug.errors import SkinaugError

SHIPPED = skinaug_io.SHIPPED_MODELS / modeldir.DEFAULT_MODEL


@pytest.fixture
def shipped_dir(tmp_path, monkeypatch, generator_model):
    """A fake installation: the tiny model with priors installed as the shipped default."""
    root = tmp_path / "installed"
    shutil.copytree(generator_model["model"], root / modeldir.DEFAULT_MODEL, ignore=shutil.ignore_patterns("train"))
    monkeypatch.setattr(skinaug_io, "SHIPPED_MODELS", root)
    monkeypatch.delenv(modeldir.MODEL_ENV, raising=False)
    return root / modeldir.DEFAULT_MODEL


def test_resolution_order_is_flag_then_environment_then_shipped(shipped_dir, tmp_path, monkeypatch, generator_model):
    own = generator_model["model"]
    assert modeldir.resolve_model(None) == shipped_dir
    monkeypatch.setenv(modeldir.MODEL_ENV, str(own))
    assert modeldir.resolve_model(None) == own
    flagged = tmp_path / "flagged"
    flagged.mkdir()
    assert modeldir.resolve_model(flagged) == flagged
    # a bare name of a shipped model means that model, wherever the command runs
    assert modeldir.resolve_model(Path(modeldir.DEFAULT_MODEL)) == shipped_dir


def test_unknown_model_names_the_source_and_the_shipped_models(shipped_dir, monkeypatch):
    with pytest.raises(SkinaugError, match=r"^model no-such-model: .*shipped: ham10000-64"):
        modeldir.resolve_model(Path("no-such-model"))
    monkeypatch.setenv(modeldir.MODEL_ENV, "/nowhere/at/all")
    with pytest.raises(SkinaugError, match=r"\$SKINAUG_MODEL /nowhere/at/all"):
        modeldir.resolve_model(None)


def test_missing_default_says_how_to_choose_a_model(tmp_path, monkeypatch):
    monkeypatch.setattr(skinaug_io, "SHIPPED_MODELS", tmp_path / "empty")
    monkeypatch.delenv(modeldir.MODEL_ENV, raising=False)
    with pytest.raises(SkinaugError, match="^no model given .*: pass model=MODEL_DIR or set SKINAUG_MODEL"):
        modeldir.resolve_model(None)


def test_synthesize_without_model_uses_the_shipped_default(shipped_dir, tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synthesize", "--class", "melanoma", "-n", "3", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    rows = (out / "labels.csv").read_text().splitlines()[1:]
    assert len(rows) == 3 and all(",melanoma,synthesize," in row for row in rows)
    fingerprint = json.loads((shipped_dir / "config.json").read_text())["fingerprint"]
    assert json.loads((out / "run.json").read_text())["model_fingerprint"] == fingerprint


def test_models_lists_shipped_and_given_models(shipped_dir, generator_model, tmp_path, capsys):
    capsys.readouterr()
    assert main(["models", str(generator_model["model"].parent), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_path = {Path(row["path"]).resolve(): row for row in rows}
    shipped, own = by_path[shipped_dir.resolve()], by_path[generator_model["model"].resolve()]
    assert shipped["default"] and shipped["shipped"] and shipped["name"] == modeldir.DEFAULT_MODEL
    assert not own["default"] and not own["shipped"]
    assert shipped["classes"] == ["bkl", "melanoma", "nevus"] and shipped["image_size"] == 32
    assert shipped["priors"] == ["bottom", "top"]
    assert shipped["fingerprint"] == own["fingerprint"]


def test_shipped_model_is_read_only(shipped_dir, generator_model, capsys):
    with pytest.raises(SkinaugError, match="read-only"):
        modeldir.require_writable(shipped_dir, "fine-tune it with --init")
    modeldir.require_writable(generator_model["model"], "anything")  # an ordinary model dir is writable
    before = {f.name: f.read_bytes() for f in shipped_dir.iterdir() if f.is_file()}
    capsys.readouterr()
    code = main(["train", "prior", "--model", modeldir.DEFAULT_MODEL, "--codes", str(generator_model["codes"]),
                 "--epochs", "1", "--device", "cpu", "--quiet"])
    assert code == 1 and "is a model shipped with skinaug and is read-only" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in shipped_dir.iterdir() if f.is_file()} == before


def test_float16_weights_load_as_float32(tmp_path):
    import torch

    weight = torch.linspace(-1, 1, modeldir.COMPACT_MIN_ELEMENTS) / 3
    state = {"weight": weight, "bias": torch.tensor([1 / 3]), "count": torch.tensor([3], dtype=torch.int64)}
    path = tmp_path / "w.safetensors"
    modeldir.save_weights(path, state)
    modeldir.compact_weights(path)
    from safetensors.torch import load_file

    stored = load_file(str(path))
    assert stored["weight"].dtype == torch.float16  # large tensors stored small
    assert stored["bias"].dtype == torch.float32 and stored["count"].dtype == torch.int64  # small ones kept exact
    loaded = modeldir.load_weights(path)
    assert loaded["weight"].dtype == torch.float32
    assert torch.equal(loaded["weight"], weight.half().float())
    assert loaded["bias"].item() == state["bias"].item() and loaded["count"].tolist() == [3]


# ------------------------------------------------------------------------- the shipped model itself

needs_shipped = pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="the shipped model is not installed")


@needs_shipped
def test_shipped_model_config_and_fingerprint():
    import torch

    config = modeldir.ModelDir(SHIPPED).config()
    assert config["image_size"] == 64 and config["codebook_size"] == 256 and config["code_dim"] == 8
    assert config["class_names"] == ["akiec", "bcc", "bkl", "df", "melanoma", "nevus", "vasc"]
    assert set(config["priors"]) == {"top", "bottom"}
    # the fingerprint is that of the weights as loaded (float16 on disk, float32 in memory)
    state = modeldir.load_weights(SHIPPED / modeldir.VQVAE_WEIGHTS)
    assert all(t.dtype != torch.float16 for t in state.values())
    assert modeldir.fingerprint(modeldir.vqvae_config(config), state) == config["fingerprint"]
    assert sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) < 48 * 2**20


@needs_shipped
def test_every_class_of_the_shipped_model_synthesizes(tmp_path):
    out = tmp_path / "every"
    assert main(["synthesize", "--per-class", "1", "--out", str(out), "--device", "cpu", "--quiet", "--batch-size", "8"]) == 0
    rows = [line.split(",") for line in (out / "labels.csv").read_text().splitlines()[1:]]
    assert sorted(row[1] for row in rows) == ["akiec", "bcc", "bkl", "df", "melanoma", "nevus", "vasc"]
    from PIL import Image

    for row in rows:
        image = np.asarray(Image.open(out / "images" / f"{row[0]}.png"))
        assert image.shape == (64, 64, 3) and image.std() > 1.0  # an image, not a flat fill
