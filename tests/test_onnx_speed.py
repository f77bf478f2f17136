"""The onnx sampler with its caches bound in place (IOBinding), the per-row graph, session options, and
`skinaug export onnx --out` (a model directory of its own, for a read-only model)."""

import json
import shutil

import numpy as np
import pytest
import torch

from skinaug.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

HEIGHT, WIDTH = 4, 5  # non-square on purpose


class _Graphs:
    """The part of `OnnxModel` an `OnnxPrior` uses, over a folder of graphs."""

    def __init__(self, folder):
        import onnxruntime

        self.ort, self.onnx_dir, self._sessions = onnxruntime, folder, {}

    def session(self, file, **options):
        if file not in self._sessions:
            self._sessions[file] = self.ort.InferenceSession(str(self.onnx_dir / file), providers=["CPUExecutionProvider"])
        return self._sessions[file]

    def run(self, entry, feeds):
        return self.session(entry["file"]).run(None, feeds)


def random_prior(arch, attention, classes, conditioned, kernel_size):
    """attention: "fixed" (keys see their position's own code), "legacy" or None."""
    from skinaug.priors import PriorConfig, build_prior

    condition = {"condition_codebook_size": 6, "condition_height": 2, "condition_width": 3} if conditioned else {}
    config = PriorConfig(arch=arch, codebook_size=11, height=HEIGHT, width=WIDTH, channels=16, n_blocks=2,
                         n_res_blocks=2, kernel_size=kernel_size, attention=attention is not None, n_heads=2,
                         num_classes=classes, attention_sees_own_code=attention != "legacy", **condition)
    torch.manual_seed(0)
    model = build_prior(config)
    with torch.no_grad():  # larger than the default init, so logits are far from uniform
        for parameter in model.parameters():
            parameter.normal_(0, parameter[0].numel() ** -0.5 if parameter.dim() >= 2 else 0.2)
    return model.eval()


CASES = [("pixelsnail", "fixed", 3, True, 5), ("pixelsnail", "legacy", 3, True, 5), ("pixelsnail", None, 0, False, 3),
         ("pixelsnail", "fixed", 0, False, 3), ("pixelsnail", "legacy", 0, False, 3), ("gated-pixelcnn", "fixed", 3, True, 5),
         ("gated-pixelcnn", None, 3, False, 3)]


@pytest.mark.parametrize("arch, attention, classes, conditioned, kernel_size", CASES)
def test_the_bound_step_and_row_graphs_sample_exactly(arch, attention, classes, conditioned, kernel_size, tmp_path):
    from skinaug.export.onnx import _export_prior
    from skinaug.backends.onnx_runtime import OnnxPrior
    from skinaug.priors import sample

    prior = random_prior(arch, attention, classes, conditioned, kernel_size)
    generator = torch.Generator().manual_seed(1)
    entry = _export_prior(prior, "top", tmp_path, 17, 3, generator)
    assert entry["step"]["inputs"][:2] == ["raster", "windows"] and "embed" in entry
    # the torch sampler's schedule: raster order, with the row graph, for attention; else the wavefront
    assert entry["step"]["schedule"] == ("raster" if attention else "wavefront") and ("row" in entry) == bool(attention)
    # keys that see their own code are completed by the embed graph once the code is drawn
    assert entry["step"]["own_code"] == (attention == "fixed")
    completes = ["partial_key_0", "partial_value_0", "partial_key_1", "partial_value_1"] if attention == "fixed" else []
    assert entry["embed"]["inputs"] == ["codes", *completes]
    onnx_prior = OnnxPrior(_Graphs(tmp_path), entry)
    batch = 3
    labels = torch.tensor([0, 2, 1]) if classes else None
    condition = torch.randint(6, (batch, 2, 3), generator=generator) if conditioned else None
    as_numpy = lambda t: None if t is None else t.numpy()  # noqa: E731
    for seed in (0, 1):  # twice: the second call reuses (and re-zeroes) the first call's buffers
        uniforms = torch.rand(batch, HEIGHT * WIDTH, generator=torch.Generator().manual_seed(seed))
        expected = sample(prior, labels, condition, n=batch, uniforms=uniforms)
        codes, logits = onnx_prior.sample(as_numpy(labels), as_numpy(condition), n=batch, uniforms=uniforms.numpy(),
                                          return_logits=True)
        with torch.no_grad():
            teacher_forced = prior(torch.from_numpy(codes), labels, condition).numpy()
        assert teacher_forced.std() > 0.3
        assert np.abs(logits - teacher_forced).max() < 1e-4  # every position, the full forward as yardstick
        np.testing.assert_array_equal(codes, expected.numpy())
    # another batch size after the first: buffers of the new shape
    uniforms = torch.rand(2, HEIGHT * WIDTH, generator=torch.Generator().manual_seed(5))
    two = (labels[:2] if classes else None), (condition[:2] if conditioned else None)
    np.testing.assert_array_equal(onnx_prior.sample(*map(as_numpy, two), n=2, uniforms=uniforms.numpy()),
                                  sample(prior, *two, n=2, uniforms=uniforms).numpy())


