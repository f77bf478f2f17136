"""Issue 24, the small things: every command's result reaches stdout, decode has --jsonl, a shipped model's name works
everywhere, score benefit takes a generator of more classes, advice that works on a shipped model, the 64px default,
a fine-tuned model's base model and licence, the quick start's output ignored, pytest's summary line."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinaug.cli import main

REPO = Path(__file__).resolve().parents[1]
CPU = ["--device", "cpu"]


def run_cli(capsys, *args):
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_score_codes_prints_its_table_on_stdout(generator_model, capsys):
    code, out, err = run_cli(capsys, "score", "codes", generator_model["codes"], "--quiet")
    assert code == 0, err
    assert "used top codes" in out and "used bottom codes" in out and "co-occurring pairs" in out
    code, out, _ = run_cli(capsys, "score", "codes", generator_model["codes"], "--json")
    assert code == 0 and json.loads(out)["images"] == 12


def test_augment_dry_run_prints_the_plan_on_stdout(generator_model, tmp_path, capsys):
    data = generator_model["data"]
    code, out, err = run_cli(capsys, "augment", data.images, "--labels", data.labels_csv, "--model", generator_model["model"],
                             "--out", tmp_path / "aug", "--factor", 2, "--dry-run", "--quiet", *CPU)
    assert code == 0, err
    assert "augment plan" in out and all(name in out for name in ("bkl", "melanoma", "nevus"))
    assert not (tmp_path / "aug").exists()


def test_decode_prints_one_json_line_per_image_with_jsonl(generator_model, tmp_path, capsys):
    out_dir = tmp_path / "rec"
    code, out, err = run_cli(capsys, "decode", generator_model["codes"], "--model", generator_model["model"], "--out",
                             out_dir, "--jsonl", "--quiet", *CPU)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 12 and {line["method"] for line in lines} == {"reconstruction"}
    assert all(Path(line["path"]).is_file() for line in lines)
    assert sorted(line["label"] for line in lines) == sorted(generator_model["data"].labels)
    code, _, err = run_cli(capsys, "decode", generator_model["codes"], "--model", generator_model["model"], "--out",
                           tmp_path / "both", "--jsonl", "--json", *CPU)
    assert code == 2 and "--json and --jsonl both write stdout" in err


def _lesions(folder: Path, size: int = 64) -> tuple[Path, Path]:
    """Eight images of two classes (melanoma, nevus) that no fixture model has seen."""
    (folder / "images").mkdir(parents=True)
    rows = ["image,label,lesion_id"]
    for i in range(8):
        Image.new("RGB", (size, size), (40 + 20 * i, 160 - 10 * i, 90)).save(folder / "images" / f"fresh_{i}.png")
        rows.append(f"fresh_{i},{('melanoma', 'nevus')[i % 2]},fresh_lesion_{i}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "images", folder / "labels.csv"


def test_score_codes_takes_a_shipped_model_name(tmp_path, capsys):
    images, labels = _lesions(tmp_path / "data")
    assert main(["encode", str(images), "--labels", str(labels), "--out", str(tmp_path / "c.h5"), "--quiet", *CPU]) == 0
    capsys.readouterr()
    code, out, err = run_cli(capsys, "score", "codes", tmp_path / "c.h5", "--model", "ham10000-64", "--data", images,
                             "--labels", labels, "--json", "--quiet", *CPU)
    assert code == 0, err
    stats = json.loads(out)
    assert stats["mse_images"] == 8 and 0 < stats["mse"] < 1


def test_score_benefit_takes_a_generator_of_more_classes_than_the_data(generator_model, tmp_path):
    from skinaug.data.scan import scan_dataset
    from skinaug.studies.benefit import benefit_generator, generate_set, read_generated, share_source
    from test_benefit import tiny_options

    images, labels = _lesions(tmp_path / "data", size=32)
    dataset = scan_dataset(images, labels)
    assert dataset.class_names == ["melanoma", "nevus"]  # the generator's are bkl, melanoma, nevus
    options = tiny_options(methods=["synthesize"], generation_batch_size=4)
    generator = benefit_generator(images, tmp_path, generator_model["model"], dataset.samples[:2], dataset.class_names,
                                  options)
    source = share_source(generator, images, labels, dataset.class_names, dataset.labels())
    generate_set("synthesize", generator, source, tmp_path / "set", options, seed=0)
    made = [row["label"] for row in csv.DictReader(open(tmp_path / "set" / "labels.csv"))]
    assert sorted(made) == ["melanoma"] * 4 + ["nevus"] * 4  # each class of the data, in the generator's names
    _, generated_labels, _ = read_generated(tmp_path / "set", dataset.class_names, 32, None)
    assert sorted(generated_labels.tolist()) == [0] * 4 + [1] * 4  # back in the data's class indices


def test_backend_onnx_on_the_shipped_model_advises_an_export_that_works(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    code, _, err = run_cli(capsys, "synthesize", "--class", "melanoma", "-n", 1, "--out", tmp_path / "s", "--backend",
                           "onnx", *CPU)
    assert code == 1
    assert "skinaug export onnx --model ham10000-64 --out ham10000-64-onnx" in err and "read-only" in err


def test_train_vqvae_defaults_to_64px_as_the_shipped_model(tiny_dataset, tmp_path):
    from skinaug.training.vqvae import TrainOptions, train_vqvae

    shape = dict(channels=8, res_channels=4, n_res_blocks=1, codebook_size=8, code_dim=2)
    train_vqvae(tiny_dataset.images, tmp_path / "m", labels=tiny_dataset.labels_csv, model_config=shape,
                options=TrainOptions(epochs=1, batch_size=6, device="cpu"))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["image_size"] == 64 and config["grid"] == {"bottom": [16, 16], "top": [8, 8]}


def test_a_fine_tuned_model_card_names_its_base_model_and_carries_its_licence(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "mine"
    code, _, err = run_cli(capsys, "train", "vqvae", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--init",
                           "ham10000-64", "--epochs", 0, "--out", out, "--quiet", *CPU)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    shipped = json.loads((REPO / "skinaug" / "models" / "ham10000-64" / "config.json").read_text())
    assert config["base_model"] == {"name": "ham10000-64", "fingerprint": shipped["fingerprint"],
                                    "licence": "CC BY-NC 4.0 (trained on HAM10000)"}
    assert config["licence"] == "CC BY-NC 4.0 (trained on HAM10000), inherited from the base model ham10000-64"
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Base model" in card
    assert (f"- base model of the VQ-VAE: ham10000-64 (fingerprint {shipped['fingerprint']}); its licence carries over "
            "to this model and to what it generates: CC BY-NC 4.0 (trained on HAM10000)") in card
    code, out_text, _ = run_cli(capsys, "models", out, "--json")
    assert next(row for row in json.loads(out_text) if row["path"] == str(out))["licence"] == config["licence"]


def test_the_quick_starts_output_folder_is_ignored_by_git():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "check-ignore", "expanded/sheet.png", "expanded/images/x.png", "README.md"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.stdout.split() == ["expanded/sheet.png", "expanded/images/x.png"]


def test_pytest_q_ends_with_the_passed_summary_line(tmp_path):
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-c", str(REPO / "pyproject.toml"), "-p",
                             "no:cacheprovider", str(tmp_path / "test_one.py")], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("1 passed")


def test_a_prior_fine_tuned_from_another_model_names_it_in_the_card(generator_model, tiny_model, tmp_path, capsys):
    import shutil

    mine = tmp_path / "mine"
    shutil.copytree(tiny_model.path, mine)
    code, _, err = run_cli(capsys, "train", "prior", "--model", mine, "--codes", generator_model["codes"], "--init",
                           generator_model["model"], "--level", "top", "--epochs", 1, "--batch-size", 4, "--quiet", *CPU)
    assert code == 0, err
    config = json.loads((mine / "config.json").read_text())
    source = str(generator_model["model"].resolve())
    assert config["priors"]["top"]["base_model"]["name"] == source
    assert (f"- base model of the top prior: {source} (fingerprint {config['priors']['top']['init']['fingerprint']}); "
            "its licence carries over to this model and to what it generates: see its MODEL_CARD.md") in (
        mine / "MODEL_CARD.md").read_text()
