"""Stage-1 loss terms beyond MSE, for VQ-VAEs that keep fine texture (`skinaug train vqvae --loss`).

MSE alone averages away what it cannot place exactly: reconstructions come out smooth. Two optional terms push back:

- ssim: 1 - SSIM (Wang et al. 2004, MONAI's SSIMLoss) between reconstruction and image, which rewards local
  structure and contrast rather than exact values. (MS-SSIM needs about 176px for its five scales.)
- gan: a PatchGAN discriminator trained from scratch with the hinge loss, as in VQGAN (Esser et al. 2021): the
  VQ-VAE is rewarded for patches the discriminator takes for real ones. Its weight adapts every step to the ratio
  of the reconstruction's and the adversarial term's gradient norms at the decoder's last layer, so neither
  drowns the other, and the discriminator joins only after `gan_start` steps, once reconstructions are sensible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..errors import UsageError

LOSSES = ("mse", "mse+ssim", "mse+gan", "mse+ssim+gan")
DEFAULT_SSIM_WEIGHT = 0.2
DEFAULT_GAN_WEIGHT = 0.1
GAN_START_SHARE = 0.25  # by default the discriminator joins after a quarter of the run's steps
ADAPTIVE_WEIGHT_MAX = 1e4  # VQGAN's clamp: a vanishing adversarial gradient must not blow the weight up
PIXEL_RANGE = 2.0  # images are in [-1, 1]


@dataclass(frozen=True)
class LossSettings:
    """The loss terms of a run and their weights; `gan_start` is None until the run's length is known."""

    terms: str = "mse"
    ssim_weight: float = 0.0
    gan_weight: float = 0.0
    gan_start: int | None = None

    @property
    def uses_ssim(self) -> bool:
        return "ssim" in self.terms.split("+")

    @property
    def uses_gan(self) -> bool:
        return "gan" in self.terms.split("+")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> "LossSettings":
        return cls(**{k: v for k, v in (values or {}).items() if k in cls.__dataclass_fields__})


def loss_settings(terms: str = "mse", ssim_weight: float | None = None, gan_weight: float | None = None,
                  gan_start: int | None = None) -> LossSettings:
    """The checked settings; a weight or start given for a term the loss lacks is a usage error (it would do nothing)."""
    if terms not in LOSSES:
        raise UsageError(f"{{loss}} must be one of {', '.join(LOSSES)}, not {terms!r}")
    for flag, value in (("{ssim_weight}", ssim_weight), ("{gan_weight}", gan_weight), ("{gan_start}", gan_start)):
        if value is not None and not (value >= 0 and float(value) != float("inf")):  # also refuses nan
            raise UsageError(f"{flag} must be a finite number of at least 0, not {value}")
    settings = LossSettings(terms)
    if not settings.uses_ssim and ssim_weight is not None:
        raise UsageError(f"{{ssim_weight}} weighs the ssim term, which {{loss}} {terms} does not have (use {{loss='mse+ssim'}})")
    if not settings.uses_gan and (gan_weight is not None or gan_start is not None):
        raise UsageError(f"{{gan_weight}} and {{gan_start}} set the gan term, which {{loss}} {terms} does not have "
                         "(use {loss='mse+gan'})")
    return LossSettings(
        terms,
        ssim_weight=(DEFAULT_SSIM_WEIGHT if ssim_weight is None else float(ssim_weight)) if settings.uses_ssim else 0.0,
        gan_weight=(DEFAULT_GAN_WEIGHT if gan_weight is None else float(gan_weight)) if settings.uses_gan else 0.0,
        gan_start=gan_start if settings.uses_gan else None,
    )


@lru_cache(maxsize=1)
def ssim_module() -> torch.nn.Module:
    """MONAI's SSIMLoss for images in [-1, 1] (11-pixel Gaussian window, MONAI's defaults). Importing MONAI takes
    seconds: a run builds it before its first epoch, so that epoch's timing is the training's."""
    from monai.losses import SSIMLoss

    return SSIMLoss(spatial_dims=2, data_range=PIXEL_RANGE)


