"""The variational autoencoders: vae and msssim-vae (seed 004) and cvae (seed 003).

All three encode an image and its class into the mean and log-variance of a Gaussian latent, decode a sample of it
with the class back into an image, and train on a reconstruction loss plus kl_weight x KL(q(z|x) || N(0, I)). New
images decode z ~ N(0, T^2 I) for a class (T: --temperature).
- vae: five stride-2 convolutions, linear mean/log-variance, a decoder mirroring the encoder with transposed
  convolutions and Tanh; reconstruction loss: per-pixel mean squared error.
- msssim-vae: the same network, reconstruction loss 1 - MS-SSIM (pytorch-msssim).
- cvae: the encoder ends in dense layers, the decoder starts with dense layers and upsamples by resize-convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import BaselineConfig
from .layers import LabelEmbedding, down, resize_up, to_rgb, transposed_up


def kl_divergence(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_variance)) || N(0, I)) in closed form, summed over latent dimensions, averaged over the
    batch."""
    return 0.5 * (mean.pow(2) + log_variance.exp() - 1.0 - log_variance).sum(1).mean()


def msssim_loss(reconstruction: torch.Tensor, images: torch.Tensor, window: int) -> torch.Tensor:
    """1 - MS-SSIM on images in [-1, 1] (compared on [0, 1]), with the window config.msssim_window chose."""
    from pytorch_msssim import ms_ssim

    return 1.0 - ms_ssim((reconstruction.float() + 1) / 2, (images.float() + 1) / 2, data_range=1.0, win_size=window)


class VAEBase(nn.Module):
    """What the VAEs share: the reparameterised sample, generation and validation; subclasses build the
    networks (`encoder`, `to_mean`, `to_log_variance`, `decoder`)."""

    config: BaselineConfig

    def encode(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(self.embedding.tile(images, labels))
        return self.to_mean(features), self.to_log_variance(features)

    def decode(self, latent: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.embedding.join(latent, labels))

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        """(reconstruction, mean, log-variance); the latent is drawn from the global RNG (seeded, checkpointed)."""
        mean, log_variance = self.encode(images, labels)
        latent = mean + torch.randn_like(mean) * (0.5 * log_variance).exp()
        return self.decode(latent, labels), mean, log_variance

    def generate(self, latent: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.decode(latent, labels)

    @torch.no_grad()
    def validation(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums over the batch: squared error per pixel on [0, 1] of the reconstruction from the mean, and KL."""
        mean, log_variance = self.encode(images, labels)
        error = (self.decode(mean, labels) - images).pow(2).mean((1, 2, 3)) / 4.0  # [-1, 1] -> [0, 1]
        kl = 0.5 * (mean.pow(2) + log_variance.exp() - 1.0 - log_variance).sum(1)
        return {"mse": error.sum(), "kl": kl.sum()}


class ConvVAE(VAEBase):
    """Seed 004's VAE (vae, msssim-vae, and the VAE inside vae-gan)."""

    def __init__(self, config: BaselineConfig):
        super().__init__()
        self.config = config
        widths, side, latent = config.widths, config.start_side, config.latent_dim
        self.embedding = LabelEmbedding(config.num_classes, config.embed_dim)
        channels = [3 + config.embed_dim, *widths]
        self.encoder = nn.Sequential(*(down(a, b) for a, b in zip(channels, channels[1:])), nn.Flatten())
        flat = widths[-1] * side * side
        self.to_mean, self.to_log_variance = nn.Linear(flat, latent), nn.Linear(flat, latent)
        ups = [transposed_up(a, b) for a, b in zip(widths[::-1], widths[-2::-1])]
        self.decoder = nn.Sequential(nn.Linear(latent + config.embed_dim, flat), nn.Unflatten(1, (widths[-1], side, side)),
                                     *ups, transposed_up(widths[0], widths[0]), to_rgb(widths[0]))


class DenseCVAE(VAEBase):
    """Seed 003's CVAE: convolutions then dense layers in, dense layers then resize-convolutions out."""

    def __init__(self, config: BaselineConfig):
        super().__init__()
        self.config = config
        widths, side, latent, hidden = config.widths, config.start_side, config.latent_dim, config.hidden
        self.embedding = LabelEmbedding(config.num_classes, config.embed_dim)
        channels = [3 + config.embed_dim, *widths]
        flat = widths[-1] * side * side
        self.encoder = nn.Sequential(*(down(a, b) for a, b in zip(channels, channels[1:])), nn.Flatten(),
                                     nn.Linear(flat, hidden), nn.LeakyReLU(0.2))
        self.to_mean, self.to_log_variance = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        ups = [resize_up(a, b) for a, b in zip(widths[::-1], widths[-2::-1])]
        self.decoder = nn.Sequential(nn.Linear(latent + config.embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, flat),
                                     nn.ReLU(), nn.Unflatten(1, (widths[-1], side, side)), *ups,
                                     nn.Upsample(scale_factor=2, mode="nearest"), to_rgb(widths[0]))


def build(config: BaselineConfig) -> VAEBase:
    return DenseCVAE(config) if config.arch == "cvae" else ConvVAE(config)


def reconstruction_loss(config: BaselineConfig):
    """The arch's reconstruction term: (reconstruction, images) -> a scalar."""
    if config.arch == "msssim-vae":
        return lambda reconstruction, images: msssim_loss(reconstruction, images, config.msssim_window)
    return F.mse_loss


def optimizers(model: VAEBase, lr: float) -> dict:
    return {"vae": torch.optim.Adam(model.parameters(), lr=lr)}


def make_step(model: VAEBase, optimizers_: dict):
    """One update of reconstruction + kl_weight x KL."""
    optimizer, reconstruction_term = optimizers_["vae"], reconstruction_loss(model.config)

    def step(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        reconstruction, mean, log_variance = model(images, labels)
        rec, kl = reconstruction_term(reconstruction, images), kl_divergence(mean, log_variance)
        loss = rec + model.config.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach(), "reconstruction": rec.detach(), "kl": kl.detach()}

    return step
