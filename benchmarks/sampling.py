"""Cached sampling against the reference algorithm, on the same random-weight top and bottom priors, batch and device.

    PYTHONPATH=. python benchmarks/sampling.py --device cpu --config small
    PYTHONPATH=. python3 benchmarks/sampling.py --device cuda --config reference              # batch 64
    PYTHONPATH=. python3 benchmarks/sampling.py --device cuda --config reference --dtype bf16

Priors come from PriorConfig.default_for (small: a 64px image, top 8x8 and bottom 16x16, 128 channels, 2 blocks of
2; reference: 256px, top 32x32 with attention and bottom 64x64 conditioned on it, 256 channels, 4 blocks of 4,
kernel 5, dropout 0.1), K = 512 in both levels and 2 classes.

The reference algorithm (sample_reference) runs the whole prior on the rows up to the current position, once per
position: minutes at the small size, hours at the reference size. So its step is run for real at a few row counts,
a line is fitted to step time against rows, and the line is summed over all H * W positions. Its logits there,
teacher-forced on the fast sampler's codes, give max_abs_logit_diff. float32 means float32 on both sides: TF32 is off
unless --tf32. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from skinaug.priors import PriorConfig, build_prior, draw_codes, sample

IMAGE_SIDE = {"small": 64, "reference": 256}
DEFAULT_BATCH = {"small": 16, "reference": 64}
CODEBOOK_SIZE, NUM_CLASSES = 512, 2
ANCHOR_REFERENCE_S_PER_IMAGE = 7.6  # public VQ-VAE-2 code, H100, batch 64 (shared/docs/anchors.md)


def build_priors(config: str, arch: str, device: torch.device):
    side = IMAGE_SIDE[config]
    top_shape, bottom_shape = (side // 8, side // 8), (side // 4, side // 4)
    top = PriorConfig.default_for("top", CODEBOOK_SIZE, *top_shape, NUM_CLASSES, arch=arch)
    bottom = PriorConfig.default_for("bottom", CODEBOOK_SIZE, *bottom_shape, NUM_CLASSES, arch=arch,
                                     top_shape=top_shape, top_codebook_size=CODEBOOK_SIZE)
    return build_prior(top).to(device).eval(), build_prior(bottom).to(device).eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def reference_estimate(model, codes, fast_logits, labels, condition, device, repeats: int) -> dict:
    """Time sample_reference's step (forward on rows :i+1, take (i, j), draw) at a few row counts; extrapolate."""
    height, width = model.config.height, model.config.width
    row_counts = sorted({int(r) for r in np.linspace(1, height, min(height, 5)).round()})
    uniforms = torch.rand(codes.shape[0], device=device)
    step_times, diffs = [], []
    with torch.no_grad():
        model(codes, labels, condition)  # warm-up at full size
        for rows in row_counts:
            column = (7 * rows) % width

            def reference_step():
                logits = model(codes[:, :rows], labels, condition)[:, :, rows - 1, column]
                draw_codes(logits, uniforms)
                return logits

            runs = [timed(reference_step, device) for _ in range(repeats)]
            step_times.append(min(seconds for _, seconds in runs))
            diffs.append((runs[0][0] - fast_logits[:, :, rows - 1, column].float()).abs().max().item())
    slope, intercept = np.polyfit(row_counts, step_times, 1) if len(row_counts) > 1 else (0.0, step_times[0])
    total = width * sum(max(intercept + slope * rows, 0.0) for rows in range(1, height + 1))
    return dict(seconds=total, positions_run=len(row_counts) * repeats, row_counts=row_counts,
                step_seconds=[round(s, 5) for s in step_times], max_abs_logit_diff=max(diffs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--config", choices=("small", "reference"), default="small")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 small, 64 reference")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--arch", choices=("pixelsnail", "gated-pixelcnn"), default="pixelsnail")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions (CUDA)")
    parser.add_argument("--repeats", type=int, default=2, help="timings of each reference step (the minimum counts)")
    parser.add_argument("--check-eager", action="store_true", help="CUDA: also sample without CUDA graphs and compare")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device(args.device)
    batch = args.batch_size or DEFAULT_BATCH[args.config]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    torch.manual_seed(args.seed)
    top, bottom = build_priors(args.config, args.arch, device)
    labels = torch.arange(batch, device=device) % NUM_CLASSES
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))

    def generator() -> torch.Generator:
        return torch.Generator(device=device).manual_seed(args.seed)

    def fast(return_logits: bool = False, **options):
        top_out, top_s = timed(lambda: sample(top, labels, generator=generator(), dtype=dtype,
                                              return_logits=return_logits, **options), device)
        top_codes = top_out[0] if return_logits else top_out
        bottom_out, bottom_s = timed(lambda: sample(bottom, labels, top_codes, generator=generator(), dtype=dtype,
                                                    return_logits=return_logits, **options), device)
        return top_out, bottom_out, top_s, bottom_s

    fast()  # warm-up: allocator, cuBLAS/cuDNN, first graph capture
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _, _, fast_top_s, fast_bottom_s = fast()
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    log(f"fast: top {fast_top_s:.3f} s, bottom {fast_bottom_s:.3f} s for {batch} images")

    (top_codes, top_logits), (bottom_codes, bottom_logits), _, _ = fast(return_logits=True)
    eager_matches = None
    if args.check_eager and device.type == "cuda":
        (eager_top, _), (eager_bottom, _), _, _ = fast(return_logits=True, use_cuda_graph=False)
        eager_matches = bool((eager_top == top_codes).all() and (eager_bottom == bottom_codes).all())
        log(f"CUDA graph codes == eager codes: {eager_matches}")

    reference_top = reference_estimate(top, top_codes, top_logits, labels, None, device, args.repeats)
    reference_bottom = reference_estimate(bottom, bottom_codes, bottom_logits, labels, top_codes, device, args.repeats)
    log(f"reference (extrapolated): top {reference_top['seconds']:.1f} s, bottom {reference_bottom['seconds']:.1f} s")

    fast_per_image = (fast_top_s + fast_bottom_s) / batch
    reference_per_image = (reference_top["seconds"] + reference_bottom["seconds"]) / batch
    result = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        config=args.config, arch=args.arch, batch=batch, dtype=args.dtype, tf32=args.tf32,
        torch=torch.__version__, cuda_graph=device.type == "cuda",
        reference_s_per_image=round(reference_per_image, 4), fast_s_per_image=round(fast_per_image, 5),
        speedup=round(reference_per_image / fast_per_image, 1),
        max_abs_logit_diff=max(reference_top["max_abs_logit_diff"], reference_bottom["max_abs_logit_diff"]),
        logit_std=round(float(bottom_logits.float().std()), 4),
        fast_s={"top": round(fast_top_s, 4), "bottom": round(fast_bottom_s, 4)},
        reference_s={"top": round(reference_top["seconds"], 2), "bottom": round(reference_bottom["seconds"], 2)},
        reference_extrapolated_from_positions=reference_top["positions_run"] + reference_bottom["positions_run"],
        reference_method="sample_reference's step (forward on rows up to the position, draw) timed at row counts "
                         f"top {reference_top['row_counts']} bottom {reference_bottom['row_counts']} (min of "
                         f"{args.repeats}), line fitted to time vs rows, summed over all positions",
        reference_step_s={"top": reference_top["step_seconds"], "bottom": reference_bottom["step_seconds"]},
        speedup_vs_anchor=round(ANCHOR_REFERENCE_S_PER_IMAGE / fast_per_image, 1) if args.config == "reference"
        else None,
        peak_memory_gb=None if peak_gb is None else round(peak_gb, 2),
        cuda_graph_matches_eager=eager_matches,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
