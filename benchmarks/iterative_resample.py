"""Iterative inpainting in code space (`skinaug resample --iterative`): seconds per image.

    PYTHONPATH=. python benchmarks/iterative_resample.py --model skinaug/models/ham10000-64 --data IMAGES --labels CSV
    PYTHONPATH=. python benchmarks/iterative_resample.py --model MODEL_DIR --codes CODES.h5 --steps 10 --box-size 4 \
        --refine 1

Encodes the images (or reads --codes), takes --limit of them (a seeded choice) and makes one new image of each exactly
as `skinaug resample --iterative STEPS --box-size B [--box-schedule S] [--iterative-levels L] [--refine N]` does
(skinaug's IterativeGenerator, batch by batch with the command's batch seeds), on the CPU unless --device says
otherwise. Reports seconds per image: the STEPS draws (raster draw of each box, then the refinement sweeps) and the
one decoding at the end, after an untimed warm-up batch. For comparison, "reference" holds seed report 003's GLIDE
iterative inpainting: about 8 s a step on an A100, 10 steps, 80 s per image (at 256px, against the model's size
here). The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import sys

from _common import add_source_arguments, device_name, print_json, timed

import numpy as np
import torch

from skinaug.generation.commands import batch_seed, load_sources, make_batches, plan_per_source
from skinaug.generation.sampler import SamplingOptions
from skinaug.generation.commands import IterativeGenerator
from skinaug.generation.iterative import IterativeRequest
from skinaug.runtime import resolve_device

GLIDE_REFERENCE = {"method": "GLIDE iterative inpainting (seed report 003)", "device": "NVIDIA A100",
                   "seconds_per_step": 8, "steps": 10, "seconds_per_image": 80, "image_size": 256}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(parser)
    parser.add_argument("--steps", type=int, default=10, help="--iterative STEPS")
    parser.add_argument("--box-size", type=int, help="bottom-grid cells (default: a quarter of the grid's side)")
    parser.add_argument("--box-schedule", help="constant, shrink or one size per step")
    parser.add_argument("--levels", default="bottom", choices=("bottom", "both"), help="--iterative-levels")
    parser.add_argument("--refine", type=int, default=0, help="Gibbs sweeps over each box (each costs one batched prior "
                        "forward of --candidates grids per box cell)")
    parser.add_argument("--candidates", type=int, default=32, help="--refine-candidates")
    parser.add_argument("--limit", type=int, default=64, help="images made (a seeded choice of sources); 0: all")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); on a busy machine, 1 avoids "
                        "threads spinning against each other")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    source = load_sources(args.model, codes=args.codes, data=args.data, labels=args.labels, device=str(device))
    count = len(source) if args.limit <= 0 else min(args.limit, len(source))
    chosen = np.sort(np.random.default_rng(0).choice(len(source), count, replace=False))
    request = IterativeRequest(args.steps, args.box_size, args.box_schedule, args.levels)
    generator = IterativeGenerator(args.model, device, iterative=request)
    sampling = SamplingOptions(temperature=args.temperature, refine=args.refine, refine_candidates=args.candidates)
    jobs = plan_per_source("resample", chosen, 1, source)
    generator.require(["resample"])
    generator.check_classes(jobs)
    batches = make_batches(jobs, args.batch_size)
    # warm-up, untimed: the sampler's first call packs weights (and captures CUDA graphs)
    generator.images_for(generator.codes_for("resample", batches[0][1][:2], source, batch_seed(args.seed, 0), sampling))
    drawing = decoding = 0.0
    for index, (_, batch) in enumerate(batches):
        seed = batch_seed(args.seed, index)
        codes, took = timed(lambda: generator.codes_for("resample", batch, source, seed, sampling), device)
        drawing += took
        _, took = timed(lambda: generator.images_for(codes), device)
        decoding += took
        print(f"batch {index + 1}/{len(batches)}: {drawing + decoding:.1f} s so far", file=sys.stderr, flush=True)
    settings = generator.iterative
    print_json({
        "benchmark": "iterative_resample", "model": str(args.model), "device": device_name(device), "images": count,
        "image_size": generator.config["image_size"], "codebook_size": generator.config["codebook_size"],
        "iterative": settings.to_json(), "refine": args.refine, "refine_candidates": args.candidates,
        "temperature": args.temperature, "batch_size": args.batch_size,
        "seconds_per_image": round((drawing + decoding) / count, 4),
        "draw_seconds_per_image": round(drawing / count, 4), "decode_seconds_per_image": round(decoding / count, 4),
        "seconds_per_step": round(drawing / count / settings.steps, 4),
        "reference": GLIDE_REFERENCE,
    })


if __name__ == "__main__":
    main()
