"""VAE-GAN (Larsen et al. 2016) as seed 004 trains it: seed 004's VAE, plus a discriminator (convolutions, then
dense layers and a sigmoid) that tells real images from the VAE's reconstructions. The VAE adds the
discriminator's judgement to its pixel loss, which pushes reconstructions, and so samples, off the blurry mean."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import BaselineConfig
from .dcgan import discriminator_loss, generator_loss
from .layers import Discriminator
from .vae import ConvVAE, kl_divergence


class VAEGAN(nn.Module):
    def __init__(self, config: BaselineConfig):
        super().__init__()
        self.config = config
        self.vae = ConvVAE(config)
        self.discriminator = Discriminator(config, dense_head=True)

    def generate(self, latent: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent, labels)

    @torch.no_grad()
    def validation(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**self.vae.validation(images, labels), "d_real": torch.sigmoid(self.discriminator(images, labels)).sum()}


def optimizers(model: VAEGAN, lr: float) -> dict:
    return {"vae": torch.optim.Adam(model.vae.parameters(), lr=lr),
            "discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))}


def make_step(model: VAEGAN, optimizers_: dict):
    """The discriminator learns from the batch and its reconstructions; then the VAE descends
    MSE + kl_weight x KL + gan_weight x (non-saturating adversarial loss against the updated discriminator)."""
    vae_optimizer, discriminator_optimizer = optimizers_["vae"], optimizers_["discriminator"]
    config = model.config

    def step(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        reconstruction, mean, log_variance = model.vae(images, labels)
        d_loss = discriminator_loss(model.discriminator(images, labels), model.discriminator(reconstruction.detach(), labels))
        discriminator_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        discriminator_optimizer.step()
        rec, kl = F.mse_loss(reconstruction, images), kl_divergence(mean, log_variance)
        adversarial = generator_loss(model.discriminator(reconstruction, labels))
        loss = rec + config.kl_weight * kl + config.gan_weight * adversarial
        vae_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        vae_optimizer.step()
        return {"loss": loss.detach(), "reconstruction": rec.detach(), "kl": kl.detach(),
                "adversarial": adversarial.detach(), "discriminator": d_loss.detach()}

    return step
