"""`synthesize` on the CPU: images/s per batch size and backend, each against a baseline measured in the same run.

    python benchmarks/synthesize_cpu.py --model skinaug/models/ham10000-64          # any model directory
    python benchmarks/synthesize_cpu.py --model /work/train/ham10000-128 --isa avx2  # as on a CPU without AVX-512
    python benchmarks/synthesize_cpu.py --model skinaug/models/ham10000-64 --process -n 512   # whole processes
    python benchmarks/synthesize_cpu.py --random --image-size 128 --downsample 8 --codebook-size 512

Arms (`--arms`, all measured in one process, interleaved: each repeat runs every arm once, in rotated order, so
background load falls on all of them alike):
- `torch`: the torch backend as shipped (step matmuls with oneDNN-packed weights where available);
- `torch-addmm`: the same sampler with every step matmul through `torch.addmm` (SKINAUG_STEP_MATMUL=addmm): the
  baseline of the ratios, what the sampler runs where oneDNN brings nothing;
- `onnx`: the onnx backend on graphs exported to a temporary folder (the model directory is left untouched).
"ratios" divides each arm's images/s by `--baseline`'s (default torch-addmm) at the same batch size.

For each arm and batch size, `-n` images of one class (default: melanoma, else the model's second class):
- `write`: the whole `write_dataset` loop of `skinaug synthesize` (sampling, decoding, PNG files, labels.csv, codes.h5,
  run.json) into a fresh folder; model loading is excluded (the generator, its priors and onnxruntime sessions are
  opened and warmed up first);
- `no_write`: the same batches (same seeds), codes and images only, nothing written;
- `split`: seconds of the `write` run in the top prior, the bottom prior, the decoder and the rest (PNG writing
  and the bookkeeping of `write_dataset`), so what bounds each configuration is visible.

`--process`: whole processes instead: `python -m skinaug synthesize --class C -n N --model M --device cpu
--backend B --batch-size S` timed from start to exit (interpreter start, imports, model loading, weight packing,
sessions, sampling, files), per arm, repeats interleaved; "loop_seconds" is the synthesis loop as the command reports
it ("made N images in X s"), "startup_seconds" the rest. `--baseline-src DIR` adds an arm `src:DIR` that runs the
command from another checkout (e.g. `git archive 5d7916e | tar -x -C /tmp/old`) on the torch backend.

`--isa avx2` runs the whole benchmark again in a subprocess that sees a CPU without AVX-512: ONEDNN_MAX_CPU_ISA=AVX2
(oneDNN), ATEN_CPU_CAPABILITY=avx2 (ATen's kernels), MKL_ENABLE_INSTRUCTIONS=AVX2 (MKL), and, for onnxruntime's MLAS,
which has no such switch, the CPUID trap of benchmarks/cpuid_avx2.c (built with cc, LD_PRELOADed; it needs CPUID
faulting, the "cpuid_fault" flag). The JSON's "isa" says what was capped; without the trap the onnx arm runs its
native kernels and "isa.onnxruntime" says so.

Speed depends on sizes, not on weights: `--random` builds a model directory with random weights and the default
sizes of `--image-size` (with `--downsample`, `--codebook-size`). Timings: the best of `--repeats`. Prints one JSON
object on its last stdout line; "loadavg_before"/"loadavg_after" tell whether other work shared the cores (on 2
cores, another busy process slows torch's OpenMP threads many-fold: ratios within a run hold up far better than
absolute figures). Each figure also comes as images per CPU-second of this process ("images_per_cpu_s"; with
--process, the children's "cpu_seconds"): with `--threads 1` (one thread for torch and onnxruntime alike) that is
the speed of one core, which other processes on the machine barely change, and the ratios of it are the ones to
quote from a shared machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import print_json

# benchmarks/onnx.py would shadow the onnx package that the exporter imports
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import torch  # noqa: E402

HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "melanoma", "nevus", "vasc"]
ARMS = ("torch", "torch-addmm", "onnx")
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
CHILD = "SKINAUG_BENCH_ISA_CHILD"  # set in the --isa avx2 subprocess: what it was given, as JSON


def make_random_model(path: Path, image_size: int = 64, classes: list[str] = HAM_CLASSES, downsample: int = 4,
                      codebook_size: int = 256) -> Path:
    """A model directory with random weights and the default sizes for `image_size`."""
    from skinaug.storage.modeldir import PRIOR_WEIGHTS, ModelDir, save_weights
    from skinaug.priors import PriorConfig, build_prior
    from skinaug.vqvae import VQVAE2, VQVAEConfig

    torch.manual_seed(0)
    vqvae = VQVAE2(VQVAEConfig(image_size=image_size, downsample=downsample, codebook_size=codebook_size)).eval()
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


def cpu_description() -> dict:
    """The CPU's model name, its vector extensions and the CPUs this process may use."""
    from skinaug.runtime import cgroup_cpu_quota, usable_cpus

    info = {"model": None, "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
        if found := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
            info["model"] = found.group(1).strip()
        if found := re.search(r"^flags\s*:\s*(.+)$", text, re.M):
            flags = found.group(1).split()
            info["flags"] = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx_vnni", "cpuid_fault")
                             if f in flags]
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {**info, "cpu_count": os.cpu_count(), "affinity": affinity, "cgroup_quota": cgroup_cpu_quota(),
            "usable_cpus": usable_cpus(), "torch_threads": torch.get_num_threads(),
            "aten_capability": torch.backends.cpu.get_cpu_capability()}


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


