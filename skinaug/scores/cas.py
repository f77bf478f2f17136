"""The classification accuracy score (CAS): train a classifier on a set, measure AUC on real held-out images.

The real data is split once by lesion (or patient), seeded; with `test` (an external test set) all of it is
training data instead. Test images never train a classifier: a generated image made from a test image (its
name, source_top or source_bottom is a test image, or an image of a test lesion) is left out and counted, or
refused under `strict`. A generated set whose generator saw a test image or test lesion (its trained_on.json,
see skinaug.trained_on) is flagged: a warning, or refused under `strict`. Every set gets the same budget
(network, image size, batch, optimizer steps); `seeds` classifiers per set give a mean and a spread.

    skinaug score cas --real DATA --labels CSV --train real,OUT_DIR,A+B --positive melanoma --negative nevus
    skinaug score cas --real TRAIN --labels CSV --test TEST --test-labels CSV --train real,OUT_DIR
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field

import numpy as np

from ..data.scan import Sample, group_split, load_images, scan_dataset
from ..errors import SkinaugError, UsageError
from ..storage.fs import claim_output, marked_folder, write_json, write_text
from ..runtime import log, resolve_device, warn
from .classifier import Budget, constant_predictions, predict, steps_for, train_classifier
from .roc import draw_roc_png, macro_auc, macro_roc_curve, roc_auc, roc_curve
from .sets import open_set

MODES = ("replace", "add")
CAS_FOLDER = marked_folder("CAS folder", "cas.json")


@dataclass
class CasOptions:
    positive: str | None = None  # with negative: a binary task, AUC of P(positive); without: macro one-vs-rest
    negative: str | None = None
    mode: str = "replace"  # replace: train on the set alone (the paper's); add: real train split + the set
    test_fraction: float = 0.2
    real_fraction: float = 1.0  # share of the real train split used (low-data regime), drawn by lesion
    seeds: int = 1
    seed: int = 0  # fixes the split; classifier k is trained with seed + k
    epochs: int = 3  # passes over the real train split, turned into a step budget shared by every set
    steps: int | None = None  # overrides epochs
    budget: Budget = field(default_factory=Budget)
    device: str = "auto"
    weights: str | None = None
    strict: bool = False
    workers: int | None = None
    columns: dict = field(default_factory=dict)
    test: str | None = None  # an external test folder: all of the real data then trains
    test_labels: str | None = None

    def validate(self) -> None:
        """Usage errors, found before any output is touched or any image decoded."""
        if self.mode not in MODES:
            raise UsageError(f"{{mode}} must be replace or add, not {self.mode!r}")
        if self.seeds < 1:
            raise UsageError("{seeds} must be at least 1")
        if not 0 < self.test_fraction < 1:
            raise UsageError(f"{{test_fraction}} must be between 0 and 1, got {self.test_fraction}")
        if not 0 < self.real_fraction <= 1:
            raise UsageError(f"{{real_fraction}} must be in (0, 1], got {self.real_fraction}")


@dataclass
class Task:
    class_names: list[str]  # task classes, index order; binary tasks are [negative, positive]
    binary: bool

    @property
    def title(self) -> str:
        return f"{self.class_names[1]} vs {self.class_names[0]}" if self.binary else f"{len(self.class_names)} classes, macro one-vs-rest"


@dataclass
class Split:
    train: list[Sample]
    test: list[Sample]
    train_labels: np.ndarray  # task indices
    test_labels: np.ndarray
    test_names: set[str]
    test_groups: set[str]
    group_of: dict[str, str]  # every real image (all classes) -> its lesion, or itself when it has none
    test_lesion_ids: set[str] = field(default_factory=set)  # the test side's lesion ids (not image names)


@dataclass
class TrainingSet:
    name: str
    mode: str
    names: list[str]  # the image behind each training row: what the classifier really sees
    images: np.ndarray  # uint8 (N, S, S, 3)
    labels: np.ndarray  # task indices
    generated: int  # generated images used
    left_out_test: int  # generated images made from test images or test lesions
    left_out_other: int  # generated images of classes outside the task
    generator_saw_test: dict | None = None  # {"images": n, "lesions": m} from the generators' records; None: unknown
    degenerate_seeds: list[int] = field(default_factory=list)  # seeds whose classifier gave every test image one score


def choose_task(class_names: list[str], positive: str | None, negative: str | None) -> Task:
    if (positive is None) != (negative is None):
        raise UsageError("give both {positive} and {negative}, or neither (all classes, macro one-vs-rest AUC)")
    if positive is not None:
        for name in (positive, negative):
            if name not in class_names:
                raise SkinaugError(f"class {name!r} is not in the real labels ({', '.join(class_names)})")
        if positive == negative:
            raise UsageError("{positive} and {negative} must differ")
        return Task([negative, positive], True)
    if len(class_names) < 2:
        raise SkinaugError(f"the real data has {len(class_names)} class(es): AUC needs two or more")
    return Task(list(class_names), False)


def split_real(real, task: Task, options: CasOptions) -> Split:
    """The seeded lesion-aware split, restricted to the task's classes; the train side optionally thinned."""
    group_of = {s.name: s.group or s.name for s in real.samples}
    index = {name: i for i, name in enumerate(task.class_names)}
    samples = [s for s in real.samples if s.label >= 0 and real.class_names[s.label] in index]
    labels = np.array([index[real.class_names[s.label]] for s in samples], dtype=np.int64)
    if len(samples) < 4:
        raise SkinaugError(f"only {len(samples)} real images of the classes {', '.join(task.class_names)}")
    train, test = group_split([group_of[s.name] for s in samples], options.test_fraction, options.seed, labels=labels)
    if options.real_fraction < 1:
        # the kept share is the 'validation' side of a second lesion-aware split of the train side
        _, kept = group_split([group_of[samples[i].name] for i in train], options.real_fraction, options.seed + 1,
                              labels=labels[train])
        train = train[kept]
    missing = [task.class_names[c] for c in range(len(task.class_names)) if not (labels[test] == c).any()]
    if missing:
        raise SkinaugError(f"no test image of class {', '.join(missing)}: use more data or a larger {{test_fraction}}")
    test_samples = [samples[i] for i in test]
    return Split([samples[i] for i in train], test_samples, labels[train], labels[test], {s.name for s in test_samples},
                 {group_of[s.name] for s in test_samples}, group_of, {s.group for s in test_samples if s.group})


