"""onnxruntime against PyTorch on the same model and device: encode, decode and synthesis images/s.

    python benchmarks/onnx.py --device cpu --image-size 64 --batch-size 16
    python benchmarks/onnx.py --device cuda --image-size 256 --batch-size 64

A model directory with random weights (speed does not depend on training) and the default-sized priors for the
grid, exported with `skinaug export onnx` (parity checked). Synthesis: top prior, bottom prior, decoder, with the
cached samplers on both sides (torch: `skinaug.priors.sample`; onnx: the per-step graph in a numpy loop). Prints
JSON (last line).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import device_name, print_json, timed

# this file is named onnx.py: drop its folder from the path so `import onnx` finds the package
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import torch

from skinaug.backends.torch import decode_batch, encode_batch
from skinaug.storage.modeldir import PRIOR_WEIGHTS, ModelDir, save_weights
from skinaug.export.onnx import export_onnx
from skinaug.backends.onnx_runtime import OnnxModel
from skinaug.priors import PriorConfig, build_prior, sample
from skinaug.vqvae.model import VQVAE2, VQVAEConfig


def make_model(path: Path, image_size: int, prior_channels: int | None) -> None:
    torch.manual_seed(0)
    vqvae = VQVAE2(VQVAEConfig(image_size=image_size)).eval()
    model_dir = ModelDir(path)
    path.mkdir(parents=True)
    model_dir.save_vqvae(vqvae, class_names=["benign", "malignant"], training_data={}, metrics={})
    grid = vqvae.config.grid_shapes()
    priors = {}
    for level in ("top", "bottom"):
        config = PriorConfig.default_for(level, 256, *grid[level], num_classes=2, top_shape=grid["top"],
                                         top_codebook_size=256)
        if prior_channels:
            config.channels = prior_channels
        prior = build_prior(config)
        save_weights(path / PRIOR_WEIGHTS[level], prior.state_dict())
        priors[level] = {**config.to_dict(), "classes": None, "metrics": {}}
    model_dir.update_config(priors=priors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--synth-batch", type=int, default=4)
    parser.add_argument("--prior-channels", type=int, default=None, help="override the default prior width")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        make_model(path, args.image_size, args.prior_channels)
        manifest = export_onnx(path)
        model_dir = ModelDir(path)
        network = model_dir.load_vqvae(device)
        priors = {level: model_dir.load_prior(level, device)[0] for level in ("top", "bottom")}
        runtime = OnnxModel(path, "cpu" if device.type == "cpu" else "cuda")
        onnx_vqvae = runtime.vqvae
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3), dtype=np.uint8)
        codes, _ = encode_batch(network, images, device)

        def best(fn):
            fn()  # warm-up
            return min(timed(fn, device)[1] for _ in range(args.repeats))

        labels = np.arange(args.synth_batch) % 2

        def synth_torch():
            with torch.no_grad():
                label_tensor = torch.as_tensor(labels, device=device)
                top = sample(priors["top"], label_tensor, n=args.synth_batch)
                bottom = sample(priors["bottom"], label_tensor, top, n=args.synth_batch)
                return decode_batch(network, {"top": top.cpu().numpy(), "bottom": bottom.cpu().numpy()}, device)

        def synth_onnx():
            top = runtime.prior("top").sample(labels, n=args.synth_batch, rng=rng)
            bottom = runtime.prior("bottom").sample(labels, top, n=args.synth_batch, rng=rng)
            return onnx_vqvae.decode({"top": top, "bottom": bottom})

        n, m = args.batch_size, args.synth_batch
        result = {
            "device": device_name(device), "provider": runtime.provider or runtime.info()["provider"],
            "image_size": args.image_size, "batch_size": n, "synth_batch": m,
            "prior_channels": {level: p.config.channels for level, p in priors.items()},
            "encode_images_per_s": {"torch": n / best(lambda: encode_batch(network, images, device)),
                                    "onnx": n / best(lambda: onnx_vqvae.encode_with_error(images))},
            "decode_images_per_s": {"torch": n / best(lambda: decode_batch(network, codes, device)),
                                    "onnx": n / best(lambda: onnx_vqvae.decode(codes))},
            "synthesize_images_per_s": {"torch": m / best(synth_torch), "onnx": m / best(synth_onnx)},
            "parity": manifest["parity"],
        }
    print_json(result)


if __name__ == "__main__":
    main()
