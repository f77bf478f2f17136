"""ONNX export and the onnxruntime backend: parity with PyTorch, the CLI's --backend onnx, and a run without torch."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from skinaug.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def exported(generator_model, tmp_path_factory):
    """A copy of the tiny model with both priors, exported to ONNX once for the module."""
    root = tmp_path_factory.mktemp("onnx")
    model = root / "model"
    shutil.copytree(generator_model["model"], model)
    assert main(["export", "onnx", "--model", str(model), "--quiet"]) == 0
    return {**generator_model, "model": model, "root": root}


def read_codes(path):
    with h5py.File(path, "r") as file:
        return {level: file[f"codes/{level}"][:] for level in file["codes"]}


def test_export_writes_named_graphs_a_manifest_and_parity_figures(exported):
    model = exported["model"]
    config = json.loads((model / "config.json").read_text())
    manifest = config["onnx"]
    assert manifest["opset"] == 17 and manifest["exporter"].startswith("torch.onnx.export(dynamo=False)")
    assert manifest["torch_version"] == torch.__version__
    files = manifest["files"]
    assert files["encoder"]["inputs"] == ["images"]
    assert files["encoder"]["outputs"] == ["codes_top", "codes_bottom", "squared_error"]
    assert files["decoder"]["inputs"] == ["codes_top", "codes_bottom"] and files["decoder"]["outputs"] == ["images"]
    assert files["prior_top"]["full"]["inputs"] == ["codes", "labels"]
    assert files["prior_bottom"]["full"]["inputs"] == ["codes", "labels", "condition"]
    assert files["prior_bottom"]["step"]["inputs"][:5] == ["cells", "raster", "windows", "labels", "condition_features"]
    for entry in [files["encoder"], files["decoder"], *[files[p][g] for p in ("prior_top", "prior_bottom") for g in ("full", "step")]]:
        assert (model / "onnx" / entry["file"]).is_file()
    parity = manifest["parity"]
    for key, value in parity.items():
        if key.endswith("max_abs_diff"):
            assert value <= 1e-3, key
        if key.endswith("agreement"):
            assert value >= 0.999, key
    assert not [p for p in model.iterdir() if p.name.startswith(".onnx")]  # no temporary folder left behind


def test_export_refuses_to_replace_an_export_without_overwrite(exported, capsys):
    assert main(["export", "onnx", "--model", str(exported["model"]), "--quiet"]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_a_failed_parity_check_fails_the_export_and_leaves_nothing(generator_model, tmp_path, monkeypatch, capsys):
    import skinaug.onnx.export as export

    model = tmp_path / "model"
    shutil.copytree(generator_model["model"], model)
    monkeypatch.setattr(export, "LOGIT_TOLERANCE", -1.0)  # nothing can pass
    assert main(["export", "onnx", "--model", str(model), "--quiet"]) == 1
    assert "parity check" in capsys.readouterr().err
    assert not (model / "onnx").exists() and "onnx" not in json.loads((model / "config.json").read_text())
    assert not [p for p in model.iterdir() if p.name.startswith(".onnx")]


def test_encode_through_onnx_gives_the_torch_codes(exported, tmp_path):
    data, model = exported["data"], exported["model"]
    common = [str(data.images), "--labels", str(data.labels_csv), "--model", str(model), "--quiet", "--device", "cpu"]
    assert main(["encode", *common, "--out", str(tmp_path / "torch.h5")]) == 0
    assert main(["encode", *common, "--out", str(tmp_path / "onnx.h5"), "--backend", "onnx"]) == 0
    by_torch, by_onnx = read_codes(tmp_path / "torch.h5"), read_codes(tmp_path / "onnx.h5")
    assert set(by_onnx) == {"top", "bottom"}
    for level in by_torch:
        assert np.mean(by_torch[level] == by_onnx[level]) >= 0.999


def test_decode_through_onnx_matches_torch_within_one_grey_level(exported, tmp_path):
    from PIL import Image

    model, codes = exported["model"], exported["codes"]
    for backend in ("torch", "onnx"):
        assert main(["decode", str(codes), "--model", str(model), "--out", str(tmp_path / backend), "--device", "cpu",
                     "--backend", backend, "--quiet"]) == 0
    run = json.loads((tmp_path / "onnx" / "run.json").read_text())
    assert run["backend"] == "onnx" and run["provider"] == "CPUExecutionProvider" and run["images"] == 12
    for name in sorted(p.name for p in (tmp_path / "torch" / "images").iterdir()):
        a = np.asarray(Image.open(tmp_path / "torch" / "images" / name), np.int16)
        b = np.asarray(Image.open(tmp_path / "onnx" / "images" / name), np.int16)
        assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize("level", ["top", "bottom"])
def test_the_onnx_samplers_draw_the_torch_codes_from_the_same_uniforms(exported, level):
    from skinaug.modeldir import ModelDir
    from skinaug.onnx.runtime import OnnxModel
    from skinaug.priors import sample
    from skinaug.train_prior import load_prior

    prior, _ = load_prior(ModelDir(exported["model"]), level, "cpu")
    onnx_prior = OnnxModel(exported["model"], "cpu").prior(level)
    config, batch = prior.config, 3
    generator = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 1, 2])
    condition = (torch.randint(config.condition_codebook_size, (batch, config.condition_height, config.condition_width),
                               generator=generator) if config.conditioned else None)
    uniforms = torch.rand(batch, config.height * config.width, generator=generator)
    keep_codes = torch.randint(config.codebook_size, (batch, config.height, config.width), generator=generator)
    keep_mask = torch.rand(batch, config.height, config.width, generator=generator) < 0.3
    as_numpy = lambda t: None if t is None else t.numpy()  # noqa: E731
    for temperature, top_k, keep in ((1.0, None, None), (0.7, 5, (keep_codes, keep_mask))):
        expected, logits = sample(prior, labels, condition, uniforms=uniforms, temperature=temperature, top_k=top_k,
                                  keep=keep, return_logits=True)
        options = dict(n=batch, uniforms=uniforms.numpy(), temperature=temperature, top_k=top_k,
                       keep=None if keep is None else tuple(t.numpy() for t in keep))
        cached, onnx_logits = onnx_prior.sample(labels.numpy(), as_numpy(condition), return_logits=True, **options)
        reference = onnx_prior.sample_reference(labels.numpy(), as_numpy(condition), **options)
        np.testing.assert_array_equal(cached, expected.numpy())
        np.testing.assert_array_equal(reference, expected.numpy())
        assert np.abs(onnx_logits - logits.numpy()).max() < 1e-4
        if keep is not None:
            assert (cached[keep_mask.numpy()] == keep_codes.numpy()[keep_mask.numpy()]).all()


def test_numpy_draw_codes_is_the_torch_draw_codes():
    from skinaug.onnx.runtime import draw_codes as draw_numpy
    from skinaug.priors import draw_codes as draw_torch

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 16, generator=generator) * 3
    uniforms = torch.rand(500, generator=generator)
    for temperature, top_k in ((1.0, None), (0.5, 3), (2.0, 1), (1.0, 16)):
        expected = draw_torch(logits, uniforms, temperature, top_k).numpy()
        np.testing.assert_array_equal(draw_numpy(logits.numpy(), uniforms.numpy(), temperature, top_k), expected)


def test_backend_onnx_without_an_export_names_the_export_command(generator_model, tmp_path, capsys):
    code = main(["synthesize", "--model", str(generator_model["model"]), "--out", str(tmp_path / "out"),
                 "--per-class", "1", "--backend", "onnx", "--quiet"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"skinaug export onnx --model {generator_model['model']}" in err[0]


def test_a_stale_export_is_refused(exported, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(exported["model"], model)
    with open(model / "prior_top.safetensors", "ab") as handle:
        handle.write(b" ")  # other weights than the exported ones
    assert main(["synthesize", "--model", str(model), "--out", str(tmp_path / "out"), "--class", "nevus", "-n", "1",
                 "--backend", "onnx", "--quiet"]) == 1
    assert "--overwrite" in capsys.readouterr().err


BLOCK_TORCH = """
import sys


