"""The shape and loss weights of a baseline generator: one dataclass, kept in config.json and in every checkpoint.

The defaults are the recipes of two student reports at 64px: (003) D'Amico, Murgia and Moeini Feizabadi, "Skin Disease
Image Generation"; (004) Holsman, Feliu and Mokel, "VAE for Medical Images" (CS 675 / ECE 685):
- dcgan: DCGAN with resize-convolutions and one-sided label smoothing (003); Adam 2e-4, beta1 0.5, latent 100.
- cvae: conv encoder + dense layers, dense + resize-conv decoder, MSE + KL (003).
- vae: five stride-2 convolutions 32..512, linear mean/log-variance, mirrored transposed-conv decoder ending in
  Tanh, lr 0.005, KL weight 0.00025 (004).
- msssim-vae: the vae with 1 - MS-SSIM as its reconstruction loss, latent 128 (004).
- vae-gan: the vae plus a discriminator on its reconstructions, lr 3e-4 (004).
Every arch is class-conditional through a learned label embedding: one model serves all classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..data.scan import check_image_size
from ..errors import UsageError

ARCHS = ("dcgan", "cvae", "vae", "msssim-vae", "vae-gan")
VAE_ARCHS = ("cvae", "vae", "msssim-vae", "vae-gan")

DEEP = (32, 64, 128, 256, 512)  # seed 004's encoder widths
ARCH_DEFAULTS = {
    "dcgan": {"widths": (64, 128, 256, 512), "latent_dim": 100, "lr": 2e-4},
    "cvae": {"widths": (32, 64, 128, 256), "latent_dim": 128, "lr": 1e-3},
    "vae": {"widths": DEEP, "latent_dim": 128, "lr": 5e-3},
    "msssim-vae": {"widths": DEEP, "latent_dim": 128, "lr": 5e-3},
    "vae-gan": {"widths": DEEP, "latent_dim": 128, "lr": 3e-4},
}
DEFAULT_KL_WEIGHT = 0.00025  # seed 004's weight on the KL term beside a per-pixel mean reconstruction loss
DEFAULT_GAN_WEIGHT = 0.01  # vae-gan: small enough that the pixel loss leads while the discriminator sharpens
MSSIM_SCALES = 5


@dataclass
class BaselineConfig:
    arch: str
    image_size: int = 64
    num_classes: int = 1
    latent_dim: int = 128
    widths: tuple[int, ...] = DEEP  # channels of the stride-2 layers, shallow to deep; decoders mirror them
    embed_dim: int = 16  # the label embedding, joined to the noise and tiled over the images
    hidden: int = 512  # width of cvae's dense layers and of vae-gan's discriminator head
    kl_weight: float = 0.0  # VAEs: weight of the KL term
    gan_weight: float = 0.0  # vae-gan: weight of the adversarial term
    msssim_window: int = 0  # msssim-vae: side of MS-SSIM's Gaussian window (see msssim_window)

    @property
    def start_side(self) -> int:
        """Side of the deepest feature map: the image halved once per width."""
        return self.image_size >> len(self.widths)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["widths"] = list(self.widths)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "BaselineConfig":
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in known})
        config.widths = tuple(config.widths)
        return config


def msssim_window(image_size: int) -> int:
    """The largest odd Gaussian window (at most MS-SSIM's usual 11) that pytorch-msssim accepts for this side.

    MS-SSIM compares five scales, halving the image four times; pytorch-msssim requires side > (window - 1) * 16
    whatever the number of scales. 64px therefore gets a 3-pixel window (scales 64, 32, 16, 8, 4 keep every scale
    of the standard definition), 128px a 7-pixel one, 176px and up the standard 11."""
    window = 11
    while window > 1 and (window - 1) * 2 ** (MSSIM_SCALES - 1) >= image_size:
        window -= 2
    if window < 3:
        raise UsageError(f"msssim-vae needs {{image_size}} of at least 40: MS-SSIM's five scales leave no room for a "
                         f"comparison window at {image_size}px")
    return window


def baseline_config(arch: str, image_size: int = 64, num_classes: int = 1, *, widths=None, latent_dim=None,
                    hidden=None, kl_weight=None, gan_weight=None) -> BaselineConfig:
    """The arch's defaults with what was asked for; each option given to an arch without its term is refused."""
    if arch not in ARCHS:
        raise UsageError(f"{{arch}} must be one of {', '.join(ARCHS)}, not {arch!r}")
    check_image_size(image_size)
    if kl_weight is not None and arch not in VAE_ARCHS:
        raise UsageError(f"{{kl_weight}} weighs the KL term of the VAEs; {arch} has none")
    if gan_weight is not None and arch != "vae-gan":
        raise UsageError(f"{{gan_weight}} weighs vae-gan's adversarial term; {arch} has none")
    for flag, value in (("--kl-weight", kl_weight), ("--gan-weight", gan_weight)):
        if value is not None and not (0 <= value < float("inf")):
            raise UsageError(f"{flag} must be a finite number of at least 0, not {value}")
    defaults = ARCH_DEFAULTS[arch]
    widths = tuple(defaults["widths"] if widths is None else widths)
    if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
        raise UsageError(f"{{widths}} must be positive integers, not {list(widths)}")
    latent_dim = defaults["latent_dim"] if latent_dim is None else latent_dim
    hidden = BaselineConfig.hidden if hidden is None else hidden
    for flag, value in (("--latent-dim", latent_dim), ("--hidden", hidden)):
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"{flag} must be a positive integer, not {value!r}")
    if image_size % 2 ** len(widths) or image_size >> len(widths) < 1:
        raise UsageError(f"{{image_size}} {image_size} cannot be halved {len(widths)} times (one per {{widths}} entry): "
                         f"use a multiple of {2 ** len(widths)} or fewer widths")
    return BaselineConfig(
        arch, image_size, max(1, num_classes), latent_dim, widths, hidden=hidden,
        kl_weight=(DEFAULT_KL_WEIGHT if kl_weight is None else float(kl_weight)) if arch in VAE_ARCHS else 0.0,
        gan_weight=(DEFAULT_GAN_WEIGHT if gan_weight is None else float(gan_weight)) if arch == "vae-gan" else 0.0,
        msssim_window=msssim_window(image_size) if arch == "msssim-vae" else 0)
