"""Install a trained model directory as a shipped model: skinaug/models/NAME/ (package data).

    python scripts/ship_model.py MODEL_DIR NAME --licence "CC BY-NC 4.0 (HAM10000)"

Copies config.json, the weights, trained_on.json and train/metrics.jsonl (not the checkpoints), stores the large weight tensors
in float16 (loaded as float32), and recomputes the fingerprint over the weights as they will be loaded, so
that it identifies the shipped model exactly. MODEL_CARD.md is written by hand (see the shipped one).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from skinaug.storage.fs import SHIPPED_MODELS, write_json
from skinaug.storage.modeldir import (CONFIG, PRIOR_WEIGHTS, VQVAE_WEIGHTS, ModelDir, compact_weights, fingerprint,
                              load_weights, vqvae_config)
from skinaug.storage.trained_on import TRAINED_ON


def ship(source: Path, name: str, licence: str) -> Path:
    target = SHIPPED_MODELS / name
    target.mkdir(parents=True, exist_ok=True)
    config = ModelDir(source).config()  # checked, and in the current layout
    for weights in (VQVAE_WEIGHTS, *PRIOR_WEIGHTS.values()):
        if (source / weights).is_file():
            shutil.copyfile(source / weights, target / weights)
            compact_weights(target / weights)
    if (source / TRAINED_ON).is_file():
        shutil.copyfile(source / TRAINED_ON, target / TRAINED_ON)
    if (source / "train" / "metrics.jsonl").is_file():
        shutil.copyfile(source / "train" / "metrics.jsonl", target / "metrics.jsonl")
    config["trained_fingerprint"] = config["fingerprint"]  # the float32 model that the metrics were measured on
    config["fingerprint"] = fingerprint(vqvae_config(config), load_weights(target / VQVAE_WEIGHTS))
    config["licence"] = licence
    # the paths where it was trained mean nothing on a user's machine: keep the data set's own folder names
    data = config.get("training_data", {})
    for key in ("data", "labels"):
        if data.get(key):
            data[key] = "/".join(Path(data[key]).parts[-2:])
    write_json(target / CONFIG, config)
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("name")
    parser.add_argument("--licence", required=True)
    arguments = parser.parse_args()
    print(ship(arguments.source, arguments.name, arguments.licence))
