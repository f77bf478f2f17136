"""torchrun on CPU with gloo and two processes: identical ranks, the same loss as one process, sharded generation."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import torch_threads
from skinaug.cli import main

WORKER = Path(__file__).with_name("distributed_worker.py")
TOLERANCE = 1e-4  # float reduction order differs between one process and an all-reduce of two


def torchrun(*args, nproc=2, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_ranks_hold_identical_weights_and_match_one_process(tmp_path):
    torchrun(WORKER, tmp_path / "two.json")
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["world_size"] == 2 and len(set(two["hashes"])) == 1  # every rank: same weights and codebooks

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run([sys.executable, str(WORKER), str(tmp_path / "one.json")], check=True, env=env, timeout=120)
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["world_size"] == 1
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=TOLERANCE, atol=TOLERANCE)
    for name, values in one["state"].items():
        np.testing.assert_allclose(two["state"][name], values, rtol=TOLERANCE, atol=TOLERANCE, err_msg=name)


def test_ranks_with_different_data_initialise_and_restart_codes_identically(tmp_path):
    torchrun(WORKER.with_name("distributed_quantizer_worker.py"), tmp_path / "quantizer.json")
    ranks = json.loads((tmp_path / "quantizer.json").read_text())
    assert len(ranks) == 2 and ranks[0]["hash"] == ranks[1]["hash"]  # the same codebook and statistics everywhere
    assert ranks[0]["restarted"] == ranks[1]["restarted"] > 0  # dead codes were re-seeded, the same on both
    # the first codebook is drawn from rank 0's first batch and broadcast: rank 1 holds rows it never saw
    assert ranks[0]["initial_from_mine"] and not ranks[1]["initial_from_mine"]


def test_torchrun_training_makes_a_model_that_encode_uses_and_resumes_on_one_process(tiny_dataset, tmp_path):
    model = tmp_path / "model"
    common = ["train", "vqvae", tiny_dataset.images, "--labels", tiny_dataset.labels_csv, "--out", model,
              "--image-size", "32", "--channels", "16", "--res-channels", "8", "--res-blocks", "1", "--codebook-size", "16",
              "--code-dim", "4", "--batch-size", "4", "--device", "cpu", "--quiet"]
    result = torchrun("-m", "skinaug", *common, "--epochs", "1")
    assert result.stdout.strip().splitlines() == [str(model)]  # only rank 0 prints
    lines = (model / "train" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # only rank 0 logs
    assert main([str(a) for a in [*common, "--epochs", "2", "--resume"]]) == 0  # another number of processes
    assert len((model / "train" / "metrics.jsonl").read_text().splitlines()) == 2
    codes = tmp_path / "codes.h5"
    assert main(["encode", str(tiny_dataset.images), "--labels", str(tiny_dataset.labels_csv), "--model", str(model),
                 "--out", str(codes), "--device", "cpu", "--quiet"]) == 0
    from skinaug.storage.codefile import read_codes

    assert len(read_codes(codes)) == 12


def test_sharded_synthesis_writes_each_requested_image_once(generator_model, tmp_path):
    out = tmp_path / "synth"
    torchrun("-m", "skinaug", "synthesize", "--model", generator_model["model"], "--out", out, "--class", "melanoma",
             "-n", "7", "--batch-size", "2", "--device", "cpu", "--quiet")
    with open(out / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = [row["image"] for row in rows]
    assert len(names) == 7 and len(set(names)) == 7
    assert sorted(p.stem for p in (out / "images").iterdir()) == sorted(names)
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["images"] == 7 and not (out / ".progress").exists()

    # the same images as one process would make: batches keep their seeds whichever rank runs them. Exactly the same
    # only with the ranks' one thread: another thread count may sum in another order and break near-ties otherwise
    single = tmp_path / "single"
    with torch_threads(1):
        assert main(["synthesize", "--model", str(generator_model["model"]), "--out", str(single), "--class", "melanoma",
                     "-n", "7", "--batch-size", "2", "--device", "cpu", "--quiet"]) == 0
    from skinaug.storage.codefile import read_codes

    np.testing.assert_array_equal(read_codes(out / "codes.h5").codes["bottom"], read_codes(single / "codes.h5").codes["bottom"])
