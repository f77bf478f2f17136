"""ONNX export and the onnxruntime backend: parity with PyTorch, the CLI's --backend onnx, and a run without torch."""

import csv
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
from PIL import Image

from near_ties import assert_same_draws, close_draws, same_context
from skinaug.cli import main
from skinaug.generation.commands import batch_seed

pytestmark = pytest.mark.usefixtures("single_thread")
SAMPLER_LOGIT_TOLERANCE = 1e-4  # |onnxruntime - torch| on the priors' logits


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
    assert files["prior_bottom"]["step"]["inputs"][:5] == ["raster", "windows", "labels", "condition_features", "grid_0"]
    # `train prior` makes top priors whose attention keys see their own code: the embed graph completes them
    assert files["prior_top"]["step"]["own_code"] and not files["prior_bottom"]["step"]["own_code"]
    assert files["prior_top"]["embed"]["inputs"] == ["codes", "partial_key_0", "partial_value_0"]
    assert files["prior_top"]["embed"]["outputs"] == ["embedded", "key_0", "value_0"]
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
    import skinaug.export.onnx as export

    model = tmp_path / "model"
    shutil.copytree(generator_model["model"], model)
    monkeypatch.setattr(export, "LOGIT_TOLERANCE", -1.0)  # nothing can pass
    assert main(["export", "onnx", "--model", str(model), "--quiet"]) == 1
    assert "parity check" in capsys.readouterr().err
    assert not (model / "onnx").exists() and "onnx" not in json.loads((model / "config.json").read_text())
    assert not [p for p in model.iterdir() if p.name.startswith(".onnx")]


ENCODER_TOLERANCE = 1e-4  # |onnxruntime - torch| on the encoder's outputs and on the code distances made from them


def _upstream(producer: dict, tensor: str, op_type: str) -> str:
    """The output of the nearest node of `op_type` above `tensor` in an ONNX graph (breadth first)."""
    frontier, seen = [tensor], set()
    while frontier:
        node = producer.get(frontier.pop(0))
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == op_type:
            return node.output[0]
        frontier.extend(node.input)
    raise AssertionError(f"no {op_type} above {tensor}")


def onnx_encoder_internals(model, images: np.ndarray) -> dict:
    """The exported encoder run on float images, with per level (top first, as encoded) its codes, the encoder output
    z (the convolution nearest above the quantizer) and the distances its ArgMin picks the code from."""
    import onnx
    import onnxruntime

    manifest = json.loads((model / "config.json").read_text())["onnx"]
    graph = onnx.load(str(model / "onnx" / manifest["files"]["encoder"]["file"]))
    producer = {output: node for node in graph.graph.node for output in node.output}
    argmins = [node for node in graph.graph.node if node.op_type == "ArgMin"]
    levels = ["top", "bottom"][-len(argmins):]
    internals = {level: (_upstream(producer, node.input[0], "Conv"), node.input[0]) for level, node in zip(levels, argmins)}
    for name in (name for pair in internals.values() for name in pair):
        graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = dict(zip([output.name for output in session.get_outputs()], session.run(None, {"images": images})))
    return {level: {"codes": outputs[f"codes_{level}"].reshape(-1), "z": outputs[z], "distances": outputs[distances]}
            for level, (z, distances) in internals.items()}


def torch_encoder_internals(vqvae, images: torch.Tensor, top_codes: np.ndarray) -> dict:
    """Per level the encoder output z and its squared distances to the codes (the quantizer's formula). The top level
    is quantized to `top_codes`: the bottom level is encoded given the top codes, and a near-tie that another
    backend broke the other way must not make the two bottom levels incomparable."""
    found = {}

    def capture(level):
        def hook(quantizer, inputs, outputs):
            z = inputs[0].float()
            vectors = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            codebook = quantizer.codebook
            distances = vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ codebook.t() + codebook.pow(2).sum(1)[None, :]
            found[level] = {"z": z.numpy(), "distances": distances.numpy()}
            if level == "top":
                forced = torch.as_tensor(top_codes).long().view(outputs[1].shape)
                return quantizer.lookup(forced), forced, outputs[2]
        return hook

    handles = [quantizer.register_forward_hook(capture(level)) for level, quantizer in vqvae.quantizers.items()]
    try:
        with torch.no_grad():
            vqvae.encode(images)
    finally:
        for handle in handles:
            handle.remove()
    return found


