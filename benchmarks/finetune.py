"""Fine-tuning (`--init`) against training from scratch: the priors' validation bits per code after the same steps.

    python benchmarks/finetune.py --source /work/train/ham10000-64
    python benchmarks/finetune.py --source /work/train/ham10000-64 --classes akiec,vasc,df --new-class df --epochs 20

A user's small dataset is played by a subset of HAM10000 (../shared/data/ham10000-150, or --data/--labels): up to
--per-class images of each of --classes, with --new-class renamed (to "new-<name>") so that the source model does
not know it by name: its class embeddings start fresh, as for a class the source never saw. The model directory is
made the way a user makes it: `train vqvae --init SOURCE --epochs 0` (the source's VQ-VAE, the subset's classes;
--vqvae-epochs N fine-tunes it instead), `encode`. Then the priors are trained twice for the same epochs, hence the
same steps, with the same seed, split and shape (the source's): from random weights and from `--init SOURCE`.

Prints JSON (last line): validation bits per code per level, at the start (the source's priors as they are) and
after training, for each start, overall and per class (the renamed class on its own), with the per-epoch curves.
Caveat: when the source was trained on these images (ham10000-64 was), they are not new to it; only the renamed
class's label is. The gap is then an upper bound on what a truly unseen class gains.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED_DATA, device_name, print_json

import numpy as np
import torch

from skinaug.cli import main as cli
from skinaug.storage.codefile import read_codes
from skinaug.data.scan import group_split
from skinaug.storage.modeldir import ModelDir
from skinaug.training.prior import CodeBatches


def run(*args) -> None:
    """One skinaug command in this process; its stdout (paths) goes to stderr so that stdout ends with the JSON."""
    with contextlib.redirect_stdout(sys.stderr):
        code = cli([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"skinaug {' '.join(map(str, args))} failed with exit code {code}")


def subset(labels_csv: Path, classes: list[str], new_class: str, per_class: int, seed: int, out: Path) -> dict:
    """A generic image,label,lesion_id CSV of up to `per_class` images per class (whole lesions, drawn at random)."""
    with open(labels_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    image_col = "image" if "image" in rows[0] else "image_id"
    label_col = "label" if "label" in rows[0] else "dx"
    rng = np.random.default_rng(seed)
    chosen, counts = [], {}
    for name in classes:
        lesions: dict[str, list[str]] = {}
        for row in rows:
            if row[label_col] == name:
                lesions.setdefault(row.get("lesion_id") or row[image_col], []).append(row[image_col])
        if not lesions:
            raise SystemExit(f"no image of class {name} in {labels_csv}")
        label = f"new-{name}" if name == new_class else name
        taken = 0
        for lesion in rng.permutation(sorted(lesions)):
            if taken >= per_class:
                break
            for image in lesions[lesion][: per_class - taken]:
                chosen.append((image, label, lesion))
                taken += 1
        counts[label] = taken
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "lesion_id"])
        writer.writerows(chosen)
    return counts


@torch.no_grad()
def per_class_bits(model: Path, codes, level: str, val_index: np.ndarray, device: torch.device) -> dict:
    """Validation bits per code of each class under the model's trained prior of `level`."""
    prior, _ = ModelDir(model).load_prior(level, device)
    class_names = ModelDir(model).class_names()
    conditional = prior.config.num_classes > 0
    data = CodeBatches(codes, level, val_index, device, conditional)
    labels = codes.labels[val_index]
    bits = np.zeros(len(val_index))
    for start in range(0, len(val_index), 64):
        index = torch.arange(start, min(start + 64, len(val_index)), device=device)
        targets, batch_labels, condition = data(index)
        logits = prior(targets, batch_labels, condition)
        per_code = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none") / math.log(2)
        bits[start : start + len(index)] = per_code.flatten(1).mean(1).cpu().numpy()
    return {name: round(float(bits[labels == i].mean()), 4) for i, name in enumerate(class_names) if (labels == i).any()}


