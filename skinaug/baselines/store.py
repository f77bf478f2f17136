"""A baseline generator's model directory.

    MODEL_DIR/
      config.json            # "kind": "baseline", "arch", image_size, latent_dim, class_names (index order),
                             # normalisation, "baseline" (the network's config), training data, metrics, fingerprint
      baseline.safetensors   # every network the arch trains (discriminators included: training can go on from them)
      trained_on.json        # which images trained it (skinaug/trained_on.py)
      MODEL_CARD.md
      train/                 # checkpoint.pt (for --resume), metrics.jsonl, samples_epochNNN.png, train_config.json

The fingerprint hashes the network's config (its arch included) and weights, like a VQ-VAE's; it has no codes,
so commands that read or draw codes refuse it (modeldir.refuse_baseline).
"""

from __future__ import annotations

from pathlib import Path

from ..version import __version__
from ..errors import SkinaugError
from ..storage.fs import read_json, write_json, write_text
from ..storage.modeldir import BASELINE_KIND, BASELINE_WEIGHTS, CONFIG, FORMAT_VERSION, fingerprint, load_weights, save_weights
from .config import ARCHS, BaselineConfig


def save_baseline(path, model, *, class_names: list[str], training_data: dict, metrics: dict) -> str:
    """Writes the weights, then config.json and MODEL_CARD.md; returns the fingerprint."""
    config: BaselineConfig = model.config
    state = model.state_dict()
    fingerprint_ = fingerprint(config.to_dict(), state)
    save_weights(Path(path) / BASELINE_WEIGHTS, state)
    document = {
        "format_version": FORMAT_VERSION,
        "skinaug_version": __version__,
        "kind": BASELINE_KIND,
        "arch": config.arch,
        "image_size": config.image_size,
        "latent_dim": config.latent_dim,
        "normalisation": {"input": "uint8 RGB", "scale": "x / 127.5 - 1", "range": [-1.0, 1.0]},
        "class_names": list(class_names),
        "training_data": training_data,
        "metrics": metrics,
        "baseline": config.to_dict(),
        "fingerprint": fingerprint_,
    }
    write_json(Path(path) / CONFIG, document)
    write_model_card(path, document)
    return fingerprint_


def read_config(path) -> dict:
    """config.json of a baseline generator, checked: one clear line for a damaged or foreign one."""
    file = Path(path) / CONFIG
    config = read_json(file)
    if not isinstance(config, dict) or config.get("kind") != BASELINE_KIND:
        raise SkinaugError(f"{file} is not a baseline generator's config (no \"kind\": \"{BASELINE_KIND}\")")
    if not isinstance(config.get("format_version"), int) or config["format_version"] > FORMAT_VERSION:
        raise SkinaugError(f"{file} has format_version {config.get('format_version')!r}; this skinaug reads up to "
                           f"{FORMAT_VERSION}")
    network, names = config.get("baseline"), config.get("class_names")
    if config.get("arch") not in ARCHS or not isinstance(network, dict) or network.get("arch") != config["arch"]:
        raise SkinaugError(f"{file}: arch must be one of {', '.join(ARCHS)} and agree with baseline.arch")
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names)):
        raise SkinaugError(f"{file}: class_names must be a list of distinct, non-empty strings")
    if network.get("num_classes") != len(names) or network.get("image_size") != config.get("image_size"):
        raise SkinaugError(f"{file}: baseline.num_classes and baseline.image_size must match class_names and image_size")
    if not isinstance(config.get("fingerprint"), str):
        raise SkinaugError(f"{file} lacks its fingerprint")
    return config


def load_baseline(path, device="cpu"):
    """(model in eval mode on `device`, config.json)."""
    from .networks import build

    config = read_config(path)
    try:
        model = build(BaselineConfig.from_dict(config["baseline"]))
        model.load_state_dict(load_weights(Path(path) / BASELINE_WEIGHTS))
    except (RuntimeError, TypeError, ValueError) as error:
        raise SkinaugError(f"{Path(path) / BASELINE_WEIGHTS} does not match its config.json "
                           f"({str(error).splitlines()[0]})") from None
    return model.to(device).eval(), config


def write_model_card(path, config: dict) -> None:
    data, network = config.get("training_data", {}), config["baseline"]
    lines = [
        f"# skinaug baseline generator {config['fingerprint']}",
        "",
        f"{config['arch']}, {config['image_size']}px images, latent dimension {config['latent_dim']}, widths "
        f"{network['widths']}, class-conditional through a label embedding. A baseline to compare with skinaug's "
        "VQ-VAE-2: it makes images from noise and has no codes (`skinaug synthesize` and `augment --methods "
        "synthesize` only).",
        "",
        "## Training data",
        f"- images: {data.get('data', '?')} (labels: {data.get('labels') or 'none'}), {data.get('images', '?')} images",
        "- per class: " + ", ".join(f"{k} {v}" for k, v in data.get("per_class", {}).items()),
        "- licence: the licence of the training images applies to this model and to everything it generates.",
        "",
        "## Metrics",
        *[f"- {k}: {v}" for k, v in config.get("metrics", {}).items()],
        "",
        "## Intended use",
        "Research baseline for data augmentation. Generated images are synthetic: not patient data, not for diagnosis.",
        "",
    ]
    write_text(Path(path) / "MODEL_CARD.md", "\n".join(lines))
