"""Training: `loop` (fit with hooks, exact resume, checkpoints: the toolkit every trainer uses), `losses`, and one
module per trainer: `vqvae`, `prior`, `baseline`. `skinaug.training.fit` & co. stay importable from here."""

from ..moved import former_module

SUBMODULES = ('loop', 'losses', 'vqvae', 'prior', 'baseline')
__getattr__ = former_module(__name__, "loop", SUBMODULES)  # skinaug.training's names, now in skinaug.training.loop
