"""The model directory: config.json, the weights of each stage, the model card.

`config.json` is the single source of truth for shapes (image size, levels, K, D, grids) and class
names, read as a `ModelSpec` (`ModelDir.spec`). The fingerprint hashes the stage-1 config and weights: code
files and generated datasets carry it, so a code file can be matched to the VQ-VAE that wrote it even after
priors are added.

Format 2 keeps each shape once, at the top level; "vqvae" holds the rest of the network's config (channels,
...). Format 1 repeated image_size, levels, codebook_size and code_dim under "vqvae": such a file is read as
format 2 (the copies must agree, and are dropped), and written back as format 2 when a later stage updates it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from . import fs as skinaug_io
from ..errors import SkinaugError, first_line
from .fs import atomic_path, is_shipped, read_json, write_json, write_text
from ..runtime import warn
from ..spec import DOWNSAMPLES, SHAPE_FIELDS, ModelSpec, code_grid
from ..version import __version__

FORMAT_VERSION = 2  # 2: the shape fields only at the top level (1 repeated them under "vqvae")
CONFIG = "config.json"
VQVAE_WEIGHTS = "vqvae.safetensors"
PRIOR_WEIGHTS = {"top": "prior_top.safetensors", "bottom": "prior_bottom.safetensors"}


def fingerprint(vqvae_config: dict, state_dict) -> str:
    """12 hex digits of SHA-256 over the stage-1 config and weights (names, shapes, bytes)."""
    import torch

    digest = hashlib.sha256(json.dumps(vqvae_config, sort_keys=True).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def save_weights(path, state_dict) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp))


def load_weights(path) -> dict:
    import torch
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise SkinaugError(f"{path} does not exist") from None
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise SkinaugError(f"{path} is not a readable safetensors file ({error})") from None
    # shipped weights are stored in float16 to halve the download; every network computes in float32
    return {name: tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor
            for name, tensor in state.items()}


def weight_shapes(path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, read from a safetensors file's header without loading a tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except FileNotFoundError:
        raise SkinaugError(f"{path} does not exist") from None
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise SkinaugError(f"{path} is not a readable safetensors file ({error})") from None


def build_matching(build, weights):
    """`build()`, once the network it makes is known to match the shapes in `weights`: it is first built on torch's
    meta device, which allocates nothing, so a config.json that asks for an absurd width is refused, not allocated."""
    import torch

    with torch.device("meta"):
        wanted = {name: tuple(tensor.shape) for name, tensor in build().state_dict().items()}
    stored = weight_shapes(weights)
    if wanted != stored:
        name = next(name for name in sorted(set(wanted) | set(stored)) if wanted.get(name) != stored.get(name))
        shown = lambda shape: "absent" if shape is None else "x".join(map(str, shape)) or "a scalar"  # noqa: E731
        raise SkinaugError(f"{weights} does not match its config.json: {name} is {shown(stored.get(name))} in the "
                           f"weights but {shown(wanted.get(name))} by config.json")
    return build()


def torch_load_tensors(path, what: str):
    """torch.load(path, weights_only=True), its failure one line: `cannot read {what} {path} (reason)`. A file that
    holds other Python objects is refused as such: PyTorch's own message advises weights_only=False, which would run
    whatever code the file carries, and is not repeated."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        reason = "it holds Python objects besides tensors, and skinaug loads only tensors (nothing is unpickled)"
    except Exception as error:  # noqa: BLE001  (torch raises many types for a damaged file)
        reason = first_line(error)
    raise SkinaugError(f"cannot read {what} {path} ({reason})")


COMPACT_MIN_ELEMENTS = 4096


def compact_weights(path) -> None:
    """Rewrites a safetensors file with its large float32 tensors stored as float16 (for shipping a model).

    Small tensors (biases, norms, the codebooks and their EMA statistics) stay float32: they weigh nothing,
    and the codebook statistics keep their precision for fine-tuning.
    """
    import torch

    def compact(tensor):
        large = tensor.dtype == torch.float32 and tensor.numel() >= COMPACT_MIN_ELEMENTS
        return tensor.half() if large else tensor

    save_weights(path, {name: compact(tensor) for name, tensor in load_weights(path).items()})


