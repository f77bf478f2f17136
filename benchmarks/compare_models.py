"""Two or more models side by side (issue 23) on the lesions none of them trained on: reconstruction, Fréchet distance,
KID and precision/recall in classifier features, synthetic-only CAS, memorization, and contact sheets.

    python benchmarks/compare_models.py --models skinaug/models/ham10000-64,/work/train/ham10000-128 \
        --data ../shared/data/ham10000-150 --seeds 3 --out benchmarks/results/models_64_vs_128.json
    python benchmarks/compare_models.py --quick --models skinaug/models/ham10000-64,ham10000-64 \
        --data ../shared/data/ham10000-150 --out /tmp/compare_quick.json      # minutes: tiny counts, one seed

Held-out lesions. Every training stage (VQ-VAE, top prior, bottom prior) splits DATA by lesion with
`group_split(val_fraction=0.1, seed=0)` and takes gradients on the train side only; `trained_on.json` records every
image a stage *read*, validation included (the validation loss chose the weights kept), so it cannot tell the two
sides apart. The split is recomputed here for each model and checked three ways: its sizes against the model's
config.json, every training-side image and lesion against trained_on.json (the record must hold them: this is the
data the model trained on), and no held-out lesion on any model's training side. The held-out set is the
intersection of the models' validation sides. Caveat: the validation images steered model selection (best epoch),
so they are held out from the weights' gradients, not from every decision; `score cas --strict` refuses these sets
for that reason (their records name the test images), and the CAS here runs without it.

Measures, each per model:
- reconstruction: MSE and SSIM (MONAI, 11-pixel Gaussian window) of the float reconstructions of the held-out images
  at the model's own size; MSE on [-1, 1] pixels and on [0, 1] pixels (what training logs and model cards quote).
- generated sets (`skinaug synthesize`'s library call, temperature 1): per class as many images as the held-out set has, and for
  the CAS as many melanomas and nevi as the training side has (or --cas-max with the same ratio).
- distribution: Fréchet distance, KID (unbiased cubic-kernel MMD^2 on features z-scored over the pair, in subsets:
  skinaug.scores.fid.kernel_distance, as `score fid --features classifier` computes it) and k-NN precision/recall of
  each generated set against the held-out images, in the pooled features of an EfficientNet-B0 trained on the
  training side (all classes). Real-vs-real reference: a lesion-disjoint sample of the training side with the
  held-out set's class proportions, kept out of the feature classifier's training, against the same held-out images
  (so both sides are unseen by the feature network and the sample sizes match). `fd_ratio` = FD(generated) / FD(real
  reference), both at the same size. At --feature-size (128) for every model, smaller images upsampled with
  Lanczos (skinaug.data.preprocess, as every skinaug score loads images), and at each model's own size when it differs.
- CAS: melanoma vs nevus, a classifier trained on the model's synthetic melanomas + nevi only, tested on the held-out
  melanomas and nevi, one per seed, at --cas-size; plus the training side's real images. skinaug.scores.cas's own
  functions (split_external, load_training_set, score_set: what `score cas --test` runs), one cached result per
  set and seed.
- memorization: `score memorization` (check_memorization, 32px, RMS threshold 0.02) of the per-class generated set
  against the model's training-side images.
- contact sheets (`skinaug preview`): one per model with a row per class at the model's size, and one per class with
  a row per model at the largest model size, into --sheets; a sheet of held-out real images into WORK (never commit
  that one: it copies dataset images).

Everything slow is cached under --work (generated sets, split files, features, per-seed CAS results): rerunning the
same command continues where it stopped. Prints one JSON object on its last stdout line and writes it to --out.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from _common import device_name, print_json

# benchmarks/onnx.py would shadow the onnx package that skinaug may import
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

CAS_CLASSES = ("melanoma", "nevus")  # positive, negative: the paper's Table 3 task
MIN_CAS_STEPS = 50  # --time-limit never cuts a CAS classifier below this: fewer steps measure little


@dataclass
class Budget:
    """What the run spends; the defaults fit about 35 minutes on 2 idle CPU cores for two models (64 and 128px)."""

    feature_size: int = 128  # the common size for distribution scores and CAS
    feature_steps: int = 300  # feature classifier: ~1.5 passes over the training side, batch 32
    cas_size: int = 128
    cas_steps: int = 200  # per classifier; RESULTS' 64px table used 400 (4x cheaper pixels), see --time-limit
    cas_max: int | None = None  # synthetic images per model for CAS; None: as many as the real training side
    gen_max_per_class: int | None = None  # generated images per class for the distribution scores; None: held-out's
    k: int = 3  # precision/recall neighbours
    kid_subsets: int = 50
    kid_subset_size: int = 500  # below the set sizes (~800), so subsets differ and their spread means something
    memorization_size: int = 32  # `score memorization`'s default
    synth_batch: int = 64
    max_held_out: int | None = None  # --quick only: a lesion-stratified subset
    max_train: int | None = None  # --quick only
    time_limit_min: float | None = 35.0  # lowers cas_steps (the same for every set) when the projection overruns; 0: off

    @classmethod
    def quick(cls) -> "Budget":
        return cls(feature_steps=8, cas_steps=6, cas_max=64, gen_max_per_class=6, kid_subsets=5, kid_subset_size=16,
                   max_held_out=120, max_train=600, time_limit_min=None)


def say(message: str) -> None:
    print(f"[compare_models] {message}", file=sys.stderr, flush=True)


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Cache:
    """One JSON file per finished step under WORK/cache, valid while its key (what it was computed from) is unchanged."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, key):
        path = self.folder / f"{name}.json"
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("key") == digest(key):
                return stored["value"]
        return None

    def put(self, name: str, key, value):
        path = self.folder / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": digest(key), "value": value}, indent=1))
        os.replace(tmp, path)
        return value


