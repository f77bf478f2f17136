"""Cached sampling against the reference algorithm, on the same random-weight top and bottom priors, batch and device.

    PYTHONPATH=. python benchmarks/sampling.py --device cpu --config small
    PYTHONPATH=. python3 benchmarks/sampling.py --device cuda --config reference              # batch 64
    PYTHONPATH=. python3 benchmarks/sampling.py --device cuda --config reference --dtype bf16
    PYTHONPATH=. python3 benchmarks/sampling.py --device cuda --config reference --tf32 --compile off

Priors come from PriorConfig.default_for (small: a 64px image, top 8x8 and bottom 16x16, 128 channels, 2 blocks of
2; reference: 256px, top 32x32 with attention and bottom 64x64 conditioned on it, 256 channels, 4 blocks of 4,
kernel 5, dropout 0.1), K = 512 in both levels and 2 classes.

The reference algorithm (sample_reference) runs the whole prior on the rows up to the current position, once per
position: minutes at the small size, hours at the reference size. So its step is run for real at a few row counts,
interpolated in between and summed over all H * W positions. Its logits there, teacher-forced on the fast sampler's
codes, give max_abs_logit_diff; one full forward on those codes checks every position (max_abs_logit_diff_all). float32 means float32 on both sides: TF32 is off
unless --tf32. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json

from _common import timed

import numpy as np
import torch

from skinaug.priors import PriorConfig, StepOptions, build_prior, draw_codes, sample

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


def reference_estimate(model, codes, fast_logits, labels, condition, device, repeats: int) -> dict:
    """Time sample_reference's step (forward on rows :i+1, take (i, j), draw) at up to 8 row counts from 1 to H,
    interpolate piecewise-linearly in between, and sum over all H * W positions."""
    height, width = model.config.height, model.config.width
    row_counts = sorted({int(r) for r in np.linspace(1, height, min(height, 8)).round()})
    uniforms = torch.rand(codes.shape[0], device=device)
    step_times, diffs = [], []
    with torch.no_grad():
        model(codes, labels, condition)  # warm-up at full size
        for rows in row_counts:
            column = (7 * rows) % width

            def reference_step(rows=rows, column=column):
                logits = model(codes[:, :rows], labels, condition)[:, :, rows - 1, column]
                draw_codes(logits, uniforms)
                return logits

            runs = [timed(reference_step, device) for _ in range(repeats)]
            step_times.append(min(seconds for _, seconds in runs))
            diffs.append((runs[0][0] - fast_logits[:, :, rows - 1, column].float()).abs().max().item())
        # causality: the full forward's logits at p are the reference's at p, so this checks every position
        all_positions = (model(codes, labels, condition) - fast_logits.float()).abs().max().item()
    total = width * float(np.interp(np.arange(1, height + 1), row_counts, step_times).sum())
    return {"seconds": total, "positions_run": len(row_counts) * repeats, "row_counts": row_counts,
            "step_seconds": [round(s, 5) for s in step_times], "max_abs_logit_diff": max(diffs),
            "all_positions": all_positions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--config", choices=("small", "reference"), default="small")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 small, 64 reference")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--arch", choices=("pixelsnail", "gated-pixelcnn"), default="pixelsnail")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions (CUDA)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timings of the fast sampler and of each reference step (the minimum counts)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="sample(compile=...): auto compiles the step on CUDA")
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

    compile_option = {"auto": "auto", "on": True, "off": False}[args.compile]

    step = StepOptions(dtype=dtype, compile=compile_option)

    def fast(return_logits: bool = False):
        top_out, top_s = timed(lambda: sample(top, labels, generator=generator(), step=step,
                                              return_logits=return_logits), device)
        top_codes = top_out[0] if return_logits else top_out
        bottom_out, bottom_s = timed(lambda: sample(bottom, labels, top_codes, generator=generator(), step=step,
                                                    return_logits=return_logits), device)
        return top_out, bottom_out, top_s, bottom_s

    fast()  # warm-up: allocator, cuBLAS/cuDNN, torch.compile, first graph capture
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = [fast()[2:] for _ in range(args.repeats)]
    fast_top_s, fast_bottom_s = (min(seconds) for seconds in zip(*runs))
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    log(f"fast: top {fast_top_s:.3f} s, bottom {fast_bottom_s:.3f} s for {batch} images")

    (top_codes, top_logits), (bottom_codes, bottom_logits), _, _ = fast(return_logits=True)
    eager = None
    if args.check_eager and device.type == "cuda":  # same seed, no CUDA graph; the bottom from the graph's top codes
        without_graph = StepOptions(dtype=dtype, use_cuda_graph=False)
        eager_top = sample(top, labels, generator=generator(), step=without_graph)
        eager_bottom = sample(bottom, labels, top_codes, generator=generator(), step=without_graph)
        eager = {level: f"{int((a == b).flatten(1).all(1).sum())}/{batch}"
                 for level, a, b in (("top", eager_top, top_codes), ("bottom", eager_bottom, bottom_codes))}
        log(f"images with identical codes, CUDA graph vs eager: {eager}")

    reference_top = reference_estimate(top, top_codes, top_logits, labels, None, device, args.repeats)
    reference_bottom = reference_estimate(bottom, bottom_codes, bottom_logits, labels, top_codes, device, args.repeats)
    log(f"reference (extrapolated): top {reference_top['seconds']:.1f} s, bottom {reference_bottom['seconds']:.1f} s")

    fast_per_image = (fast_top_s + fast_bottom_s) / batch
    reference_per_image = (reference_top["seconds"] + reference_bottom["seconds"]) / batch
    result = {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "config": args.config, "arch": args.arch, "batch": batch, "dtype": args.dtype, "tf32": args.tf32,
        "torch": torch.__version__, "cuda_graph": device.type == "cuda", "compile": args.compile,
        "reference_s_per_image": round(reference_per_image, 4), "fast_s_per_image": round(fast_per_image, 5),
        "speedup": round(reference_per_image / fast_per_image, 1),
        "max_abs_logit_diff": max(reference_top["max_abs_logit_diff"], reference_bottom["max_abs_logit_diff"]),
        "max_abs_logit_diff_all": max(reference_top["all_positions"], reference_bottom["all_positions"]),
        "logit_std": round(float(bottom_logits.float().std()), 4),
        "fast_s": {"top": round(fast_top_s, 4), "bottom": round(fast_bottom_s, 4)},
        "reference_s": {"top": round(reference_top["seconds"], 2), "bottom": round(reference_bottom["seconds"], 2)},
        "reference_extrapolated_from_positions": reference_top["positions_run"] + reference_bottom["positions_run"],
        "reference_method": "sample_reference's step (forward on rows up to the position, draw) timed at row counts "
                            f"top {reference_top['row_counts']} bottom {reference_bottom['row_counts']} (min of "
                            f"{args.repeats}), interpolated piecewise-linearly, summed over all positions",
        "reference_step_s": {"top": reference_top["step_seconds"], "bottom": reference_bottom["step_seconds"]},
        "speedup_vs_anchor": (round(ANCHOR_REFERENCE_S_PER_IMAGE / fast_per_image, 1)
                              if args.config == "reference" else None),
        "peak_memory_gb": None if peak_gb is None else round(peak_gb, 2),
        "images_identical_cuda_graph_vs_eager": eager,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
