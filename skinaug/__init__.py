"""skinaug: expand skin-lesion image datasets with a VQ-VAE-2 and autoregressive priors over its codes."""

from .version import __version__  # noqa: F401  (skinaug.__version__)


def __getattr__(name):
    """`skinaug.load_model`, `skinaug.Model`, `skinaug.GeneratedDataset` and `skinaug.ConcatDataset` (skinaug.api), imported on first use so
    that `import skinaug` and `skinaug --help` stay light."""
    if name in ("load_model", "Model", "GeneratedDataset", "ConcatDataset"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'skinaug' has no attribute {name!r}")