class Clock:
    def __init__(self):
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}

    def phase(self, name: str):
        clock = self

        class _Phase:
            def __enter__(self):
                self.t = time.perf_counter()
                say(f"{name} ...")

            def __exit__(self, *exc):
                clock.phases[name] = round(clock.phases.get(name, 0.0) + time.perf_counter() - self.t, 1)
                say(f"{name}: {clock.phases[name]:.0f} s")

        return _Phase()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


# ---------------------------------------------------------------------------------------------- models and split


@dataclass
class ModelInfo:
    tag: str  # folder-safe name, unique in this run
    path: Path
    image_size: int
    class_names: list[str]
    fingerprint: str
    config: dict


def open_models(specs: list[str]) -> list[ModelInfo]:
    from skinaug.storage.modeldir import ModelDir, resolve_model

    models, tags = [], set()
    for spec in specs:
        path = resolve_model(spec)
        config = ModelDir(path).config()
        tag, n = path.name, 2
        while tag in tags:
            tag, n = f"{path.name}-{n}", n + 1
        tags.add(tag)
        models.append(ModelInfo(tag, path, int(config["image_size"]), list(config["class_names"]), config["fingerprint"], config))
    if len({tuple(m.class_names) for m in models}) != 1:
        raise SystemExit("the models number their classes differently: compare models of the same classes")
    return models


def model_split(model: ModelInfo, images_dir: Path, labels_csv: Path, val_fraction: float, seed: int) -> dict:
    """The model's training and validation sides, recomputed as its training stages made them, with the checks."""
    from skinaug.data.scan import group_split, scan_dataset
    from skinaug.storage.trained_on import read_record

    dataset = scan_dataset(images_dir, labels_csv, class_names=model.class_names)
    samples = dataset.samples
    train, val = group_split([s.group or s.name for s in samples], val_fraction, seed,
                             labels=np.array([s.label for s in samples]))
    recorded = model.config.get("training_data", {})
    checks = {"config_images": recorded.get("images"), "config_train_images": recorded.get("train_images"),
              "config_val_images": recorded.get("val_images"), "recomputed_train_images": int(len(train)),
              "recomputed_val_images": int(len(val))}
    checks["sizes_match_config"] = (recorded.get("images") == len(samples) and recorded.get("train_images") == len(train)
                                    and recorded.get("val_images") == len(val))
    record = read_record(model.path)
    if record is None:
        checks["trained_on"] = "missing"
    else:
        train_names, train_lesions = [samples[i].name for i in train], [samples[i].group for i in train]
        val_names = [samples[i].name for i in val]
        seen_train, seen_train_lesions = record.seen(train_names, train_lesions)
        seen_val, _ = record.seen(val_names, [])
        checks["trained_on"] = {
            "complete": record.complete, "stages": record.stages, "images": int(len(record.image_hashes)),
            "training_side_recorded": f"{len(seen_train)}/{len(set(train_names))}",
            "training_lesions_recorded": f"{len(seen_train_lesions)}/{len({g for g in train_lesions if g})}",
            "held_out_recorded": f"{len(seen_val)}/{len(val_names)}",
            "note": "the record holds every image a stage read: validation images are recorded too",
        }
        checks["record_covers_training_side"] = len(seen_train) == len(set(train_names)) and record.complete
    return {"samples": samples, "train": set(train.tolist()), "val": set(val.tolist()), "class_names": dataset.class_names,
            "checks": checks}


def thin(samples: list, n: int | None, seed: int) -> list:
    """A lesion-stratified subset of about n samples (all of them when n is None or larger)."""
    from skinaug.data.scan import group_split

    if n is None or n >= len(samples):
        return samples
    _, keep = group_split([s.group or s.name for s in samples], n / len(samples), seed,
                          labels=np.array([s.label for s in samples]))
    return [samples[i] for i in keep]


