"""VQ-VAE-2 training throughput: decoding files into the uint8 cache, then training steps from it.

    python benchmarks/train_vqvae.py --device cuda --image-size 256 --batch-size 128
    python benchmarks/train_vqvae.py --device cpu --image-size 64 --batch-size 32 --steps 5 --limit 512

Prints JSON (last line): decode images/s (files on disk -> cache), training images/s from the cache,
and the first-epoch rate that includes decoding every file once. Uses the real images in
../shared/data (a folder given by --data otherwise).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from functools import partial

from _common import SHARED_DATA, device_name, print_json, synchronize, timed

import torch

from skinaug.data.scan import scan_dataset
from skinaug.storage.image_cache import build_cache
from skinaug.training.vqvae import VQVAEStep
from skinaug.training.loop import BatchSource
from skinaug.vqvae.model import VQVAE2, VQVAEConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA / "ham10000-150" / "images"))
    parser.add_argument("--labels", default=str(SHARED_DATA / "ham10000-150" / "labels.csv"))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--json", action="store_true", help="(kept for symmetry: the last line is always JSON)")
    args = parser.parse_args()
    device = torch.device(args.device)

    dataset = scan_dataset(args.data, args.labels)
    samples = dataset.samples[: args.limit] if args.limit else dataset.samples
    with tempfile.TemporaryDirectory() as tmp:
        (cache, kept), decode_s = timed(lambda: build_cache(samples, args.image_size, f"{tmp}/cache.npy"), torch.device("cpu"))
        cache = cache[:]  # keep the memory map alive past the folder's removal
        source = BatchSource(cache, device)

        config = VQVAEConfig(image_size=args.image_size)  # the reference sizes: channel 128, 2 res blocks of 32
        torch.manual_seed(0)
        model = VQVAE2(config).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
        network = torch.compile(model) if args.compile else model
        use_bf16 = device.type == "cuda" and args.precision == "bf16"
        autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=use_bf16)
        train_step = VQVAEStep(model, network, optimizer, source, autocast)  # `skinaug train vqvae`'s step, --loss mse
        generator = torch.Generator().manual_seed(0)
        steps_done = itertools.count()

        def step():
            indices = torch.randint(len(kept), (args.batch_size,), generator=generator).numpy()
            train_step(indices, next(steps_done))

        for _ in range(args.warmup):
            step()
        synchronize(device)
        _, train_s = timed(lambda: [step() for _ in range(args.steps)], device)

    train_rate = args.steps * args.batch_size / train_s
    decode_rate = len(kept) / decode_s
    print_json({
        "benchmark": "train_vqvae",
        "device": device_name(device),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": args.precision if device.type == "cuda" else "fp32",
        "compile": args.compile,
        "images": len(kept),
        "decode_images_per_s": round(decode_rate, 1),
        "train_images_per_s_from_cache": round(train_rate, 1),
        "first_epoch_images_per_s_from_files": round(len(kept) / (decode_s + len(kept) / train_rate), 1),
        "gpu_resident_cache": source.on_device is not None,
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    })


if __name__ == "__main__":
    main()