def split_external(real, test, task: Task, options: CasOptions) -> Split:
    """All of `real` (of the task's classes) trains, optionally thinned by lesion; `test` is the test side.

    A real image that is also a test image, or of a test lesion, cannot train: it is left out with a line
    (refused under strict)."""
    index = {name: i for i, name in enumerate(task.class_names)}
    test_samples = [s for s in test.samples if s.label >= 0 and test.class_names[s.label] in index]
    outside = sum(1 for s in test.samples if s.label >= 0 and test.class_names[s.label] not in index)
    if outside:
        log(f"{outside} test images of classes outside the task are not used")
    test_labels = np.array([index[test.class_names[s.label]] for s in test_samples], dtype=np.int64)
    missing = [task.class_names[c] for c in range(len(task.class_names)) if not (test_labels == c).any()]
    if missing:
        raise SkinaugError(f"the test set has no image of class {', '.join(missing)}")
    test_names = {s.name for s in test_samples}
    test_lesions = {s.group for s in test_samples if s.group}
    samples = [s for s in real.samples if s.label >= 0 and real.class_names[s.label] in index]
    overlapping = [s for s in samples if s.name in test_names or (s.group and s.group in test_lesions)]
    if overlapping:
        if options.strict:
            raise SkinaugError(f"{len(overlapping)} real training images are test images or of test lesions "
                               f"(e.g. {overlapping[0].name}): {{strict=True}} refuses overlapping sets")
        warn(f"left out {len(overlapping)} real training images that are test images or of test lesions "
             f"(e.g. {overlapping[0].name})")
        dropped = {s.name for s in overlapping}
        samples = [s for s in samples if s.name not in dropped]
    if len(samples) < 2:
        raise SkinaugError(f"only {len(samples)} real training images of the classes {', '.join(task.class_names)}")
    labels = np.array([index[real.class_names[s.label]] for s in samples], dtype=np.int64)
    group_of = {s.name: s.group or s.name for s in real.samples}
    group_of.update({s.name: s.group or s.name for s in test.samples})
    train = np.arange(len(samples))
    if options.real_fraction < 1:
        _, train = group_split([group_of[s.name] for s in samples], options.real_fraction, options.seed + 1, labels=labels)
    return Split([samples[i] for i in train], test_samples, labels[train], test_labels, test_names,
                 {group_of[s.name] for s in test_samples}, group_of, test_lesions)


