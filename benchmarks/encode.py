"""VQ-VAE-2 encoding throughput: from files on disk (JPEG decoding included) and from the uint8 cache.

    python benchmarks/encode.py --device cuda --image-size 256 --batch-size 256
    python benchmarks/encode.py --device cpu --image-size 64 --limit 512

Random weights (speed does not depend on training). Prints JSON (last line).
"""

from __future__ import annotations

import argparse
import os
import tempfile

from _common import SHARED_DATA, device_name, print_json, timed

import numpy as np
import torch

from skinaug.data.scan import scan_dataset
from skinaug.storage.image_cache import build_cache, decode_in_chunks
from skinaug.vqvae.model import VQVAE2, VQVAEConfig, to_model_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA / "ham10000-150" / "images"))
    parser.add_argument("--labels", default=str(SHARED_DATA / "ham10000-150" / "labels.csv"))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: up to 8)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the cache for the cached figure")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    use_bf16 = device.type == "cuda" and args.precision == "bf16"

    dataset = scan_dataset(args.data, args.labels)
    samples = dataset.samples[: args.limit] if args.limit else dataset.samples
    torch.manual_seed(0)
    model = VQVAE2(VQVAEConfig(image_size=args.image_size)).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def encode(batch_uint8) -> torch.Tensor:
        batch = batch_uint8 if torch.is_tensor(batch_uint8) else torch.from_numpy(np.asarray(batch_uint8))
        images = to_model_input(batch.to(device, non_blocking=True))
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            return model.encode(images)[1]["bottom"]

    encode(np.zeros((2, args.image_size, args.image_size, 3), np.uint8))  # warm-up (kernels, cuDNN choice)

    def from_files() -> int:
        count = 0
        for images, kept in decode_in_chunks(samples, args.image_size, chunk=args.batch_size * 4, workers=args.workers):
            for start in range(0, len(kept), args.batch_size):
                encode(images[start : start + args.batch_size])
            count += len(kept)
        return count

    files_count, files_s = timed(from_files, device)
    with tempfile.TemporaryDirectory() as tmp:
        cache, kept = build_cache(samples, args.image_size, f"{tmp}/cache.npy")
        resident = torch.from_numpy(np.array(cache)).to(device)

        def from_cache() -> None:
            for _ in range(args.repeats):
                for start in range(0, resident.shape[0], args.batch_size):
                    encode(resident[start : start + args.batch_size])

        from_cache()  # warm-up over every batch shape
        _, cache_s = timed(from_cache, device)
    print_json({
        "benchmark": "encode",
        "device": device_name(device),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": "bf16" if use_bf16 else "fp32",
        "images": files_count,
        "decode_workers": args.workers or min(8, os.cpu_count() or 1),
        "images_per_s_from_files": round(files_count / files_s, 1),
        "images_per_s_from_cache": round(args.repeats * len(kept) / cache_s, 1),
    })


if __name__ == "__main__":
    main()
