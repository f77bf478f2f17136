"""The generation seam: settings per call (SamplingOptions), one batch loop for any Sampler, one definition of a
generated dataset (skinaug/layout.py)."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from skinaug.storage.codefile import read_codes
from skinaug.errors import SkinaugError, UsageError
from skinaug.generation.commands import Generator, Job, batch_seed, job_plan, name_jobs, write_dataset
from skinaug.data.layout import (LABEL_COLUMNS, METHODS, generated_state, is_generated_dataset, is_generated_folder,
                            label_row, laid_out, read_labels, read_provenance)
from skinaug.generation.sampler import OutputOptions, RunOptions, Sampler, SamplingOptions


def test_sampling_options_are_frozen_and_checked():
    options = SamplingOptions(temperature=0.5, top_k=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.temperature = 1.0
    assert dataclasses.replace(options, top_k=None) == SamplingOptions(temperature=0.5) and options.top_k == 3
    assert SamplingOptions().candidates == 32 and SamplingOptions(refine=1, refine_candidates=5).candidates == 5
    for bad, message in (({"temperature": 0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
                         ({"top_k": 0}, "top_k"), ({"sampler": "slow"}, "sampler"), ({"refine": -1}, "refine")):
        with pytest.raises(UsageError, match=message):
            SamplingOptions(**bad)
    with pytest.raises(UsageError, match="originals"):
        OutputOptions(originals="move")


def test_a_temperature_given_to_one_call_changes_nothing_for_the_next(generator_model):
    import skinaug

    model = skinaug.load_model(generator_model["model"], device="cpu", batch_size=4)
    before = model.synthesize("nevus", 4, seed=3)
    colder = model.synthesize("nevus", 4, seed=3, temperature=0.5, top_k=2)
    after = model.synthesize("nevus", 4, seed=3)
    np.testing.assert_array_equal(before, after)
    assert not np.array_equal(before, colder)
    assert not any(hasattr(model._generator, name) for name in ("temperature", "top_k"))


def test_the_layout_module_recognises_builds_and_reads_a_generated_dataset(tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(out / "images" / "a.png")
    row = label_row("a", "nevus", "mix", source_top="x", source_bottom="y", seed=7, fingerprint="f", group="l1")
    columns = [column for column in LABEL_COLUMNS if column != "path"]  # the writer adds `path` (the file's place)
    assert list(row)[: len(columns)] == columns and row["group"] == "l1"
    (out / "labels.csv").write_text(",".join(columns) + "\n" + ",".join(str(row[c]) for c in columns) + "\n")
    assert laid_out(out) and generated_state(out) == "finished" and is_generated_folder(out)
    assert not is_generated_dataset(out)  # no run.json: not a run's output that a new run may replace
    (out / "run.json").write_text("{}")
    assert is_generated_dataset(out)
    header, rows = read_labels(out / "labels.csv")
    assert header == columns and rows[0]["source_bottom"] == "y" and rows[0]["seed"] == "7"
    assert read_provenance(out / "labels.csv") == {"a": {"method": "mix", "source_top": "x", "source_bottom": "y",
                                                         "temperature": "", "seed": "7", "model_fingerprint": "f"}}
    (out / ".progress").mkdir()
    assert generated_state(out) == "unfinished"
    with pytest.raises(SkinaugError, match="unfinished"):
        is_generated_folder(out)
    plain = tmp_path / "plain"
    (plain / "images").mkdir(parents=True)
    (plain / "labels.csv").write_text("image,label\na,nevus\n")
    assert laid_out(plain) and generated_state(plain) is None and read_provenance(plain / "labels.csv") == {}
    assert "classic" in METHODS and len(set(METHODS)) == len(METHODS)


class NoiseSampler:
    """A Sampler without codes, as a baseline is: each image a flat colour from the batch's seed."""

    class_names, device, writes_codes, code_bytes = ["a", "b"], "cpu", False, 0
    fingerprint, image_size, model_path, model_config = "noise", 4, None, {"class_names": ["a", "b"],
                                                                             "fingerprint": "noise", "image_size": 4}

    def require(self, methods): pass
    def read_sources(self, inputs, run): raise AssertionError("synthesize reads no sources")
    def check_jobs(self, jobs, source, sampling): pass
    def inputs(self): return []
    def encode_images(self, images): return {}
    def image_details(self, method, jobs, seed): return [{} for _ in jobs]
    def backend_info(self): return {"backend": "numpy"}
    def plan_fields(self, plan): return plan

    def distributed(self):
        from skinaug.distributed import Distributed

        return Distributed()

    def make_images(self, method, jobs, source, seed, sampling):
        value = np.random.default_rng(seed).integers(256) * sampling.temperature
        return {}, np.full((len(jobs), 4, 4, 3), int(value) % 256, np.uint8)


def jobs_for(labels, class_names):
    jobs = [Job("synthesize", label) for label in labels]
    name_jobs(jobs, class_names)
    return jobs


def test_the_one_batch_loop_writes_a_dataset_without_codes_for_a_sampler_like_a_baseline(tmp_path):
    sampler = NoiseSampler()
    assert isinstance(sampler, Sampler)
    jobs = jobs_for([0, 0, 1], sampler.class_names)
    summary = write_dataset(sampler, jobs, None, tmp_path / "out", plan=job_plan(jobs, command="synthesize"), run=RunOptions(seed=4, batch_size=2),
                            sampling=SamplingOptions(temperature=1.0))
    _, rows = read_labels(tmp_path / "out" / "labels.csv")
    assert [(row["label"], row["method"], row["temperature"], int(row["seed"])) for row in rows] == [
        ("a", "synthesize", "1.0", batch_seed(4, 0)), ("a", "synthesize", "1.0", batch_seed(4, 0)),
        ("b", "synthesize", "1.0", batch_seed(4, 1))]
    assert summary["images"] == 3 and summary["backend"] == "numpy" and not (tmp_path / "out" / "codes.h5").exists()
    assert generated_state(tmp_path / "out") == "finished"


def test_the_one_batch_loop_writes_the_vqvae_generators_codes_and_the_draws_of_each_batch_seed(generator_model,
                                                                                                tmp_path):
    generator = Generator(generator_model["model"], "cpu")
    assert isinstance(generator, Sampler) and not hasattr(generator, "temperature")
    jobs = jobs_for([0, 1, 2], generator.class_names)
    sampling = SamplingOptions(temperature=0.8, top_k=5)
    write_dataset(generator, jobs, None, tmp_path / "out", plan=job_plan(jobs, command="synthesize"),
                  run=RunOptions(seed=2, batch_size=2), sampling=sampling)
    written = read_codes(tmp_path / "out" / "codes.h5")
    for index, batch in enumerate((jobs[:2], jobs[2:])):
        drawn = generator.codes_for("synthesize", batch, None, batch_seed(2, index), sampling)
        for level in ("top", "bottom"):
            np.testing.assert_array_equal(written.codes[level][2 * index: 2 * index + len(batch)], drawn[level])
    _, rows = read_labels(tmp_path / "out" / "labels.csv")
    assert {row["temperature"] for row in rows} == {"0.8"}
    assert json.loads((tmp_path / "out" / "run.json").read_text())["temperature"] == 0.8