def check_generator(image_set, split: Split, options: CasOptions) -> dict | None:
    """What the generator of a generated set saw of the test side, from its trained_on.json: a warning, or
    refusal under strict, when it saw test images or lesions, or when nobody can tell."""
    from ..storage.fs import read_json
    from ..storage.trained_on import read_record

    record = read_record(image_set.path)
    run_file = image_set.path / "run.json"
    if record is None and run_file.is_file():
        methods = {m for per_class in read_json(run_file).get("counts", {}).values() for m in per_class}
        if methods and methods <= {"classic", "original"}:  # no generator made these images
            return {"images": 0, "lesions": 0}
    if record is None or not record.complete:
        problem = ("has no trained_on.json (made before skinaug recorded training images, or by another tool)"
                   if record is None else "was made by a generator started from a model without a record")
        if options.strict:
            raise SkinaugError(f"{image_set.path} {problem}: {{strict=True}} cannot tell whether its generator saw the test images")
        warn(f"{image_set.path} {problem}: cannot tell whether its generator saw the test images")
        if record is None:
            return None
    names, lesions = record.seen(sorted(split.test_names), sorted(split.test_lesion_ids))
    if names or lesions:
        example = names[0] if names else f"lesion {lesions[0]}"
        message = (f"the generator of {image_set.path} was trained on {len(names)} of the {len(split.test_names)} test images "
                   f"and {len(lesions)} of the {len(split.test_lesion_ids)} test lesions (e.g. {example}): its score is flattered")
        if options.strict:
            raise SkinaugError(f"{message}; {{strict=True}} refuses it: train the generator on the training side only")
        warn(message)
    return {"images": len(names), "lesions": len(lesions)} if record.complete else None


def _load(samples: list[Sample], labels: np.ndarray, options: CasOptions, what: str) -> tuple[np.ndarray, np.ndarray, list[Sample]]:
    """Decodes the images at the budget's size; unreadable ones are dropped with their labels (fatal under strict)."""
    images, kept, skipped = load_images(samples, options.budget.image_size, strict=options.strict, workers=options.workers)
    for name, reason in skipped[:10]:
        log(f"skipped {what} image {name}: {reason}")
    if len(skipped) > 10:
        log(f"... and {len(skipped) - 10} more {what} images skipped")
    if skipped:
        kept_names = {s.name for s in kept}
        labels = np.asarray(labels)[[s.name in kept_names for s in samples]]
    return images, np.asarray(labels, dtype=np.int64), kept


