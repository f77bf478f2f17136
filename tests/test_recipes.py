"""skinaug.recipes: generated images added without taking exposure from the real ones (the sampler), weighted lower
(the weights), or for pretraining only (the schedule); and `score benefit --recipe`, which trains through them."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import skinaug
from skinaug.errors import SkinaugError, UsageError
from skinaug.recipes import ExposureSampler, PretrainSchedule, Recipe, sample_weights, train_with_recipe, weighted_loss
from skinaug.scores import classifier
from skinaug.scores.classifier import Budget, balanced_batches

# 7 real images (2 classes) and 5 generated ones, interleaved as a ConcatDataset of several folders would not be
METHODS = ["original", "synthesize", "original", "original", "classic", "original", "mix", "original", "original",
           "synthesize", "resample", "original"]
LABELS = np.array([0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0])
REAL = [i for i, m in enumerate(METHODS) if m == "original"]


def real_part(batch) -> list[int]:
    return [i for i in batch if METHODS[i] == "original"]


def generated_part(batch) -> list[int]:
    return [i for i in batch if METHODS[i] != "original"]


@pytest.mark.parametrize("share", [dict(synthetic_per_batch=2), dict(synthetic_fraction=0.5)])
def test_every_real_image_is_seen_once_per_epoch_in_the_real_only_runs_order(share):
    sampler = ExposureSampler(METHODS, batch_size=3, seed=4, **share)
    real_only = ExposureSampler(["original"] * len(REAL), batch_size=3, seed=4)  # the same run without generated images
    for epoch in range(3):
        batches = list(sampler)  # each iteration is the next epoch
        assert Counter(i for b in batches for i in real_part(b)) == Counter(REAL)  # each real image exactly once
        assert [real_part(b) for b in batches] == [[REAL[i] for i in b] for b in real_only.batches(epoch)]
        wanted = [2, 2, 2] if "synthetic_per_batch" in share else [3, 3, 1]  # half of each batch: as many as its real
        assert [len(generated_part(b)) for b in batches] == wanted
    assert [len(b) for b in sampler.batches(0)] == [len(b) for b in sampler.batches(5)] and len(sampler) == 3
    as_lists = lambda batches: [b.tolist() for b in batches]  # noqa: E731
    assert as_lists(sampler.batches(1)) != as_lists(sampler.batches(2))  # reshuffled each epoch, seeded: the same again
    assert as_lists(sampler.batches(1)) == as_lists(ExposureSampler(METHODS, batch_size=3, seed=4, **share).batches(1))


def test_generated_images_are_used_evenly_and_classic_copies_count_as_generated():
    sampler = ExposureSampler(METHODS, batch_size=7, synthetic_per_batch=10, seed=0)
    (batch,) = sampler.batches(0)
    assert Counter(generated_part(batch)) == {i: 2 for i in (1, 4, 6, 9, 10)}  # 10 draws of 5 images: each twice
    assert skinaug.is_real("original") and skinaug.is_real("real") and not skinaug.is_real("classic")


def test_a_balanced_sampler_repeats_the_real_arms_class_balanced_draws():
    sampler = ExposureSampler(METHODS, LABELS, batch_size=4, synthetic_per_batch=3, balance=True, steps_per_epoch=5, seed=7)
    arm = balanced_batches(LABELS[REAL], 10, 4, 7)  # score benefit's real arm over 10 steps: two of these epochs
    for epoch in (0, 1):
        batches = sampler.batches(epoch)
        assert [real_part(b) for b in batches] == [[REAL[i] for i in b] for b in arm[5 * epoch: 5 * epoch + 5]]
        assert all(len(generated_part(b)) == 3 for b in batches) and len(batches) == len(sampler) == 5


def test_the_final_real_only_phase_has_no_generated_image():
    sampler = ExposureSampler(METHODS, batch_size=3, synthetic_per_batch=2, epochs=5, real_only_epochs=2, seed=1)
    seen = [[i for b in sampler.batches(epoch) for i in generated_part(b)] for epoch in range(5)]
    assert [len(s) for s in seen] == [6, 6, 6, 0, 0]
    assert sorted(i for b in sampler.batches(4) for i in b) == REAL


@pytest.mark.parametrize("options, message", [
    (dict(synthetic_per_batch=1, synthetic_fraction=0.5), "not both"),
    (dict(synthetic_fraction=1.0), "in [0, 1)"),
    (dict(real_only_epochs=2), "needs epochs"),
    (dict(balance=True), "needs the items' labels"),
    (dict(steps_per_epoch=3), "goes with balance=True"),
])
def test_sampler_options_that_contradict_each_other_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        ExposureSampler(METHODS, batch_size=3, **options)


def test_the_sampler_reads_real_and_generated_from_the_datasets_method_column(tiny_dataset, tmp_path):
    generated = tmp_path / "generated"
    (generated / "images").mkdir(parents=True)
    rows = ["image,label,method,source_top,source_bottom"]
    for i, method in enumerate(["original", "classic", "synthesize"]):
        Image.new("RGB", (48, 40), (10 * i, 0, 0)).save(generated / "images" / f"g{i}.png")
        rows.append(f"g{i},melanoma,{method},,")
    (generated / "labels.csv").write_text("\n".join(rows) + "\n")
    real = skinaug.GeneratedDataset(tiny_dataset.images, tiny_dataset.labels_csv, image_size=16)
    data = torch.utils.data.ConcatDataset([real, skinaug.GeneratedDataset(generated, image_size=16)])
    sampler = ExposureSampler.for_dataset(data, batch_size=13, synthetic_per_batch=4, seed=0)
    assert sampler.real_indices.tolist() == list(range(13)) and sampler.synthetic_indices.tolist() == [13, 14]
    loader = torch.utils.data.DataLoader(skinaug.WithIndex(data), batch_sampler=sampler)
    ((images, labels, index),) = list(loader)
    assert images.shape == (17, 3, 16, 16) and sorted(index.tolist()) == [*range(13), 13, 13, 14, 14]
    weights = sample_weights(data, {"classic": 0.75}, default=0.25)  # (binary fractions: exact in float32)
    assert weights.tolist() == [1.0] * 13 + [0.75, 0.25]


def test_the_weighted_loss_is_the_weighted_mean_of_the_cross_entropies():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 0, 1])
    weights = sample_weights(["original", "synthesize", "classic"], {"classic": 0.25})  # 1, 0.5 (the default), 0.25
    assert weights.tolist() == [1.0, 0.5, 0.25]
    ce = [np.log(1 + np.exp(-2.0)), np.log(1 + np.exp(1.0)), np.log(2.0)]  # -log softmax of each target
    expected = (1.0 * ce[0] + 0.5 * ce[1] + 0.25 * ce[2]) / 1.75
    assert weighted_loss(logits, targets, weights).item() == pytest.approx(expected, rel=1e-6)
    assert weighted_loss(logits, targets, torch.ones(3)).item() == pytest.approx(np.mean(ce), rel=1e-6)


def test_the_pretrain_schedule_uses_generated_images_then_real_ones():
    schedule = PretrainSchedule(tuple(METHODS), pretrain_epochs=2, finetune_epochs=3)
    assert schedule.epochs == 5 and [schedule.phase(e) for e in range(5)] == ["pretrain"] * 2 + ["finetune"] * 3
    assert [schedule.starts_phase(e) for e in range(5)] == [True, False, True, False, False]
    assert schedule.indices(1).tolist() == [1, 4, 6, 9, 10] and schedule.indices(2).tolist() == REAL
    with pytest.raises(UsageError, match="outside the schedule"):
        schedule.phase(5)
    with pytest.raises(SkinaugError, match="pretraining needs generated items"):
        PretrainSchedule(("original",), 1, 1)


@pytest.fixture
def recorded_runs(monkeypatch):
    """Each train_classifier call's batches and step function, recorded instead of trained."""
    calls = []
    monkeypatch.setattr(classifier, "fit", lambda state, step, batches, **kwargs: calls.append((batches(0), step)))
    return calls


