"""Pieces the baseline networks share: the label embedding, the resampling blocks and the discriminator."""

from __future__ import annotations

import torch
from torch import nn

from .config import BaselineConfig


class LabelEmbedding(nn.Module):
    """A learned vector per class: joined to a latent vector, or tiled over an image as extra channels."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.table = nn.Embedding(num_classes, dim)

    def join(self, latent: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.cat([latent, self.table(labels)], 1)

    def tile(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        planes = self.table(labels)[:, :, None, None].expand(-1, -1, *images.shape[-2:])
        return torch.cat([images, planes], 1)


def down(in_channels: int, out_channels: int, kernel: int = 3, norm: bool = True) -> nn.Sequential:
    """Halves the side: a stride-2 convolution, batch norm, leaky ReLU."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride=2, padding=(kernel - 1) // 2, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(out_channels))
    return nn.Sequential(*layers, nn.LeakyReLU(0.2))


def resize_up(in_channels: int, out_channels: int) -> nn.Sequential:
    """Doubles the side by nearest upsampling then a 3x3 convolution: a transposed convolution's uneven kernel
    overlap paints checkerboards (Odena et al. 2016), which seed 003's DCGAN and CVAE avoid this way."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


def transposed_up(in_channels: int, out_channels: int) -> nn.Sequential:
    """Doubles the side with a transposed convolution: seed 004's VAE decoder mirrors its encoder this way."""
    return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2))


def to_rgb(channels: int) -> nn.Sequential:
    """The last layer of every generator: RGB in [-1, 1], the images' scale."""
    return nn.Sequential(nn.Conv2d(channels, 3, 3, padding=1), nn.Tanh())


class Discriminator(nn.Module):
    """Real or generated, given the class: stride-2 convolutions over the image with its label embedding tiled as
    extra channels, then one logit. dcgan ends in a convolution over the last map (fully convolutional); vae-gan,
    as seed 004 describes, in dense layers."""

    def __init__(self, config: BaselineConfig, dense_head: bool = False):
        super().__init__()
        self.embedding = LabelEmbedding(config.num_classes, config.embed_dim)
        channels = [3 + config.embed_dim, *config.widths]
        # DCGAN leaves batch norm out of the first layer: it would normalise away the raw pixel statistics
        self.body = nn.Sequential(*(down(a, b, kernel=4, norm=i > 0) for i, (a, b) in enumerate(zip(channels, channels[1:]))))
        side, deepest = config.start_side, config.widths[-1]
        if dense_head:
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(deepest * side * side, config.hidden), nn.LeakyReLU(0.2),
                                      nn.Linear(config.hidden, 1))
        else:
            self.head = nn.Sequential(nn.Conv2d(deepest, 1, side), nn.Flatten())

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One logit per image: (B,)."""
        return self.head(self.body(self.embedding.tile(images, labels))).squeeze(1)