class BlockTorch:
    \"\"\"Makes `import torch` fail, as in an environment holding skinaug[onnx] and not torch.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None


sys.meta_path.insert(0, BlockTorch())
"""


def test_the_five_commands_run_on_onnxruntime_where_torch_cannot_be_imported(exported, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(BLOCK_TORCH))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("SKINAUG_DEBUG", None)

    def run(*args):
        done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    assert "blocked" in subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True).stderr
    data, model = exported["data"], str(exported["model"])
    codes = tmp_path / "codes.h5"
    # no --backend: without torch the default is onnx
    summary = json.loads(run("-m", "skinaug", "encode", str(data.images), "--labels", str(data.labels_csv), "--model", model,
                             "--out", str(codes), "--json", "--quiet").stdout)
    assert summary["backend"] == "onnx" and summary["images"] == 12
    # the same codes as onnxruntime in a process with torch (torch's own agree on 99.9%: the test above)
    assert main(["encode", str(data.images), "--labels", str(data.labels_csv), "--model", model, "--out",
                 str(tmp_path / "in_process.h5"), "--backend", "onnx", "--quiet"]) == 0
    expected = read_codes(tmp_path / "in_process.h5")
    for level, values in read_codes(codes).items():
        np.testing.assert_array_equal(values, expected[level])
    outputs = {
        "decode": ["decode", str(codes), "--model", model],
        "mix": ["mix", "--codes", str(codes), "--model", model, "-n", "4"],
        "resample": ["resample", str(data.images), "--labels", str(data.labels_csv), "--model", model],
        "synthesize": ["synthesize", "--model", model, "--per-class", "2", "--backend", "onnx"],
    }
    for command, args in outputs.items():
        out = tmp_path / command
        done = run("-m", "skinaug", *args, "--out", str(out), "--json")
        summary = json.loads(done.stdout)
        assert summary["backend"] == "onnx" and summary["provider"] == "CPUExecutionProvider"
        assert "on CPUExecutionProvider" in done.stderr
        run_info = json.loads((out / "run.json").read_text())
        assert run_info["versions"]["torch"] is None and run_info["backend"] == "onnx"
        images = sorted((out / "images").iterdir())
        assert len(images) == {"decode": 12, "mix": 4, "resample": 12, "synthesize": 6}[command] == run_info["images"]
    synthesized = read_codes(tmp_path / "synthesize" / "codes.h5")
    assert synthesized["bottom"].shape == (6, 8, 8) and synthesized["bottom"].max() < 16
    # --backend torch where torch is missing: one clear line
    done = subprocess.run([sys.executable, "-m", "skinaug", "synthesize", "--model", model, "--per-class", "1", "--out",
                           str(tmp_path / "t"), "--backend", "torch"], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "needs PyTorch" in done.stderr


def test_onnx_synthesis_is_reproducible_per_seed(exported, tmp_path):
    for name in ("a", "b"):
        assert main(["synthesize", "--model", str(exported["model"]), "--out", str(tmp_path / name), "--per-class", "2",
                     "--backend", "onnx", "--seed", "3", "--quiet"]) == 0
    first, second = read_codes(tmp_path / "a" / "codes.h5"), read_codes(tmp_path / "b" / "codes.h5")
    for level in first:
        np.testing.assert_array_equal(first[level], second[level])


def test_gated_pixelcnn_priors_export_with_a_cached_step(generator_model, tmp_path):
    from conftest import PRIOR_ARGS

    model = tmp_path / "model"
    shutil.copytree(generator_model["model"], model)
    assert main(["train", "prior", "--model", str(model), "--codes", str(generator_model["codes"]), "--arch",
                 "gated-pixelcnn", "--overwrite", "--quiet", *PRIOR_ARGS]) == 0
    assert main(["export", "onnx", "--model", str(model), "--quiet"]) == 0
    manifest = json.loads((model / "config.json").read_text())["onnx"]
    assert manifest["files"]["prior_bottom"]["arch"] == "gated-pixelcnn" and "step" in manifest["files"]["prior_bottom"]
    assert manifest["parity"]["prior_bottom_sample_agreement"] == 1.0
    assert manifest["parity"]["prior_top_step_max_abs_diff"] < 1e-4
