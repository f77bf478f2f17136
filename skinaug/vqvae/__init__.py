"""The VQ-VAE-2: `model` (encoder, decoder, `VQVAE2`, `VQVAEConfig`, pixel conversions, the loss) and `quantize`
(the EMA vector quantizer). `skinaug.vqvae.VQVAE2` & co. stay importable from here."""

from .model import *  # noqa: F401,F403  (the names of the former module skinaug.vqvae)