# ------------------------------------------------------------------ config.json, checked on load
#
# A config.json edited by hand, cut short or written by another tool would otherwise fail deep inside a
# command (a KeyError, a tensor of the wrong shape) and read as a bug. Fields skinaug does not know are
# left alone: later versions and other stages add their own.

REQUIRED_FIELDS = ("image_size", "levels", "codebook_size", "code_dim", "grid", "fingerprint", "vqvae")
VQVAE_INT_FIELDS = ("channels", "res_channels", "n_res_blocks", "restart_after")


def _is_int(value, low: int, high: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def _is_class_list(value) -> bool:
    return (isinstance(value, list) and all(isinstance(name, str) and name for name in value)
            and len(set(value)) == len(value))


# field -> (check, what it must be); codes are stored as uint16, hence K <= 65535
FIELD_RULES = {
    "image_size": (lambda v: _is_int(v, 8) and v % 8 == 0, "a positive multiple of 8"),
    "levels": (lambda v: _is_int(v, 1, 2), "1 or 2"),
    "codebook_size": (lambda v: _is_int(v, 2, 65535), "an integer from 2 to 65535"),
    "code_dim": (lambda v: _is_int(v, 1), "a positive integer"),
    "fingerprint": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "class_names": (_is_class_list, "a list of distinct, non-empty strings"),
    "vqvae": (lambda v: isinstance(v, dict), "an object"),
    "priors": (lambda v: isinstance(v, dict) and set(v) <= set(PRIOR_WEIGHTS) and all(isinstance(e, dict) for e in v.values()),
               "an object with a config object per level (top, bottom)"),
}


def validate_config(config, path) -> dict:
    """config.json as read, in the format-2 layout, once its fields are known to be usable; one clear error naming
    the field otherwise."""
    if not isinstance(config, dict):
        raise SkinaugError(f"{path} is not a skinaug model config: expected a JSON object")
    _check_format_version(config, path)
    missing = [field for field in REQUIRED_FIELDS if field not in config]
    if missing:
        raise SkinaugError(f"{path} lacks {', '.join(missing)}: it is not a complete skinaug model config")
    for field, (valid, wanted) in FIELD_RULES.items():
        if field in config and not valid(config[field]):
            raise SkinaugError(f"{path}: {field} must be {wanted}, not {config[field]!r}")
    _check_grid(config, path)
    return _vqvae_section(config, path)


def _check_format_version(config: dict, path) -> None:
    version = config.get("format_version", 0)
    if not _is_int(version, 0):
        raise SkinaugError(f"{path}: format_version must be a non-negative integer, not {version!r}")
    if version > FORMAT_VERSION:
        raise SkinaugError(f"{path} has format_version {version}; this skinaug reads up to {FORMAT_VERSION}: upgrade skinaug")


def _check_grid(config: dict, path) -> None:
    """One [height, width] per level: bottom always, top for two-level models."""
    grid, levels = config["grid"], ({"bottom"} if config["levels"] == 1 else {"top", "bottom"})
    if not isinstance(grid, dict) or set(grid) != levels:
        raise SkinaugError(f"{path}: grid must give the shape of each level ({', '.join(sorted(levels))}), not {grid!r}")
    downsample = config["vqvae"].get("downsample", 4)
    if downsample not in DOWNSAMPLES:
        raise SkinaugError(f"{path}: vqvae.downsample must be one of {', '.join(map(str, DOWNSAMPLES))}, not {downsample!r}")
    made = code_grid(config["image_size"], config["levels"], downsample)
    for level, shape in grid.items():
        if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(side, 1) for side in shape)):
            raise SkinaugError(f"{path}: grid.{level} must be [height, width] in codes, not {shape!r}")
        if tuple(shape) != made[level]:
            raise SkinaugError(f"{path}: grid.{level} is {shape!r} but the VQ-VAE makes {made[level][0]}x{made[level][1]} "
                               f"{level} codes from {config['image_size']}px images")


