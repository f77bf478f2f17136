"""The baseline generators (seed reports 003, 004) trained and sampled side by side: `skinaug train baseline` for each
arch on one DATA/labels split at 64px, then `skinaug synthesize --per-class N` from each.

    python benchmarks/baselines.py --data $D/images --labels train.csv --out /work/train/baselines64 --epochs 30
    python benchmarks/baselines.py --data $D/images --labels train.csv --out /work/train/baselines64 --minutes 20 \
        --per-class 200 --device cuda --vqvae gen64

--epochs N trains every arch for N epochs. --minutes M gives each arch a wall-time budget instead: one probe epoch
(in OUT/probe/, removed after) measures its seconds per epoch, and the arch trains for as many whole epochs as fit
in M minutes (at least 1), with its schedule over those epochs. --vqvae MODEL also synthesizes with a VQ-VAE-2
model (trained beforehand, on the same split for a fair comparison) into the same folder, for the synthesis speed.

OUT/models/<arch>/ are the model directories, OUT/synth/<arch>/ the generated OUT_DIRs: score them with `skinaug
score cas`, `score fid` or `score benefit --model <arch dir> --methods synthesize`. Prints JSON (last line): per arch the
epochs, training seconds, the last epoch's metrics, and the synthesis's images and images per second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

from _common import print_json

import torch

from skinaug.baselines.config import ARCHS
from skinaug.cli import main as cli


def run(*args) -> None:
    """One skinaug command in this process; its stdout goes to stderr so that stdout ends with the JSON."""
    with contextlib.redirect_stdout(sys.stderr):
        code = cli([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"skinaug {' '.join(map(str, args))} failed with exit code {code}")


def last_metrics(model_dir: Path) -> dict:
    lines = (model_dir / "train" / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def epochs_for(arch: str, train_args: list, minutes: float, probe_dir: Path) -> tuple[int, float]:
    """(whole epochs that fit the budget, seconds per epoch measured on one probe epoch)."""
    run(*train_args, "--arch", arch, "--out", probe_dir, "--epochs", 1, "--overwrite")
    seconds = last_metrics(probe_dir)["seconds"]
    shutil.rmtree(probe_dir.parent)
    return max(1, int(minutes * 60 // seconds)), seconds


def train_and_synthesize(arch: str, args, train_args: list) -> dict:
    model_dir, synth_dir = args.out / "models" / arch, args.out / "synth" / arch
    result: dict = {}
    if args.minutes is not None:
        epochs, result["probe_seconds_per_epoch"] = epochs_for(arch, train_args, args.minutes, args.out / "probe" / arch)
    else:
        epochs = args.epochs
    started = time.perf_counter()
    run(*train_args, "--arch", arch, "--out", model_dir, "--epochs", epochs, "--overwrite")
    result.update(epochs=epochs, train_seconds=round(time.perf_counter() - started, 1), metrics=last_metrics(model_dir))
    result.update(synthesize(model_dir, synth_dir, args))
    return result


def synthesize(model_dir: Path, synth_dir: Path, args) -> dict:
    started = time.perf_counter()
    run("synthesize", "--model", model_dir, "--per-class", args.per_class, "--out", synth_dir, "--device", args.device,
        "--seed", args.seed, "--batch-size", args.synth_batch_size, "--overwrite", "--quiet")
    seconds = time.perf_counter() - started
    summary = json.loads((synth_dir / "run.json").read_text())
    return {"synth_images": summary["images"], "synth_seconds": round(seconds, 2),
            "synth_images_per_s": round(summary["images_per_s_this_run"], 1), "fingerprint": summary["model_fingerprint"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--labels", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epochs", type=int)
    budget.add_argument("--minutes", type=float, help="wall-time budget of each arch's training")
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--synth-batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vqvae", type=Path, help="a VQ-VAE-2 model with priors to synthesize with as well")
    args = parser.parse_args()
    train_args = ["train", "baseline", args.data, *(["--labels", args.labels] if args.labels else []),
                  "--image-size", args.image_size, "--batch-size", args.batch_size, "--device", args.device,
                  "--seed", args.seed, "--quiet"]
    results = {arch: train_and_synthesize(arch, args, train_args) for arch in args.archs.split(",")}
    if args.vqvae is not None:
        results["vqvae2"] = {"model": str(args.vqvae), **synthesize(args.vqvae, args.out / "synth" / "vqvae2", args)}
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    print_json({"benchmark": "baselines", "data": str(args.data), "labels": str(args.labels), "device": device,
                "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                "image_size": args.image_size, "per_class": args.per_class, "results": results})


if __name__ == "__main__":
    main()
