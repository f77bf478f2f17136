"""Stage-2 training: `skinaug train prior`.

Learns p(top codes | class) and p(bottom codes | top codes, class) with one class-conditional network
per level (PixelSNAIL or Gated PixelCNN), from a code file or from images encoded on the fly.
Weights land in MODEL_DIR/prior_top.safetensors and prior_bottom.safetensors; their configs, the
classes they were trained on and their final metrics in config.json["priors"].

Fine-tuning (`--init SOURCE`): each level starts from SOURCE's prior of that level. Its shape (arch, channels,
blocks, ...) is kept; the class embeddings (one row per class in every gated layer's bias) are matched by class
name: a class of this model that SOURCE's prior was trained on keeps its rows, any other class gets freshly
initialised rows. The code grid (image size, levels, codebook size) must be SOURCE's. The codes mean the same
only when this model's VQ-VAE is SOURCE's (same fingerprint, e.g. `train vqvae --init SOURCE --epochs 0`) or
close to it when fine-tuned from it; an unrelated VQ-VAE is allowed, SOURCE's prior is then a generic start.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..backends import open_backend
from ..storage.codefile import CodeFile, read_codes
from ..data.scan import group_split
from ..distributed import Distributed
from ..generation.encode_decode import codes_from_images
from ..errors import SkinaugError, UsageError
from ..storage.fs import OutputLock, real_path
from ..limits import check_network_memory
from ..storage.modeldir import PRIOR_WEIGHTS, ModelDir, base_model, fingerprint, load_weights, require_writable, save_weights
from ..priors import PriorConfig, build_prior
from ..priors.config import ATTENTION_KINDS
from ..runtime import autocast_for, log, resolve_device, warn
from ..spec import ModelSpec
from ..storage.trained_on import record_stage
from .vqvae import InitSource, open_init
from .loop import (Bar, Epoch, Hooks, MetricsLog, Run, TrainState, fit, load_checkpoint,
                       optimizer_step, shuffled_batches, steps_per_epoch, warmup_cosine)

# --init: of the PriorConfig fields a caller may set (arch and `PriorOptions.overrides`), those that do not define
# the shape
TRAINING_ONLY = ("dropout",)
# fields fixed by the codes being modelled: a source prior must have the same
GRID_FIELDS = ("codebook_size", "height", "width", "condition_codebook_size", "condition_height", "condition_width")
DEFAULT_LR = 3e-4  # peak learning rate from scratch
FINE_TUNE_LR = 3e-5  # from --init: small data, a prior that already fits


@dataclass
class PriorOptions:
    arch: str | None = None  # None: pixelsnail, or the --init prior's
    classes: list[str] | None = None  # None: every class of the model
    unconditional: bool = False
    epochs: int = 20
    batch_size: int = 32
    lr: float | None = None  # None: DEFAULT_LR, or FINE_TUNE_LR with init
    weight_decay: float = 0.0
    warmup_steps: int = 200
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    overrides: dict = field(default_factory=dict)  # PriorConfig fields from the command line (channels, ...)


def select_classes(code_file: CodeFile, class_names: list[str], wanted: list[str] | None) -> np.ndarray:
    """Indices of the images to train on: every labelled image, or those of the named classes."""
    if wanted is None:
        return np.arange(len(code_file))
    if not wanted:  # --classes "," or " "
        raise UsageError("{classes} names no class: give 'all' or a comma-separated list of class names")
    unknown = [name for name in wanted if name not in class_names]
    if unknown:
        raise UsageError(f"unknown class(es) {', '.join(unknown)}: the model knows {', '.join(class_names) or 'no classes'}")
    keep = np.isin(code_file.labels, [class_names.index(name) for name in wanted])
    if not keep.any():
        raise SkinaugError(f"no image of class(es) {', '.join(wanted)} in the codes")
    return np.flatnonzero(keep)


def prior_config_for(level: str, config: ModelSpec | dict, options: PriorOptions) -> PriorConfig:
    """The prior of `level` for the model's codes (its spec, or its config.json as a dict): the code grid and K
    from the spec, the network's size from the defaults and the options."""
    spec = ModelSpec.of(config)
    height, width = spec.grid[level]
    num_classes = 0 if options.unconditional else len(spec.class_names)
    conditioned = level == "bottom" and "top" in spec.grid
    prior_config = PriorConfig.default_for(
        level, spec.codebook_size, height, width, num_classes, arch=options.arch or "pixelsnail",
        top_shape=spec.grid["top"] if conditioned else None,
        top_codebook_size=spec.codebook_size if conditioned else None,
    )
    given = {key: value for key, value in options.overrides.items() if value is not None}
    # through from_dict, so that the options are checked like any config (an unknown key, channels per head, ...)
    return PriorConfig.from_dict({**asdict(prior_config), **given})


