"""Fine-tuning with --init: shapes come from the source model, class embeddings are matched by name, other weights
start as the source's, contradictions are usage errors, and a class the source never saw can be learned."""

import json
import shutil

import pytest
from safetensors.torch import load_file

from skinaug.cli import main

from conftest import PRIOR_ARGS, TINY_VQVAE, interrupted_at_validation

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest: tiny models, busy shared cores

# the tiny source knows bkl, melanoma and nevus (rows 0, 1, 2); the new data drops bkl and adds vitiligo, so the
# new order is melanoma, nevus, vitiligo: the shared classes move to rows 0 and 1
NEW_CLASSES = ["melanoma", "nevus", "vitiligo"]
SOURCE_ROW = {"melanoma": 1, "nevus": 2}
CPU = ["--device", "cpu", "--quiet"]


def run(*args):
    return main([str(a) for a in args])


@pytest.fixture
def new_data(tiny_dataset):
    """The tiny images with bkl relabelled as vitiligo, a class the source model never saw."""
    csv = tiny_dataset.labels_csv.parent / "new_labels.csv"
    rows = ["image,label,lesion_id"] + [f"{name},{'vitiligo' if label == 'bkl' else label},{lesion}"
                                         for name, label, lesion in zip(tiny_dataset.names, tiny_dataset.labels, tiny_dataset.lesions)]
    csv.write_text("\n".join(rows) + "\n")
    return tiny_dataset.images, csv


def config_of(model):
    return json.loads((model / "config.json").read_text())


def class_keys(state):
    return sorted(key for key in state if key.endswith(".per_class.weight"))


def test_vqvae_init_with_zero_epochs_copies_the_source_under_the_new_classes(generator_model, new_data, tmp_path):
    source, (images, csv) = generator_model["model"], new_data
    out = tmp_path / "mine"
    # no shape option at all: every one comes from the source (the defaults would be 256px, K=256, ...)
    assert run("train", "vqvae", images, "--labels", csv, "--init", source, "--epochs", 0, "--out", out, *CPU) == 0
    new, old = config_of(out), config_of(source)
    assert new["vqvae"] == old["vqvae"] and new["image_size"] == TINY_VQVAE["image_size"]
    assert (new["image_size"], new["codebook_size"], new["code_dim"], new["grid"]) == (32, 16, 4, {"bottom": [8, 8], "top": [4, 4]})
    assert new["class_names"] == NEW_CLASSES and old["class_names"] == ["bkl", "melanoma", "nevus"]
    assert new["training_data"]["per_class"] == {"melanoma": 4, "nevus": 4, "vitiligo": 4}
    assert new["training_data"]["init"] == {"model": str(source.resolve()), "fingerprint": old["fingerprint"]}
    assert new["fingerprint"] == old["fingerprint"]  # the same weights and config: the codes mean the same
    copied, original = load_file(out / "vqvae.safetensors"), load_file(source / "vqvae.safetensors")
    assert copied.keys() == original.keys()
    for name in original:
        assert copied[name].equal(original[name]), name
    assert new["metrics"]["epochs"] == 0 and new["metrics"]["steps"] == 0 and 0 < new["metrics"]["val_mse"] < 1
    assert new["priors"] == {}  # a model directory is created by `train vqvae` and grows with `train prior`


