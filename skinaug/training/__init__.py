"""Training: `loop` (fit with hooks, exact resume, checkpoints: the toolkit every trainer uses), `losses`, and one
module per trainer: `vqvae`, `prior`, `baseline`. `skinaug.training.fit` & co. stay importable from here."""

from .loop import *  # noqa: F401,F403  (the names of the former module skinaug.training)