def source_prior_config(source: InitSource, level: str) -> PriorConfig:
    return PriorConfig.from_entry(source.config["priors"][level])


def require_source_prior(source: InitSource, level: str) -> None:
    """--init needs the source's prior of every level being trained."""
    weights = source.path / PRIOR_WEIGHTS[level]
    if not weights.is_file():
        raise SkinaugError(f"{{init}} {source.path} has no {level} prior ({weights} is missing): train it first, "
                           "or leave {init} out to start from random weights")
    if level not in source.config.get("priors", {}):
        raise SkinaugError(f"{{init}} {source.path} has {weights} but its config.json has no priors.{level} entry "
                           "(an interrupted `train prior`?)")


def prior_config_from_init(level: str, config: dict, options: PriorOptions, source: InitSource, model) -> PriorConfig:
    """The source's prior config for `level` with this model's classes. The code grid must be the source's; options
    given on the command line must agree with its shape (dropout, a training setting, may change)."""
    base = source_prior_config(source, level)
    wanted = prior_config_for(level, config, replace(options, arch=base.arch, overrides={}))
    for name in GRID_FIELDS:
        if getattr(wanted, name) != getattr(base, name):
            raise UsageError(f"the {level} prior of {{init}} {source.path} has {name} {getattr(base, name)}, the codes of "
                             f"{model} need {getattr(wanted, name)}: a prior can only start from one over the same code "
                             "grid (image size, levels, codebook size)")
    requested = {"arch": options.arch, **options.overrides}
    for name, value in requested.items():
        if value is None or name in TRAINING_ONLY:
            continue
        # the parameter, in the spelling of whoever reads the message (the command's --attention sets the flag)
        option = "{" + ("attention" if name == "attention_sees_own_code" else name) + "}"
        if not hasattr(base, name):
            raise UsageError(f"unknown prior option {name}")
        if value != getattr(base, name):
            shown = {v: k for k, v in ATTENTION_KINDS.items()} if name == "attention_sees_own_code" else {}
            raise UsageError(f"{option} {shown.get(value, value)} contradicts the {level} prior of {{init}} {source.path} "
                             f"({option} {shown.get(getattr(base, name), getattr(base, name))}): fine-tuning keeps the "
                             f"source's shape (leave {option} out)")
    training = {name: options.overrides[name] for name in TRAINING_ONLY if options.overrides.get(name) is not None}
    return replace(base, num_classes=wanted.num_classes, **training)


def vqvae_relation(config: dict, source: InitSource) -> str:
    """How this model's VQ-VAE relates to the --init model's: 'same', 'fine-tuned' (from it) or 'different'."""
    if config["fingerprint"] == source.fingerprint:
        return "same"
    started_from = (config.get("training_data") or {}).get("init") or {}
    return "fine-tuned" if started_from.get("fingerprint") == source.fingerprint else "different"


def class_embedding_keys(prior) -> list[str]:
    """State-dict keys of the class embeddings: (num_classes, channels) tables, one row per class."""
    from ..priors.layers import GateBias

    return [f"{name}.per_class.weight" for name, module in prior.named_modules()
            if isinstance(module, GateBias) and module.per_class is not None]