def matmul_env(arm: str):
    """SKINAUG_STEP_MATMUL for an arm (read by the sampler at every call)."""
    if arm == "torch-addmm":
        os.environ["SKINAUG_STEP_MATMUL"] = "addmm"
    else:
        os.environ.pop("SKINAUG_STEP_MATMUL", None)


def run_in_process(arms: list[str], models: dict, label: str, n: int, batch_sizes: list[int], repeats: int, seed: int,
                   scratch: Path, log) -> dict:
    import logging

    from skinaug.generation.commands import Job, batch_seed, class_index, job_plan, make_batches, name_jobs, open_generator, write_dataset
    from skinaug.generation.sampler import RunOptions

    logging.getLogger("skinaug").setLevel(logging.WARNING)  # no progress lines inside the timings
    generators, opened = {}, {}
    for arm in arms:
        backend = "onnx" if arm == "onnx" else "torch"
        if backend not in opened:
            started = time.perf_counter()
            opened[backend] = open_generator(models[backend], "cpu", backend=backend)
            opened[backend]._open_seconds = time.perf_counter() - started
        generators[arm] = opened[backend]
    timers = {id(g): Timed(g) for g in opened.values()}
    class_names = next(iter(opened.values())).class_names
    label_index = class_index(class_names, label)

    def jobs_of(count: int) -> list:
        jobs = [Job("synthesize", label_index) for _ in range(count)]
        name_jobs(jobs, class_names)
        return jobs

    results = {arm: {"results": {}, "info": generators[arm].backend_info()} for arm in arms}
    for arm in arms:  # warm-up: priors loaded, weights packed, sessions opened, allocators and thread pools started
        matmul_env(arm)
        started = time.perf_counter()
        generator = generators[arm]
        generator.images_for(generator.codes_for("synthesize", jobs_of(min(batch_sizes)), None, 0))
        results[arm]["first_batch_seconds"] = round(time.perf_counter() - started, 3)
        results[arm]["open_seconds"] = round(generator._open_seconds, 3)
    for batch_size in batch_sizes:
        jobs = jobs_of(n)
        best = {arm: {"write": None, "split": None, "no_write": None, "cpu_write": None, "cpu_no_write": None}
                for arm in arms}
        for arm in arms:  # warm-up at this batch size
            matmul_env(arm)
            generators[arm].codes_for("synthesize", jobs[:batch_size], None, 1)
        for repeat in range(repeats):
            order = arms[repeat % len(arms):] + arms[:repeat % len(arms)]
            for arm in order:
                matmul_env(arm)
                generator, timer = generators[arm], timers[id(generators[arm])]
                out = scratch / f"{arm}-{batch_size}"
                shutil.rmtree(out, ignore_errors=True)
                plan = job_plan(jobs, command="synthesize", seed=seed, batch_size=batch_size)
                timer.seconds.clear()
                started, cpu = time.perf_counter(), time.process_time()
                write_dataset(generator, jobs, None, out, plan=plan, run=RunOptions(seed=seed, batch_size=batch_size))
                seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
                mine = best[arm]
                mine["cpu_write"] = cpu if mine["cpu_write"] is None else min(mine["cpu_write"], cpu)
                if mine["write"] is None or seconds < mine["write"]:
                    mine["write"] = seconds
                    mine["split"] = {**{k: round(v, 3) for k, v in timer.seconds.items()},
                                     "write_and_rest": round(seconds - sum(timer.seconds.values()), 3)}
                shutil.rmtree(out, ignore_errors=True)
                started, cpu = time.perf_counter(), time.process_time()
                for index, (_, batch) in enumerate(make_batches(jobs, batch_size)):
                    generator.images_for(generator.codes_for("synthesize", batch, None, batch_seed(seed, index)))
                seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
                mine["no_write"] = seconds if mine["no_write"] is None else min(mine["no_write"], seconds)
                mine["cpu_no_write"] = cpu if mine["cpu_no_write"] is None else min(mine["cpu_no_write"], cpu)
        for arm in arms:
            mine = best[arm]
            results[arm]["results"][str(batch_size)] = {
                "images_per_s": round(n / mine["write"], 2), "images_per_s_no_write": round(n / mine["no_write"], 2),
                "seconds": round(mine["write"], 3), "split_seconds": mine["split"],
                "images_per_cpu_s": round(n / mine["cpu_write"], 2),
                "images_per_cpu_s_no_write": round(n / mine["cpu_no_write"], 2)}
            log(f"{arm} batch {batch_size}: {n / mine['write']:.1f} img/s with PNG writing, "
                f"{n / mine['no_write']:.1f} without; {mine['split']}")
    matmul_env("torch")
    return results