def test_encode_through_onnx_gives_the_torch_codes(exported, tmp_path):
    """Not a rate of equal codes: a model trained for one step has near-ties between codes, which another CPU's SIMD
    rounding breaks otherwise (99.48% equal on one Xeon). What holds everywhere: the encoder outputs and distances
    agree within tolerance, and so do the codes wherever the nearest code leads the second by more than the
    distances can disagree."""
    from near_ties import nearest_code_margins
    from skinaug.data.scan import load_image
    from skinaug.storage.modeldir import ModelDir
    from skinaug.vqvae.model import to_model_input

    data, model = exported["data"], exported["model"]
    out = tmp_path / "onnx.h5"
    assert main(["encode", str(data.images), "--labels", str(data.labels_csv), "--model", str(model), "--out", str(out),
                 "--backend", "onnx", "--quiet", "--device", "cpu"]) == 0
    with h5py.File(out, "r") as file:
        names = [name.decode() for name in file["image"][:]]
    image_size = json.loads((model / "config.json").read_text())["image_size"]
    images = to_model_input(torch.as_tensor(np.stack([load_image(data.images / f"{name}.png", image_size) for name in names])))
    by_onnx = onnx_encoder_internals(model, images.numpy())
    assert set(by_onnx) == {"top", "bottom"}
    for level, codes in read_codes(out).items():  # the CLI ran this graph on these images
        np.testing.assert_array_equal(codes.reshape(-1), by_onnx[level]["codes"])
    by_torch = torch_encoder_internals(ModelDir(model).load_vqvae("cpu"), images, by_onnx["top"]["codes"])
    for level in ("top", "bottom"):
        mine, theirs = by_onnx[level], by_torch[level]
        np.testing.assert_allclose(mine["z"], theirs["z"], rtol=0, atol=ENCODER_TOLERANCE, err_msg=level)
        np.testing.assert_allclose(mine["distances"], theirs["distances"], rtol=0, atol=ENCODER_TOLERANCE, err_msg=level)
        # argmins over distances at most `gap` apart agree wherever the nearest code leads by more than twice that
        gap = float(np.abs(mine["distances"] - theirs["distances"]).max())
        clear = nearest_code_margins(theirs["distances"]) > 2 * gap
        np.testing.assert_array_equal(mine["codes"][clear], theirs["distances"].argmin(1)[clear], err_msg=level)


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
    from skinaug.storage.modeldir import ModelDir
    from skinaug.backends.onnx_runtime import OnnxModel
    from skinaug.priors import sample

    prior, _ = ModelDir(exported["model"]).load_prior(level, "cpu")
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
        # logits compared where both saw the same codes before them (a close draw may have gone either way)
        difference = np.abs(onnx_logits - logits.numpy()).max(axis=1).reshape(batch, -1)
        assert difference[same_context(cached, expected.numpy())].max() < SAMPLER_LOGIT_TOLERANCE
        # the same codes, but where a uniform falls by a CDF boundary either backend's code is right
        close = close_draws(logits, uniforms, logit_tolerance=2 * SAMPLER_LOGIT_TOLERANCE, temperature=temperature,
                            top_k=top_k)
        if keep is not None:
            close &= ~keep_mask.view(batch, -1).numpy()  # kept codes are not drawn
        assert_same_draws(cached, expected.numpy(), close)
        assert_same_draws(reference, expected.numpy(), close)
        if keep is not None:
            assert (cached[keep_mask.numpy()] == keep_codes.numpy()[keep_mask.numpy()]).all()


def test_numpy_draw_codes_is_the_torch_draw_codes():
    from skinaug.sampling import draw_codes as draw_numpy
    from skinaug.priors import draw_codes as draw_torch

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 16, generator=generator) * 3
    uniforms = torch.rand(500, generator=generator)
    for temperature, top_k in ((1.0, None), (0.5, 3), (2.0, 1), (1.0, 16)):
        expected = draw_torch(logits, uniforms, temperature, top_k).numpy()
        drawn = draw_numpy(logits.numpy(), uniforms.numpy(), temperature, top_k)
        # numpy's and torch's exp and sums round differently (and differently per CPU): draws are independent here,
        # so every differing code must be one whose uniform falls by a CDF boundary
        close = close_draws(logits[:, :, None, None], uniforms, logit_tolerance=0.0, temperature=temperature, top_k=top_k)[:, 0]
        assert (drawn == expected)[~close].all(), (temperature, top_k)


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
    # the same codes as onnxruntime in a process with torch (torch's own agree wherever no near-tie: the test above)
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
    # the export itself requires its code agreement; equal samples everywhere would be a rate of near-ties
    assert manifest["parity"]["prior_bottom_sample_agreement"] >= manifest["parity"]["code_agreement_required"]
    assert manifest["parity"]["prior_top_step_max_abs_diff"] < 1e-4


