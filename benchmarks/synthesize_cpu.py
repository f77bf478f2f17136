"""`synthesize` end to end on the CPU: images/s per batch size, torch and onnx backends, and where the time goes.

    python benchmarks/synthesize_cpu.py --model /work/train/ham10000-64     # a trained model directory
    python benchmarks/synthesize_cpu.py --random                            # random weights, default 64px sizes
    python benchmarks/synthesize_cpu.py --random --batch-sizes 64,256 --backends torch -n 256

Speed depends on sizes, not on weights: `--random` builds a model directory with random weights and the default
sizes of a 64px model (VQ-VAE K=256, D=8; priors from `PriorConfig.default_for`; the 7 HAM10000 classes).

For each backend and batch size, `-n` images of one class (default: melanoma, else the model's second class):
- `write`: the whole `write_dataset` loop of `skinaug synthesize` (sampling, decoding, PNG files, labels.csv, codes.h5,
  run.json) into a fresh folder; model loading is excluded (the generator, its priors and onnxruntime sessions are
  opened and warmed up first).
- `no_write`: the same batches (same seeds), codes and images only, nothing written.
- `split`: seconds of the `write` run in the top prior, the bottom prior, the decoder and the rest (PNG writing
  and the bookkeeping of `write_dataset`), so what bounds each configuration is visible.
The onnx backend runs on graphs exported to a temporary folder (`export_onnx(..., out=TMP)`), the model directory
is left untouched. Timings: the best of `--repeats`. Prints one JSON object on its last stdout line; its
"loadavg_before" and "loadavg_after" tell whether other work shared the cores (on 2 cores, another busy process
can slow torch's OpenMP threads 50-fold: run on an idle machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import device_name, print_json

# benchmarks/onnx.py would shadow the onnx package that the exporter imports
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch

HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "melanoma", "nevus", "vasc"]


def make_random_model(path: Path, image_size: int = 64, classes: list[str] = HAM_CLASSES) -> Path:
    """A model directory with random weights and the default sizes for `image_size`."""
    from skinaug.storage.modeldir import PRIOR_WEIGHTS, ModelDir, save_weights
    from skinaug.priors import PriorConfig, build_prior
    from skinaug.vqvae.model import VQVAE2, VQVAEConfig

    torch.manual_seed(0)
    vqvae = VQVAE2(VQVAEConfig(image_size=image_size)).eval()
    path.mkdir(parents=True)
    model_dir = ModelDir(path)
    model_dir.save_vqvae(vqvae, class_names=classes, training_data={}, metrics={})
    grid = vqvae.config.grid_shapes()
    K = vqvae.config.codebook_size
    priors = {}
    for level in ("top", "bottom"):
        config = PriorConfig.default_for(level, K, *grid[level], num_classes=len(classes), top_shape=grid["top"],
                                         top_codebook_size=K)
        save_weights(path / PRIOR_WEIGHTS[level], build_prior(config).state_dict())
        priors[level] = {**config.to_dict(), "classes": None, "metrics": {}}
    model_dir.update_config(priors=priors)
    return path


class Timed:
    """Wraps a generator's sampling and decoding to add up seconds per part."""

    def __init__(self, generator):
        self.generator, self.seconds = generator, Counter()
        sample, images_for = generator._sample, generator.images_for

        def timed_sample(level, *args, **kwargs):
            started = time.perf_counter()
            try:
                return sample(level, *args, **kwargs)
            finally:
                self.seconds[f"{level}_prior"] += time.perf_counter() - started

        def timed_images(codes):
            started = time.perf_counter()
            try:
                return images_for(codes)
            finally:
                self.seconds["decode"] += time.perf_counter() - started

        generator._sample, generator.images_for = timed_sample, timed_images