def run_processes(arms: list[str], models: dict, label: str, n: int, batch_size: int, repeats: int, seed: int,
                  scratch: Path, log, threads: int | None = None) -> dict:
    """Each arm as a whole `skinaug synthesize` process, repeats interleaved. threads: the children run on that many
    of this process's CPUs (affinity) with OMP_NUM_THREADS set, a smaller machine for every arm alike."""
    cpus = sorted(os.sched_getaffinity(0))[:threads] if threads and hasattr(os, "sched_getaffinity") else None
    results = {arm: {"runs": []} for arm in arms}
    for repeat in range(repeats):
        order = arms[repeat % len(arms):] + arms[:repeat % len(arms)]
        for arm in order:
            env = {k: v for k, v in os.environ.items() if k != "SKINAUG_STEP_MATMUL"}
            source, backend = REPO, "torch"
            if arm.startswith("src:"):
                source = Path(arm[4:])
            elif arm == "onnx":
                backend = "onnx"
            elif arm == "torch-addmm":
                env["SKINAUG_STEP_MATMUL"] = "addmm"
            env["PYTHONPATH"] = os.pathsep.join([str(source), *filter(None, [os.environ.get("PYTHONPATH")])])
            if threads:
                env["OMP_NUM_THREADS"] = str(threads)
            out = scratch / f"process-{re.sub(r'[^A-Za-z0-9]+', '_', arm)}"
            shutil.rmtree(out, ignore_errors=True)
            command = [sys.executable, "-m", "skinaug", "synthesize", "--class", label, "-n", str(n), "--out", str(out),
                       "--model", str(models[backend]), "--device", "cpu", "--batch-size", str(batch_size),
                       "--seed", str(seed)]
            if backend == "onnx":
                command += ["--backend", "onnx"]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run(command, env=env, cwd=scratch, capture_output=True, text=True,
                                  preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
            seconds = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            shutil.rmtree(out, ignore_errors=True)
            if done.returncode != 0:
                raise SystemExit(f"{arm}: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
            made = re.search(r"made (\d+) images in ([0-9.]+)\s*s", done.stderr)
            loop = float(made.group(2)) if made else None
            run = {"seconds": round(seconds, 3), "loop_seconds": loop,
                   "startup_seconds": round(seconds - loop, 3) if loop is not None else None,
                   "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)}
            results[arm]["runs"].append(run)
            log(f"{arm}: {n} images in {seconds:.2f} s ({n / seconds:.1f} img/s whole process), {run}")
    for arm in arms:
        runs = results[arm]["runs"]
        fastest = min(runs, key=lambda r: r["seconds"])
        results[arm].update(seconds=fastest["seconds"], images_per_s=round(n / fastest["seconds"], 2),
                            loop_seconds=fastest["loop_seconds"], startup_seconds=fastest["startup_seconds"],
                            cpu_seconds=min(r["cpu_seconds"] for r in runs))
    return results


def isa_child(args: argparse.Namespace, argv: list[str]) -> None:
    """Runs this benchmark again in a subprocess that sees an AVX2-only CPU; its JSON passes through."""
    import json

    env = {**os.environ, **AVX2_ENV}
    caps = {"onednn": "ONEDNN_MAX_CPU_ISA=AVX2", "aten": "ATEN_CPU_CAPABILITY=avx2", "mkl": "MKL_ENABLE_INSTRUCTIONS=AVX2",
            "onnxruntime": "not capped (MLAS has no ISA switch; no CPUID trap)"}
    build = Path(tempfile.mkdtemp(prefix="cpuid_avx2."))
    try:
        compiler = shutil.which("cc") or shutil.which("gcc")
        library = build / "cpuid_avx2.so"
        if args.cpuid_trap and compiler:
            made = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(HERE / "cpuid_avx2.c")],
                                  capture_output=True, text=True)
            probe = ("import torch; print(torch.backends.cpu.get_cpu_capability())")
            if made.returncode == 0:  # the trap alone (no ATEN_CPU_CAPABILITY) must make ATen see AVX2
                seen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                      env={**os.environ, "LD_PRELOAD": str(library)})
                if seen.stdout.strip() == "AVX2":
                    env["LD_PRELOAD"] = " ".join(filter(None, [str(library), os.environ.get("LD_PRELOAD")]))
                    caps["onnxruntime"] = "CPUID trap (benchmarks/cpuid_avx2.c): AVX-512 and AVX-VNNI hidden from every library"
                else:
                    caps["onnxruntime"] = f"not capped (the CPUID trap did not take: ATen saw {seen.stdout.strip() or seen.stderr[-200:]})"
            else:
                caps["onnxruntime"] = f"not capped (cc failed: {made.stderr[-200:]})"
        env[CHILD] = json.dumps(caps)
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], env=env)
        raise SystemExit(done.returncode)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def ratios(result: dict, baseline: str, keys: list[str]) -> dict:
    """Each arm's images/s over the baseline arm's, per batch size (or for the whole process)."""
    arms = result["arms"]
    if baseline not in arms:
        return {}
    if result["mode"] == "process":
        base = arms[baseline]
        return {arm: {"wall": round(arms[arm]["images_per_s"] / base["images_per_s"], 3),
                      "cpu": round(base["cpu_seconds"] / arms[arm]["cpu_seconds"], 3)} for arm in arms if arm != baseline}
    out = {}
    for batch in keys:
        base = arms[baseline]["results"][batch]
        out[batch] = {arm: {key: round(arms[arm]["results"][batch][f"images_per_{key_of}"] / base[f"images_per_{key_of}"], 3)
                            for key, key_of in (("write", "s"), ("no_write", "s_no_write"), ("cpu_write", "cpu_s"),
                                                ("cpu_no_write", "cpu_s_no_write"))}
                      for arm in arms if arm != baseline}
    return out


