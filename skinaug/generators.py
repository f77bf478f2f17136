"""`synthesize` and `augment` for any generator directory: a VQ-VAE-2 with priors or a baseline generator
(skinaug.baselines), which decodes noise and has no codes.

skinaug.generate's functions take either kind (`generate.open_sampler` is the one place that tells them apart, and
`generate.write_dataset` the one loop that writes both): these are the same functions, under the names that
earlier releases documented here."""

from __future__ import annotations

from .generate import augment, open_sampler, synthesize

__all__ = ["synthesize", "augment", "open_sampler"]