def per_class(samples: list, class_names: list[str]) -> dict[str, int]:
    counts = np.bincount([s.label for s in samples], minlength=len(class_names))
    return {name: int(c) for name, c in zip(class_names, counts)}


def write_csv(path: Path, samples: list, class_names: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image", "label", "lesion_id"])
        writer.writerows([s.name, class_names[s.label], s.group] for s in samples)
    return path


def link_folder(folder: Path, samples: list, class_names: list[str]) -> Path:
    """An OUT_DIR-shaped folder of links (images/ + labels.csv) to real images: what `score memorization` and `preview`
    read as a subset (memorization ignores a labels CSV with its default embedding, so a CSV cannot select one)."""
    images = folder / "images"
    wanted = {Path(s.path).name: s for s in samples}
    if images.is_dir():
        for old in images.iterdir():
            if old.name not in wanted:
                old.unlink()
    images.mkdir(parents=True, exist_ok=True)
    for name, sample in wanted.items():
        if not (images / name).is_symlink():
            (images / name).symlink_to(Path(sample.path).resolve())
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image", "label"])
        writer.writerows([s.name, class_names[s.label]] for s in samples)
    return folder


def held_out_sets(models: list[ModelInfo], data: Path, budget: Budget, val_fraction: float, seed: int, work: Path) -> dict:
    """The common held-out set, the training side, the real reference sample and the feature classifier's images."""
    splits = [model_split(m, data / "images", data / "labels.csv", val_fraction, seed) for m in models]
    samples, class_names = splits[0]["samples"], splits[0]["class_names"]
    if any([s.name for s in split["samples"]] != [s.name for s in samples] for split in splits):
        raise SystemExit("the models read DATA in different orders: cannot recompute one held-out set")
    trained = set.union(*(split["train"] for split in splits))
    trained_lesions = {samples[i].group or samples[i].name for i in trained}
    common_val = set.intersection(*(split["val"] for split in splits))
    # a held-out image whose lesion any model trained on is no held-out image (none expected: one split for all)
    dropped = {i for i in common_val if (samples[i].group or samples[i].name) in trained_lesions}
    held_out = [samples[i] for i in sorted(common_val - dropped)]
    training_side = [samples[i] for i in sorted(set.intersection(*(split["train"] for split in splits)))]
    overlap = {s.group or s.name for s in held_out} & {s.group or s.name for s in training_side}
    assert not overlap, f"held-out lesions on the training side: {sorted(overlap)[:3]}"

    held_out = thin(held_out, budget.max_held_out, seed + 2)
    training_side = thin(training_side, budget.max_train, seed + 3)
    # real reference: training-side lesions, held-out-sized and -proportioned, that the feature network never sees
    reference = thin(training_side, len(held_out), seed + 1)
    reference_lesions = {s.group or s.name for s in reference}
    feature_train = [s for s in training_side if (s.group or s.name) not in reference_lesions]

    split_dir = work / "split"
    files = {name: write_csv(split_dir / f"{name}.csv", part, class_names)
             for name, part in (("held_out", held_out), ("training_side", training_side), ("reference", reference),
                                ("feature_train", feature_train))}
    summary = {
        "how": f"group_split by lesion_id, val_fraction {val_fraction}, seed {seed}, class-stratified (what every "
               "training stage uses); held-out = the intersection of the models' validation sides",
        "images": len(held_out), "lesions": len({s.group or s.name for s in held_out}),
        "per_class": per_class(held_out, class_names),
        "dropped_for_lesion_overlap": len(dropped), "lesions_shared_with_training_side": len(overlap),
        "training_side_images": len(training_side), "training_side_per_class": per_class(training_side, class_names),
        "per_model": {m.tag: split["checks"] for m, split in zip(models, splits)},
        "reference": {"how": "a lesion-stratified sample of the training side with the held-out set's size and class "
                             "proportions, excluded (with its lesions) from the feature classifier's training",
                      "images": len(reference), "per_class": per_class(reference, class_names)},
        "feature_train_images": len(feature_train),
        "files": {k: str(v) for k, v in files.items()},
    }
    per_model_train = {m.tag: [samples[i] for i in sorted(split["train"])] for m, split in zip(models, splits)}
    if budget.max_train is not None:
        per_model_train = {tag: thin(part, budget.max_train, seed + 3) for tag, part in per_model_train.items()}
    return {"summary": summary, "class_names": class_names, "held_out": held_out, "training_side": training_side,
            "reference": reference, "feature_train": feature_train, "model_train": per_model_train, "files": files}


# ---------------------------------------------------------------------------------------------- reconstruction


@torch.no_grad()
def reconstruction(model: ModelInfo, samples: list, device: torch.device, batch_size: int = 64) -> dict:
    """MSE and SSIM of the float reconstructions (before rounding to uint8) at the model's size."""
    from skinaug.data.scan import load_images
    from skinaug.training.losses import ssim_loss
    from skinaug.storage.modeldir import ModelDir
    from skinaug.vqvae.model import to_model_input

    network = ModelDir(model.path).load_vqvae(device)
    images, kept, skipped = load_images(samples, model.image_size, strict=True)
    squared, ssim_sum = 0.0, 0.0
    for start in range(0, len(images), batch_size):
        batch = to_model_input(torch.from_numpy(images[start : start + batch_size])).to(device)
        rebuilt = network(batch)[0].float().clamp(-1, 1)
        squared += float(((rebuilt - batch) ** 2).sum())
        ssim_sum += (1.0 - float(ssim_loss(rebuilt, batch))) * len(batch)
    mse = squared / images.size
    return {"image_size": model.image_size, "images": int(len(images)), "mse": mse, "mse_01": mse / 4.0,
            "ssim": ssim_sum / len(images)}


# ---------------------------------------------------------------------------------------------- generated sets


def synthesize(model: ModelInfo, label: str, n: int, seed: int, out: Path, device: str, batch_size: int,
               cache: Cache) -> None:
    """`skinaug synthesize` into `out` (its library call, in this process: one interpreter start instead of one per
    set), unless this very run (model, class, count, seed) finished there before."""
    from skinaug.generation.commands import synthesize as run_synthesize

    key = [model.fingerprint, str(model.path), label, n, seed, batch_size]
    name = f"synthesize_{out.parent.name}_{out.name}"
    if (out / "run.json").is_file() and cache.get(name, key) is not None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    from skinaug.generation.sampler import OutputOptions, RunOptions, SamplingOptions

    output = OutputOptions(overwrite=(out / "run.json").is_file(), resume=out.exists() and not (out / "run.json").is_file())
    summary = run_synthesize(out, model=model.path, class_name=label, n=n, run=RunOptions(device=device, seed=seed,
                             batch_size=batch_size), sampling=SamplingOptions(temperature=1.0), output=output)
    cache.put(name, key, summary.get("images", n))


def merged_folder(folder: Path, parts: list[Path], trained_on: Path) -> Path:
    """One OUT_DIR of links to several generated folders' images, their labels.csv rows concatenated."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows, header = [], None
    for part in parts:
        with open(part / "labels.csv", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            rows += list(reader)
        for file in (part / "images").iterdir():
            if not (images / file.name).is_symlink():
                (images / file.name).symlink_to(file.resolve())
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    if trained_on.is_file():  # what `score cas` checks the test images against
        (folder / "trained_on.json").write_bytes(trained_on.read_bytes())
    return folder


def generate_sets(models: list[ModelInfo], sets: dict, budget: Budget, seed: int, device: str, cache: Cache,
                  work: Path) -> dict:
    """Per model: an evaluation set (held-out counts per class) and the CAS set (training-side melanoma/nevus counts)."""
    class_names = sets["class_names"]
    eval_counts = per_class(sets["held_out"], class_names)
    if budget.gen_max_per_class is not None:
        eval_counts = {c: min(n, budget.gen_max_per_class) for c, n in eval_counts.items()}
    train_counts = per_class(sets["training_side"], class_names)
    cas_counts = {c: train_counts[c] for c in CAS_CLASSES}
    if budget.cas_max is not None and sum(cas_counts.values()) > budget.cas_max:
        total = sum(cas_counts.values())
        cas_counts = {c: max(1, round(n * budget.cas_max / total)) for c, n in cas_counts.items()}
    result = {}
    for model in models:
        folder = work / "generated" / model.tag
        eval_parts = []
        for label, n in eval_counts.items():
            if n:
                out = folder / f"{model.tag}-{label}"
                synthesize(model, label, n, seed, out, device, budget.synth_batch, cache)
                eval_parts.append(out)
        cas_parts = []
        for label, n in cas_counts.items():
            out = folder / f"cas-{label}"
            synthesize(model, label, n, seed + 1, out, device, budget.synth_batch, cache)  # other seeds than the eval set's
            cas_parts.append(out)
        merged = merged_folder(folder / "eval", eval_parts, model.path / "trained_on.json")
        result[model.tag] = {"eval": merged, "eval_parts": eval_parts, "cas": cas_parts,
                             "summary": {"eval_per_class": eval_counts, "cas_per_class": cas_counts, "eval_seed": seed,
                                         "cas_seed": seed + 1, "temperature": 1.0, "folder": str(folder)}}
    return result


# ---------------------------------------------------------------------------------------------- distribution scores


def distribution_scores(generated: np.ndarray, real: np.ndarray, budget: Budget, seed: int) -> dict:
    from skinaug.scores.fid import (feature_rank, feature_statistics, frechet_distance, kernel_distance,
                                    precision_recall, standardiser)

    mean, std = standardiser(generated, real)
    kid, kid_std, subset = kernel_distance((generated - mean) / std, (real - mean) / std, subsets=budget.kid_subsets,
                                           subset_size=budget.kid_subset_size, seed=seed)
    precision, recall = precision_recall(real, generated, budget.k)
    return {"images": int(len(generated)), "fd": frechet_distance(*feature_statistics(generated), *feature_statistics(real)),
            "kid": kid, "kid_std": kid_std, "kid_subset_size": subset, "precision": precision, "recall": recall,
            # 0: every image embedded alike (an untrained feature classifier), the scores then measure nothing
            "feature_rank": feature_rank(np.concatenate([generated, real]))}


def feature_scores(size: int, measured: list[ModelInfo], sets: dict, generated: dict, budget: Budget, seed: int,
                   device: torch.device, cache: Cache, work: Path) -> dict:
    """One feature classifier at `size`, trained on the training side less the reference sample; every set embedded
    with it; each generated set and the real reference scored against the held-out images."""
    from skinaug.data.scan import load_images
    from skinaug.scores.classifier import Budget as ClassifierBudget
    from skinaug.scores.classifier import features, train_classifier
    from skinaug.scores.sets import open_set

    class_names = sets["class_names"]
    names = {part: [s.name for s in sets[part]] for part in ("feature_train", "held_out", "reference")}
    key = [size, budget.feature_steps, seed, names, [(m.tag, m.fingerprint, generated[m.tag]["summary"]) for m in measured]]
    stored = work / "features" / f"{size}px.npz"
    timing = cache.get(f"features_{size}px", key)
    if timing is None or not stored.is_file():
        train_images, kept, _ = load_images(sets["feature_train"], size, strict=True)
        labels = np.array([s.label for s in kept], dtype=np.int64)
        classifier_budget = ClassifierBudget(image_size=size, steps=budget.feature_steps)
        started = time.perf_counter()
        network = train_classifier(train_images, labels, len(class_names), classifier_budget, seed=seed, device=device,
                                   desc=f"feature classifier {size}px")
        train_s = time.perf_counter() - started
        del train_images
        arrays = {}
        for part in ("held_out", "reference"):
            arrays[part] = features(network, load_images(sets[part], size, strict=True)[0], device)
        for model in measured:
            dataset = open_set(generated[model.tag]["eval"], labelled=False, strict=True).dataset
            arrays[model.tag] = features(network, load_images(dataset, size, strict=True)[0], device)
        stored.parent.mkdir(parents=True, exist_ok=True)
        np.savez(stored, **arrays)
        timing = cache.put(f"features_{size}px", key, {"train_s": train_s, "s_per_step": train_s / budget.feature_steps,
                                                       "feature_dim": int(arrays["held_out"].shape[1])})
    arrays = np.load(stored)
    real_vs_real = distribution_scores(arrays["reference"], arrays["held_out"], budget, seed)
    models = {}
    for model in measured:
        scores = distribution_scores(arrays[model.tag], arrays["held_out"], budget, seed)
        scores["fd_ratio"] = scores["fd"] / real_vs_real["fd"] if real_vs_real["fd"] > 0 else None
        scores["kid_minus_real"] = scores["kid"] - real_vs_real["kid"]
        scores["upsampled_from"] = model.image_size if model.image_size < size else None
        models[model.tag] = scores
    return {
        "image_size": size, "resize": "Lanczos (skinaug.data.preprocess): real 150px down, smaller generated images up",
        "feature_classifier": {"arch": "efficientnet-b0 (MONAI, from scratch)", "classes": len(class_names),
                               "train_images": len(sets["feature_train"]), "steps": budget.feature_steps, "batch": 32,
                               "seed": seed, "feature_dim": timing["feature_dim"], "train_s": round(timing["train_s"], 1)},
        "held_out_images": len(sets["held_out"]), "real_vs_real": real_vs_real, "models": models,
        "_s_per_step": timing["s_per_step"],
    }


# ---------------------------------------------------------------------------------------------- CAS


def cas_steps_within(seconds_left: float, classifiers: int, s_per_step: float, requested: int,
                     overhead_s: float = 90.0) -> int:
    """The CAS steps per classifier that fit the time left (after `overhead_s` for loading the sets and predicting),
    never more than requested, nor below MIN_CAS_STEPS unless fewer were requested."""
    affordable = int((seconds_left - overhead_s) / (classifiers * s_per_step))
    return min(requested, max(affordable, min(requested, MIN_CAS_STEPS)))


def cas_scores(models: list[ModelInfo], sets: dict, generated: dict, budget: Budget, seeds: int, seed: int,
               device: torch.device, cache: Cache, data: Path, clock: Clock, s_per_step: float | None) -> dict:
    """Synthetic-only CAS (replace mode) per model and the real training side, `seeds` classifiers each."""
    from skinaug.data.scan import load_images, scan_dataset
    from skinaug.scores.cas import CasOptions, choose_task, load_training_set, score_set, split_external
    from skinaug.scores.classifier import Budget as ClassifierBudget

    specs = {"real": "real", **{m.tag: "+".join(str(p) for p in generated[m.tag]["cas"]) for m in models}}
    test_names = [s.name for s in sets["held_out"]]
    steps, reason = budget.cas_steps, None

    def key(name: str, run_seed: int, run_steps: int):
        return [name, specs[name] if name == "real" else generated[name]["summary"], run_seed, run_steps, budget.cas_size,
                test_names, [s.name for s in sets["training_side"]]]

    missing = [(n, seed + k) for n in specs for k in range(seeds) if cache.get(f"cas_{n}_seed{seed + k}", key(n, seed + k, steps)) is None]
    if budget.time_limit_min and s_per_step and missing:
        steps = cas_steps_within(budget.time_limit_min * 60 - clock.elapsed, len(missing), s_per_step, budget.cas_steps)
        if steps < budget.cas_steps:
            reason = (f"lowered from {budget.cas_steps} to fit --time-limit-min {budget.time_limit_min} "
                      f"({s_per_step:.2f} s/step measured at {budget.cas_size}px)")
            say(f"CAS: {reason}")
    options = CasOptions(positive=CAS_CLASSES[0], negative=CAS_CLASSES[1], seeds=1, seed=seed, steps=steps,
                         budget=ClassifierBudget(image_size=budget.cas_size, steps=steps), device=str(device), strict=False,
                         test=str(data / "images"), test_labels=str(sets["files"]["held_out"]))
    real = scan_dataset(data / "images", sets["files"]["training_side"])
    test = scan_dataset(data / "images", sets["files"]["held_out"])
    task = choose_task(real.class_names, options.positive, options.negative)
    split = split_external(real, test, task, options)
    loaded = {}

    def images_of(part: str):
        if part not in loaded:
            samples = split.train if part == "train" else split.test
            loaded[part] = load_images(samples, budget.cas_size, strict=True)[0]
        return loaded[part]

    rows = {}
    for name, spec in specs.items():
        training, entry = None, {"aucs": [], "seeds": []}
        for k in range(seeds):
            run_seed = seed + k
            result = cache.get(f"cas_{name}_seed{run_seed}", key(name, run_seed, steps))
            if result is None:
                if training is None:
                    training = load_training_set(spec, task, split, images_of("train"), options)
                aucs, _ = score_set(training, task, images_of("test"), split.test_labels, replace(options, seed=run_seed),
                                    device)
                result = cache.put(f"cas_{name}_seed{run_seed}", key(name, run_seed, steps), {
                    "auc": aucs[0], "train_images": int(len(training.images)),
                    "per_class": {c: int((training.labels == i).sum()) for i, c in enumerate(task.class_names)},
                    "generator_saw_test": training.generator_saw_test, "degenerate": bool(training.degenerate_seeds)})
                say(f"CAS {name} seed {run_seed}: AUC {result['auc']:.4f} ({clock.elapsed / 60:.1f} min in)")
            entry["aucs"].append(result["auc"])
            entry["seeds"].append(run_seed)
            entry.update({k: result[k] for k in ("train_images", "per_class", "generator_saw_test")})
            entry["degenerate"] = entry.get("degenerate", False) or result["degenerate"]
        entry["auc_mean"] = float(np.mean(entry["aucs"]))
        entry["auc_std"] = float(np.std(entry["aucs"], ddof=1)) if len(entry["aucs"]) > 1 else 0.0
        rows[name] = entry
    test_per_class = {c: int((split.test_labels == i).sum()) for i, c in enumerate(task.class_names)}
    return {
        "task": task.title, "mode": "replace (the set alone trains)", "test": "held-out melanoma and nevus images",
        "test_images": int(len(split.test)), "test_per_class": test_per_class, "image_size": budget.cas_size,
        "resize": "Lanczos (skinaug.data.preprocess)", "steps": steps, "steps_note": reason, "batch": 32,
        "arch": "efficientnet-b0 (MONAI, from scratch), class-balanced batches, AdamW lr 1e-3, flips/turns/jitter",
        "strict": False, "strict_note": "generator_saw_test: the test images and lesions the generator's trained_on.json names, "
        "summed over the set's melanoma and nevus folders: its validation reads (see held_out); `score cas --strict` would "
        "refuse every synthetic set for that reason",
        "sets": rows,
    }


# ---------------------------------------------------------------------------------------------- memorization, sheets


def memorization(model: ModelInfo, generated: dict, sets: dict, budget: Budget, cache: Cache, work: Path) -> dict:
    from skinaug.scores.memorization import check_memorization
    from skinaug.scores.options import ScoreOptions

    train = sets["model_train"][model.tag]
    key = [model.tag, model.fingerprint, generated[model.tag]["summary"], [s.name for s in train], budget.memorization_size]
    cached = cache.get(f"memorization_{model.tag}", key)
    if cached is not None:
        return cached
    real = link_folder(work / "real" / f"train-{model.tag}", train, sets["class_names"])
    summary = check_memorization(generated[model.tag]["eval"], real, out=work / "memorization" / model.tag,
                                 size=budget.memorization_size, overwrite=True, options=ScoreOptions(device="cpu"))
    keep = ("generated_images", "real_images", "size", "threshold", "flagged", "pixel_distance", "feature_distance",
            "closest", "out")
    return cache.put(f"memorization_{model.tag}", key, {k: summary[k] for k in keep})


def contact_sheets(models: list[ModelInfo], generated: dict, sets: dict, sheets: Path, work: Path) -> dict:
    """Generated images only under `sheets` (they may be committed); the held-out real images' sheet goes to WORK, since
    copies of the dataset's images must not enter the repository."""
    from skinaug.reports.preview import contact_sheet

    sheets.mkdir(parents=True, exist_ok=True)
    written = {}
    for model in models:
        out = sheets / f"{model.tag}.png"
        contact_sheet(generated[model.tag]["eval_parts"], out, per_row=8, size=model.image_size, by="label", overwrite=True)
        written[model.tag] = str(out)
    size = max(m.image_size for m in models)
    for label in sets["class_names"]:
        folders = [part for m in models for part in generated[m.tag]["eval_parts"] if part.name == f"{m.tag}-{label}"]
        if folders:
            out = sheets / f"class-{label}.png"
            contact_sheet(folders, out, per_row=8, size=size, by="folder", overwrite=True)
            written[f"class-{label}"] = str(out)
    real = link_folder(work / "real" / "held-out", sets["held_out"], sets["class_names"])
    contact_sheet([real], work / "real" / "held-out.png", per_row=8, size=size, by="label", overwrite=True)
    return {"files": written, "held_out_real": str(work / "real" / "held-out.png"),
            "note": f"per model: a row per class at the model's own size; per class: a row per model at {size}px (smaller "
                    "images enlarged by preview's PIL resize); held_out_real: real held-out images, a row per class, for "
                    "comparison only (dataset images: never commit it)"}


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="comma-separated model directories or shipped model names")
    parser.add_argument("--data", required=True, type=Path, help="DATA with images/ and labels.csv (what the models trained on)")
    parser.add_argument("--seeds", type=int, default=3, help="CAS classifiers per set")
    parser.add_argument("--seed", type=int, default=0, help="first CAS seed, the feature classifier's and the synthesis seed")
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    parser.add_argument("--work", type=Path, default=Path("/tmp/skinaug-compare-models"), help="cache: generated sets, features, CAS results")
    parser.add_argument("--sheets", type=Path, help="contact sheets folder (default WORK/sheets)")
    parser.add_argument("--quick", action="store_true", help="tiny counts, steps and one seed: a check of the script")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="the models' validation split (skinaug's default)")
    parser.add_argument("--split-seed", type=int, default=0, help="the models' split seed (skinaug's default)")
    for field, default in asdict(Budget()).items():
        kind = float if field == "time_limit_min" else int
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, default=None,
                            help=f"budget (default {default}; --quick has its own)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    budget = Budget.quick() if args.quick else Budget()
    overrides = {f: getattr(args, f) for f in asdict(budget) if getattr(args, f) is not None}
    budget = replace(budget, **overrides)
    seeds = 1 if args.quick else args.seeds
    device = torch.device(args.device)
    work = args.work
    sheets = args.sheets or work / "sheets"
    cache, clock = Cache(work / "cache"), Clock()
    data = args.data.resolve()
    loadavg_before = os.getloadavg()

    models = open_models([m.strip() for m in args.models.split(",") if m.strip()])
    with clock.phase("split"):
        sets = held_out_sets(models, data, budget, args.val_fraction, args.split_seed, work)
    result = {
        "benchmark": "compare_models", "argv": sys.argv[1:], "quick": args.quick, "device": device_name(device),
        "budget": {**asdict(budget), "seeds": seeds},
        "models": {m.tag: {"path": str(m.path), "image_size": m.image_size, "fingerprint": m.fingerprint,
                           "codebook_size": m.config["codebook_size"], "code_dim": m.config["code_dim"],
                           "grid": m.config["grid"]} for m in models},
        "held_out": sets["summary"],
    }
    with clock.phase("reconstruction"):
        result["reconstruction"] = {}
        for m in models:
            key = [m.tag, m.fingerprint, [s.name for s in sets["held_out"]]]
            result["reconstruction"][m.tag] = (cache.get(f"reconstruction_{m.tag}", key)
                                               or cache.put(f"reconstruction_{m.tag}", key, reconstruction(m, sets["held_out"], device)))
    with clock.phase("synthesis"):
        generated = generate_sets(models, sets, budget, args.seed, args.device, cache, work)
        result["generated"] = {tag: entry["summary"] for tag, entry in generated.items()}
    with clock.phase("contact sheets"):
        result["sheets"] = contact_sheets(models, generated, sets, sheets, work)
    with clock.phase("memorization"):
        result["memorization"] = {m.tag: memorization(m, generated, sets, budget, cache, work) for m in models}
    with clock.phase("distribution scores"):
        result["distribution"] = {}
        sizes = sorted({budget.feature_size, *(m.image_size for m in models)}, reverse=True)
        for size in sizes:
            measured = [m for m in models if size in (budget.feature_size, m.image_size)]
            result["distribution"][f"{size}px"] = feature_scores(size, measured, sets, generated, budget, args.seed,
                                                                 device, cache, work)
    s_per_step = result["distribution"].get(f"{budget.cas_size}px", {}).get("_s_per_step")
    for scores in result["distribution"].values():
        scores.pop("_s_per_step", None)
    with clock.phase("CAS"):
        result["cas"] = cas_scores(models, sets, generated, budget, seeds, args.seed, device, cache, data, clock, s_per_step)
    result["headline"] = headline(result, models, budget)
    result.update({"timings_s": clock.phases, "wall_s": round(clock.elapsed, 1), "loadavg_before": loadavg_before,
                   "loadavg_after": os.getloadavg(), "threads": torch.get_num_threads()})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"torch": torch.__version__, **result}, indent=1) + "\n")
    print_summary(result)
    print_json(result)
    return result