def test_vqvae_init_trains_from_the_source_weights(generator_model, new_data, tmp_path, capsys):
    source, (images, csv) = generator_model["model"], new_data
    out, scratch = tmp_path / "mine", tmp_path / "scratch"
    # shape options equal to the source's are allowed
    assert run("train", "vqvae", images, "--labels", csv, "--init", source, "--image-size", 32, "--codebook-size", 16,
               "--epochs", 1, "--batch-size", 4, "--out", out, *CPU) == 0
    assert run("train", "vqvae", images, "--labels", csv, *["--image-size", 32, "--channels", 16, "--res-channels", 8],
               *["--res-blocks", 1, "--codebook-size", 16, "--code-dim", 4], "--epochs", 1, "--batch-size", 4,
               "--seed", 7, "--out", scratch, *CPU) == 0  # the source's seed on the same images would give its weights
    config = config_of(out)
    assert config["class_names"] == NEW_CLASSES and config["metrics"]["steps"] > 0
    assert config["fingerprint"] != config_of(source)["fingerprint"]  # trained: new weights
    assert config["training_data"]["init"]["fingerprint"] == config_of(source)["fingerprint"]
    assert config_of(scratch)["training_data"]["init"] is None
    tuned, original, fresh = (load_file(path / "vqvae.safetensors") for path in (out, source, scratch))
    convs = [name for name in original if name.endswith(".weight") and original[name].dim() == 4]
    assert len(convs) > 5
    # a few AdamW steps of at most lr=3e-4 each: every conv weight stays next to the source's; a fresh start does not
    assert max((tuned[n] - original[n]).abs().max().item() for n in convs) < 0.01
    assert max((fresh[n] - original[n]).abs().max().item() for n in convs) > 0.05

    # --resume continues the checkpoint: the --init given then is ignored (here it does not even exist)
    assert run("train", "vqvae", images, "--labels", csv, "--init", tmp_path / "nowhere", "--resume", "--epochs", 2,
               "--batch-size", 4, "--out", out, *CPU) == 0
    resumed = config_of(out)
    assert resumed["metrics"]["epochs"] == 2 and resumed["metrics"]["steps"] == 2 * config["metrics"]["steps"]
    assert resumed["training_data"]["init"] == config["training_data"]["init"]

    # the source's priors may start a model whose VQ-VAE is unrelated to the source's: allowed, with a warning
    codes = tmp_path / "scratch.h5"
    assert run("encode", images, "--labels", csv, "--model", scratch, "--out", codes, *CPU) == 0
    capsys.readouterr()
    assert run("train", "prior", "--model", scratch, "--codes", codes, "--init", source, "--level", "top", "--epochs", 0, *CPU) == 0
    assert "is not that of --init" in capsys.readouterr().err
    assert config_of(scratch)["priors"]["top"]["init"]["vqvae"] == "different"


def test_prior_init_keeps_shared_class_embeddings_and_every_other_weight(generator_model, new_data, tmp_path):
    source, (images, csv) = generator_model["model"], new_data
    mine, codes = tmp_path / "mine", tmp_path / "mine.h5"
    assert run("train", "vqvae", images, "--labels", csv, "--init", source, "--epochs", 0, "--out", mine, *CPU) == 0
    assert run("encode", images, "--labels", csv, "--model", mine, "--out", codes, *CPU) == 0
    # no --channels/--blocks/...: the prior's shape comes from the source (defaults would give 128 channels)
    assert run("train", "prior", "--model", mine, "--codes", codes, "--init", source, "--epochs", 0, "--batch-size", 4, *CPU) == 0
    config, old = config_of(mine), config_of(source)
    for level in ("top", "bottom"):
        entry, source_entry = config["priors"][level], old["priors"][level]
        shape = ("arch", "channels", "n_blocks", "n_res_blocks", "kernel_size", "attention", "height", "width",
                 "condition_codebook_size", "dropout")
        assert {k: entry[k] for k in shape} == {k: source_entry[k] for k in shape}
        assert entry["channels"] == 16 and entry["num_classes"] == 3 and source_entry["num_classes"] == 3
        record = entry["init"]
        assert record["model"] == str(source.resolve()) and record["fingerprint"] == old["fingerprint"]
        assert record["vqvae"] == "same" and len(record["prior_fingerprint"]) == 12
        assert record["kept_classes"] == ["melanoma", "nevus"] and record["new_classes"] == ["vitiligo"]
        assert entry["metrics"]["epoch"] == 0 and entry["metrics"]["val_bits_per_code"] > 0

        new_state = load_file(mine / f"prior_{level}.safetensors")
        source_state = load_file(source / f"prior_{level}.safetensors")
        assert new_state.keys() == source_state.keys()
        embeddings = class_keys(new_state)
        assert len(embeddings) == 1  # one table per gated layer: the tiny prior has one
        for key in embeddings:
            new_table, source_table = new_state[key], source_state[key]
            assert new_table.shape == source_table.shape == (3, new_table.shape[1])
            for row, name in enumerate(NEW_CLASSES[:2]):
                assert new_table[row].equal(source_table[SOURCE_ROW[name]]), (key, name)  # moved, bit for bit
            vitiligo = new_table[2]
            assert all((vitiligo - source_table[row]).abs().max() > 0.1 for row in range(3)), key  # a fresh row
            assert 0.3 < vitiligo.std().item() < 3  # nn.Embedding's N(0, 1) initialisation
        for key in set(new_state) - set(embeddings):
            assert new_state[key].equal(source_state[key]), key


