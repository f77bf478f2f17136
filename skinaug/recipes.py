"""Train a classifier with generated images without taking exposure away from the real ones.

With a fixed number of steps, pooling real and generated images at ratio 1 halves how often each real image is
seen, and that alone costs AUC (even classic copies do). These pieces keep the real images' exposure exactly as in
the real-only run and add generated images on top, weighted lower, or use them for a pretraining phase only:

    data = torch.utils.data.ConcatDataset([real, generated])          # skinaug.GeneratedDataset items
    sampler = skinaug.ExposureSampler.for_dataset(data, batch_size=32, synthetic_fraction=0.25,
                                                  epochs=10, real_only_epochs=2, seed=0)
    loader = DataLoader(skinaug.WithIndex(data), batch_sampler=sampler)
    weights = skinaug.sample_weights(data, {"synthesize": 0.5}, default=0.5)
    for epoch in range(10):
        for images, labels, index in loader:
            loss = skinaug.weighted_loss(model(images), labels, weights[index])

Which items are real is read from each item's generation method (`info(i)["method"]` of a GeneratedDataset, the
`method` column of a generated folder's labels.csv): `original` (an augment folder's copies of its inputs) and
`real` (a plain image folder) are real; every other method is generated, `classic` copies included (real-derived,
but not the real image itself). `is_real(method)` is that rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .errors import SkinaugError, UsageError
from .scores.classifier import balanced_batches, balanced_weights, train_classifier
from .training.loop import epoch_order

REAL_METHODS = ("original", "real")  # the methods whose items are real images; everything else is generated
DEFAULT_SYNTHETIC_WEIGHT = 0.5  # the loss weight of a generated image when none is given for its method
SYNTHETIC_STREAM = 1  # the generated draws' own random stream, apart from the real draws' (seed, epoch)

__all__ = ["REAL_METHODS", "is_real", "dataset_methods", "dataset_labels", "ExposureSampler", "sample_weights",
           "weighted_loss", "WithIndex", "PretrainSchedule"]


def is_real(method: str) -> bool:
    """True for a real image (`original`, `real`); False for a generated one, classic copies included."""
    return method in REAL_METHODS


def dataset_methods(dataset) -> list[str]:
    """Each item's generation method: `info(i)["method"]` of a skinaug.GeneratedDataset, through ConcatDataset and
    Subset; another dataset needs its methods given (a list, one per item)."""
    from torch.utils.data import ConcatDataset, Subset

    if isinstance(dataset, ConcatDataset):
        return [method for part in dataset.datasets for method in dataset_methods(part)]
    if isinstance(dataset, Subset):
        inner = dataset_methods(dataset.dataset)
        return [inner[int(i)] for i in dataset.indices]
    if hasattr(dataset, "info"):
        return [dataset.info(i)["method"] for i in range(len(dataset))]
    raise SkinaugError(f"cannot tell which items of a {type(dataset).__name__} are real: give one method per item "
                       "(e.g. 'original' or 'synthesize') instead of the dataset")


def dataset_labels(dataset) -> np.ndarray:
    """Each item's label index, without reading an image: `targets` when the dataset has them, a GeneratedDataset's
    samples, through ConcatDataset and Subset."""
    from torch.utils.data import ConcatDataset, Subset

    if isinstance(dataset, ConcatDataset):
        return np.concatenate([dataset_labels(part) for part in dataset.datasets]).astype(np.int64)
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if hasattr(dataset, "targets"):
        return np.asarray(dataset.targets, dtype=np.int64)
    if hasattr(dataset, "samples") and all(hasattr(s, "label") for s in dataset.samples):
        return np.array([s.label for s in dataset.samples], dtype=np.int64)
    raise SkinaugError(f"cannot read the labels of a {type(dataset).__name__} without its images: give labels=")


def _methods_of(methods_or_dataset) -> list[str]:
    if isinstance(methods_or_dataset, (list, tuple, np.ndarray)):
        return [str(m) for m in methods_or_dataset]
    return dataset_methods(methods_or_dataset)


class ExposureSampler(Sampler):
    """A batch sampler that gives every real image exactly the exposure of the real-only run and adds generated
    images as an extra share of each batch (`DataLoader(data, batch_sampler=sampler)`).

        sampler = ExposureSampler.for_dataset(data, batch_size=32, synthetic_per_batch=8, seed=0)
        loader = DataLoader(data, batch_sampler=sampler)   # 32 real + 8 generated per batch

    The real part of epoch e depends only on the real images (their labels), `batch_size`, `seed` and e, so it is
    what the same sampler gives over the real images alone (the real-only run), generated images or not:
    - balance=False: every real image exactly once per epoch, in a seeded shuffle (`skinaug.training.epoch_order`),
      in batches of `batch_size` (the last may be smaller);
    - balance=True: `steps_per_epoch` class-balanced batches drawn with replacement, as `score benefit`'s real arm
      and `train_classifier` draw them (epoch e continues the same seeded stream, so E epochs of S steps are the
      batches of one E x S-step run).
    Each batch then gets `synthetic_per_batch` generated images, or `synthetic_fraction` of the whole batch, drawn
    from their own seeded stream (each generated image used as evenly as possible; class-balanced with balance=True).
    With `epochs` and `real_only_epochs`, the last `real_only_epochs` epochs have no generated image.

    Each `iter()` is one epoch and moves to the next; `set_epoch(e)` chooses the epoch (a resumed run), and
    `batches(e)` lists epoch e's batches without moving.
    """

    def __init__(self, methods, labels=None, *, batch_size: int, synthetic_per_batch: int | None = None,
                 synthetic_fraction: float | None = None, balance: bool = False, steps_per_epoch: int | None = None,
                 epochs: int | None = None, real_only_epochs: int = 0, seed: int = 0):
        methods = _methods_of(methods)
        real = np.array([is_real(m) for m in methods], dtype=bool)
        self.real_indices, self.synthetic_indices = np.flatnonzero(real), np.flatnonzero(~real)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.batch_size, self.synthetic_per_batch, self.synthetic_fraction = batch_size, synthetic_per_batch, synthetic_fraction
        self.balance, self.steps_per_epoch, self.seed = balance, steps_per_epoch, seed
        self.epochs, self.real_only_epochs = epochs, real_only_epochs
        self.epoch = 0
        self._check(len(methods))

    @classmethod
    def for_dataset(cls, dataset, **options) -> "ExposureSampler":
        """The sampler over a dataset of real and generated items (methods and labels read from it)."""
        labels = options.pop("labels", None)
        if labels is None and options.get("balance"):
            labels = dataset_labels(dataset)
        return cls(dataset_methods(dataset), labels, **options)

    def _check(self, count: int) -> None:
        if self.labels is not None and len(self.labels) != count:
            raise UsageError(f"{{labels}} has {len(self.labels)} entries for {count} items")
        if not len(self.real_indices):
            raise SkinaugError("no real item (method 'original' or 'real'): nothing to keep the exposure of")
        if self.batch_size < 1:
            raise UsageError(f"{{batch_size}} must be at least 1, got {self.batch_size}")
        if self.synthetic_per_batch is not None and self.synthetic_fraction is not None:
            raise UsageError("give {synthetic_per_batch} or {synthetic_fraction}, not both")
        if self.synthetic_per_batch is not None and self.synthetic_per_batch < 0:
            raise UsageError(f"{{synthetic_per_batch}} must be 0 or more, got {self.synthetic_per_batch}")
        if self.synthetic_fraction is not None and not 0 <= self.synthetic_fraction < 1:
            raise UsageError(f"{{synthetic_fraction}} is the generated share of a batch, in [0, 1): got {self.synthetic_fraction}")
        if (self.synthetic_per_batch or self.synthetic_fraction) and not len(self.synthetic_indices):
            raise SkinaugError("a generated share is asked for but every item is real")
        if self.balance and self.labels is None:
            raise UsageError("balance=True needs the items' {labels}")
        if self.steps_per_epoch is not None and (not self.balance or self.steps_per_epoch < 1):
            raise UsageError("{steps_per_epoch} (a positive number) goes with balance=True: without it, an epoch is "
                             "one pass over the real images")
        if self.real_only_epochs and (self.epochs is None or not 0 <= self.real_only_epochs <= self.epochs):
            raise UsageError("{real_only_epochs} needs {epochs}, the run's length, and at most that many")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def has_synthetic(self, epoch: int) -> bool:
        """False in the final real-only phase."""
        return not (self.real_only_epochs and epoch >= self.epochs - self.real_only_epochs)

    def real_batches(self, epoch: int) -> list[np.ndarray]:
        """Epoch `epoch`'s real part of each batch, as dataset indices (see the class docstring)."""
        if self.balance:
            steps = self.steps_per_epoch or -(-len(self.real_indices) // self.batch_size)
            drawn = balanced_batches(self.labels[self.real_indices], steps * (epoch + 1), self.batch_size, self.seed)
            return [self.real_indices[positions] for positions in drawn[-steps:]]
        order = epoch_order(self.real_indices, seed=self.seed, epoch=epoch)
        return [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def synthetic_counts(self, real_batches: list[np.ndarray], epoch: int) -> list[int]:
        if not self.has_synthetic(epoch):
            return [0] * len(real_batches)
        if self.synthetic_fraction is not None:
            share = self.synthetic_fraction / (1 - self.synthetic_fraction)
            return [round(len(batch) * share) for batch in real_batches]
        return [self.synthetic_per_batch or 0] * len(real_batches)

    def _synthetic_draws(self, epoch: int, count: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, SYNTHETIC_STREAM])
        pool = self.synthetic_indices
        if count == 0:
            return pool[:0]
        if self.balance:
            return pool[rng.choice(len(pool), size=count, p=balanced_weights(self.labels[pool]))]
        rounds = -(-count // len(pool))  # whole shuffles of the pool: each image used as evenly as possible
        return np.concatenate([pool[rng.permutation(len(pool))] for _ in range(rounds)])[:count]

    def batches(self, epoch: int) -> list[np.ndarray]:
        """Epoch `epoch`'s batches: the real part first, then the generated part."""
        real = self.real_batches(epoch)
        counts = self.synthetic_counts(real, epoch)
        draws = np.split(self._synthetic_draws(epoch, sum(counts)), np.cumsum(counts)[:-1])
        return [np.concatenate([batch, extra]) for batch, extra in zip(real, draws)]

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        for batch in self.batches(epoch):
            yield batch.tolist()

    def __len__(self) -> int:
        if self.balance and self.steps_per_epoch:
            return self.steps_per_epoch
        return -(-len(self.real_indices) // self.batch_size)


def sample_weights(methods_or_dataset, weights: dict | None = None, *, default: float = DEFAULT_SYNTHETIC_WEIGHT) -> torch.Tensor:
    """Per-item loss weights (float32, one per item) from each item's method: `weights[method]` when given, else 1
    for a real item and `default` for a generated one.

        w = sample_weights(data, {"synthesize": 0.5, "classic": 0.8})   # real 1, synthesize 0.5, classic 0.8, others 0.5
        loss = weighted_loss(model(images), labels, w[index])
    """
    weights = weights or {}
    values = [weights.get(m, 1.0 if is_real(m) else default) for m in _methods_of(methods_or_dataset)]
    if any(not (np.isfinite(v) and v >= 0) for v in values):
        raise UsageError("loss weights must be finite and 0 or more")
    return torch.tensor(values, dtype=torch.float32)


def weighted_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged with per-item weights: sum(w_i * CE_i) / sum(w_i), as torch's CrossEntropyLoss averages
    with class weights (all weights 1: the plain mean).

        loss = weighted_loss(model(images), labels, sample_weights(data)[index])
    """
    per_item = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    weights = weights.to(per_item.device, per_item.dtype)
    return (weights * per_item).sum() / weights.sum().clamp_min(torch.finfo(per_item.dtype).tiny)


class WithIndex(Dataset):
    """`dataset`'s items with their index appended, (image, label, index), so a batch can look its weights up."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return (*self.dataset[index], index)


@dataclass(frozen=True)
class PretrainSchedule:
    """Pretrain on the generated items for `pretrain_epochs`, then fine-tune on the real ones for `finetune_epochs`.

        schedule = PretrainSchedule.for_dataset(data, pretrain_epochs=5, finetune_epochs=10)
        for epoch in range(schedule.epochs):
            if schedule.starts_phase(epoch):   # epoch 0 and the first fine-tuning epoch
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)   # and a fresh LR schedule
            loader = DataLoader(Subset(data, schedule.indices(epoch)), batch_size=32, shuffle=True)

    Fine-tuning with the real-only run's epochs keeps every real image's exposure; the generated images only give
    the network its start.
    """

    methods: tuple[str, ...]
    pretrain_epochs: int
    finetune_epochs: int

    def __post_init__(self):
        if self.pretrain_epochs < 0 or self.finetune_epochs < 0:
            raise UsageError("{pretrain_epochs} and {finetune_epochs} must be 0 or more")
        real = [is_real(m) for m in self.methods]
        if (self.pretrain_epochs and all(real)) or (self.finetune_epochs and not any(real)):
            raise SkinaugError("pretraining needs generated items and fine-tuning real ones")

    @classmethod
    def for_dataset(cls, dataset, pretrain_epochs: int, finetune_epochs: int) -> "PretrainSchedule":
        return cls(tuple(dataset_methods(dataset)), pretrain_epochs, finetune_epochs)

    @property
    def epochs(self) -> int:
        return self.pretrain_epochs + self.finetune_epochs

    def phase(self, epoch: int) -> str:
        """'pretrain' (generated items) or 'finetune' (real items)."""
        if not 0 <= epoch < self.epochs:
            raise UsageError(f"epoch {epoch} is outside the schedule's {self.epochs} epochs")
        return "pretrain" if epoch < self.pretrain_epochs else "finetune"

    def starts_phase(self, epoch: int) -> bool:
        """True on a phase's first epoch: where a fresh optimizer and learning-rate schedule start."""
        return epoch == 0 or epoch == self.pretrain_epochs

    def indices(self, epoch: int) -> np.ndarray:
        """The items of `epoch`'s phase: the generated ones while pretraining, the real ones while fine-tuning."""
        wanted = self.phase(epoch) == "finetune"
        return np.array([i for i, m in enumerate(self.methods) if is_real(m) == wanted], dtype=np.int64)


# ------------------------------------------------------------------------- the recipes of `score benefit`

RECIPES = ("add", "exposure", "pretrain")


@dataclass(frozen=True)
class Recipe:
    """How a classifier uses a set of real images followed by added ones (`score benefit --recipe`).

    add: one pool, class-balanced batches over it (the added images take a share of the real ones' exposure).
    exposure: the real arm's exact batches, plus `synthetic_per_batch` class-balanced added images per batch, with
      loss weight `synthetic_weight` (ExposureSampler, weighted_loss).
    pretrain: the step budget on the added images alone, then the real arm's exact batches from there (a fresh
      optimizer and schedule).
    """

    name: str = "add"
    synthetic_weight: float | None = None  # exposure only
    synthetic_per_batch: int | None = None  # exposure only


def train_with_recipe(recipe: Recipe, images: np.ndarray, labels: np.ndarray, real_count: int, num_classes: int, budget, *,
                      seed: int, device, weights=None, desc: str = "classifier"):
    """A classifier of `images[:real_count]` (real) and `images[real_count:]` (added) trained by `recipe` on
    `budget` (skinaug.scores.classifier); a set without added images trains as the real arm does."""
    options = dict(seed=seed, device=device, weights=weights)
    if recipe.name == "add" or real_count >= len(images):
        return train_classifier(images, labels, num_classes, budget, desc=desc, **options)
    if recipe.name == "pretrain":
        start = train_classifier(images[real_count:], labels[real_count:], num_classes, budget, desc=f"{desc} pretrain",
                                 **options)
        return train_classifier(images[:real_count], labels[:real_count], num_classes, budget, init=start,
                                desc=f"{desc} fine-tune", **options)
    if recipe.name != "exposure":
        raise UsageError(f"{{train_recipe}} is one of {', '.join(RECIPES)}, not {recipe.name!r}")
    methods = ["real"] * real_count + ["added"] * (len(images) - real_count)
    per_batch = recipe.synthetic_per_batch  # by default the pool's share: batch x added / real
    per_batch = max(1, round(budget.batch_size * (len(images) - real_count) / real_count)) if per_batch is None else per_batch
    sampler = ExposureSampler(methods, labels, batch_size=budget.batch_size, synthetic_per_batch=per_batch, balance=True,
                              steps_per_epoch=budget.steps, seed=seed)
    weight = DEFAULT_SYNTHETIC_WEIGHT if recipe.synthetic_weight is None else recipe.synthetic_weight
    per_image = sample_weights(methods, default=weight)
    return train_classifier(images, labels, num_classes, budget, desc=desc, batches=sampler.batches(0),
                            loss=lambda logits, targets, index: weighted_loss(logits, targets, per_image[index]), **options)