def headline(result: dict, models: list[ModelInfo], budget: Budget) -> dict:
    """The side-by-side rows the issue asks for, copied from the sections above."""
    common = result["distribution"][f"{budget.feature_size}px"]["models"]
    rows = {}
    for m in models:
        own = result["distribution"][f"{m.image_size}px"]["models"][m.tag]
        recon, cas, memo = result["reconstruction"][m.tag], result["cas"]["sets"][m.tag], result["memorization"][m.tag]
        rows[m.tag] = {
            "image_size": m.image_size, "reconstruction_mse": recon["mse"], "reconstruction_ssim": recon["ssim"],
            f"fd_ratio_{budget.feature_size}px": common[m.tag]["fd_ratio"], "fd_ratio_own_size": own["fd_ratio"],
            f"kid_{budget.feature_size}px": common[m.tag]["kid"], f"precision_{budget.feature_size}px": common[m.tag]["precision"],
            f"recall_{budget.feature_size}px": common[m.tag]["recall"], "cas_auc_mean": cas["auc_mean"], "cas_auc_std": cas["auc_std"],
            "memorization_flagged": memo["flagged"], "nearest_real_rms_min": memo["pixel_distance"]["min"],
            "nearest_real_rms_median": memo["pixel_distance"]["median"],
        }
    rows["real"] = {"cas_auc_mean": result["cas"]["sets"]["real"]["auc_mean"], "cas_auc_std": result["cas"]["sets"]["real"]["auc_std"]}
    return rows