def main() -> None:
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a model directory with both priors (any size)")
    source.add_argument("--random", action="store_true", help="random weights, default sizes of --image-size")
    parser.add_argument("--image-size", type=int, default=64, help="with --random")
    parser.add_argument("--downsample", type=int, default=4, help="with --random: the bottom codes' stride")
    parser.add_argument("--codebook-size", type=int, default=256, help="with --random")
    parser.add_argument("--class", dest="label", default=None, help="class to synthesize (default: melanoma, else the second)")
    parser.add_argument("-n", type=int, default=256, help="images per configuration")
    parser.add_argument("--batch-sizes", default="64,256", help="with --process: the first is used")
    parser.add_argument("--arms", default="torch,torch-addmm,onnx", help=f"any of {', '.join(ARMS)}")
    parser.add_argument("--backends", default=None, help="old spelling: torch,onnx (the arms without the baseline)")
    parser.add_argument("--matmul", choices=("packed", "addmm", "both"), default="both",
                        help="the torch arm's step matmuls: packed (arm torch), addmm (arm torch-addmm) or both")
    parser.add_argument("--baseline", default="torch-addmm", help="the arm the ratios divide by")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="with --process: also run the command from this checkout (arm src:DIR, torch backend)")
    parser.add_argument("--isa", choices=("native", "avx2"), default="native",
                        help="avx2: rerun in a subprocess that sees no AVX-512 (see above)")
    parser.add_argument("--no-cpuid-trap", dest="cpuid_trap", action="store_false",
                        help="with --isa avx2: environment caps only (onnxruntime keeps its native kernels)")
    parser.add_argument("--process", action="store_true", help="time whole `skinaug synthesize` processes")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of both backends (default: skinaug's choice); with --process, the children's "
                             "CPUs too. With 1, images_per_cpu_s holds up under other load")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    if args.isa == "avx2" and CHILD not in os.environ:
        isa_child(args, sys.argv[1:])
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))

    from skinaug.runtime import fit_torch_threads

    fit_torch_threads()  # what the CLI does when it opens the device
    if args.threads:  # both backends: torch's pool, and onnxruntime's sessions (skinaug's usable_cpus)
        import skinaug.onnx.runtime

        torch.set_num_threads(args.threads)
        skinaug.onnx.runtime.usable_cpus = lambda: args.threads
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    arms = [a.strip() for a in (args.backends or args.arms).split(",") if a.strip()]
    if args.matmul != "both":
        arms = [a for a in arms if not a.startswith("torch")] + ["torch" if args.matmul == "packed" else "torch-addmm"]
        arms = sorted(set(arms), key=lambda a: ARMS.index(a))
    if unknown := [a for a in arms if a not in ARMS]:
        parser.error(f"unknown arm(s) {unknown}: use {', '.join(ARMS)}")
    if args.baseline_src is not None:
        if not args.process:
            parser.error("--baseline-src needs --process")
        arms.append(f"src:{args.baseline_src.resolve()}")
    with tempfile.TemporaryDirectory(prefix="synth_bench.") as tmp:
        tmp = Path(tmp)
        model = args.model.resolve() if args.model else make_random_model(
            tmp / "model", args.image_size, downsample=args.downsample, codebook_size=args.codebook_size)
        from skinaug.storage.modeldir import ModelDir

        config = ModelDir(model).config()
        label = args.label or config["class_names"][min(1, len(config["class_names"]) - 1)]
        if args.label is None and "melanoma" in config["class_names"]:
            label = "melanoma"
        result = {"benchmark": "synthesize_cpu", "mode": "process" if args.process else "in_process",
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "cpu": cpu_description(),
                  "isa": {"requested": args.isa, **(json.loads(os.environ[CHILD]) if CHILD in os.environ else {})},
                  "model": str(args.model or f"random {args.image_size}px"), "image_size": config["image_size"],
                  "downsample": config.get("vqvae", {}).get("downsample", 4), "codebook_size": config["codebook_size"],
                  "grid": config.get("grid"),
                  "priors": {lv: {k: p.get(k) for k in ("arch", "channels", "n_blocks", "n_res_blocks", "attention")}
                             for lv, p in config["priors"].items()},
                  "class": label, "n": args.n, "repeats": args.repeats, "baseline": args.baseline,
                  "loadavg_before": os.getloadavg()}
        models = {"torch": model}
        if "onnx" in arms:
            from skinaug.export.onnx import export_onnx

            started = time.perf_counter()
            export_onnx(model, out=tmp / "onnx_model")
            result["onnx_export_seconds"] = round(time.perf_counter() - started, 1)
            import onnxruntime

            result["onnxruntime"] = onnxruntime.__version__
            models["onnx"] = tmp / "onnx_model"
        if args.process:
            result["batch_size"] = batch_sizes[0]
            result["arms"] = run_processes(arms, models, label, args.n, batch_sizes[0], args.repeats, args.seed, tmp, log,
                                           args.threads)
        else:
            result["batch_sizes"] = batch_sizes
            result["arms"] = run_in_process(arms, models, label, args.n, batch_sizes, args.repeats, args.seed, tmp, log)
            result["best"] = {}
            for arm in arms:
                rates = result["arms"][arm]["results"]
                best = max(rates, key=lambda b: rates[b]["images_per_s"])
                result["best"][arm] = {"batch": int(best), "images_per_s": rates[best]["images_per_s"],
                                       "images_per_s_no_write": rates[best]["images_per_s_no_write"]}
        result["ratios"] = ratios(result, args.baseline, [str(b) for b in batch_sizes])
        result["loadavg_after"] = os.getloadavg()
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"torch": torch.__version__, **result}, indent=1) + "\n")
        print_json(result)


if __name__ == "__main__":
    main()