def test_contradicting_shape_options_are_usage_errors(generator_model, new_data, tmp_path, capsys):
    source, (images, csv) = generator_model["model"], new_data
    for option, value, source_value in [("--image-size", 64, 32), ("--codebook-size", 32, 16), ("--res-blocks", 2, 1)]:
        capsys.readouterr()
        out = tmp_path / f"vq{option}"
        assert run("train", "vqvae", images, "--labels", csv, "--init", source, option, value, "--out", out, *CPU) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{option} {value}" in err and f"{option} {source_value}" in err
        assert not out.exists()  # refused before anything was written

    mine, codes = tmp_path / "mine", tmp_path / "mine.h5"
    assert run("train", "vqvae", images, "--labels", csv, "--init", source, "--epochs", 0, "--out", mine, *CPU) == 0
    assert run("encode", images, "--labels", csv, "--model", mine, "--out", codes, *CPU) == 0
    for option, value, source_value in [("--channels", 32, 16), ("--arch", "gated-pixelcnn", "pixelsnail"),
                                        ("--kernel-size", 5, 3), ("--blocks", 2, 1)]:
        capsys.readouterr()
        assert run("train", "prior", "--model", mine, "--codes", codes, "--init", source, option, value, "--epochs", 1, *CPU) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{option} {value}" in err and f"{option} {source_value}" in err
        assert not (mine / "prior_top.safetensors").exists()
    # dropout is a training setting, not a shape: it may change
    assert run("train", "prior", "--model", mine, "--codes", codes, "--init", source, "--dropout", 0.3, "--level", "top",
               "--channels", 16, "--epochs", 0, *CPU) == 0
    assert config_of(mine)["priors"]["top"]["dropout"] == 0.3 and config_of(source)["priors"]["top"]["dropout"] == 0.1

    for args, code, message in [
        (["train", "vqvae", images, "--labels", csv, "--epochs", 0, "--out", tmp_path / "zero"], 2, "--epochs 0 needs --init"),
        (["train", "vqvae", images, "--labels", csv, "--init", mine, "--out", mine, "--overwrite"], 2, "would replace the --init model"),
        (["train", "vqvae", images, "--labels", csv, "--init", mine, "--out", mine / "sub"], 2, "is inside the --init model"),
        (["train", "vqvae", images, "--labels", csv, "--init", tmp_path / "nowhere", "--out", tmp_path / "x"], 1, "no such model directory"),
        (["train", "prior", "--model", mine, "--codes", codes, "--epochs", 0, "--overwrite"], 2, "--epochs 0 needs --init"),
    ]:
        capsys.readouterr()
        assert run(*args, *CPU) == code
        assert message in capsys.readouterr().err
    assert (mine / "vqvae.safetensors").is_file() and not (mine / "sub").exists()  # the --init model is untouched


def test_init_from_a_model_without_the_stage_or_over_another_grid(generator_model, tiny_model, new_data, tmp_path, capsys):
    mine = tmp_path / "mine"
    shutil.copytree(generator_model["model"], mine)
    codes = generator_model["codes"]
    # tiny_model has a VQ-VAE but no prior
    assert run("train", "prior", "--model", mine, "--codes", codes, "--init", tiny_model.path, "--overwrite", *PRIOR_ARGS, "--quiet") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tiny_model.path / "prior_top.safetensors") in err and "is missing" in err

    # a prior models one code grid: a model with 8 codes per level cannot start from priors over 16
    images, csv = new_data
    other = tmp_path / "k8"
    assert run("train", "vqvae", images, "--labels", csv, *["--image-size", 32, "--channels", 16, "--res-channels", 8],
               *["--res-blocks", 1, "--codebook-size", 8, "--code-dim", 4], "--epochs", 1, "--batch-size", 4, "--out", other, *CPU) == 0
    capsys.readouterr()
    assert run("train", "prior", "--model", other, images, "--labels", csv, "--init", mine, *CPU) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has codebook_size 16, the codes of" in err and "need 8" in err


def test_resume_continues_the_checkpoint_and_ignores_init(generator_model, new_data, tiny_model, tmp_path, monkeypatch):
    source, (images, csv) = generator_model["model"], new_data
    mine, codes = tmp_path / "mine", tmp_path / "mine.h5"
    assert run("train", "vqvae", images, "--labels", csv, "--init", source, "--epochs", 0, "--out", mine, *CPU) == 0
    assert run("encode", images, "--labels", csv, "--model", mine, "--out", codes, *CPU) == 0
    straight = tmp_path / "straight"
    shutil.copytree(mine, straight)
    args = ["--codes", codes, "--level", "top", "--epochs", 2, "--batch-size", 4, *CPU]
    assert run("train", "prior", "--model", straight, "--init", source, *args) == 0
    with interrupted_at_validation(monkeypatch, 2):
        assert run("train", "prior", "--model", mine, "--init", source, *args) == 130
    # tiny_model has no prior: were --init used, this would fail; the checkpoint wins
    assert run("train", "prior", "--model", mine, "--init", tiny_model.path, "--resume", *args) == 0
    resumed, reference = load_file(mine / "prior_top.safetensors"), load_file(straight / "prior_top.safetensors")
    for name in reference:
        assert resumed[name].equal(reference[name]), name
    record = config_of(mine)["priors"]["top"]["init"]
    assert record == config_of(straight)["priors"]["top"]["init"] and record["model"] == str(source.resolve())


