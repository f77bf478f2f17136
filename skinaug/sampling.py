"""Sampling maths the torch samplers (`skinaug.priors`) and the numpy ones (`skinaug.onnx.runtime`) share. Torch-free.

- `sampling_steps`: the order in which the cached samplers visit the code grid (raster, or a wavefront), one
  definition for both.
- `draw_codes`: the inverse-CDF draw in numpy. Its torch twin is `skinaug.priors.sampling.draw_codes`: the two must
  stay the same algorithm (tests/test_sampling.py holds them to the same codes on the same logits and uniforms).
"""

from __future__ import annotations

import numpy as np


def sampling_steps(height: int, width: int, skew: int | None) -> list[list[int]]:
    """The raster positions (i * width + j) each sampling step computes, step by step.

    skew None: raster order, one position per step (attention needs every earlier position). skew s: row i runs
    s columns behind row i - 1 and every row whose turn it is advances in the same step, which is exact when a
    position's dependencies on row i - m reach at most m * (s - 1) columns to its right.
    """
    if skew is None:
        return [[p] for p in range(height * width)]
    return [[i * width + t - skew * i for i in range(height) if 0 <= t - skew * i < width]
            for t in range(width + skew * (height - 1))]


# Twin of skinaug.priors.sampling.draw_codes (torch): change both together.
def draw_codes(logits: np.ndarray, uniforms: np.ndarray, temperature: float = 1.0, top_k: int | None = None) -> np.ndarray:
    """logits (B, K), uniforms (B,) in [0, 1) -> codes (B,) int64, as the torch `draw_codes` draws them.

    softmax(logits / temperature) over the top_k largest logits, then the first code whose cumulative probability
    exceeds the uniform; float32 throughout, like the torch twin."""
    logits = logits.astype(np.float32) / np.float32(temperature)
    size = logits.shape[-1]
    if top_k is not None and top_k < size:
        kth_largest = np.partition(logits, size - top_k, axis=-1)[:, size - top_k : size - top_k + 1]
        logits = np.where(logits < kth_largest, np.float32(-np.inf), logits)
    probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
    cdf = np.cumsum(probabilities / probabilities.sum(axis=-1, keepdims=True), axis=-1, dtype=np.float32)
    codes = (cdf <= np.asarray(uniforms, np.float32).reshape(-1, 1)).sum(axis=-1)  # searchsorted(right=True)
    # rounding can leave cdf[-1] below the uniform: fall to the last code that may be drawn, as the torch twin does
    last_possible = size - 1 - np.argmax(probabilities[:, ::-1] > 0, axis=-1)
    return np.minimum(codes, last_possible).astype(np.int64)
