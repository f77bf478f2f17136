"""`python -m skinaug ...` (and `torchrun ... -m skinaug ...`)."""

from .cli import run

run()
