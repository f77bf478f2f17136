"""Scores from a classifier that learned nothing are said to be so, not reported as results: constant predictions
(score cas) and features of rank 0 (score fid --features classifier); --strict refuses them."""

import json
from dataclasses import replace

import numpy as np
import pytest

from skinaug.cli import main
from skinaug.errors import SkinaugError
from skinaug.scores import cas, fid
from skinaug.scores.classifier import constant_predictions
from skinaug.scores.options import ScoreOptions

TINY_CAS = ["--arch", "resnet10", "--image-size", "32", "--steps", "1", "--batch-size", "4", "--device", "cpu"]


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_constant_predictions_are_told_from_predictions_that_rank_images():
    assert constant_predictions(np.tile([[0.3, 0.7]], (6, 1)))
    assert constant_predictions(np.tile([[0.3, 0.7]], (6, 1)) + np.linspace(0, 2e-5, 6)[:, None])
    assert not constant_predictions(np.array([[0.3, 0.7], [0.31, 0.69], [0.3, 0.7]]))
    assert not constant_predictions(np.array([[0.3, 0.7]]))  # one image ranks nothing either way


def test_feature_rank_counts_the_directions_features_spread_along():
    rng = np.random.default_rng(0)
    offset = rng.normal(size=16) * 10
    assert fid.feature_rank(np.tile(offset, (40, 1))) == 0
    assert fid.feature_rank(np.tile(offset, (40, 1)) + 1e-9 * rng.normal(size=(40, 16))) == 0
    plane = rng.normal(size=(40, 2)) @ rng.normal(size=(2, 16)) + offset
    assert fid.feature_rank(plane) == 2
    assert fid.feature_rank(rng.normal(size=(10, 64))) == 9  # n images span at most n - 1 directions once centred


def constant_probabilities(model, images, device, batch_size=128):
    return np.tile([0.25, 0.75], (len(images), 1))


def test_cas_says_when_its_classifier_gives_every_test_image_one_score_and_strict_refuses(tiny_dataset, tmp_path,
                                                                                          capsys, monkeypatch):
    monkeypatch.setattr(cas, "predict", constant_probabilities)
    args = ["score", "cas", "--real", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--train", "real",
            "--positive", "melanoma", "--negative", "nevus", "--test-fraction", "0.5", *TINY_CAS]
    code, stdout, stderr = run_cli(capsys, *args, "--json")
    assert code == 0, stderr
    (entry,) = json.loads(stdout)["sets"]
    assert entry["aucs"] == [0.5] and entry["degenerate_seeds"] == [0]
    assert "degenerate classifier" in stderr and "measures nothing" in stderr
    code, stdout, stderr = run_cli(capsys, *args)
    assert code == 0 and "constant scores: no result" in stderr  # the table says it too
    code, stdout, stderr = run_cli(capsys, *args, "--strict", "--out", tmp_path / "cas")
    assert code == 1 and stdout == "" and "degenerate classifier" in stderr and "--strict" in stderr
    assert not (tmp_path / "cas").exists()


def test_a_classifier_that_ranks_images_is_no_degenerate_one(tiny_dataset, capsys, monkeypatch):
    monkeypatch.setattr(cas, "predict", lambda model, images, device, batch_size=128: np.stack(
        [np.linspace(0.2, 0.8, len(images)), np.linspace(0.8, 0.2, len(images))], axis=1))
    code, stdout, stderr = run_cli(capsys, "score", "cas", "--real", tiny_dataset.images, "--labels", tiny_dataset.labels_csv,
                                   "--train", "real", "--positive", "melanoma", "--negative", "nevus", "--test-fraction",
                                   "0.5", "--json", *TINY_CAS)
    assert code == 0 and json.loads(stdout)["sets"][0]["degenerate_seeds"] == []
    assert "degenerate" not in stderr


def test_fid_says_when_every_image_has_the_same_features_and_strict_refuses(tiny_dataset, monkeypatch, capsys):
    constant = np.tile(np.arange(1.0, 9.0), (12, 1))
    monkeypatch.setattr(fid, "classifier_feature_pair", lambda *args: (constant, constant.copy()))
    run = ScoreOptions(real_labels=tiny_dataset.labels_csv, device="cpu")
    options = dict(features="classifier", image_size=16)
    result = fid.compute_fid(tiny_dataset.images, tiny_dataset.images, options=run, **options)
    assert result["feature_rank"] == 0 and result["precision"] == 1.0  # what used to be reported as a result
    assert "all 24 images have the same features" in result["degenerate"]
    assert "degenerate classifier features" in capsys.readouterr().err
    with pytest.raises(SkinaugError, match=r"degenerate classifier features.*strict=True refuses"):
        fid.compute_fid(tiny_dataset.images, tiny_dataset.images, options=replace(run, strict=True), **options)
    rng = np.random.default_rng(1)
    varied = rng.normal(size=(12, 8))
    monkeypatch.setattr(fid, "classifier_feature_pair", lambda *args: (varied, varied + 0.1))
    result = fid.compute_fid(tiny_dataset.images, tiny_dataset.images, options=replace(run, strict=True), **options)
    assert result["degenerate"] is None and result["feature_rank"] == 8


def test_benefit_says_when_a_classifier_gives_every_test_image_one_score(tmp_path, capsys):
    from skinaug.studies.benefit import classifier_run, save_array

    constant, ranking = tmp_path / "constant.npy", tmp_path / "ranking.npy"
    save_array(constant, np.full((5, 2), 0.5))
    save_array(ranking, np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5], [0.1, 0.9]]))
    capsys.readouterr()
    for path in (constant, ranking):  # a stored run is read back, not trained again
        classifier_run(path, None, None, 2, None, 3, "cpu", None, None, "the classic arm")
    err = capsys.readouterr().err
    assert err.count("degenerate classifier") == 1 and "the classic arm (seed 3)" in err
