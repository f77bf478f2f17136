"""DCGAN (Radford et al. 2016) as seed 003 trains it: fully convolutional, resize-convolutions instead of
transposed ones, and one-sided label smoothing (the discriminator's target for real images is 0.9, not 1) so
that it cannot grow over-confident and starve the generator of gradient. Class-conditional: the label embedding
joins the noise in the generator and is tiled over the image in the discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import BaselineConfig
from .layers import Discriminator, LabelEmbedding, resize_up, to_rgb

REAL_TARGET = 0.9  # one-sided: generated images keep the target 0


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy: real images towards REAL_TARGET, generated ones towards 0."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, REAL_TARGET))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating loss, maximising log D(G(z)): strong gradients while the discriminator wins."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


class Generator(nn.Module):
    def __init__(self, config: BaselineConfig):
        super().__init__()
        self.embedding = LabelEmbedding(config.num_classes, config.embed_dim)
        widths, side = config.widths, config.start_side
        # a side x side kernel over the 1x1 noise map: a dense projection written as a convolution, whose
        # kernel never overlaps itself (no checkerboard)
        self.project = nn.Sequential(nn.ConvTranspose2d(config.latent_dim + config.embed_dim, widths[-1], side, bias=False),
                                     nn.BatchNorm2d(widths[-1]), nn.ReLU())
        ups = [resize_up(a, b) for a, b in zip(widths[::-1], widths[-2::-1])]
        self.body = nn.Sequential(*ups, nn.Upsample(scale_factor=2, mode="nearest"), to_rgb(widths[0]))

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        joined = self.embedding.join(noise, labels)
        return self.body(self.project(joined[:, :, None, None]))


class DCGAN(nn.Module):
    """Generator and discriminator in one module: one state dict, one set of weights in the model directory."""

    def __init__(self, config: BaselineConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)

    def generate(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.generator(noise, labels)

    @torch.no_grad()
    def validation(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums over the batch: the discriminator's belief that held-out real images are real (near 1: it has
        memorised the training images, or won; near 0: it rejects real images it has not seen)."""
        return {"d_real": torch.sigmoid(self.discriminator(images, labels)).sum()}


def optimizers(model: DCGAN, lr: float) -> dict:
    # beta1 0.5: DCGAN's setting, which damps the momentum that makes the two players oscillate
    return {"generator": torch.optim.Adam(model.generator.parameters(), lr=lr, betas=(0.5, 0.999)),
            "discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))}


def make_step(model: DCGAN, optimizers_: dict):
    """One discriminator update on a real and a generated batch, then one generator update on the same noise."""
    generator_optimizer, discriminator_optimizer = optimizers_["generator"], optimizers_["discriminator"]

    def step(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        noise = torch.randn(images.shape[0], model.config.latent_dim, device=images.device)
        fake = model.generator(noise, labels)
        d_loss = discriminator_loss(model.discriminator(images, labels), model.discriminator(fake.detach(), labels))
        discriminator_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        discriminator_optimizer.step()
        g_loss = generator_loss(model.discriminator(fake, labels))
        generator_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        generator_optimizer.step()
        return {"generator": g_loss.detach(), "discriminator": d_loss.detach()}

    return step
