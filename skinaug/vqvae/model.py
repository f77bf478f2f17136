"""The stage-1 model: a one- or two-level VQ-VAE-2 (Razavi et al. 2019).

Bottom codes live at 1/4 of the image side, top codes at 1/8 (256px: 64x64 and 32x32); `downsample=8` halves both
(128px: 16x16 and 8x8), so that a larger image costs the priors what a smaller one does. The top level sees the
whole lesion coarsely; the bottom level, conditioned on the decoded top, adds texture.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from torch import nn

from ..backends.base import PIXEL_SCALE
from ..errors import UsageError
from .quantize import VectorQuantizer
from ..spec import DOWNSAMPLES, TOP_STRIDE_FACTOR, code_grid

# (field, least value, greatest value or None) of the integer fields; codes are stored as uint16
_INTEGER_RANGES = (("codebook_size", 2, 65535), ("code_dim", 1, None), ("channels", 2, None), ("res_channels", 1, None),
                   ("n_res_blocks", 0, None), ("restart_after", 1, None))


@dataclass
class VQVAEConfig:
    image_size: int = 256
    levels: int = 2
    codebook_size: int = 256  # K=256, D=8 used every code in both levels on dermoscopy (paper, Table 2)
    code_dim: int = 8
    channels: int = 128
    res_channels: int = 32
    n_res_blocks: int = 2
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    restart_after: int = 200  # training steps without use before a code is re-seeded
    # the bottom codes' stride (4 or 8; the top's is twice it): 8 keeps a 128px model's grids at the 64px model's
    # 16x16 and 8x8, so its priors cost the same (VQGAN compresses by 16 for the same reason)
    downsample: int = 4

    def __post_init__(self) -> None:
        problems = [*self._integer_problems(), *self._shape_problems()]
        if not (_is_real(self.commitment_weight) and self.commitment_weight >= 0):
            problems.append(f"{{commitment_weight}} must be a finite number of at least 0, not {self.commitment_weight!r}")
        if not (_is_real(self.ema_decay) and 0 <= self.ema_decay < 1):
            problems.append(f"{{ema_decay}} must be in [0, 1), not {self.ema_decay!r}")
        if problems:  # placeholders: the CLI names its flags (--image-size), Python callers the fields
            raise UsageError("invalid VQ-VAE config: " + "; ".join(problems))

    def _integer_problems(self) -> list[str]:
        problems = []
        for name, least, greatest in _INTEGER_RANGES:
            value = getattr(self, name)
            if not (_is_integer(value) and value >= least and (greatest is None or value <= greatest)):
                bounds = f"from {least} to {greatest}" if greatest is not None else f"of at least {least}"
                problems.append(f"{{{name}}} must be an integer {bounds}, not {value!r}")
        return problems

    def _shape_problems(self) -> list[str]:
        """levels, downsample, and an image_size whose every level's grid is whole."""
        if self.levels not in (1, 2) or not _is_integer(self.levels):
            return [f"{{levels}} must be 1 or 2, not {self.levels!r}"]
        if self.downsample not in DOWNSAMPLES or not _is_integer(self.downsample):
            return [f"{{downsample}} must be one of {', '.join(map(str, DOWNSAMPLES))}, not {self.downsample!r}"]
        step = self.downsample * (TOP_STRIDE_FACTOR if self.levels == 2 else 1)  # the coarsest level's stride
        if not (_is_integer(self.image_size) and self.image_size >= step and self.image_size % step == 0):
            return [f"{{image_size}} must be a multiple of {step} (the stride of the coarsest codes), at least {step}, "
                    f"not {self.image_size!r}"]
        return []

    def grid_shapes(self) -> dict[str, tuple[int, int]]:
        """Code-map shape per level (`spec.code_grid`, the one source of truth for grid sizes)."""
        return code_grid(self.image_size, self.levels, self.downsample)

    def to_dict(self) -> dict:
        values = asdict(self)
        if values["downsample"] == 4:  # models from before the option hash (fingerprint) as they always did
            del values["downsample"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "VQVAEConfig":
        """The config of `to_dict`'s dict (a field it leaves out takes its default); an unknown key is refused."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise UsageError(f"unknown VQ-VAE config keys: {', '.join(map(str, unknown))}")
        return cls(**values)


def _is_integer(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


class ResBlock(nn.Module):
    def __init__(self, channels: int, res_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, res_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(res_channels, channels, 1),
        )

    def forward(self, x):
        return x + self.body(x)


def _res_stack(channels: int, res_channels: int, n_res_blocks: int) -> list[nn.Module]:
    return [ResBlock(channels, res_channels) for _ in range(n_res_blocks)] + [nn.ReLU(inplace=True)]


class Encoder(nn.Module):
    """Downsamples by `stride` (2, 4 or 8) with strided 4x4 convolutions, then residual blocks."""

    def __init__(self, in_channels, channels, res_channels, n_res_blocks, stride):
        super().__init__()
        half, halvings = channels // 2, stride.bit_length() - 1
        layers = [nn.Conv2d(in_channels, half, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        for _ in range(halvings - 2):  # stride 8: one more halving at half width, where the maps are largest
            layers += [nn.Conv2d(half, half, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        if halvings == 1:
            layers += [nn.Conv2d(half, channels, 3, padding=1)]
        else:
            layers += [nn.Conv2d(half, channels, 4, stride=2, padding=1), nn.ReLU(inplace=True),
                       nn.Conv2d(channels, channels, 3, padding=1)]
        self.net = nn.Sequential(*layers, *_res_stack(channels, res_channels, n_res_blocks))

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    """Residual blocks, then upsamples by `stride` (2, 4 or 8) with transposed convolutions."""

    def __init__(self, in_channels, out_channels, channels, res_channels, n_res_blocks, stride):
        super().__init__()
        half, halvings = channels // 2, stride.bit_length() - 1
        layers = [nn.Conv2d(in_channels, channels, 3, padding=1), *_res_stack(channels, res_channels, n_res_blocks)]
        if halvings == 1:
            layers += [nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1)]
        else:
            layers += [nn.ConvTranspose2d(channels, half, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            for _ in range(halvings - 2):
                layers += [nn.ConvTranspose2d(half, half, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            layers += [nn.ConvTranspose2d(half, out_channels, 4, stride=2, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class VQVAE2(nn.Module):
    """Images in [-1, 1] (B, 3, S, S) <-> code maps {"top": (B, S/2r, S/2r), "bottom": (B, S/r, S/r)}, r = downsample."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        c, r, n, d = config.channels, config.res_channels, config.n_res_blocks, config.code_dim
        quantizer = lambda: VectorQuantizer(config.codebook_size, d, config.ema_decay, restart_after=config.restart_after)  # noqa: E731
        self.encode_bottom = Encoder(3, c, r, n, stride=config.downsample)
        self.quantize_conv_bottom = nn.Conv2d(c + (d if config.levels == 2 else 0), d, 1)
        self.quantize_bottom = quantizer()
        if config.levels == 2:
            self.encode_top = Encoder(c, c, r, n, stride=2)
            self.quantize_conv_top = nn.Conv2d(c, d, 1)
            self.quantize_top = quantizer()
            # decodes the top codes to the bottom grid so the bottom level encodes only what the top missed
            self.decode_top = Decoder(d, d, c, r, n, stride=2)
            self.upsample_top = nn.ConvTranspose2d(d, d, 4, stride=2, padding=1)
        self.decoder = Decoder(d * config.levels, 3, c, r, n, stride=config.downsample)
        self.encoder_frozen = False

    @property
    def quantizers(self) -> dict[str, VectorQuantizer]:
        found = {"bottom": self.quantize_bottom}
        if self.config.levels == 2:
            found["top"] = self.quantize_top
        return found

    def encode(self, images: torch.Tensor):
        """Returns (quantized vectors per level, code maps per level, summed commitment loss)."""
        features_bottom = self.encode_bottom(images)
        quantized, codes, commitment = {}, {}, 0.0
        if self.config.levels == 2:
            features_top = self.encode_top(features_bottom)
            quantized["top"], codes["top"], loss_top = self.quantize_top(self.quantize_conv_top(features_top))
            features_bottom = torch.cat([features_bottom, self.decode_top(quantized["top"])], 1)
            commitment = commitment + loss_top
        quantized["bottom"], codes["bottom"], loss_bottom = self.quantize_bottom(self.quantize_conv_bottom(features_bottom))
        return quantized, codes, commitment + loss_bottom

    def decode(self, quantized: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [quantized["bottom"]]
        if self.config.levels == 2:
            parts.insert(0, self.upsample_top(quantized["top"]))
        return self.decoder(torch.cat(parts, 1))

    def decode_codes(self, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.decode({level: self.quantizers[level].lookup(codes[level]) for level in self.quantizers})

    def forward(self, images: torch.Tensor):
        quantized, codes, commitment = self.encode(images)
        reconstruction = self.decode(quantized)
        return reconstruction, codes, commitment

    def decoding_modules(self) -> list[nn.Module]:
        """What decode() runs: code vectors -> pixels. Everything else decides which codes an image gets."""
        return [self.upsample_top, self.decoder] if self.config.levels == 2 else [self.decoder]

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight of the layer that outputs pixels (where VQGAN balances its adversarial term)."""
        return self.decoder.net[-1].weight

    def freeze_encoder(self) -> None:
        """Fixes the codes for good (`train vqvae --decoder-only`): the encoder side takes no gradients and its
        quantizers stay in eval mode, so their EMA codebooks neither update nor restart codes, even in train()."""
        decoding = {id(p) for module in self.decoding_modules() for p in module.parameters()}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in decoding)
        self.encoder_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder_frozen:
            decoding = self.decoding_modules()
            for child in self.children():
                if not any(child is module for module in decoding):
                    child.eval()
        return self



def vqvae_loss(outputs, images: torch.Tensor, commitment_weight: float):
    """MSE + commitment_weight x commitment from forward()'s outputs; returns (loss, mse)."""
    reconstruction, _, commitment = outputs
    mse = F.mse_loss(reconstruction.float(), images.float())
    return mse + commitment_weight * commitment, mse


def to_model_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) or (B, 3, H, W) uint8 -> float (B, 3, H, W) in [-1, 1]."""
    if images_uint8.shape[-1] == 3:
        images_uint8 = images_uint8.permute(0, 3, 1, 2)
    return images_uint8.float() / PIXEL_SCALE - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Model output (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    pixels = ((images.float() + 1.0) * PIXEL_SCALE).round().clamp(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