def load_training_set(spec: str, task: Task, split: Split, real_images: np.ndarray, options: CasOptions) -> TrainingSet:
    """'real', an OUT_DIR, or several OUT_DIRs joined with '+', with test-derived images left out."""
    if spec == "real":
        return TrainingSet("real", "replace", [s.name for s in split.train], real_images, split.train_labels, 0, 0, 0)
    index = {name: i for i, name in enumerate(task.class_names)}
    parts, names, labels, image_names = [], [], [], []
    left_out_test = left_out_other = 0
    saw_test: dict | None = {"images": 0, "lesions": 0}
    for part in spec.split("+"):
        image_set = open_set(part, strict=options.strict)
        if not image_set.generated:
            raise SkinaugError(f"{part} is not a generated set (an OUT_DIR with images/ and labels.csv with "
                               "source_top/source_bottom): give such a folder, or the word real")
        keep, keep_labels, leaked, untraced = [], [], [], []
        for sample in image_set.dataset.samples:
            label = image_set.dataset.class_names[sample.label] if sample.label >= 0 else None
            if label not in index:
                left_out_other += 1
                continue
            sources = image_set.sources.get(sample.name, ())
            origins = (sample.name, *sources)
            if any(o in split.test_names or split.group_of.get(o) in split.test_groups for o in origins):
                leaked.append(sample.name)
                continue
            if any(source not in split.group_of for source in sources):
                untraced.append(sample.name)  # made from an image that is not a real one (a generated set's)
            keep.append(sample)
            keep_labels.append(index[label])
        if untraced:
            message = (f"{len(untraced)} images of {part} name sources that are not real images (e.g. {untraced[0]}): a "
                       "generated folder used as DATA; whether they came from test images cannot be checked")
            if options.strict:
                raise SkinaugError(f"{message} ({{strict=True}})")
            warn(message)
        if leaked and options.strict:
            raise SkinaugError(f"{len(leaked)} images of {part} were made from real test images (e.g. {leaked[0]}); "
                               "{strict=True} refuses such a set: generate it from the training split only")
        seen = check_generator(image_set, split, options)
        saw_test = None if seen is None or saw_test is None else {k: saw_test[k] + seen[k] for k in seen}
        left_out_test += len(leaked)
        images, part_labels, kept = _load(keep, np.array(keep_labels, dtype=np.int64), options, image_set.name)
        image_names += [s.name for s in kept]
        parts.append(images)
        labels.append(part_labels)
        names.append(image_set.name)
    images = np.concatenate(parts) if parts else np.zeros((0, options.budget.image_size, options.budget.image_size, 3), np.uint8)
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    if len(images) == 0:
        raise SkinaugError(f"no usable image of the classes {', '.join(task.class_names)} in {spec} "
                           f"({left_out_test} made from test images, {left_out_other} of other classes)")
    generated = len(images)
    if options.mode == "add":
        images, labels = np.concatenate([real_images, images]), np.concatenate([split.train_labels, labels])
        image_names = [s.name for s in split.train] + image_names
    absent = [task.class_names[c] for c in range(len(task.class_names)) if not (labels == c).any()]
    if absent:
        warn(f"{spec} has no training image of class {', '.join(absent)}")
    return TrainingSet("+".join(names), options.mode, image_names, images, labels, generated, left_out_test, left_out_other,
                       saw_test)


def score_set(training: TrainingSet, task: Task, test_images: np.ndarray, test_labels: np.ndarray, options: CasOptions,
              device) -> tuple[list[float], list[np.ndarray]]:
    """One classifier per seed; returns the AUCs and the test probabilities (N, C) of each."""
    aucs, probabilities = [], []
    for k in range(options.seeds):
        seed = options.seed + k
        model = train_classifier(training.images, training.labels, len(task.class_names), options.budget, seed=seed,
                                 device=device, weights=options.weights, desc=f"{training.name} seed {seed}")
        probs = predict(model, test_images, device)
        auc = roc_auc(test_labels == 1, probs[:, 1]) if task.binary else macro_auc(test_labels, probs)
        log(f"{training.name} ({training.mode}), seed {seed}: AUC {auc:.4f}")
        if constant_predictions(probs):
            refuse_constant(training, seed, auc, options)
        aucs.append(auc)
        probabilities.append(probs)
    return aucs, probabilities


