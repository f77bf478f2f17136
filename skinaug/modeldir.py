"""The model directory: config.json, the weights of each stage, the model card.

`config.json` is the single source of truth for shapes (image size, levels, K, D, grids) and class
names. The fingerprint hashes the stage-1 config and weights: code files and generated datasets carry
it, so a code file can be matched to the VQ-VAE that wrote it even after priors are added.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import __version__
from .errors import SkinaugError
from .io import atomic_path, read_json, write_json, write_text

FORMAT_VERSION = 1
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
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise SkinaugError(f"{path} does not exist") from None
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise SkinaugError(f"{path} is not a readable safetensors file ({error})") from None


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
            raise SkinaugError(f"model directory {self.path} does not exist (train one with `skinaug train vqvae`)")
        if not self.exists():
            raise SkinaugError(
                f"{self.path} is not a trained model: {VQVAE_WEIGHTS} or {CONFIG} is missing "
                "(train one with `skinaug train vqvae`, or finish an interrupted run with --resume)"
            )
        config = read_json(self.config_path)
        if config.get("format_version", 0) > FORMAT_VERSION:
            raise SkinaugError(f"{self.config_path} has format_version {config['format_version']}; this skinaug reads up to {FORMAT_VERSION}: upgrade skinaug")
        return config

    def class_names(self) -> list[str]:
        return list(self.config().get("class_names", []))

    def fingerprint(self) -> str:
        return self.config()["fingerprint"]

    def load_vqvae(self, device="cpu"):
        """The stage-1 network in eval mode on `device`."""
        from .vqvae import VQVAE2, VQVAEConfig

        model = VQVAE2(VQVAEConfig.from_dict(self.config()["vqvae"]))
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
        config = {
            "format_version": FORMAT_VERSION,
            "skinaug_version": __version__,
            "image_size": model.config.image_size,
            "levels": model.config.levels,
            "codebook_size": model.config.codebook_size,
            "code_dim": model.config.code_dim,
            "grid": {level: list(shape) for level, shape in model.config.grid_shapes().items()},
            "normalisation": {"input": "uint8 RGB", "scale": "x / 127.5 - 1", "range": [-1.0, 1.0]},
            "class_names": list(class_names),
            "training_data": training_data,
            "metrics": metrics,
            "vqvae": vq_config,
            "priors": {},
            "fingerprint": fingerprint_,
        }
        write_json(self.config_path, config)
        self.write_model_card(config)
        return fingerprint_

    def update_config(self, **changes) -> dict:
        config = self.config()
        config.update(changes)
        write_json(self.config_path, config)
        self.write_model_card(config)
        return config

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
        lines = [
            f"# skinaug model {config['fingerprint']}",
            "",
            f"VQ-VAE-2, {config['levels']} level(s), {config['image_size']}px images, "
            f"K={config['codebook_size']} codes of dimension D={config['code_dim']} per level; "
            "grids " + ", ".join(f"{level} {h}x{w}" for level, (h, w) in config["grid"].items()) + ".",
            "",
            "## Training data",
            f"- images: {data.get('data', '?')} (labels: {data.get('labels') or 'none'}), {data.get('images', '?')} images",
            "- per class: " + ", ".join(f"{k} {v}" for k, v in data.get("per_class", {}).items()),
            "- licence: the licence of the training images applies to this model and to everything it generates "
            "(HAM10000 is CC BY-NC 4.0: non-commercial use, with attribution).",
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
