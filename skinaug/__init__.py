"""skinaug: expand skin-lesion image datasets with a VQ-VAE-2 and autoregressive priors over its codes."""

from .moved import install as _install_moved
from .version import __version__  # noqa: F401  (skinaug.__version__)

_install_moved()  # the old names of the modules that moved (skinaug.generate, skinaug.io, ...): skinaug.moved

_RECIPE_NAMES = ("ExposureSampler", "PretrainSchedule", "sample_weights", "weighted_loss", "WithIndex", "is_real")


def __getattr__(name):
    """`skinaug.load_model`, `skinaug.Model`, `skinaug.GeneratedDataset`, `skinaug.ConcatDataset` (skinaug.api) and
    the training recipes (skinaug.recipes: `skinaug.ExposureSampler` & co.), imported on first use so that
    `import skinaug` and `skinaug --help` stay light."""
    if name in ("load_model", "Model", "GeneratedDataset", "ConcatDataset"):
        from . import api

        return getattr(api, name)
    if name in _RECIPE_NAMES:  # skinaug.recipes: train with generated images and keep the real ones' exposure
        from . import recipes

        return getattr(recipes, name)
    raise AttributeError(f"module 'skinaug' has no attribute {name!r}")