def refuse_constant(training: TrainingSet, seed: int, auc: float, options: CasOptions) -> None:
    """A classifier that gave every test image the same scores measured nothing: said (and recorded), or refused
    under strict."""
    message = (f"degenerate classifier: the one trained on {training.name} (seed {seed}) gives every test image the same "
               f"scores, so its AUC {auc:.4f} measures nothing; train it longer ({{steps}} or {{epochs}})")
    if options.strict:
        raise SkinaugError(f"{message} ({{strict=True}} refuses such a score)")
    warn(message)
    training.degenerate_seeds.append(seed)


def set_entry(training: TrainingSet, aucs: list[float], options: CasOptions) -> dict:
    """One training set's row of cas.json."""
    return {
        "name": training.name, "mode": training.mode, "seeds": [options.seed + k for k in range(options.seeds)],
        "aucs": aucs, "auc_mean": float(np.mean(aucs)), "auc_std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0,
        "train_images": int(len(training.images)), "generated_images": training.generated,
        "left_out_test_provenance": training.left_out_test, "left_out_other_classes": training.left_out_other,
        "generator_saw_test": training.generator_saw_test if training.generated else {"images": 0, "lesions": 0},
        "degenerate_seeds": list(training.degenerate_seeds),
    }


def run_cas(real_dir, labels_csv, train: list[str], options: CasOptions, out=None, overwrite=False) -> dict:
    """The CAS table: one entry per training set (see the module docstring); writes `out` when given."""
    options.validate()
    if not train:
        raise UsageError("{train} needs at least one set: real, or a generated OUT_DIR")
    # the folder is written whole at the end; --overwrite replaces an earlier one only then
    sets = [part for spec in train if spec != "real" for part in spec.split("+")]
    if options.test_labels is not None and options.test is None:
        raise UsageError("{test_labels} needs {test}")
    claim = None if out is None else claim_output(out, kind=CAS_FOLDER, overwrite=overwrite,
                                                  inputs=(real_dir, labels_csv, options.test, options.test_labels, *sets))
    device = resolve_device(options.device)
    real = scan_dataset(real_dir, labels_csv, strict=options.strict, **options.columns)
    task = choose_task(real.class_names, options.positive, options.negative)
    if options.test is not None:
        test = open_set(options.test, options.test_labels, strict=options.strict, **options.columns).dataset
        split = split_external(real, test, task, options)
    else:
        split = split_real(real, task, options)
    real_images, split.train_labels, split.train = _load(split.train, split.train_labels, options, "real")
    test_images, test_labels, test_samples = _load(split.test, split.test_labels, options, "real test")
    if options.steps is None:
        options.budget.steps = steps_for(options.epochs, len(real_images), options.budget.batch_size)
    else:
        options.budget.steps = options.steps
    log(f"task: {task.title}; real train {len(real_images)} images, test {len(test_images)} images "
        f"({len(split.test_groups)} lesions); budget {options.budget.arch} {options.budget.image_size}px, "
        f"{options.budget.steps} steps of batch {options.budget.batch_size}, {options.seeds} seed(s), {device}")

    entries, predictions, curves = [], [], []
    used_names: set[str] = set()
    for spec in train:
        training = load_training_set(spec, task, split, real_images, options)
        name = training.name
        suffix = 2
        while name in used_names:  # two folders of the same name stay apart in the table
            name, suffix = f"{training.name}#{suffix}", suffix + 1
        used_names.add(name)
        training.name = name
        if training.left_out_test:
            log(f"{name}: left out {training.left_out_test} images made from real test images")
        aucs, probabilities = score_set(training, task, test_images, test_labels, options, device)
        entries.append(set_entry(training, aucs, options))
        seed_curves = []
        for k, probs in enumerate(probabilities):
            predictions.append((name, options.seed + k, probs))
            seed_curves.append(roc_curve(test_labels == 1, probs[:, 1]) if task.binary else macro_roc_curve(test_labels, probs))
        curves.append((f"{name}  AUC {entries[-1]['auc_mean']:.3f}", seed_curves))

    summary = {
        "task": task.title, "classes": task.class_names, "test_images": int(len(test_images)),
        "test": "external" if options.test is not None else f"lesion split of the real data ({options.test_fraction:.0%}, seed {options.seed})",
        "train_real_images": int(len(real_images)), "budget": asdict(options.budget), "sets": entries,
    }
    if claim is not None:
        write_cas_folder(claim, summary, predictions, curves, split, test_samples, test_labels, task)
        summary["out"] = str(out)
    return summary