def init_prior_weights(prior, source_state: dict, source_rows: dict[str, int], class_names: list[str],
                       seed: int = 0) -> tuple[list, list]:
    """Loads the source prior's weights into `prior` (the same architecture). Class-embedding rows are matched by
    class name: a class in `source_rows` (name -> the source's row) keeps the source's rows bit for bit, any other
    gets fresh rows, drawn like nn.Embedding's (N(0, 1)) from a generator of its own (`seed`): the network's own
    initial rows would repeat the source's initial rows when both used the same seed. Returns (kept, new classes)."""
    target = prior.state_dict()
    class_keys = set(class_embedding_keys(prior))
    is_class_key = lambda key: key.endswith(".per_class.weight")  # noqa: E731
    missing = [key for key in target if key not in class_keys and key not in source_state]
    unexpected = [key for key in source_state if key not in target and not is_class_key(key)]
    if missing or unexpected:
        raise SkinaugError(f"the {{init}} prior's weights do not fit its config (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    if not class_keys:  # an unconditional prior: the source's class embeddings, if any, are dropped
        prior.load_state_dict({key: source_state[key] for key in target})
        return [], []
    if not any(is_class_key(key) for key in source_state):  # an unconditional source: every class is new
        source_rows = {}
    kept = [name for name in class_names if name in source_rows]
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    merged = {}
    for key in sorted(target):  # a fixed order for the fresh rows
        value = target[key]
        if key in class_keys:
            value = torch.randn(value.shape, generator=generator, dtype=value.dtype)
            for row, name in enumerate(class_names):
                if name in source_rows:
                    value[row] = source_state[key][source_rows[name]]
        else:
            value = source_state[key]
            if value.shape != target[key].shape:
                raise SkinaugError(f"the {{init}} prior's {key} has shape {tuple(value.shape)}, not {tuple(target[key].shape)}")
        merged[key] = value
    prior.load_state_dict(merged)
    return kept, [name for name in class_names if name not in source_rows]


def nll_bits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood in bits per code."""
    return F.cross_entropy(logits.float(), targets) / math.log(2)


class CodeBatches:
    """Code maps, labels and conditions for one level, held on the device (they are small)."""

    def __init__(self, code_file: CodeFile, level: str, indices: np.ndarray, device, conditional: bool):
        self.targets = torch.as_tensor(code_file.codes[level][indices].astype(np.int64), device=device)
        self.labels = torch.as_tensor(code_file.labels[indices], device=device) if conditional else None
        self.condition = None
        if level == "bottom" and "top" in code_file.codes:
            self.condition = torch.as_tensor(code_file.codes["top"][indices].astype(np.int64), device=device)

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __call__(self, index: torch.Tensor):
        labels = self.labels[index] if self.labels is not None else None
        condition = self.condition[index] if self.condition is not None else None
        return self.targets[index], labels, condition


@torch.no_grad()
def evaluate(prior, batches: CodeBatches, batch_size: int, autocast) -> dict:
    prior.eval()
    bits_sum, correct, count = 0.0, 0, 0
    for start in range(0, len(batches), batch_size):
        index = torch.arange(start, min(start + batch_size, len(batches)), device=batches.targets.device)
        targets, labels, condition = batches(index)
        with autocast():
            logits = prior(targets, labels, condition)
        bits_sum += nll_bits(logits, targets).item() * targets.numel()
        correct += (logits.argmax(1) == targets).sum().item()
        count += targets.numel()
    prior.train()
    return {"val_bits_per_code": bits_sum / max(1, count), "val_accuracy": correct / max(1, count)}


def prior_step(network, prior, optimizer, batches: CodeBatches, autocast):
    """The prior's training step on a batch of code-map indices: bits per code, one AdamW update (gradient norm
    clipped to 1). `network` is the prior as trained through (DDP-wrapped under torchrun)."""
    device = batches.targets.device

    def step(indices: np.ndarray, _steps_done: int) -> dict:
        targets, labels, condition = batches(torch.as_tensor(indices).to(device))
        with autocast():
            logits = network(targets, labels, condition)
        loss = nll_bits(logits, targets)
        optimizer_step(loss, optimizer, clip_norm=1.0, parameters=prior.parameters())
        return {"loss": loss.detach()}

    return step


@dataclass
class _LevelData:
    chosen: np.ndarray  # the code maps of the chosen classes (indices into the code file)
    train: CodeBatches
    val: CodeBatches  # the training maps when there is no validation split
    val_count: int


def train_prior_level(model_dir: ModelDir, code_file: CodeFile, level: str, options: PriorOptions, *,
                      resume: bool, overwrite: bool, init: InitSource | None = None) -> dict:
    """Trains one level's prior, from random weights or from `init`'s prior of the level; returns its final metrics."""
    config = model_dir.config()
    dist = Distributed.from_environment(options.device)
    device = dist.device if dist.enabled else resolve_device(options.device)
    weights_path = model_dir.path / PRIOR_WEIGHTS[level]
    checkpoint_path = _checkpoint_path(model_dir, level)
    if weights_path.exists() and not (overwrite or resume):
        raise SkinaugError(f"{weights_path} already exists: pass {{overwrite=True}} to train it again")
    resuming = resume and checkpoint_path.is_file()
    if resume and not resuming and weights_path.exists():
        log(f"the {level} prior is already trained: nothing to resume")
        return config["priors"].get(level, {}).get("metrics", {})
    checkpoint = load_checkpoint(checkpoint_path) if resuming else None
    if checkpoint is not None:
        init = None  # the checkpoint holds the weights; --init only sets the start of a run
    prior_config, options = _level_config(level, config, options, checkpoint, init, model_dir)
    check_network_memory(lambda: build_prior(prior_config), f"the {level} prior", "give a smaller {channels}")
    data = _level_data(code_file, level, config, prior_config, options, device)
    prior, state, init_record = _build_level(prior_config, level, config, options, init, dist, device, len(data.train))
    if checkpoint is not None:
        init_record = checkpoint["meta"].get("init")
        state.restore(checkpoint, device, checkpoint_path)
        if dist.is_main:
            log(f"resuming the {level} prior from epoch {state.epoch}")
    autocast = partial(autocast_for, device)
    meta = {"prior": prior_config.to_dict(), "seed": options.seed, "classes": options.classes, "level": level,
            "init": init_record}
    model_dir.train_dir.mkdir(parents=True, exist_ok=True)
    metrics_log = MetricsLog(model_dir.train_dir / "metrics.jsonl", f"prior_{level}")
    if dist.is_main:
        if checkpoint is not None:
            metrics_log.truncate(state.epoch)  # the epochs after the checkpoint's are trained (and logged) again
        log(f"{level} prior ({prior_config.arch}, {sum(p.numel() for p in prior.parameters()) / 1e6:.1f}M parameters): "
            f"{len(data.train)} training and {data.val_count} validation code maps, {device}")
    batch_size = max(1, options.batch_size // dist.world_size)
    batches = partial(shuffled_batches, np.arange(len(data.train)), batch_size, seed=options.seed, dist=dist,
                      drop_last=False)
    step = prior_step(dist.wrap(prior), prior, state.objects["optimizer"], data.train, autocast)
    run = Run(f"{level} prior training", checkpoint_path, meta, metrics_log)
    metrics = fit(state, step, lambda epoch: batches(epoch=epoch), epochs=options.epochs, run=run, dist=dist,
                  hooks=_level_hooks(prior, level, data, options, autocast),
                  bar=Bar(desc=lambda epoch, epochs: f"{level} prior, epoch {epoch}/{epochs}", unit="map"))
    if not dist.is_main:
        return _final_metrics(metrics)
    if options.epochs == 0:  # the --init prior as it is, on this model's codes
        metrics = metrics_log.append({"epoch": 0, "step": 0,
                                      **evaluate(prior, data.val, 2 * options.batch_size, autocast)})
        log(f"{level} prior before training: validation {metrics['val_bits_per_code']:.3f} bits/code")
    final = _final_metrics(metrics or metrics_log.last())  # none trained now: the checkpoint's last epoch
    _save_level(model_dir, code_file, level, prior, prior_config, data.chosen, options.classes, final, init_record)
    return final


def _level_config(level: str, config: dict, options: PriorOptions, checkpoint: dict | None, init: InitSource | None,
                  model_dir: ModelDir) -> tuple[PriorConfig, PriorOptions]:
    """The level's prior config and the options it trains with: a resumed run's config, seed and classes from its
    checkpoint (in a copy of `options`), a new run's config from --init or from the options."""
    if checkpoint is not None:
        meta = checkpoint["meta"]
        return PriorConfig.from_dict(meta["prior"]), replace(options, seed=meta["seed"], classes=meta["classes"])
    if init is not None:
        return prior_config_from_init(level, config, options, init, model_dir.path), options
    return prior_config_for(level, config, options), options


