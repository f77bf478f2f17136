"""Masked resampling with and without --refine: how well the redrawn bottom codes fit the kept ones.

    PYTHONPATH=. python benchmarks/masked_resample.py --model MODEL_DIR --data IMAGES --labels CSV --device cuda
    PYTHONPATH=. python benchmarks/masked_resample.py --model MODEL_DIR --codes CODES.h5 --refine 0,1,2,4 --seeds 0,1,2

Encodes the images (or reads --codes), takes --limit of them (a seeded choice), gives each a mask on the bottom grid
(default: a centred square of half the side, a quarter of the codes; or --mask-dir DIR with DIR/<image>.png, as
`skinaug resample --mask-dir` reads it), and resamples the masked codes with skinaug's Generator exactly as
`skinaug resample --mask-dir --refine N` does, for every N of --refine and every seed of --seeds.

Each resulting grid is scored with the bottom prior's teacher-forced bits per code at temperature 1 (lower: the grid
is more probable under the prior, i.e. the redrawn codes agree better with the kept ones), over the whole grid, over
the masked codes, and over the kept codes after the mask's first raster position (those whose conditionals read
redrawn codes: where seams show). Per setting: the mean over images, as mean and standard deviation over seeds;
the fraction of masked codes that differ from the refine-0 draw of the same seed; seconds per image (the draw and the
sweeps, not the decoding). The encoded originals give the reference line. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

from _common import add_source_arguments, device_name, print_json, timed

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from skinaug.generation.commands import Generator, batch_seed, load_sources, make_batches, plan_per_source
from skinaug.generation.sampler import SamplingOptions
from skinaug.storage.modeldir import ModelDir
from skinaug.runtime import resolve_device

REGIONS = ("bits_per_code", "in_mask", "kept_after_mask")


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def square_masks(folder: Path, names: list[str], grid: tuple[int, int]) -> None:
    """A centred square of half the grid's side per image, written at the grid's size (read back unchanged)."""
    height, width = grid
    mask = np.zeros(grid, np.uint8)
    mask[height // 4 : height // 4 + height // 2, width // 4 : width // 4 + width // 2] = 255
    for name in names:
        Image.fromarray(mask).save(folder / f"{name}.png")


def bits_per_code(generator: Generator, bottom: np.ndarray, masks: np.ndarray, labels: np.ndarray, top,
                  batch_size: int) -> np.ndarray:
    """(images, 3): teacher-forced bits per code over the grid, inside the mask, and on the kept codes after the
    mask's first raster position."""
    prior = generator.backend.prior("bottom").network
    device = generator.device
    rows = []
    with torch.no_grad():
        for start in range(0, len(bottom), batch_size):
            codes = torch.as_tensor(bottom[start : start + batch_size].astype(np.int64), device=device)
            class_labels = (torch.as_tensor(labels[start : start + batch_size], device=device)
                            if prior.config.num_classes else None)
            condition = (torch.as_tensor(top[start : start + batch_size].astype(np.int64), device=device)
                         if top is not None else None)
            bits = (F.cross_entropy(prior(codes, class_labels, condition), codes, reduction="none") / math.log(2))
            rows.append(bits.flatten(1).cpu().numpy())
    bits = np.concatenate(rows)
    masked = masks.reshape(len(masks), -1)
    first = np.where(masked.any(axis=1), masked.argmax(axis=1), masked.shape[1])
    after = (~masked) & (np.arange(masked.shape[1])[None, :] > first[:, None])
    mean_over = lambda where: np.array([b[w].mean() if w.any() else np.nan for b, w in zip(bits, where)])  # noqa: E731
    return np.stack([bits.mean(axis=1), mean_over(masked), mean_over(after)], axis=1)