def _vqvae_section(config: dict, path) -> dict:
    """The config with "vqvae" holding only what the top level does not: a format-1 file's copies of the shapes
    are checked against the top level (the network is built from both) and dropped."""
    vqvae = dict(config["vqvae"])
    for field in SHAPE_FIELDS:
        if field in vqvae and vqvae[field] != config[field]:
            raise SkinaugError(f"{path}: vqvae.{field} is {vqvae[field]!r} but {field} is {config[field]!r}")
        vqvae.pop(field, None)
    for field in VQVAE_INT_FIELDS:
        if field in vqvae and not _is_int(vqvae[field], 0):
            raise SkinaugError(f"{path}: vqvae.{field} must be a non-negative integer, not {vqvae[field]!r}")
    return {**config, "format_version": FORMAT_VERSION, "vqvae": vqvae}


def vqvae_config(config: dict) -> dict:
    """The VQ-VAE's whole config (`VQVAEConfig.to_dict()`): the shapes at the top level with the rest under "vqvae".
    The fingerprint hashes this dict."""
    return {**{field: config[field] for field in SHAPE_FIELDS}, **config["vqvae"]}


class ModelDir:
    """A model directory on disk; grows as stages are trained."""

    def __init__(self, path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def train_dir(self) -> Path:
        return self.path / "train"

    def exists(self) -> bool:
        return (self.path / VQVAE_WEIGHTS).is_file() and self.config_path.is_file()

    def config(self) -> dict:
        if not self.path.is_dir():
            problem = "is not a directory" if self.path.exists() else "does not exist"
            raise SkinaugError(f"model directory {self.path} {problem} (train one with `skinaug train vqvae`)")
        if not self.exists():
            refuse_baseline(self.path)
            raise SkinaugError(
                f"{self.path} is not a trained model: {VQVAE_WEIGHTS} or {CONFIG} is missing "
                "(train one with `skinaug train vqvae`, or finish an interrupted run with {resume=True})"
            )
        return validate_config(read_json(self.config_path), self.config_path)

    def spec(self) -> ModelSpec:
        """Image size, levels, K, D, grids, class names and fingerprint, as config.json gives them."""
        return ModelSpec.from_config(self.config())

    def class_names(self) -> list[str]:
        return list(self.spec().class_names)

    def fingerprint(self) -> str:
        return self.spec().fingerprint

    def load_vqvae(self, device="cpu"):
        """The stage-1 network in eval mode on `device`."""
        from ..vqvae.model import VQVAE2, VQVAEConfig

        try:
            config = VQVAEConfig.from_dict(vqvae_config(self.config()))
        except SkinaugError as error:  # the file is wrong, not the command line: exit 1, naming the file
            raise SkinaugError(f"{self.config_path}: vqvae: {error}") from None
        model = build_matching(lambda: VQVAE2(config), self.path / VQVAE_WEIGHTS)
        state = load_weights(self.path / VQVAE_WEIGHTS)
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise SkinaugError(f"{self.path / VQVAE_WEIGHTS} does not match its config.json ({str(error).splitlines()[0]})") from None
        return model.to(device).eval()

    def save_vqvae(self, model, *, class_names, training_data: dict, metrics: dict) -> str:
        """Writes weights, config.json and MODEL_CARD.md; returns the fingerprint."""
        state = model.state_dict()
        vq_config = model.config.to_dict()
        fingerprint_ = fingerprint(vq_config, state)
        save_weights(self.path / VQVAE_WEIGHTS, state)
        spec = ModelSpec(**{field: vq_config[field] for field in SHAPE_FIELDS}, grid=model.config.grid_shapes(),
                         class_names=tuple(class_names), fingerprint=fingerprint_).to_config()
        config = {
            "format_version": FORMAT_VERSION,
            "skinaug_version": __version__,
            **{field: spec[field] for field in (*SHAPE_FIELDS, "grid")},
            "normalisation": {"input": "uint8 RGB", "scale": "x / 127.5 - 1", "range": [-1.0, 1.0]},
            "class_names": spec["class_names"],
            "training_data": training_data,
            "metrics": metrics,
            "vqvae": {key: value for key, value in vq_config.items() if key not in SHAPE_FIELDS},
            "priors": {},
            "fingerprint": fingerprint_,
        }
        base = base_model(training_data.get("init"))
        if base is not None:  # a fine-tuned model: its base model's licence (HAM10000's CC BY-NC) carries over
            config["base_model"] = base
            if base["licence"]:
                config["licence"] = f"{base['licence']}, inherited from the base model {base['name']}"
        write_json(self.config_path, config)
        self.write_model_card(config)
        return fingerprint_

    def update_config(self, **changes) -> dict:
        config = self.config()
        config.update(changes)
        write_json(self.config_path, config)
        self.write_model_card(config)
        return config

    def load_prior(self, level: str, device="cpu"):
        """A trained prior in eval mode on `device`, with the classes it was trained on (None: every class)."""
        from ..priors import PriorConfig, build_prior

        self.require_prior(level)
        config = self.config()
        entry = config["priors"][level]
        try:
            prior_config = PriorConfig.from_entry(entry)
        except SkinaugError as error:  # the file is wrong, not the command line: exit 1, naming the file
            raise SkinaugError(f"{self.config_path}: priors.{level}: {error}") from None
        if prior_config.num_classes not in (0, len(config.get("class_names", []))):
            raise SkinaugError(f"{self.config_path}: priors.{level}.num_classes is {prior_config.num_classes} but "
                               f"class_names lists {len(config.get('class_names', []))} classes: the file was edited or "
                               "damaged (train the prior again, or restore class_names)")
        weights = self.path / PRIOR_WEIGHTS[level]
        prior = build_matching(lambda: build_prior(prior_config), weights)
        try:
            prior.load_state_dict(load_weights(weights))
        except RuntimeError as error:
            raise SkinaugError(f"{weights} does not match config.json ({str(error).splitlines()[0]})") from None
        return prior.to(device).eval(), entry.get("classes")

    def has_prior(self, level: str) -> bool:
        return (self.path / PRIOR_WEIGHTS[level]).is_file() and level in self.config().get("priors", {})

    def require_prior(self, level: str) -> None:
        if not self.has_prior(level):
            raise SkinaugError(
                f"{self.path} has no {level} prior ({PRIOR_WEIGHTS[level]} is missing): "
                f"train it with `skinaug train prior --model {self.path} --codes CODES.h5 --level {level}`"
            )

    def write_model_card(self, config: dict) -> None:
        data = config.get("training_data", {})
        metrics = config.get("metrics", {})
        spec = ModelSpec.from_config(config)
        lines = [
            f"# skinaug model {spec.fingerprint}",
            "",
            f"VQ-VAE-2, {spec.levels} level(s), {spec.image_size}px images, "
            f"K={spec.codebook_size} codes of dimension D={spec.code_dim} per level; "
            "grids " + ", ".join(f"{level} {h}x{w}" for level, (h, w) in spec.grid.items()) + ".",
            "",
            "## Training data",
            f"- images: {data.get('data', '?')} (labels: {data.get('labels') or 'none'}), {data.get('images', '?')} images",
            "- per class: " + ", ".join(f"{k} {v}" for k, v in data.get("per_class", {}).items()),
            "- licence: the licence of the training images applies to this model and to everything it generates "
            "(HAM10000 is CC BY-NC 4.0: non-commercial use, with attribution).",
            *base_model_lines(config),
            "",
            "## Metrics",
            *[f"- {k}: {v}" for k, v in metrics.items()],
            "",
            "## Priors",
            *[f"- {level}: {p.get('arch')} ({p.get('metrics', {})})" for level, p in config.get("priors", {}).items()],
            "",
            "## Intended use",
            "Research data augmentation for skin-lesion classifiers. Generated images are synthetic: they are not "
            "patient data and must not be used for diagnosis. Check them for memorization before sharing.",
            "",
        ]
        write_text(self.path / "MODEL_CARD.md", "\n".join(lines))


def base_model(init: dict | None) -> dict | None:
    """What a model trained from another (`init`, a config.json init record) says about it: its name (a shipped
    model's, else its path), fingerprint and licence, read from its config.json while it is at hand."""
    if not init:
        return None
    path = Path(init["model"])
    try:
        licence = read_json(path / CONFIG).get("licence")
    except (OSError, SkinaugError, ValueError):
        licence = None
    return {"name": path.name if is_shipped(path) else str(path), "fingerprint": init.get("fingerprint"),
            "licence": licence}


def base_model_lines(config: dict) -> list[str]:
    """The model card's lines on the models its weights started from (--init of the VQ-VAE or of a prior)."""
    starts = [("VQ-VAE", config.get("base_model"))]
    starts += [(f"{level} prior", entry.get("base_model")) for level, entry in config.get("priors", {}).items()]
    lines = []
    for part, base in starts:
        if base:
            licence = base.get("licence") or "see its MODEL_CARD.md"
            lines.append(f"- base model of the {part}: {base['name']} (fingerprint {base['fingerprint']}); its "
                         f"licence carries over to this model and to what it generates: {licence}")
    return ["", "## Base model", *lines] if lines else []


# ------------------------------------------------------------------ baseline generators (skinaug/baselines/)

BASELINE_KIND = "baseline"  # config.json "kind" of a baseline generator's directory (VQ-VAE models have none)
BASELINE_WEIGHTS = "baseline.safetensors"


def baseline_arch(path) -> str | None:
    """The arch of a baseline generator's directory (dcgan, cvae, ...), None for anything else. Torch-free."""
    try:
        config = read_json(Path(path) / CONFIG)
    except (SkinaugError, OSError):
        return None
    if isinstance(config, dict) and config.get("kind") == BASELINE_KIND:
        return str(config.get("arch", "?"))
    return None


def refuse_baseline(path) -> None:
    """A baseline generator makes images from noise and has no codes: every command that reads or draws codes
    (encode, decode, mix, resample, train prior, export onnx, ...) stops here with one line."""
    arch = baseline_arch(path)
    if arch is not None:
        raise SkinaugError(f"{path} is a {arch} baseline generator: it has no VQ-VAE and no codes, so it serves only "
                           "`skinaug synthesize` and `skinaug augment --methods synthesize`")


# ------------------------------------------------------------------ shipped models and the default model

DEFAULT_MODEL = "ham10000-64"
MODEL_ENV = "SKINAUG_MODEL"


def shipped_models() -> dict[str, Path]:
    """Name -> directory of every model installed with skinaug (in `io.SHIPPED_MODELS`, which the output policy
    keeps read-only)."""
    root = skinaug_io.SHIPPED_MODELS
    if not root.is_dir():
        return {}
    return {path.name: path for path in sorted(root.iterdir()) if (path / CONFIG).is_file()}


def resolve_model(path=None) -> Path:
    """The model a command reads: --model, else $SKINAUG_MODEL, else the shipped default.

    A value that is not an existing path but names a shipped model (see `skinaug models`) means that model.
    """
    if path is None or str(path) == "":
        value = os.environ.get(MODEL_ENV, "").strip()
        if value:
            return locate_model(value, f"${MODEL_ENV}")
        default = shipped_models().get(DEFAULT_MODEL)
        if default is None:
            raise SkinaugError(f"no {{model}} given and the default model {DEFAULT_MODEL} is not installed "
                               f"(looked in {skinaug_io.SHIPPED_MODELS}): pass {{model=MODEL_DIR}} or set {MODEL_ENV}")
        return default
    return locate_model(str(path), "{model}")


def model_location(value=None) -> Path:
    """The model a command or library call reads, as `resolve_model` finds it, except that a path that does not exist
    (and names no shipped model) is returned as it is: the caller's usage checks come first, ModelDir reports it."""
    if value is None or str(value) == "":
        return resolve_model(None)
    path = Path(value)
    return path if path.exists() else shipped_models().get(str(value), path)


def locate_model(value, source: str) -> Path:
    """A model directory given as a path, or the name of a shipped model; `source` (the parameter, as a placeholder
    like "{model}", or the variable) names it in errors."""
    value = str(value)
    path = Path(value).expanduser()
    if path.exists():
        return path
    shipped = shipped_models()
    if value in shipped:
        return shipped[value]
    known = ", ".join(shipped) or "none"
    raise SkinaugError(f"{source} {value}: no such model directory, and no shipped model of that name "
                       f"(shipped: {known}; see `skinaug models`)")


def require_writable(path, what: str) -> None:
    """Refuses to write into a shipped model: it belongs to the installation, and a wheel's copy may be shared."""
    if is_shipped(path):
        raise SkinaugError(f"{path} is a model shipped with skinaug and is read-only: {what}")


def describe(path) -> dict:
    """One row of `skinaug models`: name, image size, classes, licence, fingerprint, path, stages."""
    if baseline_arch(path) is not None:
        return _describe_baseline(path)
    model = ModelDir(path)
    config = model.config()
    spec, data = ModelSpec.from_config(config), config.get("training_data", {})
    return {
        "name": Path(path).name,
        "image_size": spec.image_size,
        "classes": list(spec.class_names),
        "licence": config.get("licence") or data.get("licence") or "see MODEL_CARD.md",
        "fingerprint": spec.fingerprint,
        "priors": sorted(level for level in PRIOR_WEIGHTS if model.has_prior(level)),
        "shipped": is_shipped(path),
        "path": str(path),
    }


def _env_model() -> list[Path]:
    """$SKINAUG_MODEL's model, if set; a bad one is what `skinaug models` is run to sort out: a warning, not an error."""
    if not os.environ.get(MODEL_ENV, "").strip():
        return []
    try:
        path = resolve_model(None)
        describe(path)
    except SkinaugError as error:
        warn(f"{error.args[0]} (the other models are listed)")  # its placeholders, for the CLI to spell
        return []
    return [path]


def find_models(paths) -> list[dict]:
    """`describe` rows for the shipped models, $SKINAUG_MODEL, and each given model dir or folder of model dirs."""
    candidates = list(shipped_models().values()) + _env_model()
    for path in map(Path, paths):
        if not path.is_dir():
            raise SkinaugError(f"{path} is not a folder")
        candidates += [path] if (path / CONFIG).is_file() else sorted(p for p in path.iterdir() if (p / CONFIG).is_file())
    rows, seen = [], set()
    for path in candidates:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        rows.append(describe(path))
    return rows


def list_models(paths=()) -> list[dict]:
    """`skinaug models`: the `find_models` rows, each with "default" true for the model used when none is named."""
    rows = find_models(paths)
    try:
        default = str(resolve_model(None).resolve())
    except SkinaugError:
        default = None
    for row in rows:
        row["default"] = Path(row["path"]).resolve().as_posix() == default
    return rows


def _describe_baseline(path) -> dict:
    """The `skinaug models` row of a baseline generator (skinaug/baselines/): no priors, its arch."""
    config = read_json(Path(path) / CONFIG)
    return {"name": Path(path).name, "image_size": config["image_size"], "classes": list(config["class_names"]),
            "licence": config.get("licence") or "see MODEL_CARD.md", "fingerprint": config["fingerprint"],
            "priors": [], "arch": config["arch"], "shipped": is_shipped(path), "path": str(path)}
