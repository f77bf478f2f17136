"""The VQ-VAE-2: `model` (encoder, decoder, `VQVAE2`, `VQVAEConfig`, pixel conversions, the loss) and `quantize`
(the EMA vector quantizer). `skinaug.vqvae.VQVAE2` & co. stay importable from here."""

from ..moved import former_module

SUBMODULES = ('model', 'quantize')
__getattr__ = former_module(__name__, "model", SUBMODULES)  # skinaug.vqvae's names, now in skinaug.vqvae.model
