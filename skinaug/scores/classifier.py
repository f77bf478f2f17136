"""The lesion classifier that scores share: an EfficientNet-B0 or ResNet from MONAI, trained from scratch or
from local weights, on a fixed budget so every training set gets the same chance.

MONAI builds the networks from torch alone (no torchvision) and is told never to download: pretrained
weights come only from a local file (`--weights`), read with safetensors or torch.load(weights_only=True).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import SkinaugError, UsageError
from ..runtime import log
from ..training.loop import Bar, Run, TrainState, augment_batch, fit, optimizer_step, warmup_cosine
from ..vqvae.model import to_model_input

ARCHS = ("efficientnet-b0", "resnet10", "resnet18")


@dataclass
class Budget:
    """What every training set gets: the same network, image size, batch and number of optimizer steps."""

    arch: str = "efficientnet-b0"  # the paper's classifier
    image_size: int = 64
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    augment: bool = True  # dihedral flips/rotations and mild colour jitter (lesions have no orientation)


class Classifier(nn.Module):
    """A backbone ending in pooled features, and a linear head: features() feeds FID and memorization."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def build_classifier(arch: str, num_classes: int, weights=None) -> Classifier:
    """A freshly initialised classifier (seed torch first), optionally starting from local backbone weights."""
    if arch not in ARCHS:
        raise UsageError(f"{{arch}} must be one of {', '.join(ARCHS)}, not {arch!r}")
    from monai.networks import nets

    if arch.startswith("efficientnet"):
        # pretrained=False: MONAI would otherwise download ImageNet weights. BatchNorm momentum 0.1 instead of
        # TensorFlow's 0.01 so the running statistics settle within a short CPU budget.
        backbone = nets.EfficientNetBN(arch, pretrained=False, spatial_dims=2, in_channels=3, num_classes=1,
                                       norm=("batch", {"eps": 1e-3, "momentum": 0.1}))
        feature_dim = backbone._fc.in_features
        backbone._fc = nn.Identity()
    else:
        backbone = getattr(nets, arch)(pretrained=False, spatial_dims=2, n_input_channels=3, num_classes=1)
        feature_dim = backbone.fc.in_features
        backbone.fc = nn.Identity()
    model = Classifier(backbone, feature_dim, num_classes)
    if weights is not None:
        load_backbone_weights(model, weights)
    return model


def read_weights(path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch file without unpickling (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise SkinaugError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as error:
            raise SkinaugError(f"cannot read weights {path} ({str(error).splitlines()[0]})") from None
    else:
        from ..storage.modeldir import torch_load_tensors

        state = torch_load_tensors(path, "weights")
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SkinaugError(f"{path} does not hold a state dict of tensors")
    return state


def load_backbone_weights(model: Classifier, path) -> None:
    """Loads every tensor whose name and shape match the backbone (a 1000-class ImageNet head never does)."""
    state = read_weights(path)
    own = model.backbone.state_dict()
    matched = {}
    for key, tensor in state.items():
        name = key.removeprefix("module.").removeprefix("backbone.")
        if name in own and own[name].shape == tensor.shape:
            matched[name] = tensor
    if not matched:
        raise SkinaugError(f"no tensor in {path} fits the {type(model.backbone).__name__} backbone (names or shapes differ)")
    model.backbone.load_state_dict(matched, strict=False)
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    log(f"loaded {len(matched)} tensors from {path}" + (f"; {len(missing)} backbone tensors keep their initialisation" if missing else ""))


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Sampling probabilities that give every class present the same share of each batch."""
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return weights / weights.sum()


def balanced_batches(labels: np.ndarray, steps: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """The real arm's batches: `steps` class-balanced batches drawn with replacement from one seeded stream (each
    sorted), so `steps` = a + b gives the a batches of `steps` = a, then b more."""
    rng = np.random.default_rng(seed)
    probabilities = balanced_weights(labels)
    return [np.sort(rng.choice(len(labels), size=batch_size, p=probabilities)) for _ in range(steps)]


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, budget: Budget, *, seed: int,
                     device: torch.device, weights=None, desc: str = "classifier", batches=None, loss=None,
                     init: Classifier | None = None) -> Classifier:
    """Trains on uint8 images (N, S, S, 3) for exactly `budget.steps` steps of class-balanced batches.

    Batches are drawn with replacement, so a set of 500 images and one of 5,000 get the same number of
    updates; the same seed on the same device gives the same classifier. A training recipe (skinaug.recipes) gives
    its own `batches` (index arrays; the schedule spans them), a `loss(logits, targets, index)` (e.g. weighted per
    image), or `init`, a classifier to continue from (fine-tuning).
    """
    if len(images) == 0:
        raise SkinaugError("no training images")
    torch.manual_seed(seed)
    model = (init if init is not None else build_classifier(budget.arch, num_classes, weights)).to(device).train()
    if batches is None:
        batches = balanced_batches(labels, budget.steps, budget.batch_size, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    state = TrainState(model=model, optimizer=optimizer,
                       scheduler=warmup_cosine(optimizer, budget.warmup_steps, len(batches)))
    targets = torch.from_numpy(labels.astype(np.int64))
    loss_fn = nn.CrossEntropyLoss()

    def step(index: np.ndarray, _steps_done: int) -> dict:
        batch = to_model_input(torch.from_numpy(images[index])).to(device)
        if budget.augment:
            batch = augment_batch(batch)
        logits, batch_targets = model(batch), targets[index].to(device)
        value = loss_fn(logits, batch_targets) if loss is None else loss(logits, batch_targets, index)
        optimizer_step(value, optimizer)
        return {"loss": value.detach()}

    # the whole budget is one epoch: the batches are drawn with replacement, there is no pass over the data
    fit(state, step, lambda epoch: batches, epochs=1, run=Run("classifier training", restart="lower {lr}"),
        bar=Bar(desc=lambda epoch, epochs: desc, unit="step", size=lambda batch: 1))
    return model.eval()


@torch.no_grad()
def _batched(model_fn, images: np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = to_model_input(torch.from_numpy(images[start : start + batch_size])).to(device)
        outputs.append(model_fn(batch).float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def predict(model: Classifier, images: np.ndarray, device: torch.device, batch_size: int = 128) -> np.ndarray:
    """Class probabilities (N, C) as float64."""
    model.eval()
    return _batched(lambda x: torch.softmax(model(x).float(), dim=1), images, device, batch_size).astype(np.float64)


def features(model: Classifier, images: np.ndarray, device: torch.device, batch_size: int = 128) -> np.ndarray:
    """Pooled penultimate features (N, feature_dim) as float64."""
    model.eval()
    return _batched(model.features, images, device, batch_size).astype(np.float64)


# Scores that vary by less than this over a whole test set are one score: an untrained classifier gives every image
# the same probabilities, and its AUC of 0.5 is a tie, not a measurement
CONSTANT_SPREAD = 1e-4


def constant_predictions(probabilities: np.ndarray) -> bool:
    """Whether a classifier gave every image (of two or more) the same class probabilities, up to CONSTANT_SPREAD."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return len(probabilities) > 1 and float(np.ptp(probabilities, axis=0).max()) <= CONSTANT_SPREAD


def steps_for(epochs: int, n_images: int, batch_size: int) -> int:
    """An epoch budget in optimizer steps: `epochs` passes over n_images."""
    return max(1, epochs * math.ceil(n_images / batch_size))
