"""`score benefit`: does adding generated images to real ones help a classifier? The whole leak-free protocol.

1. The labelled images are split once by lesion into a train and a test side (seeded, every class on both).
2. The generator is trained on the train side only (or `model` is given, and refused when its trained_on.json
   shows it saw a test image or lesion, or cannot tell).
3. For each real fraction (a lesion-grouped share of the train side) and each method, generated images are
   added to the real ones: `ratio` x the real images of each class, so the generated share is the same in every
   class (otherwise "looks generated" becomes a label cue). `classic` adds classically augmented copies
   (albumentations: flips, turns, small affine, colour, CLAHE, blur, noise) instead: the baseline to beat.
4. One classifier per (fraction, method, seed) over all classes, with the same budget (steps) for every method
   of a fraction; AUC on the held-out test lesions: macro one-vs-rest over all classes, and positive vs
   negative (P(positive) / (P(positive) + P(negative)) on the test images of those two classes).
   How a classifier uses the added images is `train_recipe` (skinaug.recipes): add pools them with the real ones;
   exposure keeps the real arm's exact batches and adds them as an extra share, weighted lower; pretrain trains on
   them first, then on the real arm's batches.
5. The gain over real alone, with a bootstrap interval over test lesions (of the mean over seeds), and its minimum
   detectable effect (studies/power.py): how large a gain these seeds and test lesions could have seen.

Every finished piece is kept in OUT (split, generator, generated sets, each classifier's test probabilities),
so a rerun with `resume` continues where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..data.scan import Sample, group_split, load_images, scan_dataset
from ..errors import SkinaugError, UsageError
from ..data.layout import MODEL_METHODS
from ..storage.fs import atomic_path, claim_output, marked_folder, read_json, write_json, write_text
from ..runtime import log, resolve_device, warn
from ..scores.classifier import Budget, constant_predictions, predict, steps_for, train_classifier
from ..scores.roc import PALETTE, roc_auc
from .power import minimum_detectable_effect

PLAN = "benefit_plan.json"
BENEFIT_FOLDER = marked_folder("benefit folder", PLAN, resumable=True)
GENERATED_METHODS = MODEL_METHODS  # the methods a generator makes
METHODS = ("classic", *GENERATED_METHODS)


@dataclass
class GeneratorRecipe:
    """How `score benefit` trains its generator when no model is given (the shipped model's recipe by default)."""

    image_size: int = 64
    vqvae_epochs: int = 16
    top_epochs: int = 14
    bottom_epochs: int = 10
    vqvae: dict = field(default_factory=dict)  # further VQVAEConfig fields (tests: a tiny network)
    prior: dict = field(default_factory=dict)  # PriorConfig overrides (channels, blocks, ...)
    batch_size: int = 64
    prior_batch_size: int = 32


@dataclass
class BenefitOptions:
    fractions: list[float] = field(default_factory=lambda: [0.1, 1.0])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    ratio: float = 1.0  # generated images per real image, in every class
    seeds: int = 3
    seed: int = 0  # fixes the split and the generation; classifier k is trained with seed + k
    test_fraction: float = 0.2
    positive: str | None = None  # with negative: the pair's AUC too; None: melanoma vs nevus when both are classes
    negative: str | None = None
    epochs: int = 3  # classifier passes over each fraction's real images, as a step budget shared by all methods
    steps: int | None = None  # a fixed step budget for every fraction instead
    budget: Budget = field(default_factory=Budget)
    temperature: float = 1.0
    top_k: int | None = None
    generation_batch_size: int = 64
    bootstrap: int = 1000
    filter: float | None = None  # keep generated images a real-trained classifier gives p(label) >= this
    oversample: float = 2.0  # with filter: candidates made per image kept
    device: str = "auto"
    weights: str | None = None
    workers: int | None = None
    columns: dict = field(default_factory=dict)
    recipe: GeneratorRecipe = field(default_factory=GeneratorRecipe)
    train_recipe: str = "add"  # how the classifiers use the added images (skinaug.recipes.Recipe): add, exposure, pretrain
    synthetic_weight: float | None = None  # exposure: the added images' loss weight (None: 0.5)

    def validate(self) -> None:
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise UsageError(f"{{fractions}} takes shares in (0, 1], e.g. 0.1,1.0; got {self.fractions}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UsageError(f"{{methods}} takes {', '.join(METHODS)}; got {','.join(self.methods) or 'nothing'}")
        if not (self.ratio > 0 and np.isfinite(self.ratio)):
            raise UsageError(f"{{ratio}} must be a positive number, got {self.ratio}")
        if self.seeds < 1:
            raise UsageError("{seeds} must be at least 1")
        if not 0 < self.test_fraction < 1:
            raise UsageError(f"{{test_fraction}} must be between 0 and 1, got {self.test_fraction}")
        if (self.positive is None) != (self.negative is None) or (self.positive is not None and self.positive == self.negative):
            raise UsageError("give {positive} and {negative} together, naming two different classes")
        if self.filter is not None and not 0 < self.filter < 1:
            raise UsageError(f"{{filter}} is a probability in (0, 1), got {self.filter}")
        if not self.oversample >= 1:
            raise UsageError(f"{{oversample}} must be at least 1, got {self.oversample}")
        if self.bootstrap < 0:
            raise UsageError("{bootstrap} must be 0 or more")
        self.validate_recipe()

    def validate_recipe(self) -> None:
        from ..recipes import RECIPES

        if self.train_recipe not in RECIPES:
            raise UsageError(f"{{train_recipe}} takes {', '.join(RECIPES)}; got {self.train_recipe!r}")
        if self.synthetic_weight is not None and self.train_recipe != "exposure":
            raise UsageError("{synthetic_weight} is the loss weight of {train_recipe='exposure'}")
        if self.synthetic_weight is not None and not (np.isfinite(self.synthetic_weight) and self.synthetic_weight > 0):
            raise UsageError(f"{{synthetic_weight}} must be a positive number, got {self.synthetic_weight}")

    def sampling(self):
        """How the generated sets are drawn (skinaug.sampler.SamplingOptions)."""
        from ..generation.sampler import SamplingOptions

        return SamplingOptions(temperature=self.temperature, top_k=self.top_k)

    def training_recipe(self):
        """The classifiers' recipe: exposure adds round(ratio x batch) added images to each real batch."""
        from ..recipes import DEFAULT_SYNTHETIC_WEIGHT, Recipe

        if self.train_recipe != "exposure":
            return Recipe(self.train_recipe)
        weight = DEFAULT_SYNTHETIC_WEIGHT if self.synthetic_weight is None else self.synthetic_weight
        return Recipe(self.train_recipe, weight, max(1, round(self.ratio * self.budget.batch_size)))

    def plan(self) -> dict:
        """What a resumed run must agree on: everything that changes a result."""
        plan = {k: v for k, v in asdict(self).items() if k not in ("device", "workers", "bootstrap", "train_recipe", "synthetic_weight")}
        if self.train_recipe != "add":  # add (the default) leaves the plans of earlier runs as they were
            plan["train_recipe"] = asdict(self.training_recipe())
        return plan


# ------------------------------------------------------------------------- the split


def split_for_benefit(samples: list[Sample], test_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """The lesion-grouped train and test sides of the labelled images (each class on both sides when it has two
    lesions or more)."""
    labelled = [s for s in samples if s.label >= 0]
    train, test = group_split([s.group or s.name for s in labelled], test_fraction, seed, labels=[s.label for s in labelled])
    return [labelled[i] for i in train], [labelled[i] for i in test]


def real_share(train: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """A lesion-grouped share of the train side (the smaller shares are not nested in the larger ones)."""
    if fraction >= 1:
        return list(train)
    _, kept = group_split([s.group or s.name for s in train], fraction, seed + 1, labels=[s.label for s in train])
    return [train[i] for i in kept]


def labels_csv(samples: list[Sample], class_names: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "label", "lesion_id"])
    writer.writerows([s.name, class_names[s.label], s.group] for s in samples)
    return buffer.getvalue()


# ------------------------------------------------------------------------- the generator


def check_model(model, test: list[Sample]) -> None:
    """Refuses a generator that saw a test image or test lesion, or whose training images are unknown."""
    from ..storage.trained_on import read_record

    record = read_record(model)
    if record is None or not record.complete:
        raise SkinaugError(f"{model} does not record which images trained it (trained_on.json missing or incomplete): "
                           "score benefit cannot show it leak-free; leave {model} out to train a generator on the train side")
    names, lesions = record.seen([s.name for s in test], [s.group for s in test])
    if names or lesions:
        example = names[0] if names else f"lesion {lesions[0]}"
        raise SkinaugError(f"{model} was trained on {len(names)} test images and {len(lesions)} test lesions of this split "
                           f"(e.g. {example}): leave {{model}} out to train a generator on the train side only")


def train_generator(data, train_csv: Path, out: Path, recipe: GeneratorRecipe, options: BenefitOptions) -> Path:
    """VQ-VAE, then both priors, on the train side only; every stage resumes where it stopped."""
    from ..storage.modeldir import ModelDir
    from ..training.prior import PriorOptions, train_priors
    from ..training.vqvae import TrainOptions, train_vqvae
    from ..vqvae.model import VQVAEConfig

    model_dir = ModelDir(out)
    if not model_dir.exists():
        log(f"training the generator's VQ-VAE on the train side ({recipe.vqvae_epochs} epochs) into {out}")
        train_vqvae(data, out, labels=train_csv, model_config=VQVAEConfig(image_size=recipe.image_size, **recipe.vqvae),
                    options=TrainOptions(epochs=recipe.vqvae_epochs, batch_size=recipe.batch_size, seed=options.seed,
                                         device=options.device, workers=options.workers),
                    resume=True)
    for level, epochs in (("top", recipe.top_epochs), ("bottom", recipe.bottom_epochs)):
        if not model_dir.has_prior(level):
            log(f"training the generator's {level} prior ({epochs} epochs)")
            train_priors(out, data=data, labels=train_csv, level=level, resume=True,
                         options=PriorOptions(epochs=epochs, batch_size=recipe.prior_batch_size, seed=options.seed,
                                              device=options.device, overrides=dict(recipe.prior)))
    return out


# ------------------------------------------------------------------------- the added images


def classic_copies(images: np.ndarray, labels: np.ndarray, ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`ratio` x each class's images as classically augmented copies (skinaug.classic), seeded."""
    from ..data.classic import augment_images

    rng = np.random.default_rng(seed)
    picks = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = round(ratio * len(members))
        picks.append(np.resize(rng.permutation(members), count))  # each image used as evenly as possible
    order = np.concatenate(picks) if picks else np.zeros(0, np.int64)
    return augment_images(images[order], seed), labels[order]


def generate_set(method: str, generator, source, out: Path, options: BenefitOptions, seed: int) -> None:
    """`ratio` x each class's real images made by `method` from the fraction's real images, into OUT_DIR `out`."""
    from ..generation.commands import job_plan, name_jobs, plan_augment, write_dataset
    from ..generation.sampler import OutputOptions, RunOptions

    if (out / "run.json").is_file():
        return
    factor = options.ratio * (options.oversample if options.filter is not None else 1.0)
    jobs, table = plan_augment(source, generator.class_names, factor=factor, weights={method: 1.0},
                               originals=False, seed=seed)
    name_jobs(jobs, generator.class_names, prefix="gen_")
    plan = job_plan(jobs, command="score benefit", seed=seed, batch_size=options.generation_batch_size,
                    temperature=options.temperature, top_k=options.top_k)
    write_dataset(generator, jobs, source, out, plan=plan,
                  run=RunOptions(seed=seed, batch_size=options.generation_batch_size),
                  sampling=options.sampling(), output=OutputOptions(resume=True), extra={"plan": table})


def read_generated(out: Path, class_names: list[str], image_size: int, workers) -> tuple[np.ndarray, np.ndarray, list[str]]:
    dataset = scan_dataset(out / "images", out / "labels.csv")
    images, kept, skipped = load_images(dataset.samples, image_size, strict=True, workers=workers)
    index = {name: class_names.index(name) for name in dataset.class_names}
    return images, np.array([index[dataset.class_names[s.label]] for s in kept], dtype=np.int64), [s.name for s in kept]


def filter_generated(images, labels, names, judge_probabilities: np.ndarray, targets: dict[int, int], threshold: float,
                     out: Path, class_names: list[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per class, the first `targets[c]` candidates (in generation order) whose p(label) >= threshold; when too few
    pass, the best-scored of the others fill the class up, so the added share stays the same in every class.
    Writes filtered.csv (image, label, p_label, passed, kept) into `out`; returns the kept images, labels and counts."""
    scores = judge_probabilities[np.arange(len(labels)), labels]
    keep = np.zeros(len(labels), dtype=bool)
    counts = {}
    for label, target in targets.items():
        members = np.flatnonzero(labels == label)
        passing = members[scores[members] >= threshold]
        chosen = list(passing[:target])
        if len(chosen) < target:
            others = members[scores[members] < threshold]
            chosen += list(others[np.argsort(-scores[others], kind="stable")][: target - len(chosen)])
        keep[chosen] = True
        counts[class_names[label]] = {"candidates": int(len(members)), "passed": int(len(passing)), "kept": len(chosen)}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "label", "p_label", "passed", "kept"])
    writer.writerows([n, class_names[l], repr(float(p)), int(p >= threshold), int(k)] for n, l, p, k in zip(names, labels, scores, keep))
    write_text(out / "filtered.csv", buffer.getvalue())
    return images[keep], labels[keep], counts


# ------------------------------------------------------------------------- AUCs and the bootstrap


def aucs(probabilities: np.ndarray, labels: np.ndarray, pair: tuple[int, int] | None) -> dict[str, float]:
    """macro one-vs-rest AUC over the classes present, and the pair's AUC (P(pos) / (P(pos) + P(neg)))."""
    present = [c for c in range(probabilities.shape[1]) if 0 < (labels == c).sum() < len(labels)]
    result = {"macro": float(np.mean([roc_auc(labels == c, probabilities[:, c]) for c in present])) if present else float("nan")}
    if pair is not None:
        positive, negative = pair
        mask = (labels == positive) | (labels == negative)
        p, n = probabilities[mask, positive], probabilities[mask, negative]
        has_both = (labels[mask] == positive).any() and (labels[mask] == negative).any()
        result["pair"] = float(roc_auc(labels[mask] == positive, p / np.maximum(p + n, 1e-300))) if has_both else float("nan")
    return result


def bootstrap_gain(method_probs: list[np.ndarray], real_probs: list[np.ndarray], labels: np.ndarray, groups: list[str],
                   pair, replicates: int, seed: int) -> dict[str, list[float]]:
    """2.5 and 97.5 percentiles of (mean AUC over seeds of the method - that of real alone), test lesions resampled."""
    gains = bootstrap_gains(method_probs, real_probs, labels, groups, pair, replicates, seed)
    return {key: percentile_interval(values) for key, values in gains.items()}


def percentile_interval(values: np.ndarray) -> list[float]:
    return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))]


def bootstrap_gains(method_probs: list[np.ndarray], real_probs: list[np.ndarray], labels: np.ndarray, groups: list[str],
                    pair, replicates: int, seed: int) -> dict[str, np.ndarray]:
    """The gain (mean AUC over seeds of the method - that of real alone) in each of `replicates` resamples of the
    test lesions (nan where a resample lacks a class)."""
    if replicates == 0:
        return {}
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    units = [np.array(v) for v in members.values()]
    rng = np.random.default_rng(seed)
    gains: dict[str, list[float]] = {}
    for _ in range(replicates):
        index = np.concatenate([units[u] for u in rng.integers(0, len(units), len(units))])
        method = [aucs(p[index], labels[index], pair) for p in method_probs]
        real = [aucs(p[index], labels[index], pair) for p in real_probs]
        for key in method[0]:
            gains.setdefault(key, []).append(np.mean([m[key] for m in method]) - np.mean([r[key] for r in real]))
    return {key: np.array(values) for key, values in gains.items()}


# ------------------------------------------------------------------------- the protocol


def run_benefit(data, labels_csv_path, out, options: BenefitOptions, *, model=None, resume=False, overwrite=False) -> dict:
    """The benefit table (see the module docstring); writes everything into `out`."""
    from ..storage.modeldir import locate_model

    options.validate()
    if model is not None:
        model = locate_model(model, "{model}")  # a model directory or a shipped model's name
        check_baseline_methods(model, options)
    claim = claim_output(out, kind=BENEFIT_FOLDER, inputs=(data, labels_csv_path, model), overwrite=overwrite, resume=resume)
    with claim:
        work = claim.work
        device = resolve_device(options.device)
        dataset = scan_dataset(data, labels_csv_path, **options.columns)
        class_names = dataset.class_names
        if len(class_names) < 2:
            raise SkinaugError(f"the data has {len(class_names)} class(es): a benefit needs two or more")
        options = with_default_pair(options, class_names)  # a copy: the caller's options stay as they were
        pair = benefit_pair(options, class_names)
        train, test = split_and_plan(dataset, data, out, work, model, options)
        generator = benefit_generator(data, work, model, test, class_names, options)
        test_images, test_samples, _ = load_images(test, options.budget.image_size, strict=True, workers=options.workers)
        test_labels = np.array([s.label for s in test_samples], dtype=np.int64)
        test_groups = [s.group or s.name for s in test_samples]
        rows = []
        for fraction in options.fractions:
            rows += fraction_rows(fraction, train, data, work, generator, class_names, test_images, test_labels,
                                  test_groups, pair, device, options)
        summary = {
            "classes": class_names, "pair": [options.positive, options.negative] if pair else None,
            "train_images": len(train), "test_images": int(len(test_images)), "test_lesions": len(set(test_groups)),
            "generator": str(model) if model else "trained on the train side (generator/)",
            "generator_saw_test": False, "ratio": options.ratio, "seeds": [options.seed + k for k in range(options.seeds)],
            "budget": {**asdict(options.budget), "epochs": None if options.steps else options.epochs, "steps": options.steps},
            "train_recipe": asdict(options.training_recipe()), "rows": rows,
        }
        write_json(work / "benefit.json", summary)
        draw_benefit_png(rows, options, work / "benefit.png")
    summary["out"] = str(out)
    return summary


def check_baseline_methods(model, options: BenefitOptions) -> None:
    """A baseline generator (`train baseline`) makes images from noise: it serves synthesize (and classic), not the
    methods that read or draw codes."""
    from ..storage.modeldir import baseline_arch

    arch = baseline_arch(model)
    if arch is None:
        return
    coded = [m for m in options.methods if m in ("mix", "resample")]
    if coded or options.top_k is not None:
        given = ", ".join([*coded, *(["{top_k}"] if options.top_k is not None else [])])
        raise UsageError(f"{model} is a {arch} baseline generator, which has no codes; these need a VQ-VAE-2 model: "
                         f"{given}. Use {{methods=synthesize}} (classic may be added)")


def with_default_pair(options: BenefitOptions, class_names: list[str]) -> BenefitOptions:
    """`options`, or a copy of them naming melanoma vs nevus as the pair when none is named and both are classes."""
    if options.positive is None and {"melanoma", "nevus"} <= set(class_names):
        return replace(options, positive="melanoma", negative="nevus")
    return options


def benefit_pair(options: BenefitOptions, class_names: list[str]) -> tuple[int, int] | None:
    """The classes of the pairwise AUC, as label indices; None: none."""
    if options.positive is None:
        return None
    for name in (options.positive, options.negative):
        if name not in class_names:
            raise SkinaugError(f"class {name!r} is not in the labels ({', '.join(class_names)}): "
                               "name others with {positive}/{negative}")
    return class_names.index(options.positive), class_names.index(options.negative)


def split_and_plan(dataset, data, out, work: Path, model, options: BenefitOptions):
    """The lesion-grouped split, checked against a resumed run's plan, written as train.csv and test.csv."""
    class_names = dataset.class_names
    train, test = split_for_benefit(dataset.samples, options.test_fraction, options.seed)
    if not test:
        raise SkinaugError("too few lesions to hold any out: use more data")
    missing = [name for c, name in enumerate(class_names) if not any(s.label == c for s in train)]
    if missing:
        raise SkinaugError(f"class {', '.join(missing)} has too few lesions to be on both sides of the split")
    # a resumed run must see the same images on each side, or its generator and classifiers would not fit
    split = hashlib.sha256("\n".join(["train", *sorted(s.name for s in train), "test", *sorted(s.name for s in test)])
                           .encode()).hexdigest()[:16]
    plan = {"data": str(Path(str(data)).resolve()), "model": str(Path(model).resolve()) if model else None,
            "split": split, **options.plan()}
    if (work / PLAN).is_file():
        earlier = read_json(work / PLAN)
        if earlier != json_round_trip(plan):
            changed = sorted(k for k in set(plan) | set(earlier) if json_round_trip(plan).get(k) != earlier.get(k))
            raise SkinaugError(f"{out} was started with other options or data ({', '.join(changed)}): "
                               "rerun with the same ones, or {overwrite=True}")
    write_json(work / PLAN, plan)
    write_text(work / "train.csv", labels_csv(train, class_names))
    write_text(work / "test.csv", labels_csv(test, class_names))
    log(f"split by lesion: train {len(train)} images, test {len(test)} images "
        f"({len({s.group or s.name for s in test})} lesions), seed {options.seed}")
    return train, test


def benefit_generator(data, work: Path, model, test, class_names: list[str], options: BenefitOptions):
    """The generator of the generated methods (None when only classic is asked for): `model`, or one trained here on
    the train side; either must have recorded no test image or lesion. A baseline generator (`train baseline`)
    serves `synthesize` only: it has no codes to mix or resample."""
    from ..generation.commands import open_sampler
    from ..generation.sampler import RunOptions

    if not any(m in GENERATED_METHODS for m in options.methods):
        return None
    if model is not None:
        model_path = Path(model)
    else:
        model_path = train_generator(data, work / "train.csv", work / "generator", options.recipe, options)
    check_model(model_path, test)  # also the one trained here: what it recorded must be the train side only
    generator = open_sampler(model_path, RunOptions(device=options.device), options.sampling())
    missing = [name for name in class_names if name not in generator.class_names]
    if missing:  # a generator of more classes (the shipped model's seven) serves data of a few, as augment does
        raise SkinaugError(f"the generator's classes ({', '.join(generator.class_names)}) lack the data's "
                           f"{', '.join(missing)}")
    return generator


def fraction_rows(fraction, train, data, work: Path, generator, class_names, test_images, test_labels, test_groups,
                  pair, device, options: BenefitOptions) -> list[dict]:
    """One real fraction: its share of the train side, every method's set, the classifiers, a row per set."""
    folder = work / f"fraction_{fraction:g}"
    folder.mkdir(exist_ok=True)
    share = real_share(train, fraction, options.seed)
    write_text(folder / "real.csv", labels_csv(share, class_names))
    real_images, kept, _ = load_images(share, options.budget.image_size, strict=True, workers=options.workers)
    real_labels = np.array([s.label for s in kept], dtype=np.int64)
    steps = options.steps or steps_for(options.epochs, len(real_images), options.budget.batch_size)
    budget = Budget(**{**asdict(options.budget), "steps": steps})
    source = share_source(generator, data, folder / "real.csv", class_names, real_labels)
    sets = {"real": (real_images, real_labels)}
    judge = Judge(folder / "classifiers", real_images, real_labels, len(class_names), budget, device, options,
                  f"{fraction:g} judge")
    filtered: dict = {}
    for method in options.methods:
        if method == "classic":
            extra = classic_copies(real_images, real_labels, options.ratio, options.seed)
        else:
            generate_set(method, generator, source, folder / method, options, options.seed)
            extra = read_generated(folder / method, class_names, options.budget.image_size, options.workers)
            if options.filter is not None:
                targets = {int(c): round(options.ratio * int((real_labels == c).sum())) for c in np.unique(real_labels)}
                *extra, filtered[method] = filter_generated(*extra, judge.probabilities(method, extra[0]), targets,
                                                            options.filter, folder / method, class_names)
        sets[method] = (np.concatenate([real_images, extra[0]]), np.concatenate([real_labels, extra[1]]))
    log(f"real fraction {fraction:g}: {len(real_images)} real images; {budget.steps} classifier steps per set")
    probabilities = {
        name: [classifier_run(folder / "classifiers" / f"{name}_seed{options.seed + k}.npy", images, labels,
                              len(class_names), budget, options.seed + k, device, options, test_images,
                              f"{fraction:g} {name} seed {options.seed + k}", real_count=len(real_images))
               for k in range(options.seeds)]
        for name, (images, labels) in sets.items()}
    rows = []
    for name, (images, labels) in sets.items():
        rows.append(summarise(name, fraction, probabilities, test_labels, test_groups, pair, options,
                              len(real_images), len(images) - len(real_images), labels, len(class_names)))
        rows[-1]["classifier_steps"] = steps
        if name in filtered:
            rows[-1]["filter"] = {"threshold": options.filter, "per_class": filtered[name]}
    return rows


class Judge:
    """--filter's judge: one classifier of a fraction's real images alone (the budget and first seed of the 'real'
    row), trained at most once, its probabilities for each method's candidates kept in judge_<method>.npy."""

    def __init__(self, folder: Path, images, labels, num_classes, budget, device, options, desc):
        self.folder, self.images, self.labels, self.num_classes = folder, images, labels, num_classes
        self.budget, self.device, self.options, self.desc = budget, device, options, desc
        self.model = None

    def probabilities(self, method: str, candidates: np.ndarray) -> np.ndarray:
        path = self.folder / f"judge_{method}.npy"
        if path.is_file():
            return np.load(path)
        if self.model is None:
            self.model = train_classifier(self.images, self.labels, self.num_classes, self.budget, seed=self.options.seed,
                                          device=self.device, weights=self.options.weights, desc=self.desc)
        probabilities = predict(self.model, candidates, self.device)
        save_array(path, probabilities)
        return probabilities


def save_array(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, values)


@dataclass
class ShareLabels:
    """What a baseline generator's set is planned from: the share's labels (it draws from noise, not from codes)."""

    labels: np.ndarray
    path = None  # not a file: nothing of it is an input of the run


def share_source(generator, data, share_csv: Path, class_names: list[str], labels: np.ndarray):
    """The share as the generator's jobs see it, labelled by the generator's class list (which may hold more classes
    than the data; the generated labels.csv names each class, and `read_generated` maps them back to the data's):
    its codes, or only its labels for a baseline generator; None without a generator."""
    from ..generation.encode_decode import codes_from_images

    if generator is None:
        return None
    if not generator.writes_codes:  # a baseline generator: it draws from noise
        to_generator = np.array([list(generator.class_names).index(name) for name in class_names], dtype=np.int64)
        return ShareLabels(to_generator[labels])
    return codes_from_images(generator.code_model, data, share_csv)  # scanned with the generator's classes


def json_round_trip(value):
    import json

    return json.loads(json.dumps(value))


def classifier_run(path: Path, images, labels, num_classes, budget, seed, device, options, test_images, desc,
                   real_count=None) -> np.ndarray:
    """One classifier's test probabilities, kept in `path` so that a rerun does not train it again. The first
    `real_count` images are the real ones (all by default): the others are used by `options`' training recipe."""
    from ..recipes import train_with_recipe

    if path.is_file():
        probabilities = np.load(path)
    else:
        model = train_with_recipe(options.training_recipe(), images, labels,
                                  len(images) if real_count is None else real_count, num_classes, budget, seed=seed,
                                  device=device, weights=options.weights, desc=desc)
        probabilities = predict(model, test_images, device)
        save_array(path, probabilities)
    if constant_predictions(probabilities):  # its AUC (0.5) and any gain against it measure nothing
        warn(f"degenerate classifier: {desc} (seed {seed}) gives every test image the same scores, so its AUC and "
             "the gains against it measure nothing; give it more steps")
    return probabilities


def summarise(name, fraction, probabilities, test_labels, test_groups, pair, options, real_count, added, labels,
              num_classes) -> dict:
    per_seed = [aucs(p, test_labels, pair) for p in probabilities[name]]
    row = {"fraction": fraction, "method": name, "real_images": real_count, "added_images": added,
           "added_share_per_class": {str(c): round(float(added_share(labels, real_count, c)), 4) for c in range(num_classes)}}
    for key in per_seed[0]:
        values = [s[key] for s in per_seed]
        row[key] = {"aucs": values, "mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
    if name != "real":
        real_seed = [aucs(p, test_labels, pair) for p in probabilities["real"]]
        replicates = bootstrap_gains(probabilities[name], probabilities["real"], test_labels, test_groups, pair,
                                     options.bootstrap, options.seed)
        for key in per_seed[0]:
            row[key]["gain"] = row[key]["mean"] - float(np.mean([s[key] for s in real_seed]))
            row[key]["gain_interval"] = percentile_interval(replicates[key]) if key in replicates else None
            # the smallest gain this study's seeds and test lesions could tell from noise (studies/power.py)
            row[key]["mde"] = minimum_detectable_effect([m[key] - r[key] for m, r in zip(per_seed, real_seed)],
                                                        replicates.get(key, []))
    return row


def added_share(labels: np.ndarray, real_count: int, label: int) -> float:
    """The share of added images among the training images of one class."""
    total = (labels == label).sum()
    return float((labels[real_count:] == label).sum() / total) if total else 0.0


def draw_benefit_png(rows: list[dict], options: BenefitOptions, path: Path) -> None:
    """AUC against the real fraction, one line per method (mean over seeds, with a ± std bar); one panel per AUC."""
    from PIL import Image, ImageDraw

    keys = ["pair", "macro"] if options.positive is not None else ["macro"]
    titles = {"pair": f"{options.positive} vs {options.negative}", "macro": "macro one-vs-rest, all classes"}
    panel, margin = 360, 60
    image = Image.new("RGB", (len(keys) * (panel + margin + 20) + 20, panel + 150), "white")
    draw = ImageDraw.Draw(image)
    fractions = sorted({row["fraction"] for row in rows})
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for k, key in enumerate(keys):
        left, top = 20 + margin + k * (panel + margin + 20), 40
        values = [row[key]["mean"] + s * row[key]["std"] for row in rows for s in (-1, 1) if np.isfinite(row[key]["mean"])]
        low, high = (min(values), max(values)) if values else (0.5, 1.0)
        low, high = low - 0.01, high + 0.01

        def xy(fraction, auc):
            x = 0.5 if len(fractions) == 1 else (np.log(fraction) - np.log(fractions[0])) / (np.log(fractions[-1]) - np.log(fractions[0]))
            return left + 10 + x * (panel - 20), top + (high - auc) / (high - low) * panel

        draw.text((left, 8), f"AUC, {titles[key]}", fill="black")
        draw.rectangle([left, top, left + panel, top + panel], outline="black")
        for tick in np.linspace(low, high, 5):
            y = top + (high - tick) / (high - low) * panel
            draw.line([(left, y), (left + panel, y)], fill=(235, 235, 235))
            draw.text((left - 44, y - 6), f"{tick:.3f}", fill="black")
        for fraction in fractions:
            x, _ = xy(fraction, low)
            draw.text((x - 10, top + panel + 6), f"{fraction:g}", fill="black")
        draw.text((left + panel / 2 - 50, top + panel + 22), "real fraction", fill="black")
        for m, method in enumerate(methods):
            colour = PALETTE[m % len(PALETTE)]
            points = [(row["fraction"], row[key]) for row in rows if row["method"] == method]
            line = [xy(f, v["mean"]) for f, v in points if np.isfinite(v["mean"])]
            if len(line) > 1:
                draw.line(line, fill=colour, width=2)
            for f, v in points:
                if np.isfinite(v["mean"]):
                    x, y = xy(f, v["mean"])
                    draw.line([xy(f, v["mean"] - v["std"]), xy(f, v["mean"] + v["std"])], fill=colour)
                    draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            draw.rectangle([left + 10, top + panel + 44 + 14 * m, left + 20, top + panel + 52 + 14 * m], fill=colour)
            draw.text((left + 26, top + panel + 42 + 14 * m), method, fill="black")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def print_benefit_table(summary: dict) -> None:
    """One row per (fraction, method): AUCs mean ± std and the gain over real alone with its interval, on stderr."""
    import sys

    from rich.console import Console
    from rich.table import Table

    keys = ["pair", "macro"] if summary["pair"] else ["macro"]
    names = {"pair": f"{summary['pair'][0]} vs {summary['pair'][1]}" if summary["pair"] else "", "macro": "macro"}
    table = Table(title=f"Benefit of added images: AUC on {summary['test_images']} held-out images "
                        f"({summary['test_lesions']} lesions), ratio {summary['ratio']:g}, seeds {summary['seeds']}")
    budget = summary["budget"]
    table.caption = (f"{budget['arch']} {budget['image_size']}px, batch {budget['batch_size']}, "
                     + (f"{budget['steps']} steps" if budget["steps"] else f"{budget['epochs']} epochs of the real images")
                     + " per classifier; gain: mean over seeds minus real alone's, 95% bootstrap interval over test lesions"
                     + "; MDE: the smallest true gain found with 80% power (two-sided 0.05)"
                     + recipe_caption(summary.get("train_recipe")))
    for column in ("real fraction", "method", "real", "added", *(f"AUC {names[k]}" for k in keys),
                   *(f"gain {names[k]} [95% CI]" for k in keys), *(f"MDE {names[k]}" for k in keys)):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in summary["rows"]:
        cells = [f"{row['fraction']:g}", row["method"], f"{row['real_images']:,}", f"{row['added_images']:,}"]
        cells += [f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in keys]
        for k in keys:
            gain, interval = row[k].get("gain"), row[k].get("gain_interval")
            cells.append("" if gain is None else f"{gain:+.3f}" + (f" [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else ""))
        cells += ["" if row[k].get("mde") is None else f"{row[k]['mde']:.3f}" for k in keys]
        table.add_row(*cells)
    Console(file=sys.stderr, width=None if sys.stderr.isatty() else 160).print(table)


def recipe_caption(recipe: dict | None) -> str:
    """How the classifiers used the added images, for the table's caption (nothing for the default, add)."""
    if not recipe or recipe["name"] == "add":
        return ""
    if recipe["name"] == "exposure":
        return (f"; recipe exposure: the real arm's batches + {recipe['synthetic_per_batch']} added images each, "
                f"loss weight {recipe['synthetic_weight']:g}")
    return "; recipe pretrain: the step budget on the added images, then the real arm's batches"
