"""Scores: CAS (AUC, no test leakage), Fréchet distance and precision/recall, the FID Inception network,
memorization, the code table and the latent-size sweep. Tiny data, tiny budgets, real values."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skinaug.cli import main
from skinaug.errors import SkinaugError
from skinaug.scores.options import ScoreOptions
from skinaug.scores.roc import average_ranks, macro_auc, roc_auc, roc_curve

# A classifier budget that trains in about a second on CPU: what is tested is the bookkeeping, not the skill.
TINY_CAS = ["--arch", "resnet10", "--image-size", "32", "--steps", "1", "--batch-size", "4", "--device", "cpu"]
GENERATED_COLUMNS = "image,label,method,source_top,source_bottom,temperature,seed,model_fingerprint"


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def mann_whitney_auc(is_positive, scores) -> float:
    """AUC from its definition, pair by pair: P(positive scores higher) + P(tie) / 2."""
    positives = [s for s, p in zip(scores, is_positive) if p]
    negatives = [s for s, p in zip(scores, is_positive) if not p]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def make_generated_set(folder: Path, dataset, sources: list[tuple[str, str]]) -> Path:
    """An OUT_DIR whose image i copies the real image sources[i][0] and names (top, bottom) as its sources."""
    (folder / "images").mkdir(parents=True)
    label_of = dict(zip(dataset.names, dataset.labels))
    rows = [GENERATED_COLUMNS]
    for i, (top, bottom) in enumerate(sources):
        name = f"mix_{i:03d}"
        shutil.copyfile(dataset.images / f"{top}.png", folder / "images" / f"{name}.png")
        rows.append(f"{name},{label_of[top]},mix,{top},{bottom},,0,abc123")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


# ----------------------------------------------------------------------------------------------- AUC


def test_auc_equals_the_pairwise_mann_whitney_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(4, 40))
        labels = rng.integers(0, 2, n).astype(bool)
        labels[:2] = [True, False]
        scores = rng.integers(0, 5, n) / 4.0  # few distinct values: many ties
        assert roc_auc(labels, scores) == pytest.approx(mann_whitney_auc(labels, scores), abs=1e-12)


def test_auc_extremes_and_ranks():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    with pytest.raises(SkinaugError, match="positive and negative"):
        roc_auc([1, 1], [0.2, 0.3])


def test_roc_curve_runs_from_origin_to_corner_and_its_area_is_the_auc():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60).astype(bool)
    scores = rng.random(60).round(1) + labels * 0.3
    fpr, tpr = roc_curve(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2).sum())  # trapezoids under the curve
    assert area == pytest.approx(roc_auc(labels, scores), abs=1e-12)


def test_macro_auc_is_the_mean_of_one_vs_rest_aucs():
    rng = np.random.default_rng(2)
    labels = np.tile([0, 1, 2], 10)
    probabilities = rng.dirichlet([1, 1, 1], 30)
    expected = np.mean([mann_whitney_auc(labels == c, probabilities[:, c]) for c in range(3)])
    assert macro_auc(labels, probabilities) == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------------------------- CAS


def cas_setup(tiny_dataset, tmp_path):
    """The split `score cas --seed 0 --test-fraction 0.5` makes, and a generated set built around it: one
    image made from each real image, so the images made from test images are known."""
    from skinaug.data.scan import scan_dataset
    from skinaug.scores.cas import CasOptions, choose_task, split_real

    options = CasOptions(positive="melanoma", negative="nevus", test_fraction=0.5, seed=0)
    real = scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv)
    task = choose_task(real.class_names, "melanoma", "nevus")
    split = split_real(real, task, options)
    task_names = [n for n, label in zip(tiny_dataset.names, tiny_dataset.labels) if label in ("melanoma", "nevus")]
    # each image is mixed with the next one of its class; pairs never cross a class
    sources = [(name, task_names[i + 1] if i % 4 != 3 else task_names[i - 3]) for i, name in enumerate(task_names)]
    generated = make_generated_set(tmp_path / "mixed", tiny_dataset, sources)
    derived_from_test = {f"mix_{i:03d}" for i, (top, bottom) in enumerate(sources)
                         if top in split.test_names or bottom in split.test_names}
    return options, real, task, split, generated, derived_from_test


def test_no_test_image_or_image_made_from_one_reaches_training(tiny_dataset, tmp_path):
    from skinaug.scores.cas import load_training_set

    options, _, task, split, generated, derived_from_test = cas_setup(tiny_dataset, tmp_path)
    assert split.test_names and derived_from_test and len(derived_from_test) < 8
    assert not split.test_names & {s.name for s in split.train}
    lesion = dict(zip(tiny_dataset.names, tiny_dataset.lesions))
    assert not {lesion[n] for n in split.test_names} & {lesion[s.name] for s in split.train}  # split by lesion

    images = np.zeros((len(split.train), 32, 32, 3), np.uint8)
    options.budget.image_size = 32
    for mode in ("replace", "add"):
        options.mode = mode
        training = load_training_set(str(generated), task, split, images, options)
        assert training.left_out_test == len(derived_from_test)
        assert not set(training.names) & split.test_names
        assert not set(training.names) & derived_from_test
        generated_names = {f"mix_{i:03d}" for i in range(8)} - derived_from_test
        expected = generated_names | ({s.name for s in split.train} if mode == "add" else set())
        assert set(training.names) == expected and len(training.images) == len(expected) == len(training.labels)

    options.strict = True
    with pytest.raises(SkinaugError, match="made from real test images"):
        load_training_set(str(generated), task, split, images, options)


def test_real_fraction_thins_the_train_split_by_lesion_and_keeps_the_test_split(tiny_dataset):
    from skinaug.data.scan import scan_dataset
    from skinaug.scores.cas import CasOptions, choose_task, split_real

    real = scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv)
    task = choose_task(real.class_names, None, None)
    full = split_real(real, task, CasOptions(test_fraction=0.25, seed=3))
    thin = split_real(real, task, CasOptions(test_fraction=0.25, seed=3, real_fraction=0.5))
    assert thin.test_names == full.test_names
    kept = {s.name for s in thin.train}
    assert kept < {s.name for s in full.train} and 0 < len(kept) < len(full.train)
    lesion = dict(zip(tiny_dataset.names, tiny_dataset.lesions))
    assert all(lesion[a] != lesion[b] or (a in kept) == (b in kept) for a in lesion for b in lesion
               if a in {s.name for s in full.train} and b in {s.name for s in full.train})  # whole lesions only


class NotATensor:
    """Something only unpickling could restore: a weights file holding it must be refused."""


def test_local_backbone_weights_load_from_safetensors_or_a_torch_file_without_unpickling(tmp_path):
    from safetensors.torch import save_file

    from skinaug.scores.classifier import build_classifier

    torch.manual_seed(0)
    source = build_classifier("resnet10", 2)
    state = {k: v.contiguous() for k, v in source.backbone.state_dict().items()}
    save_file(state, str(tmp_path / "backbone.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "backbone.pt")
    for name in ("backbone.safetensors", "backbone.pt"):
        torch.manual_seed(1)
        model = build_classifier("resnet10", 3, weights=tmp_path / name)
        assert all(torch.equal(v, state[k]) for k, v in model.backbone.state_dict().items())
        assert model.head.out_features == 3
    torch.save({"weights": NotATensor()}, tmp_path / "pickled.pt")
    with pytest.raises(SkinaugError, match="cannot read weights"):
        build_classifier("resnet10", 2, weights=tmp_path / "pickled.pt")


def read_csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cas_cli_predictions_reproduce_the_reported_aucs(tiny_dataset, tmp_path, capsys):
    *_, generated, derived_from_test = cas_setup(tiny_dataset, tmp_path)
    out = tmp_path / "cas"
    code, stdout, stderr = run_cli(capsys, "score", "cas", "--real", tiny_dataset.images, "--labels", tiny_dataset.labels_csv,
                                   "--train", generated, "--positive", "melanoma", "--negative", "nevus",
                                   "--test-fraction", "0.5", "--seeds", "2", "--out", out, "--json", *TINY_CAS)
    assert code == 0, stderr
    summary = json.loads(stdout)
    (entry,) = summary["sets"]
    assert set(entry) >= {"name", "mode", "seeds", "aucs", "auc_mean", "auc_std"}
    assert (entry["name"], entry["mode"], entry["seeds"]) == ("mixed", "replace", [0, 1])
    assert entry["auc_mean"] == pytest.approx(np.mean(entry["aucs"]))
    assert entry["auc_std"] == pytest.approx(np.std(entry["aucs"], ddof=1))
    assert entry["left_out_test_provenance"] == len(derived_from_test)
    assert entry["train_images"] == 8 - len(derived_from_test)
    assert "Classification accuracy score" in stderr  # the table goes to stderr, stdout holds only the JSON

    rows = read_csv_rows(out / "predictions.csv")
    assert list(rows[0]) == ["set", "seed", "image", "label", "score"]
    assert len(rows) == 2 * summary["test_images"] == 2 * 4  # seeds x test images (one lesion per class)
    for seed, auc in zip(entry["seeds"], entry["aucs"]):
        mine = [r for r in rows if int(r["seed"]) == seed]
        assert mann_whitney_auc([r["label"] == "melanoma" for r in mine], [float(r["score"]) for r in mine]) == pytest.approx(auc, abs=1e-12)
    assert Image.open(out / "roc.png").size[0] > 300
    split = read_csv_rows(out / "split.csv")
    assert {r["image"] for r in split if r["side"] == "test"} == {r["image"] for r in rows}
    assert len(split) == 8 and {r["side"] for r in split} == {"train", "test"}


def test_cas_is_reproducible_and_all_classes_use_macro_auc(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "cas"
    code, stdout, stderr = run_cli(capsys, "score", "cas", "--real", tiny_dataset.images, "--labels", tiny_dataset.labels_csv,
                                   "--train", "real,real", "--test-fraction", "0.5", "--out", out, "--json", "--quiet", *TINY_CAS)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["classes"] == ["bkl", "melanoma", "nevus"] and summary["task"].startswith("3 classes")
    first, second = summary["sets"]
    assert (first["name"], second["name"]) == ("real", "real#2")
    assert first["aucs"] == second["aucs"]  # the same seed on the same device gives the same classifier
    rows = read_csv_rows(out / "predictions.csv")
    assert list(rows[0]) == ["set", "seed", "image", "label", "score", "p_bkl", "p_melanoma", "p_nevus"]
    assert [r["score"] for r in rows if r["set"] == "real"] == [r["score"] for r in rows if r["set"] == "real#2"]
    mine = [r for r in rows if r["set"] == "real"]
    expected = np.mean([mann_whitney_auc([r["label"] == c for r in mine], [float(r[f"p_{c}"]) for r in mine])
                        for c in summary["classes"]])
    assert first["aucs"][0] == pytest.approx(expected, abs=1e-12)
    assert all(float(r["score"]) == float(r[f"p_{r['label']}"]) for r in rows)


def test_cas_strict_refuses_a_set_made_from_test_images(tiny_dataset, tmp_path, capsys):
    *_, generated, _ = cas_setup(tiny_dataset, tmp_path)
    code, stdout, stderr = run_cli(capsys, "score", "cas", "--real", tiny_dataset.images, "--labels", tiny_dataset.labels_csv,
                                   "--train", generated, "--positive", "melanoma", "--negative", "nevus",
                                   "--test-fraction", "0.5", "--strict", *TINY_CAS)
    assert code == 1 and stdout == ""
    assert "made from real test images" in stderr and len(stderr.strip().splitlines()) >= 1


@pytest.mark.parametrize("args, exit_code, message", [
    (["--positive", "melanoma"], 2, "both --positive and --negative"),
    (["--positive", "melanoma", "--negative", "vasc"], 1, "'vasc' is not in the real labels"),
    (["--mode", "blend"], 2, "--mode must be replace or add"),
    (["--real-fraction", "0"], 2, "--real-fraction"),
])
def test_cas_usage_and_runtime_errors(tiny_dataset, capsys, args, exit_code, message):
    code, stdout, stderr = run_cli(capsys, "score", "cas", "--real", tiny_dataset.images, "--labels", tiny_dataset.labels_csv,
                                   "--train", "real", *args, *TINY_CAS)
    assert code == exit_code and stdout == "" and message in stderr


def test_cas_refuses_a_plain_image_folder_as_a_training_set(tiny_dataset, capsys):
    code, _, stderr = run_cli(capsys, "score", "cas", "--real", tiny_dataset.images, "--labels", tiny_dataset.labels_csv,
                              "--train", tiny_dataset.images, *TINY_CAS)
    assert code == 1 and "is not a generated set" in stderr


# ----------------------------------------------------------------------------------------------- FID


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_a_shift():
    from skinaug.scores.fid import feature_statistics, frechet_distance

    features = np.random.default_rng(0).normal(size=(300, 24)) @ np.random.default_rng(1).normal(size=(24, 24))
    mu, sigma = feature_statistics(features)
    assert frechet_distance(mu, sigma, mu, sigma) <= 1e-6 * np.trace(sigma)
    distances = []
    for size in (0.5, 1.0, 2.0):
        shift = np.full(24, size)
        mu_shifted, sigma_shifted = feature_statistics(features + shift)
        distance = frechet_distance(mu, sigma, mu_shifted, sigma_shifted)
        assert distance == pytest.approx(shift @ shift, rel=1e-6)  # equal covariances: only the means differ
        distances.append(distance)
    assert distances[0] < distances[1] < distances[2]


def test_frechet_distance_matches_the_textbook_formula():
    from skinaug.scores.fid import feature_statistics, frechet_distance

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(150, 8)) * 1.5 + 0.3
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    # tr((S1 S2)^1/2) from the eigenvalues of the (non-symmetric) product itself, which are real and >= 0
    trace_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(0)).sum()
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert np.allclose(s1, np.cov(a.T)) and np.allclose(mu2, b.mean(0))


def test_precision_and_recall_see_overlap_and_separation():
    from skinaug.scores.fid import precision_recall

    rng = np.random.default_rng(4)
    real = rng.normal(size=(200, 4))
    assert precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)
    # generated samples covering only half of the real cloud: precise, but half the recall
    half = real[real[:, 0] > 0]
    precision, recall = precision_recall(real, half, k=3)
    assert precision == 1.0 and 0.3 < recall < 0.7


def test_fid_inception_builds_and_gives_2048_features_with_random_weights(tmp_path):
    from skinaug.scores.inception import WEIGHTS_NAME, FIDInceptionV3, load_fid_inception

    torch.manual_seed(0)
    model = FIDInceptionV3().eval()
    assert sum(p.numel() for p in model.parameters()) == 23_850_960  # torchvision's Inception3, 1008-way head
    with torch.no_grad():
        features = model(torch.rand(1, 3, 40, 40))  # resized to 299 inside
    assert features.shape == (1, 2048) and (features >= 0).all() and features.sum() > 0  # pooled ReLU outputs
    path = tmp_path / WEIGHTS_NAME
    torch.save(model.state_dict(), path)
    loaded = load_fid_inception(path)  # weights_only=True, strict names
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_fid_without_inception_weights_is_one_clear_line(tiny_dataset, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "pt_inception-2015-12-05-6726825d.pth"
    code, stdout, stderr = run_cli(capsys, "score", "fid", tiny_dataset.images, tiny_dataset.images,
                                   "--inception-weights", missing, "--device", "cpu")
    assert code == 1 and stdout == ""
    assert stderr.count("\n") == 1 and "pt_inception-2015-12-05-6726825d.pth" in stderr and "downloads nothing" in stderr


def test_fid_in_classifier_features_of_a_set_with_itself(tiny_dataset, tmp_path, capsys):
    code, stdout, stderr = run_cli(capsys, "score", "fid", tiny_dataset.images, tiny_dataset.images, "--labels",
                                   tiny_dataset.labels_csv, "--features", "classifier", "--arch", "resnet10", "--epochs", "1",
                                   "--batch-size", "4", "--image-size", "32", "--device", "cpu", "--json")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["features"] == "classifier" and result["feature_dim"] == 512
    assert result["generated_images"] == result["real_images"] == 12
    assert abs(result["frechet_distance"]) < 1e-6 and result["precision"] == result["recall"] == 1.0
    assert "fid" not in result and "not an FID" in result["note"]  # classifier features make no FID
    assert result["kid_subset_size"] == 12 and result["kid_std"] >= 0 and np.isfinite(result["kid"])


def test_fid_of_two_folders_joined_by_plus_is_that_of_their_union(tiny_dataset, tmp_path, capsys):
    names = sorted(tiny_dataset.images.iterdir())
    halves = [tmp_path / "a", tmp_path / "b"]
    for half, part in zip(halves, (names[:5], names[5:])):
        half.mkdir()
        for name in part:
            shutil.copyfile(name, half / name.name)
    code, stdout, stderr = run_cli(capsys, "score", "fid", f"{halves[0]}+{halves[1]}", tiny_dataset.images, "--labels",
                                   tiny_dataset.labels_csv, "--features", "classifier", "--arch", "resnet10", "--epochs", "1",
                                   "--batch-size", "4", "--image-size", "32", "--device", "cpu", "--json")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["generated_images"] == result["real_images"] == 12  # 5 + 7: the union, the real set itself
    assert abs(result["frechet_distance"]) < 1e-6 and result["precision"] == result["recall"] == 1.0
    code, _, stderr = run_cli(capsys, "score", "fid", f"{halves[0]}+{tmp_path / 'missing'}", tiny_dataset.images,
                              "--features", "classifier", "--device", "cpu")
    assert code == 1 and "image folder not found" in stderr and "missing" in stderr
    for spec in ("+", f"{halves[0]}+"):
        code, _, stderr = run_cli(capsys, "score", "fid", spec, tiny_dataset.images, "--features", "classifier",
                                  "--device", "cpu")
        assert code == 2 and "has an empty part" in stderr and stderr.count("\n") == 1, stderr


def test_the_classifier_kid_is_that_of_the_z_scored_features(tiny_dataset, monkeypatch):
    from skinaug.scores import fid

    rng = np.random.default_rng(5)
    generated, real = rng.gamma(2.0, 3.0, size=(12, 6)), rng.gamma(2.0, 1.0, size=(12, 6))
    monkeypatch.setattr(fid, "classifier_feature_pair", lambda *args: (generated, real))
    result = fid.compute_fid(tiny_dataset.images, tiny_dataset.images, features="classifier", image_size=16,
                             options=ScoreOptions(real_labels=tiny_dataset.labels_csv, device="cpu"))
    mean, std = fid.standardiser(generated, real)
    expected = fid.kernel_distance((generated - mean) / std, (real - mean) / std, seed=0)
    assert (result["kid"], result["kid_std"], result["kid_subset_size"]) == expected
    assert result["frechet_distance"] == fid.frechet_distance(*fid.feature_statistics(generated), *fid.feature_statistics(real))


# ----------------------------------------------------------------------------------------------- memorization


def test_memorization_flags_an_exact_copy_and_only_it(tiny_dataset, tmp_path, capsys):
    generated = tmp_path / "generated" / "images"
    generated.mkdir(parents=True)
    shutil.copyfile(tiny_dataset.images / "img_05.png", generated / "copy.png")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(generated / f"noise_{i}.png")
    out = tmp_path / "memo"
    code, stdout, stderr = run_cli(capsys, "score", "memorization", generated, tiny_dataset.images, "--out", out, "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["flagged"] == 1 and summary["generated_images"] == 4 and summary["real_images"] == 12
    assert summary["pixel_distance"]["min"] == pytest.approx(0.0, abs=1e-9)
    with open(out / "memorization.csv", newline="") as handle:
        rows = {r["image"]: r for r in csv.DictReader(handle)}
    assert rows["copy"]["nearest_pixel"] == "img_05" and rows["copy"]["flagged"] == "True"
    assert float(rows["copy"]["pixel_distance"]) == pytest.approx(0.0, abs=1e-9)
    assert all(rows[f"noise_{i}"]["flagged"] == "False" for i in range(3))
    assert float(rows["noise_0"]["pixel_distance"]) > 0.1
    assert Image.open(out / "closest_pairs.png").size[0] > 0


def test_memorization_feature_distance_sees_through_rotation(tmp_path):
    from skinaug.scores.memorization import fixed_embedding, nearest_by_embedding

    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    generated = np.ascontiguousarray(np.rot90(real[[4]], 1, axes=(1, 2))[:, :, ::-1])  # turned and flipped
    index, distance = nearest_by_embedding(generated, real, fixed_embedding)
    assert index[0] == 4 and distance[0] == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------------------------- codes and sweep


def test_score_codes_reports_the_code_table_and_the_mse(tiny_model, tmp_path, capsys):
    import h5py

    from skinaug.generation.encode_decode import encode_dataset

    data = tiny_model.dataset
    codes = tmp_path / "codes.h5"
    encoded = encode_dataset(data.images, codes, model=tiny_model.path, labels=data.labels_csv, device="cpu")
    code, stdout, stderr = run_cli(capsys, "score", "codes", codes, "--model", tiny_model.path, "--data", data.images,
                                   "--labels", data.labels_csv, "--device", "cpu", "--json")
    assert code == 0, stderr
    stats = json.loads(stdout)
    with h5py.File(codes, "r") as handle:
        top, bottom = handle["codes/top"][:], handle["codes/bottom"][:]
    assert stats["used_codes_top"] == len(np.unique(top)) and stats["used_codes_bottom"] == len(np.unique(bottom))
    pairs = {(int(top[n, y // 2, x // 2]), int(bottom[n, y, x])) for n in range(len(top)) for y in range(8) for x in range(8)}
    assert stats["co_occurring_pairs"] == len(pairs)
    assert stats["mse"] == pytest.approx(encoded["mse"], rel=1e-6) and stats["mse_images"] == 12
    assert "co-occurring pairs" in stderr

    code, stdout, stderr = run_cli(capsys, "score", "codes", codes, "--model", tiny_model.path)
    assert code == 2 and "both --model and --data" in stderr


SWEEP_ARGS = ["--codebook-size", "8,16", "--code-dim", "4", "--image-size", "32", "--channels", "16", "--res-channels", "8",
              "--res-blocks", "1", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--json"]


def test_sweep_writes_one_row_per_config_and_continues_where_it_stopped(tiny_dataset, tmp_path, capsys, monkeypatch):
    from skinaug.studies import sweep

    out = tmp_path / "sweep"
    args = ["score", "sweep", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--out", out, *SWEEP_ARGS]
    code, stdout, stderr = run_cli(capsys, *args)
    assert code == 0, stderr
    rows = json.loads(stdout)["rows"]
    assert [(r["codebook_size"], r["code_dim"]) for r in rows] == [(8, 4), (16, 4)]
    assert all(1 <= r["used_codes_bottom"] <= r["codebook_size"] and r["mse"] > 0 for r in rows)
    with open(out / "sweep.csv", newline="") as handle:
        assert [(r["codebook_size"], r["code_dim"]) for r in csv.DictReader(handle)] == [("8", "4"), ("16", "4")]
    assert (out / "K8_D4" / "vqvae.safetensors").is_file() and (out / "K16_D4" / "codes.h5").is_file()

    # an interrupted configuration: trained up to its checkpoint, neither the model nor the row written
    (out / "K16_D4" / "sweep_row.json").unlink()
    (out / "K16_D4" / "vqvae.safetensors").unlink()
    calls = []
    original = sweep.train_vqvae
    monkeypatch.setattr(sweep, "train_vqvae", lambda *a, **k: calls.append((Path(a[1]).name, k["resume"])) or original(*a, **k))
    code, stdout, stderr = run_cli(capsys, *args)
    assert code == 0, stderr
    assert calls == [("K16_D4", True)]  # K8_D4 skipped, K16_D4 resumed from its checkpoint
    assert "K=8, D=4: finished earlier, skipped" in stderr
    assert [(r["codebook_size"], r["code_dim"]) for r in json.loads(stdout)["rows"]] == [(8, 4), (16, 4)]

    code, _, stderr = run_cli(capsys, *[a if a != "1" or args[i - 1] != "--epochs" else "2" for i, a in enumerate(args)])
    assert code == 1 and "other options (epochs differ)" in stderr