def run_backend(backend: str, model: Path, label: str, n: int, batch_sizes: list[int], repeats: int, seed: int,
                scratch: Path, log) -> dict:
    import logging

    from skinaug.generation.commands import Job, class_index, job_plan, make_batches, name_jobs, open_generator, write_dataset
    from skinaug.generation.sampler import RunOptions

    logging.getLogger("skinaug").setLevel(logging.WARNING)  # no progress lines inside the timings
    generator = open_generator(model, "cpu", backend=backend)
    timer = Timed(generator)
    label_index = class_index(generator.class_names, label)
    results = {}

    def jobs_of(count: int) -> list:
        jobs = [Job("synthesize", label_index) for _ in range(count)]
        name_jobs(jobs, generator.class_names)
        return jobs

    # warm-up: priors loaded, sessions opened, allocators and thread pools started
    warm = jobs_of(min(batch_sizes))
    generator.images_for(generator.codes_for("synthesize", warm, None, 0))
    for batch_size in batch_sizes:
        jobs = jobs_of(n)
        best_write, best_split, best_no_write = None, None, None
        generator.codes_for("synthesize", jobs[:batch_size], None, 1)  # warm-up at this batch size
        for _ in range(repeats):
            out = scratch / f"{backend}-{batch_size}"
            shutil.rmtree(out, ignore_errors=True)
            plan = job_plan(jobs, command="synthesize", seed=seed, batch_size=batch_size)
            timer.seconds.clear()
            started = time.perf_counter()
            write_dataset(generator, jobs, None, out, plan=plan,
                          run=RunOptions(seed=seed, batch_size=batch_size))
            seconds = time.perf_counter() - started
            if best_write is None or seconds < best_write:
                best_write = seconds
                best_split = {**{k: round(v, 3) for k, v in timer.seconds.items()},
                              "write_and_rest": round(seconds - sum(timer.seconds.values()), 3)}
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            for index, (_, batch) in enumerate(make_batches(jobs, batch_size)):
                from skinaug.generation.commands import batch_seed

                generator.images_for(generator.codes_for("synthesize", batch, None, batch_seed(seed, index)))
            seconds = time.perf_counter() - started
            best_no_write = seconds if best_no_write is None else min(best_no_write, seconds)
        results[str(batch_size)] = {"images_per_s": round(n / best_write, 2),
                                    "images_per_s_no_write": round(n / best_no_write, 2),
                                    "seconds": round(best_write, 3), "split_seconds": best_split}
        log(f"{backend} batch {batch_size}: {n / best_write:.1f} img/s with PNG writing, "
            f"{n / best_no_write:.1f} without; {best_split}")
    return {"results": results, "info": generator.backend_info()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a model directory with both priors")
    source.add_argument("--random", action="store_true", help="random weights, default 64px sizes")
    parser.add_argument("--class", dest="label", default=None, help="class to synthesize (default: the second)")
    parser.add_argument("-n", type=int, default=256, help="images per configuration")
    parser.add_argument("--batch-sizes", default="16,32,64,128,256")
    parser.add_argument("--backends", default="torch,onnx")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    with tempfile.TemporaryDirectory(prefix="synth_bench.") as tmp:
        tmp = Path(tmp)
        model = args.model or make_random_model(tmp / "model")
        from skinaug.storage.modeldir import ModelDir

        config = ModelDir(model).config()
        label = args.label or config["class_names"][min(1, len(config["class_names"]) - 1)]
        if args.label is None and "melanoma" in config["class_names"]:
            label = "melanoma"
        result = {"device": device_name(torch.device("cpu")), "cpu_count": os.cpu_count(), "model": str(args.model or "random"),
                  "image_size": config["image_size"], "codebook_size": config["codebook_size"],
                  "priors": {lv: {k: p[k] for k in ("arch", "channels", "n_blocks", "n_res_blocks", "attention")}
                             for lv, p in config["priors"].items()},
                  "class": label, "n": args.n, "repeats": args.repeats, "loadavg_before": os.getloadavg()}
        for backend in backends:
            run_model = model
            if backend == "onnx":
                from skinaug.export.onnx import export_onnx

                run_model = tmp / "onnx_model"
                started = time.perf_counter()
                export_onnx(model, out=run_model)
                result["onnx_export_seconds"] = round(time.perf_counter() - started, 1)
                import onnxruntime

                result["onnxruntime"] = onnxruntime.__version__
            result.setdefault("backends", {})[backend] = run_backend(backend, run_model, label, args.n, batch_sizes,
                                                                     args.repeats, args.seed, tmp, log)
        summary = {}
        for backend in backends:
            rates = result["backends"][backend]["results"]
            best = max(rates, key=lambda b: rates[b]["images_per_s"])
            summary[backend] = {"best_batch": int(best), "images_per_s": rates[best]["images_per_s"],
                                "images_per_s_no_write": rates[best]["images_per_s_no_write"]}
        result["best"] = summary
        result["loadavg_after"] = os.getloadavg()
        print_json(result)


if __name__ == "__main__":
    main()
