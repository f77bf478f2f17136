"""skinaug: expand skin-lesion image datasets with a VQ-VAE-2 and autoregressive priors over its codes."""

__version__ = "0.1.0"
