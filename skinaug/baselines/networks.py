"""Each arch's network, optimizers and training step, by name."""

from __future__ import annotations

from torch import nn

from . import dcgan, vae, vae_gan
from .config import BaselineConfig

MODULES = {"dcgan": dcgan, "cvae": vae, "vae": vae, "msssim-vae": vae, "vae-gan": vae_gan}


def build(config: BaselineConfig) -> nn.Module:
    """The arch's whole model (every network it trains); `.generate(latent, labels)` makes images in [-1, 1]."""
    if config.arch == "dcgan":
        return dcgan.DCGAN(config)
    if config.arch == "vae-gan":
        return vae_gan.VAEGAN(config)
    return vae.build(config)


def optimizers(model: nn.Module, lr: float) -> dict:
    """Name -> optimizer: one per player for the GANs, one for the VAEs."""
    return MODULES[model.config.arch].optimizers(model, lr)


def make_step(model: nn.Module, optimizers_: dict):
    """step(images, labels) -> {loss name: detached scalar}: one update of every network of the model."""
    return MODULES[model.config.arch].make_step(model, optimizers_)