def curve(model: Path, level: str) -> list[dict]:
    lines = [json.loads(line) for line in (model / "train" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"epoch": m["epoch"], "step": m["step"], "val_bits_per_code": round(m["val_bits_per_code"], 4)}
            for m in lines if m.get("stage") == f"prior_{level}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="the model to fine-tune from (VQ-VAE and both priors)")
    parser.add_argument("--data", default=str(SHARED_DATA / "ham10000-150" / "images"))
    parser.add_argument("--labels", default=str(SHARED_DATA / "ham10000-150" / "labels.csv"))
    parser.add_argument("--classes", default="akiec,vasc,df", help="the subset's classes (names in --labels)")
    parser.add_argument("--new-class", default="df", help="one of --classes, renamed so the source does not know it")
    parser.add_argument("--per-class", type=int, default=100, help="images per class (300 in all by default)")
    parser.add_argument("--level", default="both", choices=("top", "bottom", "both"))
    parser.add_argument("--epochs", type=int, default=20, help="prior epochs, the same for both starts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate for both starts (default: each start's own default, 3e-4 and 3e-5)")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--vqvae-epochs", type=int, default=0, help="0: keep the source's VQ-VAE; N: fine-tune it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--keep", default=None, help="keep the work folder here (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="(kept for symmetry: the last line is always JSON)")
    args = parser.parse_args()
    device = torch.device(args.device)
    classes = [name.strip() for name in args.classes.split(",") if name.strip()]
    if args.new_class not in classes:
        raise SystemExit(f"--new-class {args.new_class} is not one of --classes {classes}")
    source = Path(args.source)
    source_config = ModelDir(source).config()
    levels = [lvl for lvl in ("top", "bottom") if lvl in source_config["grid"]] if args.level == "both" else [args.level]
    missing = [lvl for lvl in levels if not ModelDir(source).has_prior(lvl)]
    if missing:
        raise SystemExit(f"{source} has no {' and '.join(missing)} prior yet: train it first")
    common = ["--device", args.device, "--seed", args.seed, "--quiet"]

    with contextlib.ExitStack() as stack:
        work = Path(args.keep) if args.keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        labels = work / "subset.csv"
        counts = subset(Path(args.labels), classes, args.new_class, args.per_class, args.seed, labels)
        base, codes_path = work / "base", work / "codes.h5"
        started = time.perf_counter()
        run("train", "vqvae", args.data, "--labels", labels, "--init", source, "--epochs", args.vqvae_epochs,
            "--batch-size", 64, "--out", base, *common)
        vqvae_s = time.perf_counter() - started
        run("encode", args.data, "--labels", labels, "--model", base, "--out", codes_path, "--device", args.device, "--quiet")

        prior_args = ["--codes", codes_path, "--batch-size", args.batch_size, *(["--lr", args.lr] if args.lr else []),
                      "--val-fraction", args.val_fraction, *common]
        seconds, results = {}, {}
        for start in ("zero_shot", "scratch", "init"):
            model = work / start
            shutil.copytree(base, model)
            for level in levels:  # a level at a time: its metrics in metrics.jsonl, its seconds
                shape = []
                if start == "scratch":  # the source's shape, so that only the starting weights differ
                    entry = source_config["priors"][level]
                    shape = ["--arch", entry["arch"], "--channels", entry["channels"], "--blocks", entry["n_blocks"],
                             "--res-blocks", entry["n_res_blocks"], "--kernel-size", entry["kernel_size"]]
                init = [] if start == "scratch" else ["--init", source]
                epochs = ["--epochs", 0 if start == "zero_shot" else args.epochs]
                began = time.perf_counter()
                run("train", "prior", "--model", model, "--level", level, *shape, *init, *prior_args, *epochs)
                seconds[(start, level)] = time.perf_counter() - began

        codes = read_codes(codes_path)
        groups = [g or image for g, image in zip(codes.groups, codes.images)]
        _, val_index = group_split(groups, args.val_fraction, args.seed, labels=codes.labels)
        new_label = f"new-{args.new_class}"
        for level in levels:
            result = {}
            for start in ("zero_shot", "scratch", "init"):
                model = work / start
                entry = ModelDir(model).config()["priors"][level]
                result[start] = {
                    "val_bits_per_code": round(entry["metrics"]["val_bits_per_code"], 4),
                    "per_class": per_class_bits(model, codes, level, val_index, device),
                    "seconds": round(seconds[(start, level)], 1),
                }
                if start != "zero_shot":
                    result[start]["curve"] = curve(model, level)
                    result[start]["steps"] = result[start]["curve"][-1]["step"]
            result["init_gain_bits"] = round(result["scratch"]["val_bits_per_code"] - result["init"]["val_bits_per_code"], 4)
            result["init_gain_bits_new_class"] = round(
                result["scratch"]["per_class"][new_label] - result["init"]["per_class"][new_label], 4)
            results[level] = result
        init_record = {lvl: ModelDir(work / "init").config()["priors"][lvl]["init"] for lvl in levels}

    print_json({
        "benchmark": "finetune",
        "device": device_name(device),
        "source": str(source.resolve()),
        "source_fingerprint": source_config["fingerprint"],
        "source_classes": source_config.get("class_names", []),
        "image_size": source_config["image_size"],
        "images_per_class": counts,
        "new_class": new_label,
        "kept_classes": init_record[levels[0]]["kept_classes"],
        "vqvae_epochs": args.vqvae_epochs,
        "vqvae_seconds": round(vqvae_s, 1),
        "vqvae_relation": init_record[levels[0]]["vqvae"],
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr or "defaults (scratch 3e-4, init 3e-5)",
        "val_fraction": args.val_fraction,
        "val_images": int(len(val_index)),
        "seed": args.seed,
        "levels": results,
    })


if __name__ == "__main__":
    main()