def write_cas_folder(claim, summary: dict, predictions, curves, split: Split, test_samples, test_labels, task: Task) -> None:
    """cas.json, predictions.csv, split.csv and roc.png into the claimed folder, which replaces an earlier one only now."""
    with claim:
        write_text(claim.work / "predictions.csv", predictions_csv(predictions, [s.name for s in test_samples], test_labels, task))
        draw_roc_png(curves, claim.work / "roc.png", title=f"ROC on {len(test_labels)} real test images: {task.title}")
        write_text(claim.work / "split.csv", split_csv({"train": (split.train, split.train_labels), "test": (test_samples, test_labels)}, task))
        write_json(claim.work / "cas.json", summary)


def predictions_csv(predictions, test_names: list[str], test_labels: np.ndarray, task: Task) -> str:
    """set, seed, image, label, score: score is P(positive) for a binary task; for several classes it is
    P(true label), followed by one p_<class> column per class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    extra = [] if task.binary else [f"p_{name}" for name in task.class_names]
    writer.writerow(["set", "seed", "image", "label", "score", *extra])
    for name, seed, probs in predictions:
        for image, label, row in zip(test_names, test_labels, probs):
            score = row[1] if task.binary else row[label]
            writer.writerow([name, seed, image, task.class_names[label], repr(float(score)),
                             *([repr(float(p)) for p in row] if extra else [])])
    return buffer.getvalue()


def split_csv(sides: dict[str, tuple[list[Sample], np.ndarray]], task: Task) -> str:
    """image,label,lesion_id,side: the real images of each side, e.g. to train a generator on the train side only
    (a generator that saw the test images leaks them in a way no provenance column shows)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "label", "lesion_id", "side"])
    for side, (samples, labels) in sides.items():
        writer.writerows([sample.name, task.class_names[label], sample.group, side] for sample, label in zip(samples, labels))
    return buffer.getvalue()


def print_cas_table(summary: dict) -> None:
    """The paper's Table 3 layout on stderr."""
    import sys

    from rich.console import Console
    from rich.table import Table

    budget = summary["budget"]
    table = Table(title=f"Classification accuracy score: AUC on {summary['test_images']} real test images ({summary['task']})",
                  caption=f"{budget['arch']}, {budget['image_size']}px, {budget['steps']} steps of batch {budget['batch_size']} per classifier")
    for column in ("training set", "mode", "images", "left out (from test images)", "AUC", "per seed"):
        table.add_column(column, justify="left" if column in ("training set", "mode") else "right", no_wrap=column != "left out (from test images)")
    for entry in summary["sets"]:
        spread = f" ± {entry['auc_std']:.3f}" if len(entry["aucs"]) > 1 else ""
        constant = " (constant scores: no result)" if entry.get("degenerate_seeds") else ""
        table.add_row(entry["name"], entry["mode"], f"{entry['train_images']:,}", f"{entry['left_out_test_provenance']:,}",
                      f"{entry['auc_mean']:.3f}{spread}{constant}", " ".join(f"{a:.3f}" for a in entry["aucs"]))
    # a log file gets the whole table rather than rich's 80-column default
    Console(file=sys.stderr, width=None if sys.stderr.isatty() else 140).print(table)
