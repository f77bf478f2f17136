"""Attention whose keys see their position's own code ("fixed") against the priors' earlier attention ("legacy"):
`train prior --attention`, legacy configs and the shipped model loading as legacy, and
benchmarks/prior_attention.py on tiny data."""

import hashlib
import importlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import skinaug
from near_ties import assert_same_draws, close_draws
from skinaug.cli import main
from skinaug.storage.modeldir import ModelDir
from skinaug.priors import sample
from skinaug.priors.config import ENTRY_METADATA

pytestmark = pytest.mark.usefixtures("single_thread")

SHIPPED = Path(skinaug.__file__).parent / "models" / "ham10000-64"
TINY_PRIOR = ["--channels", "16", "--blocks", "1", "--res-blocks", "1", "--kernel-size", "3", "--batch-size", "4",
              "--epochs", "1", "--device", "cpu", "--quiet"]
# the shipped top prior's codes for labels (1, 4) and torch.rand(2, 64) from seed 2024, drawn by skinaug 0.1 (main
# before the fixed attention existed)
SHIPPED_TOP_CODES = [
    [138, 243, 248, 9, 15, 49, 28, 120, 140, 165, 10, 138, 15, 173, 212, 60, 113, 198, 198, 168, 226, 222, 175, 143,
     88, 93, 62, 222, 36, 13, 84, 15, 222, 164, 177, 138, 163, 1, 109, 49, 15, 109, 91, 178, 253, 152, 138, 254,
     60, 164, 164, 62, 109, 152, 60, 175, 254, 60, 175, 175, 18, 60, 60, 31],
    [39, 254, 9, 178, 28, 60, 10, 158, 241, 102, 96, 33, 208, 91, 173, 60, 158, 118, 102, 33, 142, 158, 91, 243,
     123, 65, 102, 102, 144, 33, 61, 60, 123, 108, 19, 172, 65, 125, 104, 60, 59, 133, 83, 144, 217, 163, 115, 143,
     233, 41, 177, 10, 192, 182, 210, 60, 169, 4, 26, 26, 183, 131, 93, 203]]


def run(*args):
    return main([str(a) for a in args])


def test_the_shipped_priors_load_as_legacy_and_draw_the_codes_they_drew_before():
    model_dir = ModelDir(SHIPPED)
    for level in ("top", "bottom"):
        entry = model_dir.config()["priors"][level]
        prior, _ = model_dir.load_prior(level)  # a strict load: the weights are the legacy network's, no more
        assert "attention_sees_own_code" not in entry and not prior.config.attention_sees_own_code
        assert not [name for name in prior.state_dict() if "own_code" in name]
        assert prior.config.to_dict() == {k: v for k, v in entry.items() if k not in ENTRY_METADATA}
    top, _ = model_dir.load_prior("top")
    labels = torch.tensor([1, 4])
    uniforms = torch.rand(2, 64, generator=torch.Generator().manual_seed(2024))
    codes = sample(top, labels, uniforms=uniforms)
    expected = torch.tensor(SHIPPED_TOP_CODES).view(2, 8, 8)
    with torch.no_grad():
        logits = top(expected, labels)
    # the same codes, up to a draw within float rounding of a CDF boundary on another CPU
    assert_same_draws(codes, expected, close_draws(logits, uniforms, logit_tolerance=1e-4))


def test_train_prior_attention_option_writes_the_choice_into_the_config(generator_model, tmp_path, capsys):
    model, codes = tmp_path / "model", generator_model["codes"]
    shutil.copytree(generator_model["model"], model)  # priors trained by default: fixed attention
    assert json.loads((model / "config.json").read_text())["priors"]["top"]["attention_sees_own_code"] is True
    assert run("train", "prior", "--model", model, "--codes", codes, "--level", "top", "--attention", "legacy",
               "--overwrite", *TINY_PRIOR) == 0
    entry = json.loads((model / "config.json").read_text())["priors"]["top"]
    assert "attention_sees_own_code" not in entry  # written as skinaug 0.1 wrote it
    prior, _ = ModelDir(model).load_prior("top")
    assert prior.config.attention and not prior.config.attention_sees_own_code
    assert not [name for name in prior.state_dict() if "own_code" in name]

    assert run("train", "prior", "--model", model, "--codes", codes, "--attention", "sideways", "--overwrite",
               *TINY_PRIOR) == 2
    assert "--attention must be fixed or legacy, not sideways" in capsys.readouterr().err

    # fine-tuning keeps the source's attention, and asking for the other one is a contradiction
    other = tmp_path / "other"
    shutil.copytree(generator_model["model"], other)
    start = ("train", "prior", "--model", other, "--codes", codes, "--level", "top", "--init", model, "--overwrite")
    assert run(*start, "--attention", "fixed", *TINY_PRIOR) == 2
    assert f"--attention fixed contradicts the top prior of --init {model} (--attention legacy)" in capsys.readouterr().err
    assert run(*start, *TINY_PRIOR) == 0
    assert not ModelDir(other).load_prior("top")[0].config.attention_sees_own_code


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_the_attention_benchmark_trains_both_variants_on_the_same_data(generator_model, tmp_path, capsys, monkeypatch):
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    benchmark = importlib.import_module("prior_attention")
    model, before = generator_model["model"], _tree_digest(generator_model["model"])
    out = tmp_path / "runs"
    result = benchmark.main(["--model", str(model), "--codes", str(generator_model["codes"]), "--level", "both",
                             "--epochs", "1", "--channels", "16", "--blocks", "1", "--res-blocks", "1",
                             "--batch-size", "4", "--device", "cpu", "--out", str(out)])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["levels"] == result["levels"]
    assert _tree_digest(model) == before  # MODEL is only read
    for level in ("top", "bottom"):
        runs = result["levels"][level]
        # the one difference between the networks: a (2C, C) own-code projection per attention layer (one block)
        assert runs["fixed"]["parameters"] - runs["legacy"]["parameters"] == 2 * 16 * 16
        finals = [runs[kind]["epochs"][-1]["val_bits_per_code"] for kind in ("legacy", "fixed")]
        assert [len(runs[kind]["epochs"]) for kind in ("legacy", "fixed")] == [1, 1]
        assert all(0 < bits < 8 for bits in finals)  # 16 codes: 4 bits at chance
        assert runs["fixed_minus_legacy_val_bits"] == pytest.approx(finals[1] - finals[0], abs=2e-4)
        for kind, own_code in (("legacy", False), ("fixed", True)):
            prior, _ = ModelDir(out / f"{level}-{kind}").load_prior(level)
            assert prior.config.attention and prior.config.attention_sees_own_code == own_code
    assert np.isfinite(result["levels"]["bottom"]["fixed"]["epochs"][0]["train_bits_per_code"])
    sys.modules.pop("prior_attention", None)
