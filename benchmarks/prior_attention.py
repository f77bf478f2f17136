"""The priors' attention, fixed against legacy: validation bits per code per epoch, same data, seed and epochs.

    python benchmarks/prior_attention.py --model /work/train/ham10000-64 --codes codes.h5 --epochs 20
    python benchmarks/prior_attention.py --model M --codes codes.h5 --level both --device cuda

Legacy attention (the priors of skinaug 0.1) computes the key and value at p from features of the codes before p,
so a row's last codes stay hidden from the start of the next row; fixed attention (PixelSNAIL's, the default since)
adds the code at p to its own key and value and lets p attend only to earlier positions (`attention_sees_own_code`).

Each variant trains in a model directory of its own, made in a temporary folder (or under --out, kept) from MODEL's
config.json and VQ-VAE weights; MODEL itself is only read. Training is `skinaug train prior`'s
(`skinaug.train_prior.train_priors`) with the same options for both variants: the same seed, hence the same
split, batch order and dropout draws (the initial weights differ where the fixed variant's extra projection takes
its share of the seeded generator). CODES is a code file of MODEL's (`skinaug encode --model MODEL`).

--level bottom or both also trains the bottom prior with attention switched on (the default bottom prior has none,
and both variants would then be the same network).

Prints JSON (last line): per level and variant, the parameter count, seconds, and per epoch the training and
validation bits per code and the validation accuracy; and per level the final validation bits of fixed minus legacy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import device_name, print_json

from skinaug.storage.modeldir import CONFIG, VQVAE_WEIGHTS, ModelDir
from skinaug.priors.config import ATTENTION_KINDS
from skinaug.runtime import resolve_device
from skinaug.training.prior import DEFAULT_LR, PriorOptions, train_priors
from skinaug.storage.trained_on import TRAINED_ON


def fresh_model(source: Path, folder: Path) -> Path:
    """A model directory with SOURCE's VQ-VAE and no priors."""
    folder.mkdir(parents=True)
    config = json.loads((source / CONFIG).read_text())
    for key in ("priors", "onnx"):
        config.pop(key, None)
    (folder / CONFIG).write_text(json.dumps(config, indent=2))
    for name in (VQVAE_WEIGHTS, TRAINED_ON):
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    return folder


def train_variant(model: Path, codes: Path, level: str, kind: str, args) -> dict:
    overrides = {"attention_sees_own_code": ATTENTION_KINDS[kind], "channels": args.channels, "n_blocks": args.blocks,
                 "n_res_blocks": args.res_blocks}
    if level == "bottom":
        overrides["attention"] = True
    options = PriorOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
                           seed=args.seed, device=args.device, overrides=overrides)
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        train_priors(model, codes=codes, level=level, options=options)
    seconds = time.perf_counter() - started
    prior, _ = ModelDir(model).load_prior(level)
    if not prior.config.attention or prior.config.attention_sees_own_code != ATTENTION_KINDS[kind]:
        raise SystemExit(f"the {level} prior trained for {kind} attention has another config: {prior.config}")
    lines = [json.loads(line) for line in (model / "train" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [{"epoch": m["epoch"], "train_bits_per_code": round(m["train_bits_per_code"], 4),
               "val_bits_per_code": round(m["val_bits_per_code"], 4), "val_accuracy": round(m["val_accuracy"], 4)}
              for m in lines if m.get("stage") == f"prior_{level}"]
    return {"parameters": sum(p.numel() for p in prior.parameters()), "seconds": round(seconds, 1), "epochs": epochs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a model directory with a VQ-VAE (only read)")
    parser.add_argument("--codes", required=True, type=Path, help="a code file of MODEL's (skinaug encode)")
    parser.add_argument("--level", default="top", choices=("top", "bottom", "both"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--channels", type=int, default=None, help="prior width (default: sized from the grid)")
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--res-blocks", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="keep the trained model directories here")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists():
        raise SystemExit(f"{args.out} already exists")
    levels = ["top", "bottom"] if args.level == "both" else [args.level]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="prior-attention.") as scratch:
        root = args.out or Path(scratch)
        for level in levels:
            runs = {kind: train_variant(fresh_model(args.model, root / f"{level}-{kind}"), args.codes, level, kind, args)
                    for kind in ("legacy", "fixed")}
            final = {kind: run["epochs"][-1]["val_bits_per_code"] for kind, run in runs.items() if run["epochs"]}
            results[level] = {**runs, "fixed_minus_legacy_val_bits": round(final["fixed"] - final["legacy"], 4)
                              if len(final) == 2 else None}
    result = {"benchmark": "prior_attention", "model": str(args.model), "codes": str(args.codes),
              "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "device": device_name(resolve_device(args.device)), "levels": results}
    print_json(result)
    return result


if __name__ == "__main__":
    main()