def print_summary(result: dict) -> None:
    """A few lines for a reader on stderr; the JSON has everything."""
    for tag, r in result["reconstruction"].items():
        say(f"{tag}: reconstruction at {r['image_size']}px MSE {r['mse']:.5f} ([-1,1]) SSIM {r['ssim']:.4f}")
    for size, scores in result["distribution"].items():
        rr = scores["real_vs_real"]
        say(f"{size}: real vs real FD {rr['fd']:.4g} KID {rr['kid']:.4f} P/R {rr['precision']:.3f}/{rr['recall']:.3f}")
        for tag, s in scores["models"].items():
            ratio = "n/a" if s["fd_ratio"] is None else f"{s['fd_ratio']:.2f}"
            say(f"{size}: {tag} FD {s['fd']:.4g} (x{ratio} real) KID {s['kid']:.4f} P/R {s['precision']:.3f}/{s['recall']:.3f}")
    for name, row in result["cas"]["sets"].items():
        say(f"CAS {name}: AUC {row['auc_mean']:.3f} ± {row['auc_std']:.3f} ({' '.join(f'{a:.3f}' for a in row['aucs'])})")
    for tag, m in result["memorization"].items():
        say(f"{tag}: nearest real RMS min {m['pixel_distance']['min']:.4f} median {m['pixel_distance']['median']:.4f}, flagged {m['flagged']}")
    say(f"wall {result['wall_s'] / 60:.1f} min: {result['timings_s']}")


if __name__ == "__main__":
    main()
