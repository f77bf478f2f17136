"""The VQ-VAE-2: `model` (encoder, decoder, `VQVAE2`, `VQVAEConfig`, pixel conversions, the loss) and `quantize`
(the EMA vector quantizer). `skinaug.vqvae.VQVAE2` & co. stay importable from here."""

SUBMODULES = ('model', 'quantize')


def __getattr__(name):
    """The names of the former module skinaug.vqvae (now skinaug.vqvae.model), imported on first use so that importing one
    submodule does not import the others."""
    if name.startswith("__") or name in SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import model

    try:
        return getattr(model, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
