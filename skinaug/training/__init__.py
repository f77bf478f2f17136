"""Training: `loop` (fit with hooks, exact resume, checkpoints: the toolkit every trainer uses), `losses`, and one
module per trainer: `vqvae`, `prior`, `baseline`. `skinaug.training.fit` & co. stay importable from here."""

SUBMODULES = ('loop', 'losses', 'vqvae', 'prior', 'baseline')


def __getattr__(name):
    """The names of the former module skinaug.training (now skinaug.training.loop), imported on first use so that importing one
    submodule does not import the others."""
    if name.startswith("__") or name in SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import loop

    try:
        return getattr(loop, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
