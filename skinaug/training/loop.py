"""The training toolkit every trainer shares: schedule, augmentation, checkpoint state, finite-loss guard, metrics
log, autocast, and `fit`, the epoch loop that ties them together.

A trainer supplies a step function and the objects a checkpoint keeps; `fit` runs the epochs:

    state = TrainState(model=model, optimizer=optimizer, scheduler=warmup_cosine(optimizer, warmup, total))
    run = Run("training", checkpoint=train_dir / "checkpoint.pt", meta=meta, log=MetricsLog(metrics_path, "vqvae"))

    def step(batch, step_number):  # one update; may step several optimizers (a GAN's generator and discriminator)
        loss = ...
        optimizer_step(loss, optimizer)
        return {"loss": loss.detach()}  # scalars fit sums over the epoch; "loss" is the one guarded

    metrics = fit(state, step, lambda epoch: shuffled_batches(train_index, 64, seed=0, epoch=epoch, dist=dist),
                  epochs=30, run=run, hooks=Hooks(evaluate=lambda epoch: {"train_loss": epoch.mean("loss")}), dist=dist)

A trainer with several players (a GAN) keeps one entry per kind of object in the checkpoint, with a `Group`:
`TrainState(model=gan, optimizer=Group(generator=..., discriminator=...), scheduler=Group(generator=..., ...))`.

After each step fit advances every learning-rate scheduler in the state, in groups too. At the end of each epoch
it calls `hooks.synchronise` on every rank, then on rank 0 alone `hooks.evaluate` (the metrics line), appends that
line to the metrics log, calls `hooks.epoch_end` (sample grids, best-checkpoint logic) and saves the checkpoint. Under
torchrun (skinaug.distributed) every rank steps in lockstep and only rank 0 logs and saves.

Finite-loss guard: the summed "loss" is checked every step on CPU and every 25 steps on a GPU (each check is a
host sync), and at the end of every epoch; a non-finite loss stops every rank with one line,
`<name> diverged: the loss became nan at epoch E, step S; <what to do>` (a `Diverged` error, exit 1), naming the
last good checkpoint when there is one. The checkpoint (see `TrainState.checkpoint`) resumes bit-exactly.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..distributed import Distributed
from ..errors import SkinaugError
from ..storage.fs import atomic_path, write_text
from ..runtime import progress
from ..vqvae.model import to_model_input

CHECKPOINT = "checkpoint.pt"  # MODEL_DIR/train/checkpoint.pt: the checkpoint of `train vqvae` and `train baseline`
CHECK_EVERY_ON_GPU = 25  # steps between finite-loss checks on a GPU, where each check waits for the device
SEED_STRIDE = 1_000_003  # epoch seeds are seed * SEED_STRIDE + epoch: runs with nearby seeds never share an order


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress_ = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress_))


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int):
    """AdamW's schedule for every trainer: warm-up of at most a tenth of the run, then cosine decay."""
    warmup = min(warmup_steps, total_steps // 10 + 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total_steps))


def augment_batch(images: torch.Tensor) -> torch.Tensor:
    """Random flips, 90-degree rotations and mild colour jitter for a (B, 3, S, S) batch in [-1, 1].

    Done on the device as whole-batch tensor ops: per-image CPU augmentation would starve a GPU.
    Lesions have no canonical orientation, so every dihedral transform is a valid view.
    """
    b = images.shape[0]
    draws = torch.rand(b, 6, device=images.device)
    flip = (draws[:, 0] < 0.5).view(b, 1, 1, 1)
    images = torch.where(flip, images.flip(-1), images)
    quarter_turns = (draws[:, 1] * 4).long().view(b, 1, 1, 1)
    rotated = images
    for k in range(1, 4):
        rotated = torch.where(quarter_turns == k, torch.rot90(images, k, (2, 3)), rotated)
    images = rotated
    brightness = (draws[:, 2] - 0.5) * 0.2  # +-0.1 on the [-1, 1] scale
    contrast = 1.0 + (draws[:, 3] - 0.5) * 0.2
    saturation = 1.0 + (draws[:, 4] - 0.5) * 0.2
    gray = images.mean(1, keepdim=True)
    images = gray + (images - gray) * saturation.view(b, 1, 1, 1)
    mean = images.mean((1, 2, 3), keepdim=True)
    images = mean + (images - mean) * contrast.view(b, 1, 1, 1) + brightness.view(b, 1, 1, 1)
    return images.clamp(-1.0, 1.0)


# ------------------------------------------------------------------------------------------- batches


def epoch_order(indices: np.ndarray, *, seed: int, epoch: int, dist: Distributed | None = None) -> np.ndarray:
    """`indices` shuffled for `epoch` (0-based), then this rank's shard. The permutation is the same on every rank
    and fixed by seed and epoch alone (its own generator), so a resumed run sees the order an unbroken one would."""
    generator = torch.Generator().manual_seed(seed * SEED_STRIDE + epoch)
    order = np.asarray(indices)[torch.randperm(len(indices), generator=generator).numpy()]
    return (dist or Distributed()).shard(order)


def steps_per_epoch(count: int, batch_size: int, *, dist: Distributed | None = None, drop_last: bool = True) -> int:
    """Optimizer steps in an epoch over `count` items: full batches only, or a last partial one too. At least 1."""
    shard = len((dist or Distributed()).shard(np.arange(count)))
    return max(1, shard // batch_size if drop_last else math.ceil(shard / batch_size))


def shuffled_batches(indices: np.ndarray, batch_size: int, *, seed: int, epoch: int, dist: Distributed | None = None,
                     drop_last: bool = True) -> list[np.ndarray]:
    """The epoch's batches of `indices` for this rank (see `epoch_order` and `steps_per_epoch`)."""
    order = epoch_order(indices, seed=seed, epoch=epoch, dist=dist)
    steps = steps_per_epoch(len(indices), batch_size, dist=dist, drop_last=drop_last)
    return [order[number * batch_size : (number + 1) * batch_size] for number in range(steps)]


class BatchSource:
    """Batches of images from the uint8 cache (image_cache.py), as model input on the device.

    When the cache fits comfortably in GPU memory it is moved there once; otherwise batches are
    gathered on the CPU into pinned memory and copied without blocking.
    """

    def __init__(self, cache: np.ndarray, device: torch.device):
        self.device = device
        self.on_device = None
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if cache.nbytes < 0.25 * free:
                self.on_device = torch.from_numpy(np.array(cache)).to(device)
        self.cache = cache

    def __call__(self, indices: np.ndarray) -> torch.Tensor:
        if self.on_device is not None:
            batch = self.on_device[torch.from_numpy(indices).to(self.device)]
        else:
            # sorted reads are sequential on the memory map; order within a batch does not matter
            batch = torch.from_numpy(self.cache[np.sort(indices)])
            if self.device.type == "cuda":
                batch = batch.pin_memory().to(self.device, non_blocking=True)
        return to_model_input(batch)


# ------------------------------------------------------------------------------------------- state


class Group:
    """Named objects kept as one entry of a checkpoint, {name: state}: a GAN's optimizers (one per player), or
    their schedules. fit steps every learning-rate scheduler in a group."""

    def __init__(self, **members):
        self.members = members

    def __getitem__(self, name: str):
        return self.members[name]

    def state_dict(self) -> dict:
        return {name: member.state_dict() for name, member in self.members.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, member in self.members.items():
            member.load_state_dict(state[name])


class TrainState:
    """What a checkpoint keeps: named objects with state_dict()/load_state_dict() (modules, optimizers, schedulers,
    the VQ-VAE's adversary), and the run's position: `step` (optimizer steps done) and `epoch` (epochs done).

    Give the plain modules, not their DDP wrappers: the checkpoint's keys are then the same for any number of ranks.
    """

    def __init__(self, **objects):
        self.objects = objects
        self.step = 0
        self.epoch = 0

    @property
    def schedulers(self) -> list:
        """The learning-rate schedulers, in groups too, which fit steps after every step."""
        values = [member for value in self.objects.values()
                  for member in (value.members.values() if isinstance(value, Group) else (value,))]
        return [value for value in values if isinstance(value, torch.optim.lr_scheduler.LRScheduler)]

    def checkpoint(self, meta: dict) -> dict:
        """Everything --resume needs: each object's state under its name, the position, the random state and the
        run's meta (the shape-defining config and what else the trainer needs to continue)."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        objects = {name: value.state_dict() for name, value in self.objects.items()}
        return {**objects, "step": self.step, "epoch": self.epoch, "rng": rng, "meta": meta}

    def restore(self, checkpoint: dict, device, path=None) -> None:
        """The inverse of `checkpoint`: every object's state, the position and the random state."""
        missing = [name for name in self.objects if name not in checkpoint]
        if missing:
            where = f" {path}" if path is not None else ""
            raise SkinaugError(f"the checkpoint{where} holds no {', '.join(missing)} state: another kind of run made it "
                               "(start again without {resume=True})")
        for name, value in self.objects.items():
            value.load_state_dict(checkpoint[name])
        self.step, self.epoch = checkpoint["step"], checkpoint["epoch"]
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if "cuda" in checkpoint["rng"] and torch.device(device).type == "cuda":
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint, read without unpickling arbitrary objects (weights_only=True)."""
    from ..storage.modeldir import torch_load_tensors

    return torch_load_tensors(path, "checkpoint")


# ------------------------------------------------------------------------------------------- metrics log


class MetricsLog:
    """MODEL_DIR/train/metrics.jsonl: a JSON line per epoch. Stages (vqvae, prior_top, ...) share the file; each
    line names its stage first, then its epoch and step."""

    def __init__(self, path, stage: str):
        self.path, self.stage = Path(path), stage

    def append(self, line: dict) -> dict:
        """Writes {"stage": stage, **line}; returns it."""
        line = {"stage": self.stage, **line}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
        return line

    def reset(self) -> None:
        """A new run of a model directory starts a new log."""
        self.path.unlink(missing_ok=True)

    def truncate(self, epoch: int) -> None:
        """Drops this stage's lines after `epoch` (the checkpoint's): a run cut off between logging an epoch and
        saving its checkpoint trains that epoch again, and logs it once."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()
                and not (self._stage_of(line) == self.stage and json.loads(line).get("epoch", 0) > epoch)]
        write_text(self.path, "".join(line + "\n" for line in kept))

    def last(self) -> dict:
        """The stage's last line ({} when none)."""
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.exists() else []
        mine = [line for line in lines if line.strip() and self._stage_of(line) == self.stage]
        return json.loads(mine[-1]) if mine else {}

    def _stage_of(self, line: str) -> str:
        return json.loads(line).get("stage", self.stage)  # a line without a stage: an early vqvae log


# ------------------------------------------------------------------------------------------- the loop


class Diverged(SkinaugError):
    """The finite-loss guard's error (one line, exit 1)."""


@dataclass
class Run:
    """Where rank 0 keeps a run: its checkpoint (with `meta` in it) and its metrics log; `name` and `restart` word
    the divergence error (`restart`: what to do when no checkpoint was saved yet)."""

    name: str = "training"
    checkpoint: Path | None = None
    meta: dict = field(default_factory=dict)
    log: MetricsLog | None = None
    restart: str = "start again with a lower {lr}"

    def diverged(self, what: str) -> Diverged:
        if self.checkpoint is not None and Path(self.checkpoint).is_file():
            kept = (f"the last good checkpoint is kept in {Path(self.checkpoint).parent} (resume with {{resume=True}} after "
                    "lowering {lr})")
        elif self.checkpoint is not None:
            kept = f"no checkpoint was saved yet ({self.restart})"
        else:
            kept = self.restart
        return Diverged(f"{self.name} diverged: {what}; {kept}")


@dataclass
class Epoch:
    """What the hooks see at the end of an epoch."""

    number: int  # 1-based
    epochs: int
    step: int  # optimizer steps done in the run
    steps: int  # optimizer steps in this epoch
    items: int  # batch items this rank trained on
    sums: dict  # each step output summed over the epoch
    seconds: float  # the epoch's steps and synchronisation, without evaluation

    def mean(self, name: str) -> float:
        """A step output's mean over the epoch's steps."""
        return float(self.sums[name]) / self.steps


@dataclass
class Hooks:
    """What a trainer adds to the loop; every hook is optional."""

    synchronise: Callable[[], None] | None = None  # every rank, after the epoch's steps (collectives allowed)
    evaluate: Callable[[Epoch], dict] | None = None  # rank 0: the metrics line's values; default: each output's mean
    epoch_end: Callable[[Epoch, dict], None] | None = None  # rank 0: after the line is logged, before the checkpoint
    postfix: Callable[[dict], dict] | None = None  # the bar's postfix after a step, while the bar is shown


def batch_size_of(batch) -> int:
    """How many items a batch holds: its length, or 1 for a batch without one."""
    return len(batch) if hasattr(batch, "__len__") else 1


@dataclass
class Bar:
    """An epoch's progress bar: its description (epoch, epochs -> text), unit and how far a batch moves it."""

    desc: Callable[[int, int], str] = lambda epoch, epochs: f"epoch {epoch}/{epochs}"  # noqa: E731
    unit: str = "img"
    size: Callable[[Any], int] = batch_size_of


StepFn = Callable[[Any, int], dict]  # (batch, steps done before it) -> scalar outputs, "loss" among them


def optimizer_step(loss: torch.Tensor, optimizer, *, clip_norm: float | None = None, parameters=None) -> None:
    """Gradients of `loss` and one update of `optimizer` (gradient norm clipped to `clip_norm` over `parameters`)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(parameters, clip_norm)
    optimizer.step()


def fit(state: TrainState, step: StepFn, batches: Callable[[int], Sequence], *, epochs: int, run: Run | None = None,
        hooks: Hooks | None = None, bar: Bar | None = None, dist: Distributed | None = None) -> dict:
    """Trains from `state`'s position (epoch `state.epoch`) to `epochs`: `batches(epoch)` (0-based) lists an epoch's
    batches, `step(batch, state.step)` trains on one. Returns the last metrics line written ({} on other ranks, or
    when no epoch was left to train)."""
    run, hooks, bar, dist = run or Run(), hooks or Hooks(), bar or Bar(), dist or Distributed()
    metrics: dict = {}
    for epoch_index in range(state.epoch, epochs):
        started = time.perf_counter()
        epoch = _train_epoch(state, step, batches(epoch_index), epoch_index + 1, epochs, run, hooks, bar, dist)
        if hooks.synchronise is not None:
            hooks.synchronise()
        epoch.seconds = time.perf_counter() - started
        state.epoch = epoch.number
        if dist.is_main:
            metrics = _end_epoch(state, epoch, run, hooks)
        dist.barrier()
    return metrics


def _train_epoch(state: TrainState, step: StepFn, batches: Sequence, number: int, epochs: int, run: Run, hooks: Hooks,
                 bar_spec: Bar, dist: Distributed) -> Epoch:
    sums: dict = {}
    items = 0
    with progress(sum(bar_spec.size(batch) for batch in batches), desc=bar_spec.desc(number, epochs),
                  unit=bar_spec.unit) as bar:
        for batch_number, batch in enumerate(batches):
            outputs = step(batch, state.step)
            for scheduler in state.schedulers:
                scheduler.step()
            state.step += 1
            _accumulate(sums, outputs)
            loss = sums["loss"]  # a step function's outputs always hold its "loss"
            if loss.device.type == "cpu" or batch_number % CHECK_EVERY_ON_GPU == CHECK_EVERY_ON_GPU - 1:
                if not dist.all_finite(loss):
                    raise run.diverged(f"the loss became {float(outputs['loss'])} at epoch {number}, step {state.step}")
            items += bar_spec.size(batch)
            if bar.disable is False:
                bar.update(bar_spec.size(batch))
                if hooks.postfix is not None:
                    bar.set_postfix(**hooks.postfix(outputs))
    if batches and not dist.all_finite(sums["loss"]):  # every rank has as many batches: all check, or none
        raise run.diverged(f"the loss became non-finite in epoch {number}")
    return Epoch(number, epochs, state.step, len(batches), items, sums, 0.0)


def _accumulate(sums: dict, outputs: dict) -> None:
    """Tensors into fp32 running sums on their device (no host sync), plain numbers as numbers."""
    for name, value in outputs.items():
        if isinstance(value, torch.Tensor):
            if name not in sums:
                sums[name] = torch.zeros((), device=value.device)
            sums[name] += value.detach()
        else:
            sums[name] = sums.get(name, 0) + value


def _end_epoch(state: TrainState, epoch: Epoch, run: Run, hooks: Hooks) -> dict:
    """Rank 0: the metrics line, the epoch's extra outputs, the checkpoint."""
    values = hooks.evaluate(epoch) if hooks.evaluate is not None else {
        f"train_{name}": epoch.mean(name) for name in epoch.sums}
    line = {"epoch": epoch.number, "step": epoch.step, **values}
    if run.log is not None:
        line = run.log.append(line)
    if hooks.epoch_end is not None:
        hooks.epoch_end(epoch, line)
    if run.checkpoint is not None:
        save_checkpoint(Path(run.checkpoint), state.checkpoint(run.meta))
    return line
