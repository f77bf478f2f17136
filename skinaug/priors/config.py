"""The shape-defining configuration of an autoregressive prior over one level's code map."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import UsageError

ARCHS = ("pixelsnail", "gated-pixelcnn")
# keys of a config.json["priors"][level] entry that are not PriorConfig fields
ENTRY_METADATA = ("classes", "metrics", "init", "base_model")
LEVELS = ("top", "bottom")
OWN_CODE_FIELD = "attention_sees_own_code"  # absent from configs written before it: False there
ATTENTION_KINDS = {"fixed": True, "legacy": False}  # `train prior --attention`: values of attention_sees_own_code

# The reference (256px images) models a 32x32 top and a 64x64 bottom map with 256 channels and 4 blocks of 4.
# Smaller grids get smaller networks: (min side / reference side at least, channels, blocks, res blocks per block).
_REFERENCE_SIDE = {"top": 32, "bottom": 64}
_SIZE_TIERS = ((1.0, 256, 4, 4), (0.5, 192, 3, 3), (0.0, 128, 2, 2))


@dataclass
class PriorConfig:
    arch: str  # "pixelsnail" | "gated-pixelcnn"
    codebook_size: int  # K of the modelled level
    height: int  # code grid
    width: int
    channels: int = 256
    # PixelSNAIL: blocks of gated residual blocks. Gated PixelCNN: blocks of gated stack layers
    # (n_blocks * n_res_blocks layers in all); attention, when on, closes every block in both.
    n_blocks: int = 4
    n_res_blocks: int = 4
    kernel_size: int = 5  # odd; causal windows reach kernel_size // 2 rows up and columns left/right
    attention: bool = True  # causal multi-head self-attention at the end of each block
    n_heads: int = 8
    dropout: float = 0.1  # training only
    num_classes: int = 0  # 0 = unconditional; else a class embedding biases every gated layer
    condition_codebook_size: int = 0  # > 0: conditioned on a code map (the top codes) of this K ...
    condition_height: int = 0  # ... and this shape, through a non-causal stack upsampled to the grid
    condition_width: int = 0
    n_cond_res_blocks: int = 3
    # PixelSNAIL's attention: the key and value at p also read the code at p (its embedding), and p attends to the
    # positions before it only. False: the attention of priors made before this field existed ("legacy"), whose keys
    # carry only the codes before their position, so a row's last codes stay hidden from the start of the next row.
    # A config without the field is legacy (`from_dict`).
    attention_sees_own_code: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.arch not in ARCHS:
            problems.append(f"arch must be one of {', '.join(ARCHS)}, not {self.arch!r}")
        for name in ("codebook_size", "height", "width", "channels", "n_blocks", "n_res_blocks", "n_heads"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.codebook_size < 2:
            problems.append("codebook_size must be at least 2")
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            problems.append(f"kernel_size must be odd and at least 3, not {self.kernel_size}")
        if self.attention and self.channels % self.n_heads:
            problems.append(f"channels ({self.channels}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), not {self.dropout}")
        if self.num_classes < 0 or self.n_cond_res_blocks < 0:
            problems.append("num_classes and n_cond_res_blocks must not be negative")
        if self.condition_codebook_size:
            if self.condition_codebook_size < 1 or self.condition_height < 1 or self.condition_width < 1:
                problems.append("a spatial condition needs condition_codebook_size, condition_height and "
                                "condition_width all at least 1")
        elif self.condition_height or self.condition_width:
            problems.append("condition_height/condition_width are set but condition_codebook_size is 0")
        if problems:
            raise UsageError("invalid prior config: " + "; ".join(problems))

    @property
    def conditioned(self) -> bool:
        """Whether the prior reads a spatial condition (the top codes)."""
        return self.condition_codebook_size > 0

    def to_dict(self) -> dict:
        d = asdict(self)
        # legacy attention is the field's absence: configs written before it round-trip unchanged (and so do the
        # prior fingerprints made from them)
        if not d[OWN_CODE_FIELD]:
            del d[OWN_CODE_FIELD]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PriorConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown prior config keys: {', '.join(unknown)}")
        return cls(**{OWN_CODE_FIELD: False, **d})

    @classmethod
    def from_entry(cls, entry: dict) -> PriorConfig:
        """The config of a level's entry in config.json["priors"] (which also records its classes and metrics)."""
        return cls.from_dict({key: value for key, value in entry.items() if key not in ENTRY_METADATA})

    @classmethod
    def default_for(cls, level: str, codebook_size: int, height: int, width: int, num_classes: int,
                    arch: str = "pixelsnail", top_shape: tuple[int, int] | None = None,
                    top_codebook_size: int | None = None) -> PriorConfig:
        """The prior we train for one level: sized like the reference at 256px, smaller for smaller grids.

        Attention goes in the top PixelSNAIL only (the bottom map is large and mostly local given the top codes;
        the Gated PixelCNN is the attention-free alternative). The bottom prior is conditioned on the top codes.
        """
        if level not in LEVELS:
            raise UsageError(f"level must be 'top' or 'bottom', not {level!r}")
        ratio = min(height, width) / _REFERENCE_SIDE[level]
        channels, n_blocks, n_res_blocks = next(tier[1:] for tier in _SIZE_TIERS if ratio >= tier[0])
        condition = {}
        if level == "bottom":
            if top_shape is None or top_codebook_size is None:
                raise UsageError("the bottom prior is conditioned on the top codes: give top_shape and "
                                 "top_codebook_size")
            condition = {"condition_codebook_size": top_codebook_size, "condition_height": top_shape[0],
                         "condition_width": top_shape[1]}
        return cls(arch=arch, codebook_size=codebook_size, height=height, width=width, channels=channels,
                   n_blocks=n_blocks, n_res_blocks=n_res_blocks, kernel_size=5,
                   attention=level == "top" and arch == "pixelsnail", num_classes=num_classes, **condition)
