"""The generated-dataset writer: streamed batches, resume after a crash, refusals, image formats."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

import skinaug.storage.writer as output_module
from skinaug.storage.codefile import read_codes
from skinaug.errors import SkinaugError
from skinaug.storage.writer import LABEL_COLUMNS, DatasetWriter

MODEL_CONFIG = {
    "fingerprint": "0123456789ab", "codebook_size": 16, "code_dim": 4, "levels": 2, "image_size": 8,
    "class_names": ["bkl", "melanoma", "nevus"], "grid": {"bottom": [2, 2], "top": [1, 1]},
}
PLAN = {"command": "test", "n": 9, "batch_size": 3}
BATCHES = 3
BATCH_SIZE = 3


def batch(index: int):
    """Batch `index` of a 9-image plan: distinct solid images, rows and codes that say which batch made them."""
    names = [f"gen_{index}_{j}" for j in range(BATCH_SIZE)]
    images = np.stack([np.full((8, 8, 3), 20 * index + 5 * j, np.uint8) for j in range(BATCH_SIZE)])
    labels = [MODEL_CONFIG["class_names"][(index + j) % 3] for j in range(BATCH_SIZE)]
    rows = [{"image": name, "label": label, "method": "synthesize", "source_top": "", "source_bottom": "",
             "temperature": 1.0, "seed": 100 + index, "model_fingerprint": MODEL_CONFIG["fingerprint"], "group": f"g{index}"}
            for name, label in zip(names, labels)]
    codes = {"top": np.full((BATCH_SIZE, 1, 1), index, np.uint16),
             "bottom": np.arange(BATCH_SIZE * 4, dtype=np.uint16).reshape(BATCH_SIZE, 2, 2) + index}
    return images, rows, codes


def writer(out, **kwargs) -> DatasetWriter:
    return DatasetWriter(out, model_config=MODEL_CONFIG, plan=kwargs.pop("plan", PLAN), **kwargs)


def label_rows(out) -> list[dict]:
    with open(out / "labels.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == LABEL_COLUMNS
        return list(reader)


class Crash(Exception):
    pass


def test_a_run_in_one_go_assembles_labels_codes_and_run_json(tmp_path):
    out = tmp_path / "out"
    dataset = writer(out)
    assert dataset.done_batches() == set()
    for index in range(BATCHES):
        dataset.write_batch(index, *batch(index))
    summary = dataset.finish(command="test", seed=7, device="cpu", extra={"note": "x"})

    assert summary["images"] == 9 and summary["model_fingerprint"] == "0123456789ab" and summary["note"] == "x"
    assert summary["counts"] == {"bkl": {"synthesize": 3}, "melanoma": {"synthesize": 3}, "nevus": {"synthesize": 3}}
    rows = label_rows(out)
    assert [row["image"] for row in rows] == [f"gen_{i}_{j}" for i in range(BATCHES) for j in range(BATCH_SIZE)]
    assert rows[4] == {"image": "gen_1_1", "label": "nevus", "method": "synthesize", "source_top": "", "source_bottom": "",
                       "temperature": "1.0", "seed": "101", "model_fingerprint": "0123456789ab",
                       "path": "images/gen_1_1.png"}  # no "group" column

    codes = read_codes(out / "codes.h5")
    assert codes.images == [row["image"] for row in rows]
    assert codes.labels.tolist() == [["bkl", "melanoma", "nevus"].index(row["label"]) for row in rows]
    assert codes.groups == [f"g{i}" for i in range(BATCHES) for _ in range(BATCH_SIZE)]
    assert codes.codes["top"].reshape(-1).tolist() == [i for i in range(BATCHES) for _ in range(BATCH_SIZE)]
    assert np.array_equal(codes.codes["bottom"], np.concatenate([batch(i)[2]["bottom"] for i in range(BATCHES)]))
    assert codes.fingerprint == "0123456789ab" and codes.class_names == MODEL_CONFIG["class_names"]

    with Image.open(out / "images" / "gen_2_1.png") as image:
        assert image.size == (8, 8) and np.asarray(image)[0, 0].tolist() == [45, 45, 45]
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "test" and run["seed"] == 7 and run["images"] == 9 and run["format"] == "png"
    assert not (out / ".progress").exists()


def test_resume_after_a_crash_neither_loses_nor_duplicates_images(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = writer(out)
    first.write_batch(0, *batch(0))
    first.write_batch(1, *batch(1))
    # batch 2 crashes after its images are written but before its record lands
    with monkeypatch.context() as patch:
        def crash(*args, **kwargs):
            raise Crash()
        patch.setattr(output_module.np, "savez", crash)
        with pytest.raises(Crash):
            first.write_batch(2, *batch(2))
    assert (out / "images" / "gen_2_0.png").exists()
    # and as if a process died while appending: a stray half row of an unrecorded batch
    with open(out / "labels.csv", "a") as handle:
        handle.write("gen_2_0,bkl,synth")
    del first

    resumed = writer(out, resume=True)
    assert resumed.done_batches() == {0, 1}
    assert [row["image"] for row in label_rows(out)] == [f"gen_{i}_{j}" for i in (0, 1) for j in range(BATCH_SIZE)]
    for index in range(BATCHES):  # the caller skips what is done, as the commands do
        if index not in resumed.done_batches():
            resumed.write_batch(index, *batch(index))
    summary = resumed.finish(command="test", seed=7, device="cpu")

    names = [f"gen_{i}_{j}" for i in range(BATCHES) for j in range(BATCH_SIZE)]
    assert summary["images"] == 9
    assert [row["image"] for row in label_rows(out)] == names
    assert read_codes(out / "codes.h5").images == names
    assert sorted(p.stem for p in (out / "images").iterdir()) == names
    assert [p.name for p in out.rglob(".*")] == []  # no temporary files or progress records left


def test_resume_with_a_different_plan_is_refused(tmp_path):
    out = tmp_path / "out"
    writer(out).write_batch(0, *batch(0))
    with pytest.raises(SkinaugError, match="different command or options"):
        writer(out, resume=True, plan={**PLAN, "n": 12})
    assert writer(out, resume=True).done_batches() == {0}  # the original plan still resumes


def test_resume_of_a_finished_output_is_refused(tmp_path):
    out = tmp_path / "out"
    done = writer(out)
    done.write_batch(0, *batch(0))
    done.finish(command="test", seed=None, device="cpu")
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(SkinaugError, match="already complete"):
        writer(out, resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_existing_outputs_need_overwrite_and_foreign_folders_cannot_be_resumed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("someone else's file")
    with pytest.raises(SkinaugError, match="already exists"):
        writer(out)
    with pytest.raises(SkinaugError, match="not written by an interrupted skinaug run"):
        writer(out, resume=True)
    # --overwrite replaces only an earlier generated dataset, never someone else's folder
    with pytest.raises(SkinaugError, match="replaces only an earlier generated dataset"):
        writer(out, overwrite=True)
    assert (out / "mine.txt").read_text() == "someone else's file"
    assert writer(tmp_path / "new", resume=True).done_batches() == set()  # nothing to resume: a fresh start


def test_jpg_format(tmp_path):
    out = tmp_path / "out"
    dataset = writer(out, image_format="JPG", quality=90)
    dataset.write_batch(0, *batch(0))
    dataset.finish(command="test", seed=None, device="cpu")
    files = sorted((out / "images").iterdir())
    assert [p.name for p in files] == ["gen_0_0.jpg", "gen_0_1.jpg", "gen_0_2.jpg"]
    with Image.open(files[1]) as image:
        assert image.format == "JPEG" and image.size == (8, 8)
        assert np.abs(np.asarray(image).astype(int) - 5).max() <= 2  # solid grey 5, nearly lossless
    assert json.loads((out / "run.json").read_text())["format"] == "jpg"
    with pytest.raises(SkinaugError, match="png or jpg"):
        writer(tmp_path / "other", image_format="gif")