def spread(values) -> dict:
    values = np.asarray(values, np.float64)
    return {"mean": round(float(values.mean()), 4), "std": round(float(values.std()), 4),
            "per_seed": [round(float(v), 4) for v in values]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(parser)
    parser.add_argument("--mask-dir", type=Path, help="lesion masks DIR/<image>.png (default: a centred square)")
    parser.add_argument("--limit", type=int, default=64, help="images resampled (a seeded choice); 0: all")
    parser.add_argument("--refine", type=int_list, default=[0, 1, 2, 4], help="sweeps to compare, e.g. 0,1,2,4")
    parser.add_argument("--candidates", type=int, default=32, help="--refine-candidates")
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    args.refine = sorted({0, *args.refine})  # the raster draw (refine 0) is the baseline of every comparison

    device = resolve_device(args.device)
    source = load_sources(args.model, codes=args.codes, data=args.data, labels=args.labels, device=str(device))
    count = len(source) if args.limit <= 0 else min(args.limit, len(source))
    chosen = np.sort(np.random.default_rng(0).choice(len(source), count, replace=False))
    names = [source.images[i] for i in chosen]
    with tempfile.TemporaryDirectory() as scratch:
        mask_dir = args.mask_dir or Path(scratch)
        if args.mask_dir is None:
            square_masks(mask_dir, names, tuple(ModelDir(args.model).config()["grid"]["bottom"]))
        probe = Generator(args.model, device, mask_dir=mask_dir)
        probe.require(["resample"])
        if probe.class_names and (source.labels[chosen] < 0).any():
            raise SystemExit("the bottom prior is class-conditional: give --labels for every image")
        for label in np.unique(source.labels[chosen]):
            if label >= 0:
                probe.check_class("bottom", int(label))
        masks = np.stack([probe.mask_array(name) for name in names])
        labels = source.labels[chosen]
        top = source.codes["top"][chosen] if "top" in source.codes else None
        original = bits_per_code(probe, source.codes["bottom"][chosen], masks, labels, top, args.batch_size)
        original = np.nanmean(original, axis=0)  # an image whose mask is empty has no in-mask codes

        jobs = plan_per_source("resample", chosen, 1, source)
        batches = make_batches(jobs, args.batch_size)
        results, raster = [], {}
        for sweeps in args.refine:
            generator = Generator(args.model, device, mask_dir=mask_dir)
            sampling = SamplingOptions(temperature=args.temperature, refine=sweeps, refine_candidates=args.candidates)
            if sweeps == 0:  # warm-up, untimed: the sampler's first call packs weights (and captures CUDA graphs)
                generator.codes_for("resample", batches[0][1], source, batch_seed(args.seeds[0], 0), sampling)
            scores, seconds, changed = [], [], []
            for seed in args.seeds:
                bottoms, elapsed = [], 0.0
                for index, (_, batch) in enumerate(batches):
                    codes, took = timed(lambda: generator.codes_for("resample", batch, source, batch_seed(seed, index), sampling),
                                        device)
                    bottoms.append(codes["bottom"])
                    elapsed += took
                bottom = np.concatenate(bottoms)
                raster.setdefault(seed, bottom)  # refine 0 comes first
                changed.append((bottom != raster[seed])[masks].mean())
                scores.append(np.nanmean(bits_per_code(generator, bottom, masks, labels, top, args.batch_size), axis=0))
                seconds.append(elapsed / count)
                print(f"refine {sweeps}, seed {seed}: {elapsed:.1f} s", file=sys.stderr, flush=True)
            scores = np.array(scores)
            results.append({"refine": sweeps, **{region: spread(scores[:, i]) for i, region in enumerate(REGIONS)},
                            "masked_codes_changed": spread(changed), "seconds_per_image": spread(seconds)})
    print_json({
        "benchmark": "masked_resample", "model": str(args.model), "device": device_name(device), "images": count,
        "bottom_grid": list(probe.config["grid"]["bottom"]), "codebook_size": probe.config["codebook_size"],
        "mask": str(args.mask_dir) if args.mask_dir else "centred square, half the side",
        "masked_fraction": round(float(masks.mean()), 4), "candidates": args.candidates,
        "temperature": args.temperature, "seeds": args.seeds,
        "original": {region: round(float(v), 4) for region, v in zip(REGIONS, original)},
        "results": results,
    })


if __name__ == "__main__":
    main()