def ssim_loss(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """1 - SSIM, averaged over the batch; 0 when the images are equal."""
    # in fp32 with autocast off: SSIM's variances are differences of close squares, which bf16 cannot resolve
    with torch.autocast(device_type=images.device.type, enabled=False):
        return ssim_module()(reconstruction.float(), images.float())


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: 0 once real patches score at least 1 and reconstructed ones at most -1."""
    return 0.5 * (F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The VQ-VAE's adversarial loss: minus the discriminator's mean score for its reconstructions."""
    return -fake_logits.float().mean()


def adaptive_weight(reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor, last_layer: torch.Tensor,
                    gan_weight: float) -> torch.Tensor:
    """VQGAN's balance: gan_weight x |grad of the reconstruction loss| / |grad of the adversarial loss| at the
    decoder's last layer, clamped to [0, 1e4] and detached (a weight, not something to optimise)."""
    reconstruction_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adversarial_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    ratio = reconstruction_grad.float().norm() / (adversarial_grad.float().norm() + 1e-4)
    return ratio.clamp(0.0, ADAPTIVE_WEIGHT_MAX).detach() * gan_weight


def discriminator_width(vqvae_channels: int) -> int:
    """Half the VQ-VAE's width, as in VQGAN (64 beside 128): a discriminator far stronger than the decoder it judges
    only teaches it noise."""
    return max(8, vqvae_channels // 2)


def build_discriminator(channels: int, seed: int) -> torch.nn.Module:
    """MONAI's PatchGAN with 3 layers (pix2pix's and VQGAN's depth) and instance norm, so a patch's score never
    depends on the rest of its batch; weights drawn from their own seed, leaving the run's random stream as it was
    (an --loss mse+gan run augments exactly like an --loss mse one)."""
    from monai.networks.nets import PatchDiscriminator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PatchDiscriminator(spatial_dims=2, channels=channels, in_channels=3, out_channels=1, num_layers_d=3,
                                  norm="INSTANCE")


class Adversary:
    """The gan term: the discriminator, its AdamW optimizer, and the two halves of a training step.

    `generator_loss` scores a reconstruction for the VQ-VAE's loss (through the plain discriminator, frozen, so that
    only the VQ-VAE gets gradients); `discriminator_step` then trains the discriminator (through `network`, the
    DDP-wrapped one under torchrun) on the batch and its detached reconstruction.
    """

    def __init__(self, settings: LossSettings, *, channels: int, lr: float, weight_decay: float, seed: int, device):
        self.settings = settings
        self.discriminator = build_discriminator(channels, seed).to(device)
        self.network = self.discriminator
        # VQGAN's betas: a short memory keeps the discriminator responsive to a generator that keeps changing
        self.optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.9),
                                           weight_decay=weight_decay)

    def active(self, step: int) -> bool:
        return step >= self.settings.gan_start

    def score(self, images: torch.Tensor, network=None) -> torch.Tensor:
        """Patch logits (B, 1, h, w): MONAI's discriminator returns every layer's output, the logits last."""
        return (network or self.discriminator)(images)[-1]

    def generator_loss(self, reconstruction: torch.Tensor, reconstruction_loss: torch.Tensor,
                       last_layer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(adversarial loss, its adaptive weight) for the VQ-VAE."""
        self.discriminator.requires_grad_(False)
        try:
            loss = hinge_generator_loss(self.score(reconstruction))
        finally:
            self.discriminator.requires_grad_(True)
        return loss, adaptive_weight(reconstruction_loss, loss, last_layer, self.settings.gan_weight)

    def discriminator_step(self, images: torch.Tensor, reconstruction: torch.Tensor, autocast) -> torch.Tensor:
        """One AdamW step of the discriminator; returns its hinge loss. Real and reconstructed patches go through in
        one batch: one forward per backward, as DDP expects."""
        with autocast():
            logits = self.score(torch.cat([images, reconstruction.detach().to(images.dtype)]), self.network)
        loss = hinge_discriminator_loss(*logits.split(images.shape[0]))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
