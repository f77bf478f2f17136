"""Autoregressive priors over VQ-VAE-2 code maps and sampling from them.

    config = PriorConfig.default_for("top", codebook_size=512, height=32, width=32, num_classes=2)
    prior = build_prior(config)
    logits = prior(codes, labels)                               # (B, K, H, W), for training
    codes = sample(prior, labels, generator=torch.Generator().manual_seed(0))   # fast, cached
    codes = sample_reference(prior, labels, ...)                # one full forward per position: ground truth
"""

from torch import nn

from .config import PriorConfig
from .fast import sample
from .gated_pixelcnn import GatedPixelCNN
from .pixelsnail import PixelSNAIL
from .sampling import draw_codes, sample_reference

__all__ = ["GatedPixelCNN", "PixelSNAIL", "PriorConfig", "build_prior", "draw_codes", "sample", "sample_reference"]


def build_prior(config: PriorConfig) -> nn.Module:
    """A randomly initialised prior; `module.config` holds `config`."""
    return {"pixelsnail": PixelSNAIL, "gated-pixelcnn": GatedPixelCNN}[config.arch](config)