def test_benefits_exposure_recipe_keeps_each_real_images_steps_and_weights_the_added_ones(recorded_runs, monkeypatch):
    from skinaug import recipes

    images = np.zeros((12, 16, 16, 3), np.uint8)
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 0, 1, 1, 0, 1])  # 6 real, then 6 added
    budget = Budget(arch="resnet10", image_size=16, batch_size=4, steps=6)
    train_with_recipe(Recipe(), images[:6], labels[:6], 6, 2, budget, seed=3, device=torch.device("cpu"))
    train_with_recipe(Recipe("exposure", 0.25, 2), images, labels, 6, 2, budget, seed=3, device=torch.device("cpu"))
    (real_arm, _), (exposure, step) = recorded_runs
    assert [b[b < 6].tolist() for b in exposure] == [b.tolist() for b in real_arm]  # the same real images, step by step
    assert [int((b >= 6).sum()) for b in exposure] == [2] * 6

    weights, plain_loss = [], recipes.weighted_loss
    monkeypatch.setattr(recipes, "weighted_loss", lambda logits, targets, w: weights.append(w) or plain_loss(logits, targets, w))
    step(exposure[0], 0)
    assert weights[0].tolist() == [1.0] * 4 + [0.25] * 2  # real 1, added --synthetic-weight


