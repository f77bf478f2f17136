"""ModelSpec and config.json's layout: each shape once (format 2), older layouts read and migrated."""

import json
import shutil

import h5py
import numpy as np
import pytest

from skinaug.cli import main
from skinaug.errors import SkinaugError
from skinaug.storage.modeldir import FORMAT_VERSION, ModelDir, fingerprint, load_weights, vqvae_config
from skinaug.spec import SHAPE_FIELDS, ModelSpec, code_grid

NETWORK_FIELDS = {"channels", "res_channels", "n_res_blocks", "commitment_weight", "ema_decay", "restart_after"}


def read_config(model) -> dict:
    return json.loads((model / "config.json").read_text())


def as_format_1(config: dict, *, version=1) -> dict:
    """The layout skinaug wrote before format 2: the shape fields repeated under "vqvae" (format 0: no version)."""
    old = {**config, "vqvae": {**{field: config[field] for field in SHAPE_FIELDS}, **config["vqvae"]}}
    if version:
        old["format_version"] = version
    else:
        del old["format_version"]
    return old


def test_code_grid_is_the_vqvae_s_quarter_and_eighth():
    assert code_grid(64, 2) == {"bottom": (16, 16), "top": (8, 8)}
    assert code_grid(256, 1) == {"bottom": (64, 64)}


def test_a_spec_round_trips_through_its_config_fields():
    config = {"image_size": 32, "levels": 2, "codebook_size": 16, "code_dim": 4, "grid": {"bottom": [8, 8], "top": [4, 4]},
              "class_names": ["bkl", "nevus"], "fingerprint": "abc123", "vqvae": {}}
    spec = ModelSpec.from_config(config)
    assert spec.grid == {"bottom": (8, 8), "top": (4, 4)} and spec.level_names == ("bottom", "top")
    assert spec.class_names == ("bkl", "nevus") and (spec.codebook_size, spec.code_dim) == (16, 4)
    assert spec.to_config() == {key: config[key] for key in (*SHAPE_FIELDS, "grid", "class_names", "fingerprint")}
    assert ModelSpec.of(spec) is spec and ModelSpec.of(config) == spec


def test_a_new_model_writes_each_shape_once(tiny_model):
    config = read_config(tiny_model.path)
    assert config["format_version"] == FORMAT_VERSION == 2
    assert set(config["vqvae"]) == NETWORK_FIELDS  # image_size, levels, K, D only at the top level
    assert (config["image_size"], config["levels"], config["codebook_size"], config["code_dim"]) == (32, 2, 16, 4)
    spec = ModelDir(tiny_model.path).spec()
    assert spec.grid == {"bottom": (8, 8), "top": (4, 4)} and spec.fingerprint == config["fingerprint"]
    network = ModelDir(tiny_model.path).load_vqvae()
    assert network.config.to_dict() == vqvae_config(config)
    assert fingerprint(vqvae_config(config), load_weights(tiny_model.path / "vqvae.safetensors")) == config["fingerprint"]


@pytest.mark.parametrize("version", [1, 0])
def test_an_older_config_reads_as_format_2_and_is_migrated_when_written(tiny_model, tmp_path, version):
    model = tmp_path / "model"
    shutil.copytree(tiny_model.path, model)
    new = read_config(model)
    (model / "config.json").write_text(json.dumps(as_format_1(new, version=version), indent=2))
    model_dir = ModelDir(model)
    assert model_dir.config() == new  # read as if it had been written by this skinaug
    assert model_dir.spec() == ModelDir(tiny_model.path).spec()
    assert model_dir.load_vqvae().config.to_dict() == vqvae_config(new)
    model_dir.update_config(note="migrated")  # a later stage (a prior, an export) writes it back: in format 2
    assert read_config(model) == {**new, "note": "migrated"}


def test_a_format_1_model_generates_what_the_format_2_model_does(generator_model, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(generator_model["model"], old)
    (old / "config.json").write_text(json.dumps(as_format_1(read_config(old))))
    before = (old / "config.json").read_bytes()
    for model, out in ((generator_model["model"], tmp_path / "new_out"), (old, tmp_path / "old_out")):
        assert main(["synthesize", "--model", str(model), "--out", str(out), "--per-class", "1", "--seed", "5",
                     "--device", "cpu", "--quiet"]) == 0
    with h5py.File(tmp_path / "new_out" / "codes.h5") as new_codes, h5py.File(tmp_path / "old_out" / "codes.h5") as old_codes:
        for level in ("top", "bottom"):
            np.testing.assert_array_equal(new_codes[f"codes/{level}"][:], old_codes[f"codes/{level}"][:])
        assert dict(new_codes.attrs) == dict(old_codes.attrs)
    assert (old / "config.json").read_bytes() == before  # reading never rewrites a model


def test_the_shipped_model_s_config_reads_as_a_spec():
    from skinaug.storage.fs import SHIPPED_MODELS

    path = SHIPPED_MODELS / "ham10000-64"
    if not (path / "config.json").is_file():
        pytest.skip("the shipped model is not installed")
    spec = ModelDir(path).spec()
    assert spec.grid == {"bottom": (16, 16), "top": (8, 8)} and (spec.codebook_size, spec.code_dim) == (256, 8)
    assert spec.class_names == ("akiec", "bcc", "bkl", "df", "melanoma", "nevus", "vasc")
    assert ModelDir(path).load_vqvae().config.image_size == 64


@pytest.mark.parametrize("change, message", [
    (lambda c: {**c, "grid": {"bottom": [8, 8], "top": [8, 8]}}, "grid.top is [8, 8] but the VQ-VAE makes 4x4 top codes"),
    (lambda c: {**as_format_1(c), "vqvae": {**as_format_1(c)["vqvae"], "image_size": 64}},
     "vqvae.image_size is 64 but image_size is 32"),
    (lambda c: {**c, "format_version": FORMAT_VERSION + 1}, "this skinaug reads up to 2: upgrade skinaug"),
])
def test_a_config_that_contradicts_itself_is_refused(tiny_model, tmp_path, change, message):
    model = tmp_path / "model"
    shutil.copytree(tiny_model.path, model)
    (model / "config.json").write_text(json.dumps(change(read_config(model))))
    with pytest.raises(SkinaugError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ModelDir(model).spec()