def test_end_to_end_a_class_the_source_never_saw(generator_model, new_data, tmp_path):
    source, (images, csv) = generator_model["model"], new_data
    mine, codes, out = tmp_path / "mine", tmp_path / "mine.h5", tmp_path / "synth"
    assert run("train", "vqvae", images, "--labels", csv, "--init", source, "--epochs", 1, "--batch-size", 4, "--out", mine, *CPU) == 0
    assert run("encode", images, "--labels", csv, "--model", mine, "--out", codes, *CPU) == 0
    assert run("train", "prior", "--model", mine, "--codes", codes, "--init", source, "--epochs", 2, "--batch-size", 4,
               "--lr", 0.01, *CPU) == 0
    config = config_of(mine)
    for level in ("top", "bottom"):
        record = config["priors"][level]["init"]
        assert record["vqvae"] == "fine-tuned" and record["new_classes"] == ["vitiligo"]
        assert config["priors"][level]["metrics"]["epoch"] == 2
        tuned, original = load_file(mine / f"prior_{level}.safetensors"), load_file(source / f"prior_{level}.safetensors")
        key = class_keys(tuned)[0]
        assert not tuned[key].equal(original[key][[1, 2, 0]])  # trained: the rows moved on from where they started
    assert run("synthesize", "--model", mine, "--class", "vitiligo", "-n", 2, "--out", out, "--seed", 3, *CPU) == 0
    rows = (out / "labels.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",vitiligo,synthesize," in row for row in rows[1:])
    assert all(config["fingerprint"] in row for row in rows[1:])
    assert len(list((out / "images").iterdir())) == 2


@pytest.mark.parametrize("arch", ["pixelsnail", "gated-pixelcnn"])
def test_class_rows_are_matched_by_name_in_both_architectures(arch):
    import torch

    from skinaug.priors import PriorConfig, build_prior
    from skinaug.training.prior import class_embedding_keys, init_prior_weights

    def prior(num_classes, seed):
        torch.manual_seed(seed)
        return build_prior(PriorConfig(arch=arch, codebook_size=16, height=8, width=8, channels=16, n_blocks=2,
                                       n_res_blocks=1, kernel_size=3, attention=False, num_classes=num_classes,
                                       condition_codebook_size=16, condition_height=4, condition_width=4))

    source = prior(3, seed=1)  # classes a, b, c
    source_state = {k: v.clone() for k, v in source.state_dict().items()}
    keys = class_embedding_keys(source)
    assert len(keys) >= 2 and all(source_state[k].shape[0] == 3 for k in keys)  # every gated layer has a table

    target = prior(4, seed=2)  # classes c, x, a, y: two kept (moved), two new
    kept, new = init_prior_weights(target, source_state, {"a": 0, "b": 1, "c": 2}, ["c", "x", "a", "y"], seed=0)
    assert (kept, new) == (["c", "a"], ["x", "y"])
    state = target.state_dict()
    for key in state:
        if key in keys:
            assert state[key][0].equal(source_state[key][2]) and state[key][2].equal(source_state[key][0])
            assert all((state[key][row] - source_state[key][other]).abs().max() > 0.1 for row in (1, 3) for other in range(3))
        else:
            assert state[key].equal(source_state[key]), key

    # the same seed draws the same new rows; another seed other ones
    again = prior(4, seed=3)
    init_prior_weights(again, source_state, {"a": 0, "b": 1, "c": 2}, ["c", "x", "a", "y"], seed=0)
    assert again.state_dict()[keys[0]].equal(state[keys[0]])
    init_prior_weights(again, source_state, {"a": 0, "b": 1, "c": 2}, ["c", "x", "a", "y"], seed=1)
    assert not again.state_dict()[keys[0]][1].equal(state[keys[0]][1])

    # an unconditional target drops the tables; an unconditional source leaves every class new
    unconditional = prior(0, seed=4)
    assert init_prior_weights(unconditional, source_state, {"a": 0}, ["a"]) == ([], [])
    assert not class_embedding_keys(unconditional)
    from_unconditional = prior(2, seed=5)
    assert init_prior_weights(from_unconditional, unconditional.state_dict(), {"a": 0}, ["a", "b"]) == ([], ["a", "b"])
