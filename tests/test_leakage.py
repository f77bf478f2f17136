"""Leak-free scores: the record of which images trained a model, an external test set for `score cas`, and the
warning (or --strict refusal) when a generated set's generator saw a test image or test lesion."""

import json
import shutil

import numpy as np
import pytest

from conftest import TINY_VQVAE_ARGS
from skinaug.errors import SkinaugError
from skinaug.storage.trained_on import TRAINED_ON, TrainingRecord, hash_each, read_record
from test_scores import TINY_CAS, make_generated_set, run_cli


def test_a_record_keeps_sorted_unique_hashes_and_answers_membership_exactly():
    record = TrainingRecord.of(["b", "a", "b", ""], ["L1", "", "L1"], "vqvae")
    assert record.image_hashes.tolist() == sorted(hash_each(["a", "b"]).tolist())
    assert len(record.group_hashes) == 1
    loaded = TrainingRecord.from_json(json.loads(json.dumps(record.to_json())), "x")
    assert np.array_equal(loaded.image_hashes, record.image_hashes) and loaded.stages == ["vqvae"] and loaded.complete
    assert loaded.seen(["a", "c", "b", "a"], ["L1", "L2"]) == (["a", "b"], ["L1"])
    merged = loaded.merged(TrainingRecord(stages=["init:m"], complete=False))
    assert merged.stages == ["vqvae", "init:m"] and not merged.complete and len(merged.image_hashes) == 2
    # the first 8 bytes of SHA-256, big-endian: an independent computation of one hash
    import hashlib

    assert int(hash_each(["a"])[0]) == int(hashlib.sha256(b"a").hexdigest()[:16], 16)


@pytest.mark.parametrize("broken, message", [
    ({"format": 2}, "not a skinaug training record"),
    ({"image_hashes": "!!"}, "not base64"),
    ({"image_hashes": "AAAA"}, "not a whole number of 8-byte hashes"),
])
def test_a_damaged_record_is_one_clear_error(tmp_path, broken, message):
    (tmp_path / TRAINED_ON).write_text(json.dumps({**TrainingRecord.of(["a"], [], "vqvae").to_json(), **broken}))
    with pytest.raises(SkinaugError, match=message):
        read_record(tmp_path)


def test_every_training_stage_records_the_images_and_lesions_it_read(generator_model):
    record = read_record(generator_model["model"])
    data = generator_model["data"]
    assert record.stages == ["vqvae", "prior_top", "prior_bottom"] and record.complete
    assert len(record.image_hashes) == 12 and len(record.group_hashes) == 6  # validation images count: they chose the weights
    assert record.seen(data.names, data.lesions) == (data.names, sorted(set(data.lesions)))
    assert record.seen(["img_99"], ["lesion_9"]) == ([], [])
    assert (generator_model["model"] / TRAINED_ON).stat().st_size < 1024