def test_sessions_use_every_core_sequentially_with_all_graph_optimisations(tmp_path):
    import onnxruntime

    from skinaug.export.onnx import EmbedGraph, _export
    from skinaug.backends.onnx_runtime import OnnxModel, usable_cpus

    prior = random_prior("pixelsnail", None, 0, False, 3)
    for name in ("a", "b", "c"):
        _export(EmbedGraph(prior), (torch.zeros(1, 2, dtype=torch.long),), tmp_path / f"{name}.onnx", ["codes"],
                ["embedded"], {"codes": {1: "batch"}, "embedded": {1: "batch"}}, 17)
    model = OnnxModel.__new__(OnnxModel)  # only what session() needs
    model.ort, model.onnx_dir, model.providers, model._sessions = onnxruntime, tmp_path, ["CPUExecutionProvider"], {}
    model.provider, model.device = None, "cpu"
    plain, step, small = (model.session("a.onnx"), model.session("b.onnx", spinning=True),
                          model.session("c.onnx", threads=1))
    for session in (plain, step, small):
        options = session.get_session_options()
        assert options.inter_op_num_threads == 1
        assert options.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert plain.get_session_options().intra_op_num_threads == usable_cpus() >= 1
    assert small.get_session_options().intra_op_num_threads == 1
    # only the sampling step's idle workers spin: other sessions' would spin on the cores the step needs
    spins = [s.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") for s in (plain, step)]
    assert spins == ["0", "1"]


@pytest.fixture(scope="module")
def exported_elsewhere(generator_model, tmp_path_factory):
    """The tiny model exported with --out: the model directory itself is left as it was."""
    root = tmp_path_factory.mktemp("onnx_out")
    model = root / "model"
    shutil.copytree(generator_model["model"], model)
    before = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    assert main(["export", "onnx", "--model", str(model), "--out", str(root / "exported"), "--quiet"]) == 0
    return {**generator_model, "model": model, "before": before, "out": root / "exported"}


def test_export_out_leaves_the_model_alone_and_makes_a_model_directory(exported_elsewhere, tmp_path):
    model, out = exported_elsewhere["model"], exported_elsewhere["out"]
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()} == exported_elsewhere["before"]
    assert not (model / "onnx").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["fingerprint"] == json.loads((model / "config.json").read_text())["fingerprint"]
    assert (out / "onnx" / config["onnx"]["files"]["decoder"]["file"]).is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    for name in ("a", "b"):
        assert main(["synthesize", "--model", str(out), "--out", str(tmp_path / name), "--per-class", "2",
                     "--backend", "onnx", "--seed", "3", "--quiet"]) == 0
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["backend"] == "onnx" and run["images"] == 6
    # reproducible per seed: a second run gives the same images
    images = {name: {f.name: f.read_bytes() for f in (tmp_path / name / "images").iterdir()} for name in ("a", "b")}
    assert len(images["a"]) == 6 and images["a"] == images["b"]


def test_export_out_refuses_an_existing_folder_without_overwrite(exported_elsewhere, tmp_path, capsys):
    model, out = exported_elsewhere["model"], exported_elsewhere["out"]
    assert main(["export", "onnx", "--model", str(model), "--out", str(out), "--quiet"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert main(["export", "onnx", "--model", str(model), "--out", str(stranger), "--overwrite", "--quiet"]) == 1
    assert "replaces only an earlier exported model directory" in capsys.readouterr().err
    assert (stranger / "notes.txt").read_text() == "mine"
    # a folder that merely holds a config.json (a project, another tool's run) is not an export either
    (stranger / "config.json").write_text("{}")
    assert main(["export", "onnx", "--model", str(model), "--out", str(stranger), "--overwrite", "--quiet"]) == 1
    assert sorted(p.name for p in stranger.iterdir()) == ["config.json", "notes.txt"]
    # nor is a trained model directory (its checkpoints would go)
    assert main(["export", "onnx", "--model", str(out), "--out", str(model.parent), "--overwrite", "--quiet"]) == 1
    assert (model / "config.json").is_file()


def test_export_out_folders_follow_the_umask(exported_elsewhere):
    import stat

    out = exported_elsewhere["out"]
    for folder in (out, out / "onnx"):
        assert stat.S_IMODE(folder.stat().st_mode) & 0o055 == 0o055  # group and others may read and enter


def test_export_refuses_a_read_only_model_with_one_line_naming_out(generator_model, tmp_path, monkeypatch, capsys):
    import skinaug.export.onnx as export

    model = tmp_path / "model"
    shutil.copytree(generator_model["model"], model)

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(export.tempfile, "mkdtemp", refused)  # as root, chmod would not stop the write
    assert main(["export", "onnx", "--model", str(model), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not writable" in err[0] and "--out DIR" in err[0]
    assert not (model / "onnx").exists()


def test_export_refuses_a_shipped_model(generator_model, tmp_path, monkeypatch, capsys):
    import skinaug.storage.fs as skinaug_io

    shipped = tmp_path / "models"
    shutil.copytree(generator_model["model"], shipped / "tiny")
    monkeypatch.setattr(skinaug_io, "SHIPPED_MODELS", shipped)
    assert main(["export", "onnx", "--model", str(shipped / "tiny"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "read-only" in err[0] and "--out DIR" in err[0]
    assert not (shipped / "tiny" / "onnx").exists()


def test_an_export_of_another_format_asks_for_a_new_export(exported_elsewhere, tmp_path, capsys):
    out = tmp_path / "old"
    shutil.copytree(exported_elsewhere["out"], out)
    config = json.loads((out / "config.json").read_text())
    assert config["onnx"]["format"] == 2
    del config["onnx"]["format"]  # as written before the graphs bound their caches in place
    (out / "config.json").write_text(json.dumps(config))
    assert main(["synthesize", "--model", str(out), "--out", str(tmp_path / "s"), "--class", "nevus", "-n", "1",
                 "--backend", "onnx", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "another version of skinaug" in err and "--overwrite" in err