# What `pip install "skinaug[onnx]"` leaves out (PyTorch and every package of the torch and classic extras), and
# scipy, which only `inspect` needs: generating, listing, previewing and reading need onnxruntime, numpy, pillow,
# h5py, typer, rich and tqdm alone. Missing, each raises ModuleNotFoundError, as an absent package does.
BLOCK_TORCH_EXTRAS = """
import sys

MISSING = {"torch", "torchvision", "safetensors", "monai", "pytorch_msssim", "albumentations", "sklearn", "scipy"}


class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in MISSING:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Missing())
"""


def without_torch(tmp_path):
    """A runner of `python ARGS...` in a process where the torch extra's packages cannot be imported."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(BLOCK_TORCH_EXTRAS))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("SKINAUG_DEBUG", None)
    return lambda *args: subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=180)


def test_an_onnx_only_install_synthesizes_previews_and_reads_the_dataset(exported, tmp_path):
    run = without_torch(tmp_path)
    assert "No module named 'monai'" in run("-c", "import monai").stderr
    model, out = exported["model"], tmp_path / "synth"
    listed = run("-m", "skinaug", "models", str(model), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [entry["classes"] for entry in json.loads(listed.stdout) if entry["path"] == str(model)] == [["bkl", "melanoma", "nevus"]]
    done = run("-m", "skinaug", "synthesize", "--backend", "onnx", "--model", str(model), "--class", "melanoma", "-n", "3",
               "--seed", "2", "--out", str(out), "--quiet")
    assert done.returncode == 0 and done.stderr == "" and done.stdout.strip() == str(out)
    with open(out / "labels.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    fingerprint = json.loads((model / "config.json").read_text())["fingerprint"]
    seed = str(batch_seed(2, 0))  # one batch
    assert [(row["label"], row["method"], row["seed"], row["model_fingerprint"]) for row in rows] == [("melanoma", "synthesize", seed, fingerprint)] * 3
    for row in rows:
        with Image.open(out / "images" / f"{row['image']}.png") as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    sheet = run("-m", "skinaug", "preview", str(out), "--out", str(tmp_path / "sheet.png"))
    assert sheet.returncode == 0, sheet.stderr
    with Image.open(tmp_path / "sheet.png") as image:
        assert image.width > 32 and image.height > 32
    read = run("-c", "import sys, skinaug; d = skinaug.GeneratedDataset(sys.argv[1]); "
                     "print(len(d), d.image(0).shape, d.info(0)['label'], d.info(0)['method'], 'torch' in sys.modules)", str(out))
    assert read.returncode == 0, read.stderr
    assert read.stdout.split() == ["3", "(32,", "32,", "3)", "melanoma", "synthesize", "False"]


@pytest.mark.parametrize("command, package, extra", [
    (["train", "vqvae", "{data}", "--out", "{out}"], "torch", "torch"),
    (["encode", "{data}", "--backend", "torch", "--out", "{out}"], "torch", "torch"),
    (["augment", "{data}", "--model", "{model}", "--backend", "onnx", "--methods", "classic", "--factor", "2", "--out", "{out}"],
     "albumentations", "classic"),
])
def test_a_command_that_needs_the_torch_extra_says_what_to_install(exported, tmp_path, command, package, extra):
    run = without_torch(tmp_path)
    data, out = exported["data"], tmp_path / "out"
    args = [word.format(data=data.images, model=exported["model"], out=out) for word in command]
    done = run("-m", "skinaug", *args, "--labels", str(data.labels_csv))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    if package == "torch" and "encode" in command:  # the backend is checked first, with its own line
        assert done.stderr.strip().endswith("or pip install 'skinaug[torch]'")
    else:
        assert done.stderr.strip() == f"error: this needs the package {package}, which is not installed: pip install 'skinaug[{extra}]'"
    assert not out.exists()
