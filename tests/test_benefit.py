"""`score benefit`: the leak-free protocol end to end on tiny data (split, generator on the train side only,
added sets with the same share per class, classifiers, AUCs, bootstrap), resumable; and its pieces exactly."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinaug.errors import SkinaugError, UsageError
from skinaug.studies.benefit import (BenefitOptions, GeneratorRecipe, aucs, bootstrap_gain, classic_copies, real_share,
                                    run_benefit, split_for_benefit)
from skinaug.scores.classifier import Budget
from skinaug.storage.trained_on import read_record
from test_scores import mann_whitney_auc, run_cli

CLASSES = ("bkl", "melanoma", "nevus")


def make_lesion_data(root: Path) -> Path:
    """24 solid-colour 32x32 images: three classes of four lesions, two images per lesion."""
    images = root / "images"
    images.mkdir(parents=True)
    rows = ["image,label,lesion_id"]
    for i in range(24):
        label = CLASSES[i // 8]
        colour = tuple(int(v) for v in np.roll([210 - 6 * i, 50 + 4 * i, 40], i // 8))
        Image.new("RGB", (32, 32), colour).save(images / f"im_{i:02d}.png")
        rows.append(f"im_{i:02d},{label},les_{i // 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


TINY_RECIPE = GeneratorRecipe(image_size=32, vqvae_epochs=1, top_epochs=1, bottom_epochs=1, batch_size=4, prior_batch_size=4,
                              vqvae=dict(channels=16, res_channels=8, n_res_blocks=1, codebook_size=16, code_dim=4),
                              prior=dict(channels=16, n_blocks=1, n_res_blocks=1, kernel_size=3))


def tiny_options(**changes) -> BenefitOptions:
    options = BenefitOptions(fractions=[0.5, 1.0], seeds=2, test_fraction=0.5, epochs=1, bootstrap=20, device="cpu",
                             budget=Budget(arch="resnet10", image_size=32, batch_size=4), generation_batch_size=8,
                             recipe=TINY_RECIPE)
    for key, value in changes.items():
        setattr(options, key, value)
    return options


def test_the_split_and_the_shares_keep_lesions_whole():
    from skinaug.data.scan import Sample

    samples = [Sample(Path(f"{i}.png"), f"im_{i}", i // 8, f"les_{i // 2}") for i in range(24)]
    train, test = split_for_benefit(samples, 0.5, seed=0)
    lesions = lambda side: {s.group for s in side}  # noqa: E731
    assert not lesions(train) & lesions(test) and len(train) + len(test) == 24
    assert {s.label for s in train} == {s.label for s in test} == {0, 1, 2}
    share = real_share(train, 0.5, seed=0)
    assert set(s.name for s in share) < set(s.name for s in train) and {s.label for s in share} == {0, 1, 2}
    for s in share:  # a lesion is in the share whole
        assert all(t in share for t in train if t.group == s.group)
    assert real_share(train, 1.0, seed=0) == train


def test_the_pair_auc_is_the_two_class_mann_whitney_auc_of_the_pair_ratio():
    probabilities = np.array([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4], [0.6, 0.1, 0.3]])
    labels = np.array([1, 2, 1, 2, 0])
    result = aucs(probabilities, labels, (1, 2))
    ratio = probabilities[:4, 1] / (probabilities[:4, 1] + probabilities[:4, 2])
    assert result["pair"] == pytest.approx(mann_whitney_auc(labels[:4] == 1, ratio), abs=1e-12) == 1.0
    expected = np.mean([mann_whitney_auc(labels == c, probabilities[:, c]) for c in range(3)])
    assert result["macro"] == pytest.approx(expected, abs=1e-12)


def test_the_bootstrap_interval_of_equal_sets_is_zero_and_holds_the_gain():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    real = [rng.random((40, 2)) for _ in range(2)]
    groups = [f"g{i // 2}" for i in range(40)]
    assert bootstrap_gain(real, real, labels, groups, (1, 0), 50, seed=0) == {"macro": [0.0, 0.0], "pair": [0.0, 0.0]}
    better = [np.column_stack([1 - labels * 0.5 - 0.2 * p[:, 0], labels * 0.5 + 0.2 * p[:, 0]]) for p in real]
    interval = bootstrap_gain(better, real, labels, groups, (1, 0), 200, seed=0)
    gain = np.mean([aucs(b, labels, (1, 0))["pair"] for b in better]) - np.mean([aucs(r, labels, (1, 0))["pair"] for r in real])
    assert interval["pair"][0] <= gain <= interval["pair"][1] and interval["pair"][0] > 0


def test_classic_copies_keep_labels_shape_and_the_share_per_class():
    images = np.stack([np.full((16, 16, 3), 10 * i, np.uint8) for i in range(6)])
    labels = np.array([0, 0, 0, 0, 1, 1])
    copies, copy_labels = classic_copies(images, labels, 1.5, seed=3)
    assert copies.shape == (9, 16, 16, 3) and copies.dtype == np.uint8
    assert np.bincount(copy_labels).tolist() == [6, 3]  # 1.5 x each class
    again, _ = classic_copies(images, labels, 1.5, seed=3)
    assert np.array_equal(copies, again)  # seeded


def test_benefit_runs_end_to_end_leak_free_and_resumes(tmp_path, capsys):
    data = make_lesion_data(tmp_path / "data")
    out = tmp_path / "benefit"
    summary = run_benefit(data / "images", data / "labels.csv", out, tiny_options())
    test_names = {row["image"] for row in csv.DictReader(open(out / "test.csv"))}
    train_names = {row["image"] for row in csv.DictReader(open(out / "train.csv"))}
    assert len(test_names) + len(train_names) == 24 and not test_names & train_names

    # the generator saw the train side only
    record = read_record(out / "generator")
    assert record.seen(sorted(test_names), []) == ([], []) and len(record.image_hashes) == len(train_names)

    assert summary["pair"] == ["melanoma", "nevus"] and summary["test_images"] == len(test_names)
    rows = {(row["fraction"], row["method"]): row for row in summary["rows"]}
    assert set(rows) == {(f, m) for f in (0.5, 1.0) for m in ("real", "classic", "mix", "resample", "synthesize")}
    for (fraction, method), row in rows.items():
        share = rows[(fraction, "real")]["real_images"]
        assert row["real_images"] == share and row["added_images"] == (0 if method == "real" else share)  # ratio 1
        if method != "real":
            assert set(row["added_share_per_class"].values()) == {0.5}  # the same generated share in every class
            assert row["pair"]["gain"] == pytest.approx(row["pair"]["mean"] - rows[(fraction, "real")]["pair"]["mean"])
        assert len(row["macro"]["aucs"]) == 2 and all(0 <= a <= 1 for a in row["macro"]["aucs"])
    # every generated image comes from the fraction's real images, never from a test image
    for method in ("mix", "resample"):
        share_names = {row["image"] for row in csv.DictReader(open(out / "fraction_0.5" / "real.csv"))}
        generated = list(csv.DictReader(open(out / "fraction_0.5" / method / "labels.csv")))
        sources = {row[c] for row in generated for c in ("source_top", "source_bottom")}
        assert sources <= share_names and not sources & test_names
    # the probabilities behind the reported AUCs
    probabilities = np.load(out / "fraction_1" / "classifiers" / "mix_seed1.npy")
    test_rows = list(csv.DictReader(open(out / "test.csv")))
    labels = np.array([summary["classes"].index(row["label"]) for row in test_rows])
    assert probabilities.shape == (len(test_rows), 3)
    assert aucs(probabilities, labels, (1, 2))["pair"] == rows[(1.0, "mix")]["pair"]["aucs"][1]
    assert Image.open(out / "benefit.png").size[0] > 400
    assert json.loads((out / "benefit.json").read_text())["rows"] == summary["rows"]

    # a resumed run reuses every piece: no classifier is trained again, the same table comes back
    (out / "benefit.json").unlink()
    stamp = (out / "fraction_1" / "classifiers" / "mix_seed1.npy").stat().st_mtime_ns
    again = run_benefit(data / "images", data / "labels.csv", out, tiny_options(), resume=True)
    assert again["rows"] == summary["rows"]
    assert (out / "fraction_1" / "classifiers" / "mix_seed1.npy").stat().st_mtime_ns == stamp
    with pytest.raises(SkinaugError, match="started with other options"):
        run_benefit(data / "images", data / "labels.csv", out, tiny_options(ratio=2.0), resume=True)
    with pytest.raises(SkinaugError, match="already exists"):
        run_benefit(data / "images", data / "labels.csv", out, tiny_options())

    # the CLI with --model (the generator trained above is clean for this split) and --filter
    code, stdout, stderr = run_cli(capsys, "score", "benefit", data / "images", "--labels", data / "labels.csv", "--out",
                                   tmp_path / "with_model", "--model", out / "generator", "--fractions", "1", "--methods",
                                   "synthesize", "--seeds", "1", "--test-fraction", "0.5", "--epochs", "1", "--arch", "resnet10",
                                   "--image-size", "32", "--batch-size", "4", "--bootstrap", "0", "--filter", "0.5",
                                   "--device", "cpu", "--json", "--quiet")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert [r["method"] for r in result["rows"]] == ["real", "synthesize"] and result["rows"][1]["pair"]["gain_interval"] is None
    row, real = result["rows"][1], result["rows"][0]["real_images"]
    assert row["added_images"] == real and set(row["added_share_per_class"].values()) == {0.5}  # filled up to the share
    assert sum(c["candidates"] for c in row["filter"]["per_class"].values()) == 2 * real  # --oversample 2
    filtered = list(csv.DictReader(open(tmp_path / "with_model" / "fraction_1" / "synthesize" / "filtered.csv")))
    assert len(filtered) == 2 * real and sum(r["kept"] == "1" for r in filtered) == real


def test_benefit_refuses_a_generator_that_saw_the_test_side(generator_model, tmp_path, capsys):
    data = generator_model["data"]
    code, _, stderr = run_cli(capsys, "score", "benefit", data.images, "--labels", data.labels_csv, "--out", tmp_path / "b",
                              "--model", generator_model["model"], "--test-fraction", "0.5", "--device", "cpu", "--quiet")
    assert code == 1 and "was trained on" in stderr and "test images" in stderr


@pytest.mark.parametrize("args, message", [
    (["--fractions", "0,1"], "--fractions takes shares in (0, 1]"),
    (["--fractions", "a"], "--fractions takes comma-separated shares"),
    (["--methods", "mix,gan"], "--methods takes classic, mix, resample, synthesize"),
    (["--positive", "melanoma"], "give --positive and --negative together"),
    (["--generator-epochs", "3,3"], "--generator-epochs takes three positive integers"),
])
def test_benefit_usage_errors_are_one_line_exit_2(tiny_dataset, tmp_path, capsys, args, message):
    code, _, stderr = run_cli(capsys, "score", "benefit", tiny_dataset.images, "--labels", tiny_dataset.labels_csv,
                              "--out", tmp_path / "b", *args)
    assert code == 2 and message in stderr
    assert not (tmp_path / "b").exists()


def benefit_with_baseline(capsys, data: Path, out: Path, model: Path, *extra):
    return run_cli(capsys, "score", "benefit", data / "images", "--labels", data / "labels.csv", "--out", out,
                   "--model", model, "--fractions", "1", "--seeds", "1", "--test-fraction", "0.5", "--epochs", "1",
                   "--arch", "resnet10", "--image-size", "32", "--batch-size", "4", "--bootstrap", "0", "--device", "cpu",
                   "--json", "--quiet", *extra)


def test_benefit_with_a_baseline_generator_synthesizes_the_same_share_and_refuses_codes(tmp_path, capsys):
    from skinaug.cli import main
    from skinaug.data.scan import scan_dataset

    data = make_lesion_data(tmp_path / "data")
    train, _ = split_for_benefit(scan_dataset(data / "images", data / "labels.csv").samples, 0.5, seed=0)
    (tmp_path / "train.csv").write_text("image,label,lesion_id\n" + "".join(
        f"{s.name},{CLASSES[s.label]},{s.group}\n" for s in train))
    tiny = ["--arch", "cvae", "--image-size", "32", "--widths", "8,16", "--latent-dim", "8", "--hidden", "16",
            "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--quiet"]
    for name, labels in (("clean", tmp_path / "train.csv"), ("leaky", data / "labels.csv")):
        assert main(["train", "baseline", str(data / "images"), "--labels", str(labels), "--out", str(tmp_path / name),
                     *tiny]) == 0
    capsys.readouterr()
    code, stdout, stderr = benefit_with_baseline(capsys, data, tmp_path / "b", tmp_path / "clean", "--methods",
                                                 "classic,synthesize")
    assert code == 0, stderr
    rows = {row["method"]: row for row in json.loads(stdout)["rows"]}
    real = rows["real"]["real_images"]
    assert list(rows) == ["real", "classic", "synthesize"] and real == len(train)
    assert rows["synthesize"]["added_images"] == real and set(rows["synthesize"]["added_share_per_class"].values()) == {0.5}
    made = tmp_path / "b" / "fraction_1" / "synthesize"
    run = json.loads((made / "run.json").read_text())
    assert run["model_kind"] == "baseline" and run["arch"] == "cvae" and not (made / "codes.h5").exists()
    generated = [row["label"] for row in csv.DictReader(open(made / "labels.csv"))]
    assert sorted(generated) == sorted(CLASSES[s.label] for s in train)  # as many of each class as the real share
    assert read_record(made).seen([s.name for s in train], [])[0]  # the set carries the generator's record

    code, _, stderr = benefit_with_baseline(capsys, data, tmp_path / "m", tmp_path / "clean", "--methods", "mix")
    assert code == 2 and "cvae baseline generator, which has no codes; these need a VQ-VAE-2 model: mix." in stderr
    code, _, stderr = benefit_with_baseline(capsys, data, tmp_path / "l", tmp_path / "leaky", "--methods", "synthesize")
    assert code == 1 and "was trained on" in stderr and "test images" in stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "l" / "fraction_1").exists()


def test_the_filter_keeps_passing_candidates_in_order_and_fills_a_class_up_with_the_best(tmp_path):
    from skinaug.studies.benefit import filter_generated

    images = np.arange(8)[:, None, None, None] * np.ones((8, 2, 2, 3), np.uint8)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    judge = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.95, 0.05],  # class 0: 0, 2 and 3 pass 0.6
                      [0.5, 0.5], [0.6, 0.4], [0.45, 0.55], [0.1, 0.9]])  # class 1: only 7 passes
    names = [f"g{i}" for i in range(8)]
    kept, kept_labels, counts = filter_generated(images, labels, names, judge, {0: 2, 1: 2}, 0.6, tmp_path, ["a", "b"])
    assert kept[:, 0, 0, 0].tolist() == [0, 2, 6, 7]  # class 0: the first two passing; class 1: 7, then the best other (6)
    assert kept_labels.tolist() == [0, 0, 1, 1]
    assert counts == {"a": {"candidates": 4, "passed": 3, "kept": 2}, "b": {"candidates": 4, "passed": 1, "kept": 2}}
    rows = list(csv.DictReader(open(tmp_path / "filtered.csv")))
    assert [r["kept"] for r in rows] == ["1", "0", "1", "0", "0", "0", "1", "1"]
    assert float(rows[6]["p_label"]) == 0.55 and rows[6]["passed"] == "0"
