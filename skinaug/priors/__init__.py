"""Autoregressive priors over VQ-VAE-2 code maps and sampling from them.

    config = PriorConfig.default_for("top", codebook_size=512, height=32, width=32, num_classes=2)
    prior = build_prior(config)
    logits = prior(codes, labels)                               # (B, K, H, W), for training
    codes = sample(prior, labels, generator=torch.Generator().manual_seed(0))   # fast, cached
    codes = sample_reference(prior, labels, ...)                # one full forward per position: ground truth
    codes = refine_codes(prior, codes, region, labels, ...)     # Gibbs sweeps over a resampled region
"""

from torch import nn

from .config import PriorConfig
from .fast import StepOptions, sample
from .gated_pixelcnn import GatedPixelCNN
from .pixelsnail import PixelSNAIL
from .refine import conditional_log_probs, log_likelihood, refine_codes
from .sampling import draw_codes, sample_reference

__all__ = ["GatedPixelCNN", "PixelSNAIL", "PriorConfig", "StepOptions", "build_prior", "conditional_log_probs",
           "draw_codes", "log_likelihood", "refine_codes", "sample", "sample_reference"]


def build_prior(config: PriorConfig) -> nn.Module:
    """A randomly initialised prior; `module.config` holds `config`."""
    return {"pixelsnail": PixelSNAIL, "gated-pixelcnn": GatedPixelCNN}[config.arch](config)