def test_benefits_pretrain_recipe_pretrains_on_the_added_images_then_repeats_the_real_arm(recorded_runs, monkeypatch):
    from skinaug import recipes

    images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((10, 8, 8, 3), np.uint8)  # image i is all i
    labels = np.array([0, 1, 0, 1, 0, 1, 1, 0, 0, 1])  # 5 real, then 5 added
    budget = Budget(arch="resnet10", image_size=8, batch_size=4, steps=3)
    train_with_recipe(Recipe(), images[:5], labels[:5], 5, 2, budget, seed=1, device=torch.device("cpu"))
    trained, plain = [], recipes.train_classifier
    monkeypatch.setattr(recipes, "train_classifier", lambda images, *args, **kwargs: trained.append(
        (images[:, 0, 0, 0].tolist(), kwargs.get("init"), plain(images, *args, **kwargs))) or trained[-1][2])
    train_with_recipe(Recipe("pretrain"), images, labels, 5, 2, budget, seed=1, device=torch.device("cpu"))
    (real_arm, _), (pretrain, _), (finetune, _) = recorded_runs
    (pretrain_images, no_start, pretrained), (finetune_images, start, _) = trained
    assert pretrain_images == [5, 6, 7, 8, 9] and no_start is None and len(pretrain) == 3  # the added images alone
    assert finetune_images == [0, 1, 2, 3, 4] and start is pretrained  # then the real ones, from the pretrained network
    assert [b.tolist() for b in finetune] == [b.tolist() for b in real_arm]  # in the real arm's batches


def test_the_recipe_pieces_are_exported_from_the_package():
    assert skinaug.ExposureSampler is ExposureSampler and skinaug.PretrainSchedule is PretrainSchedule
    assert skinaug.weighted_loss is weighted_loss and skinaug.sample_weights is sample_weights


# ------------------------------------------------------------------------- score benefit --recipe


def benefit_cli(capsys, data: Path, out: Path, *extra):
    from test_scores import run_cli

    return run_cli(capsys, "score", "benefit", data / "images", "--labels", data / "labels.csv", "--out", out,
                   "--methods", "classic", "--fractions", "1", "--seeds", "2", "--test-fraction", "0.5", "--epochs", "1",
                   "--arch", "resnet10", "--image-size", "32", "--batch-size", "4", "--bootstrap", "20", "--device", "cpu",
                   *extra)


def test_benefit_with_the_exposure_recipe_runs_records_it_and_reports_the_mde(tmp_path, capsys, monkeypatch):
    from test_benefit import make_lesion_data

    data = make_lesion_data(tmp_path / "data")
    batch_sizes, plain_fit = [], classifier.fit
    monkeypatch.setattr(classifier, "fit", lambda state, step, batches, **kwargs: batch_sizes.append(
        {len(b) for b in batches(0)}) or plain_fit(state, step, batches, **kwargs))
    code, stdout, stderr = benefit_cli(capsys, data, tmp_path / "b", "--recipe", "exposure", "--synthetic-weight", "0.25",
                                       "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    recipe = {"name": "exposure", "synthetic_weight": 0.25, "synthetic_per_batch": 4}  # --ratio 1 x batch 4
    assert summary["train_recipe"] == recipe
    assert json.loads((tmp_path / "b" / "benefit_plan.json").read_text())["train_recipe"] == recipe
    assert batch_sizes == [{4}, {4}, {8}, {8}]  # the real arm (2 seeds), then classic: 4 real + 4 copies per batch
    real, classic = summary["rows"]
    assert classic["method"] == "classic" and "mde" not in real["pair"]
    for key in ("pair", "macro"):
        gains = [m - r for m, r in zip(classic[key]["aucs"], real[key]["aucs"])]
        assert classic[key]["mde"] is not None and classic[key]["mde"] > 2.8 * np.std(gains, ddof=1) / np.sqrt(2) - 1e-12
    assert "MDE macro" in stderr and f"{classic['macro']['mde']:.3f}" in stderr and "recipe exposure" in stderr

    code, _, stderr = benefit_cli(capsys, data, tmp_path / "b", "--recipe", "exposure", "--resume", "--quiet")
    assert code == 1 and "started with other options or data (train_recipe)" in stderr  # weight 0.5 now


def test_the_add_recipe_leaves_the_plan_of_earlier_runs_unchanged():
    from skinaug.studies.benefit import BenefitOptions

    plan = BenefitOptions(train_recipe="add").plan()
    assert plan == BenefitOptions().plan() and "train_recipe" not in plan and "synthetic_weight" not in plan
    assert BenefitOptions(train_recipe="pretrain").plan()["train_recipe"] == {"name": "pretrain", "synthetic_weight": None,
                                                                             "synthetic_per_batch": None}


@pytest.mark.parametrize("args, message", [
    (["--recipe", "mixup"], "--recipe takes add, exposure, pretrain"),
    (["--synthetic-weight", "0.5"], "--synthetic-weight is the loss weight of --recipe exposure"),
    (["--recipe", "exposure", "--synthetic-weight", "0"], "--synthetic-weight must be a positive number"),
])
def test_benefit_recipe_usage_errors_are_one_line_exit_2(tiny_dataset, tmp_path, capsys, args, message):
    from test_scores import run_cli

    code, _, stderr = run_cli(capsys, "score", "benefit", tiny_dataset.images, "--labels", tiny_dataset.labels_csv,
                              "--out", tmp_path / "b", *args)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
