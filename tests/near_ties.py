"""Comparisons between two computations of the same floats that hold on every CPU.

torch and onnxruntime, a cached and a full forward, or one CPU's SIMD and another's round the last bits
differently. A choice between nearly equal candidates (the nearest of two codes, a draw whose uniform falls by a
CDF boundary, the larger of two logits) may then fall either way, and how often that happens depends on the model
and the machine. So tests assert choices only where the candidates are farther apart than the two computations
can disagree, and never a rate of agreement.
"""

import numpy as np
import torch


def nearest_code_margins(distances) -> np.ndarray:
    """(N, K) squared distances to the codes -> (N,) how much nearer the nearest code is than the second nearest."""
    ordered = np.sort(np.asarray(distances, np.float64), axis=1)
    return ordered[:, 1] - ordered[:, 0]


def close_draws(logits, uniforms, *, logit_tolerance: float, temperature: float = 1.0, top_k=None) -> np.ndarray:
    """(B, H*W) True where logits off by up to `logit_tolerance` could draw another code from the same uniform.

    logits (B, K, H, W) as the priors return them; uniforms (B, H*W) in raster order. A draw is close when its
    uniform lies within the possible shift of a CDF boundary, or (with top_k) when the k-th and the next largest
    logits nearly tie, so that the two computations may keep different codes.
    """
    logits = torch.as_tensor(np.asarray(logits)).double()
    batch, size = logits.shape[:2]
    rows = logits.permute(0, 2, 3, 1).reshape(-1, size) / temperature
    tolerance = logit_tolerance / temperature
    close = torch.zeros(rows.shape[0], dtype=torch.bool)
    if top_k is not None and top_k < size:
        ordered = rows.sort(dim=1, descending=True).values
        close |= ordered[:, top_k - 1] - ordered[:, top_k] <= 2 * tolerance
        rows = rows.masked_fill(rows < ordered[:, top_k - 1 : top_k], float("-inf"))
    cdf = rows.softmax(dim=1).cumsum(dim=1)
    # shifting logits by up to d moves a cumulative probability by at most d/2 (d/2T after the temperature);
    # 1e-6 covers float32 rounding of the softmax and the sum
    shift = tolerance / 2 + 1e-6
    uniforms = torch.as_tensor(np.asarray(uniforms)).double().reshape(-1, 1)
    close |= ((cdf - uniforms).abs() <= shift).any(dim=1)
    return close.reshape(batch, -1).numpy()


def assert_same_draws(actual, expected, close) -> None:
    """Two samplers given the same uniforms and logits within tolerance draw the same codes, except at close draws.

    The priors are autoregressive in raster order: after a sample's first differing code the two are conditioned on
    different codes, so only that first difference is judged (it must be a close draw) and the rest of the sample is not.
    """
    actual = np.asarray(actual).reshape(close.shape)
    expected = np.asarray(expected).reshape(close.shape)
    for index, (mine, theirs, near) in enumerate(zip(actual, expected, close)):
        differing = np.flatnonzero(mine != theirs)
        if differing.size:
            first = differing[0]
            assert near[first], f"sample {index}: position {first} drew {mine[first]} instead of {theirs[first]}, far from a tie"


def same_context(actual, expected) -> np.ndarray:
    """(B, N) True at the positions whose logits two autoregressive samplers computed from the same earlier codes:
    up to and including each sample's first differing code (raster order)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    differ = actual.reshape(len(actual), -1) != expected.reshape(len(expected), -1)
    first = np.where(differ.any(axis=1), differ.argmax(axis=1), differ.shape[1])
    return np.arange(differ.shape[1])[None, :] <= first[:, None]