def test_a_model_started_with_init_inherits_what_its_source_saw(generator_model, tiny_dataset, tmp_path, capsys):
    # new data: other names and lesions
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    rows = ["image,label,lesion_id"]
    for name, label, lesion in zip(tiny_dataset.names, tiny_dataset.labels, tiny_dataset.lesions):
        shutil.copyfile(tiny_dataset.images / f"{name}.png", renamed / f"new_{name}.png")
        rows.append(f"new_{name},{label},new_{lesion}")
    (renamed / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "tuned"
    code, _, stderr = run_cli(capsys, "train", "vqvae", renamed, "--labels", renamed / "labels.csv", "--init",
                              generator_model["model"], "--epochs", "0", "--out", out, "--device", "cpu", "--quiet")
    assert code == 0, stderr
    record = read_record(out)
    assert record.stages == ["init:model", "vqvae"] and record.complete
    assert record.seen(["img_00", "new_img_00"], ["lesion_0", "new_lesion_0"]) == (["img_00", "new_img_00"], ["lesion_0", "new_lesion_0"])

    # a source without a record: what it saw is unknown, and the record says so
    unknown = tmp_path / "unknown"
    shutil.copytree(generator_model["model"], unknown)
    (unknown / TRAINED_ON).unlink()
    code, _, stderr = run_cli(capsys, "train", "vqvae", renamed, "--labels", renamed / "labels.csv", "--init", unknown,
                              "--epochs", "0", "--out", tmp_path / "tuned2", "--device", "cpu", "--quiet")
    assert code == 0, stderr
    assert not read_record(tmp_path / "tuned2").complete


def test_a_generated_dataset_keeps_its_generators_record(generator_model, tmp_path, capsys):
    out = tmp_path / "synth"
    code, stdout, stderr = run_cli(capsys, "synthesize", "--model", generator_model["model"], "--out", out, "--per-class", "1",
                                   "--device", "cpu", "--quiet", "--json")
    assert code == 0, stderr
    assert (out / TRAINED_ON).read_bytes() == (generator_model["model"] / TRAINED_ON).read_bytes()
    assert json.loads((out / "run.json").read_text())["generator_trained_on"] == TRAINED_ON
    decoded = tmp_path / "decoded"  # the reconstruction set too: the VQ-VAE made its pixels
    assert run_cli(capsys, "decode", generator_model["codes"], "--model", generator_model["model"], "--out", decoded,
                   "--device", "cpu", "--quiet")[0] == 0
    assert (decoded / TRAINED_ON).read_bytes() == (generator_model["model"] / TRAINED_ON).read_bytes()


def make_test_set(folder, dataset, picks: dict[str, str]):
    """A test folder whose images copy tiny images: {new name: tiny name}; each its own lesion t_<name>."""
    folder.mkdir()
    label_of = dict(zip(dataset.names, dataset.labels))
    rows = ["image,label,lesion_id"]
    for new, old in picks.items():
        shutil.copyfile(dataset.images / f"{old}.png", folder / f"{new}.png")
        rows.append(f"{new},{label_of[old]},t_{new}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def cas_json(capsys, *args):
    code, stdout, stderr = run_cli(capsys, "score", "cas", *args, "--positive", "melanoma", "--negative", "nevus", "--json",
                                   *TINY_CAS)
    return code, (json.loads(stdout) if code == 0 else None), stderr


def test_an_external_test_set_leaves_all_real_images_for_training(tiny_dataset, tmp_path, capsys):
    test = make_test_set(tmp_path / "test", tiny_dataset, {"t_mel1": "img_04", "t_mel2": "img_05", "t_nev1": "img_08", "t_nev2": "img_10"})
    code, summary, stderr = cas_json(capsys, "--real", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--test", test,
                                     "--test-labels", test / "labels.csv", "--train", "real")
    assert code == 0, stderr
    assert summary["test"] == "external" and summary["test_images"] == 4
    assert summary["train_real_images"] == 8  # every melanoma and nevus of --real

    # a real image that is also a test image, or of a test lesion, cannot train: left out with a line, or refused
    overlapping = make_test_set(tmp_path / "overlap", tiny_dataset, {"img_04": "img_04", "t_nev": "img_08"})
    rows = (overlapping / "labels.csv").read_text().replace("t_t_nev", "lesion_5")  # img_10 and img_11 are lesion_5
    (overlapping / "labels.csv").write_text(rows)
    code, summary, stderr = cas_json(capsys, "--real", tiny_dataset.images, "--labels", tiny_dataset.labels_csv,
                                     "--test", overlapping, "--test-labels", overlapping / "labels.csv", "--train", "real")
    assert code == 0, stderr
    assert "left out 3 real training images that are test images or of test lesions" in stderr
    assert summary["train_real_images"] == 5
    code, _, stderr = cas_json(capsys, "--real", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--test", overlapping,
                               "--test-labels", overlapping / "labels.csv", "--train", "real", "--strict")
    assert code == 1 and "3 real training images are test images or of test lesions" in stderr


def test_test_labels_without_test_is_a_usage_error(tiny_dataset, capsys):
    code, _, stderr = cas_json(capsys, "--real", tiny_dataset.images, "--labels", tiny_dataset.labels_csv,
                               "--test-labels", tiny_dataset.labels_csv, "--train", "real")
    assert code == 2 and "--test-labels needs --test" in stderr


def test_a_generator_trained_on_the_test_images_is_caught(generator_model, tiny_dataset, tmp_path, capsys):
    # the generator trained on img_00..img_11; the test set holds two of them under their own names
    synth = tmp_path / "synth"
    assert run_cli(capsys, "synthesize", "--model", generator_model["model"], "--out", synth, "--per-class", "2",
                   "--device", "cpu", "--quiet")[0] == 0
    real = make_test_set(tmp_path / "real", tiny_dataset, {f"r{i}": n for i, n in enumerate(tiny_dataset.names[4:10])})
    test = make_test_set(tmp_path / "test", tiny_dataset, {"img_06": "img_06", "img_11": "img_11", "x_mel": "img_07"})
    args = ["--real", real, "--labels", real / "labels.csv", "--test", test, "--test-labels", test / "labels.csv",
            "--train", f"real,{synth}", "--mode", "add"]
    code, summary, stderr = cas_json(capsys, *args)
    assert code == 0, stderr
    assert "was trained on 2 of the 3 test images" in stderr
    assert summary["sets"][1]["generator_saw_test"] == {"images": 2, "lesions": 0}
    assert summary["sets"][0]["generator_saw_test"] == {"images": 0, "lesions": 0}
    code, _, stderr = cas_json(capsys, *args, "--strict")
    assert code == 1 and "--strict refuses it" in stderr.strip().splitlines()[-1]

    # the same lesions under other image names are caught too
    lesion_test = make_test_set(tmp_path / "lesion_test", tiny_dataset, {"y_mel": "img_06", "y_nev": "img_09"})
    (lesion_test / "labels.csv").write_text("image,label,lesion_id\ny_mel,melanoma,lesion_3\ny_nev,nevus,lesion_99\n")
    code, summary, stderr = cas_json(capsys, "--real", real, "--labels", real / "labels.csv", "--test", lesion_test,
                                     "--test-labels", lesion_test / "labels.csv", "--train", f"real,{synth}", "--mode", "add")
    assert code == 0, stderr
    assert summary["sets"][1]["generator_saw_test"] == {"images": 0, "lesions": 1}


def test_an_unknown_generator_is_flagged_and_a_clean_one_passes_strict(tiny_dataset, tmp_path, capsys):
    from skinaug.storage.fs import write_json

    test = make_test_set(tmp_path / "test", tiny_dataset, {"t_mel": "img_04", "t_nev": "img_08"})
    real = make_test_set(tmp_path / "real", tiny_dataset, {f"r{i}": n for i, n in enumerate(tiny_dataset.names[4:12]) if i not in (0, 4)})
    generated = make_generated_set(tmp_path / "mixed", tiny_dataset, [("img_05", "img_06"), ("img_09", "img_10")])
    csv_text = (generated / "labels.csv").read_text()  # its sources are the real set's images r1, r2, r5 and r6
    for tiny, real_name in (("img_05", "r1"), ("img_06", "r2"), ("img_09", "r5"), ("img_10", "r6")):
        csv_text = csv_text.replace(tiny, real_name)
    (generated / "labels.csv").write_text(csv_text)
    args = ["--real", real, "--labels", real / "labels.csv", "--test", test, "--test-labels", test / "labels.csv",
            "--train", f"real,{generated}", "--mode", "add"]
    code, summary, stderr = cas_json(capsys, *args)
    assert code == 0, stderr
    assert "has no trained_on.json" in stderr and summary["sets"][1]["generator_saw_test"] is None
    code, _, stderr = cas_json(capsys, *args, "--strict")
    assert code == 1 and "cannot tell whether its generator saw the test images" in stderr

    write_json(generated / TRAINED_ON, TrainingRecord.of([f"r{i}" for i in range(8)], ["t_r1"], "vqvae").to_json())
    code, summary, stderr = cas_json(capsys, *args, "--strict")
    assert code == 0, stderr
    assert summary["sets"][1]["generator_saw_test"] == {"images": 0, "lesions": 0}


def test_the_shipped_model_records_the_images_it_saw():
    from pathlib import Path

    from skinaug.storage.modeldir import resolve_model

    record = read_record(resolve_model())
    assert record.complete and record.stages == ["vqvae", "prior_top", "prior_bottom"]
    assert (len(record.image_hashes), len(record.group_hashes)) == (8031, 5990)
    labels = Path(__file__).resolve().parents[2] / "shared" / "data" / "ham10000-150" / "labels.csv"
    if not labels.is_file():
        pytest.skip(f"real data not available at {labels.parent}")
    import csv

    with open(labels, newline="") as handle:
        rows = list(csv.DictReader(handle))
    names, lesions = record.seen([r["image"] for r in rows], [r["lesion_id"] for r in rows])
    assert len(names) == len(rows) == 8031 and len(lesions) == 5990


def test_a_set_made_from_generated_images_cannot_be_traced_and_strict_refuses_it(tiny_dataset, tmp_path, capsys):
    test = make_test_set(tmp_path / "test", tiny_dataset, {"t_mel": "img_04", "t_nev": "img_08"})
    generated = make_generated_set(tmp_path / "chained", tiny_dataset, [("img_05", "img_06"), ("img_09", "img_10")])
    (generated / "labels.csv").write_text((generated / "labels.csv").read_text().replace("img_05", "gen_mix_17"))
    args = ["--real", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--test", test, "--test-labels",
            test / "labels.csv", "--train", f"real,{generated}", "--mode", "add"]
    code, _, stderr = cas_json(capsys, *args)
    assert code == 0 and "1 images of" in stderr and "name sources that are not real images" in stderr
    code, _, stderr = cas_json(capsys, *args, "--strict")
    assert code == 1 and "not real images" in stderr.strip().splitlines()[-1]


def test_a_model_trained_on_a_generated_folder_does_not_claim_a_complete_record(generator_model, tmp_path, capsys):
    synth = tmp_path / "synth"
    assert run_cli(capsys, "synthesize", "--model", generator_model["model"], "--out", synth, "--per-class", "4",
                   "--device", "cpu", "--quiet")[0] == 0
    out = tmp_path / "model"
    code, _, stderr = run_cli(capsys, "train", "vqvae", synth, "--out", out, "--epochs", "1", "--batch-size", "4", "--quiet",
                              *TINY_VQVAE_ARGS)
    assert code == 0, stderr
    record = read_record(out)
    assert not record.complete and "data:synth" in record.stages  # the real images behind the set are not known