def _level_data(code_file: CodeFile, level: str, config: dict, prior_config: PriorConfig, options: PriorOptions,
                device) -> _LevelData:
    """The chosen classes' code maps, split by group into training and validation maps on the device."""
    chosen = select_classes(code_file, config.get("class_names", []), options.classes)
    if prior_config.num_classes and (code_file.labels[chosen] < 0).any():
        raise SkinaugError("the codes include unlabelled images: a class-conditional prior needs labels "
                           "(pass {labels}, or {unconditional=True})")
    groups = [code_file.groups[i] or code_file.images[i] for i in chosen]
    train_index, val_index = group_split(groups, options.val_fraction, options.seed, labels=code_file.labels[chosen])
    conditional = prior_config.num_classes > 0
    train = CodeBatches(code_file, level, chosen[train_index], device, conditional)
    val = CodeBatches(code_file, level, chosen[val_index], device, conditional) if len(val_index) else train
    return _LevelData(chosen, train, val, len(val_index))


def _build_level(prior_config: PriorConfig, level: str, config: dict, options: PriorOptions, init: InitSource | None,
                 dist: Distributed, device, train_maps: int):
    """(prior, its TrainState, the --init record or None), in the order that fixes a new run's random stream."""
    torch.manual_seed(options.seed)  # the same initial weights on every rank (DDP checks), dropout offset below
    prior = build_prior(prior_config)
    init_record = None
    if init is not None:
        init_record = _start_from(prior, init, level, config, config.get("class_names", []), options.seed, dist.is_main)
    prior = prior.to(device)
    torch.manual_seed(options.seed + dist.rank)
    batch_size = max(1, options.batch_size // dist.world_size)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    total_steps = options.epochs * steps_per_epoch(train_maps, batch_size, dist=dist, drop_last=False)
    scheduler = warmup_cosine(optimizer, options.warmup_steps, total_steps)
    return prior, TrainState(model=prior, optimizer=optimizer, scheduler=scheduler), init_record


def _level_hooks(prior, level: str, data: _LevelData, options: PriorOptions, autocast) -> Hooks:
    """The end of an epoch: validation bits per code and accuracy, and the log line."""

    def evaluate_epoch(epoch: Epoch) -> dict:
        return {"train_bits_per_code": epoch.mean("loss"),
                **evaluate(prior, data.val, 2 * options.batch_size, autocast),
                "maps_per_s": len(data.train) / epoch.seconds}

    def epoch_end(epoch: Epoch, metrics: dict) -> None:
        log(f"{level} prior epoch {epoch.number}/{epoch.epochs}: train {metrics['train_bits_per_code']:.3f} bits/code, "
            f"validation {metrics['val_bits_per_code']:.3f} bits/code, accuracy {metrics['val_accuracy']:.3f}")

    return Hooks(evaluate=evaluate_epoch, epoch_end=epoch_end)


def _final_metrics(metrics: dict) -> dict:
    """What config.json keeps of the last epoch's line."""
    return {k: metrics[k] for k in ("epoch", "train_bits_per_code", "val_bits_per_code", "val_accuracy") if k in metrics}


def _save_level(model_dir: ModelDir, code_file: CodeFile, level: str, prior, prior_config: PriorConfig,
                chosen: np.ndarray, classes, final: dict, init_record: dict | None) -> None:
    """Rank 0: the training record, the weights and the config.json entry of the level's prior."""
    # the record first: a crash before the weights land leaves it a superset, never missing what they saw
    record_stage(model_dir.path, [code_file.images[i] for i in chosen], [code_file.groups[i] for i in chosen],
                 f"prior_{level}", init_record, data=code_file.path)
    save_weights(model_dir.path / PRIOR_WEIGHTS[level], prior.state_dict())
    priors = dict(model_dir.config().get("priors", {}))
    priors[level] = {**prior_config.to_dict(), "classes": classes, "metrics": final}
    if init_record is not None:
        priors[level]["init"] = init_record
        priors[level]["base_model"] = base_model(init_record)
    model_dir.update_config(priors=priors)


def train_priors(model, **arguments) -> dict:
    """`skinaug train prior` (see `_train_priors`), holding the model directory's lock: one writer of a model at a
    time (`train vqvae`, `train prior`, `export onnx`), so two runs never lose each other's config.json entries."""
    # under torchrun only rank 0 writes the model; the other ranks train beside it
    lock = OutputLock(real_path(model), model) if os.environ.get("RANK", "0") == "0" and Path(model).is_dir() else None
    try:
        return _train_priors(model, **arguments)
    finally:
        if lock is not None:
            lock.release()


def _train_priors(model, *, codes=None, data=None, labels=None, level="both", options: PriorOptions,
                  resume=False, overwrite=False, init=None, **scan_options) -> dict:
    """`skinaug train prior`: one or both levels, from a code file or from images; with `init` (a model directory or a
    shipped model's name) each level starts from that model's prior (see the module docstring)."""
    model_dir = ModelDir(model)
    config = model_dir.config()
    if options.lr is None:
        # measured (benchmarks/finetune.py): on ~300 images, 3e-4 undoes much of what an --init prior knew
        options = replace(options, lr=FINE_TUNE_LR if init is not None else DEFAULT_LR)
    require_writable(model_dir.path, f"train your priors into your own model directory (`skinaug train vqvae ... "
                                     f"--init {model_dir.path.name} --epochs 0 --out MINE`, then {{model=MINE}})")
    if (codes is None) == (data is None):
        raise UsageError("give either {codes=CODES.h5} or an image folder {data}, not both and not neither")
    levels = {"both": [lvl for lvl in ("top", "bottom") if lvl in config["grid"]], "top": ["top"], "bottom": ["bottom"]}.get(level)
    if levels is None:
        raise UsageError(f"{{level}} must be top, bottom or both, not {level}")
    if "top" in levels and "top" not in config["grid"]:
        raise UsageError(f"{model} is a one-level model: it has no top codes (use {{level='bottom'}})")
    if options.arch is not None and options.arch not in ("pixelsnail", "gated-pixelcnn"):
        raise UsageError(f"{{arch}} must be pixelsnail or gated-pixelcnn, not {options.arch}")
    if options.epochs == 0 and init is None:
        raise UsageError("{epochs=0} needs {init}: it copies the {init} model's priors under this model's classes")
    source = None
    # a level that --resume continues (or finds finished) keeps its checkpoint: --init only sets the start of a run
    starting = [lvl for lvl in levels if not (resume and (_checkpoint_path(model_dir, lvl).is_file()
                                                          or (model_dir.path / PRIOR_WEIGHTS[lvl]).is_file()))]
    if init is not None and not starting:
        log("resuming: the priors continue from their checkpoints ({init} only sets the start of a run)")
    elif init is not None:
        source = open_init(init)
        for lvl in starting:
            require_source_prior(source, lvl)
            prior_config_from_init(lvl, config, options, source, model)  # a contradiction fails before any training
        relation = vqvae_relation(config, source)
        if relation == "fine-tuned":
            log(f"the VQ-VAE of {model} was fine-tuned from that of {source.path}: its codes keep most of their meaning")
        elif relation == "different":
            warn(f"the VQ-VAE of {model} (fingerprint {config['fingerprint']}) is not that of {{init}} {source.path} "
                 f"({source.fingerprint}) nor fine-tuned from it: its codes mean other things, so the {{init}} priors are "
                 "only a generic start (usually still better than random weights); train as long as from scratch")
    if codes is not None:
        code_file = read_codes(codes)
        code_file.check_model(config)
        if code_file.class_names and code_file.class_names != config.get("class_names", []):
            raise SkinaugError(f"{codes} uses classes {code_file.class_names}, the model {config.get('class_names')}")
    else:
        code_file = codes_from_images(open_backend(model_dir, options.device, "torch").code_model, data, labels,
                                      **scan_options)
    return {lvl: train_prior_level(model_dir, code_file, lvl, options, resume=resume, overwrite=overwrite, init=source)
            for lvl in levels}


def _checkpoint_path(model_dir: ModelDir, level: str) -> Path:
    return model_dir.train_dir / f"prior_{level}_checkpoint.pt"


def _start_from(prior, source: InitSource, level: str, config: dict, class_names: list[str], seed: int,
                is_main: bool) -> dict:
    """Loads the --init prior of `level` into `prior`; returns what config.json records about it."""
    source_config = source_prior_config(source, level)
    state = load_weights(source.path / PRIOR_WEIGHTS[level])
    source_names = list(source.config.get("class_names", []))
    if source_config.num_classes and source_config.num_classes != len(source_names):
        raise SkinaugError(f"the {level} prior of {{init}} {source.path} has {source_config.num_classes} class rows but "
                           f"its config.json names {len(source_names)} classes")
    # a prior trained on a subset of classes (--classes) never learned the other classes' rows: those count as new
    trained = source.config["priors"][level].get("classes") or source_names
    rows = {name: row for row, name in enumerate(source_names) if name in trained}
    kept, new = init_prior_weights(prior, state, rows, class_names, seed)
    if is_main:
        classes = (f"; class embeddings kept for {', '.join(kept) or 'no class'}, new for {', '.join(new) or 'no class'}"
                   if kept or new else "")
        log(f"{level} prior: starting from the {level} prior of {source.path}{classes}")
    return source.record(prior_fingerprint=fingerprint(source_config.to_dict(), state),
                         vqvae=vqvae_relation(config, source), kept_classes=kept, new_classes=new)
