"""ModelSpec: the shapes and names every stage of a model agrees on, read once from its config.json.

    spec = ModelDir(path).spec()
    spec.grid["bottom"]      # (16, 16): the bottom code map of a 64px model
    spec.level_names         # ("bottom", "top"): the levels in config.json's order
    spec.codebook_size       # K, the same at every level

Torch-free: the onnx backend, the code-file writer and `--help` read it without PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# the VQ-VAE-2 downsamples by `downsample` (4 unless config.json's vqvae section says 8) to the bottom codes and by
# twice that to the top codes (vqvae.py builds exactly this)
DOWNSAMPLES = (4, 8)
TOP_STRIDE_FACTOR = 2
# the top-level config.json fields that make a ModelSpec (grid and class_names aside)
SHAPE_FIELDS = ("image_size", "levels", "codebook_size", "code_dim")


def code_grid(image_size: int, levels: int, downsample: int = 4) -> dict[str, tuple[int, int]]:
    """The code map's (height, width) per level of a VQ-VAE-2 with these images, levels and bottom stride: bottom
    first."""
    strides = {"bottom": downsample, "top": downsample * TOP_STRIDE_FACTOR}
    names = ("bottom",) if levels == 1 else ("bottom", "top")
    return {name: (image_size // strides[name], image_size // strides[name]) for name in names}


@dataclass(frozen=True)
class ModelSpec:
    """What a model directory's code maps look like and what its labels mean.

    grid keeps config.json's level order; class_names are the label indices' names (empty for an unlabelled
    model); fingerprint names the VQ-VAE whose codes these are."""

    image_size: int
    levels: int
    codebook_size: int  # K
    code_dim: int  # D
    grid: dict[str, tuple[int, int]] = field(hash=False)
    class_names: tuple[str, ...] = ()
    fingerprint: str = ""

    @classmethod
    def from_config(cls, config: dict) -> ModelSpec:
        """The spec of a config.json already checked by `modeldir.validate_config`."""
        return cls(**{name: config[name] for name in SHAPE_FIELDS},
                   grid={level: (int(shape[0]), int(shape[1])) for level, shape in config["grid"].items()},
                   class_names=tuple(config.get("class_names", [])), fingerprint=config["fingerprint"])

    @classmethod
    def of(cls, value: ModelSpec | dict) -> ModelSpec:
        """A spec, or the spec of a config.json dict: for functions that accept either."""
        return value if isinstance(value, ModelSpec) else cls.from_config(value)

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(self.grid)

    def to_config(self) -> dict:
        """The config.json fields this spec is read from."""
        return {**{name: getattr(self, name) for name in SHAPE_FIELDS},
                "grid": {level: list(shape) for level, shape in self.grid.items()},
                "class_names": list(self.class_names), "fingerprint": self.fingerprint}
