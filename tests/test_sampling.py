"""The torch-free sampling maths (skinaug.sampling) and its torch twins: one schedule for both samplers, and a numpy
draw that gives the torch draw's codes (the way diffusers' check_copies holds copied code to its original)."""

import inspect

import numpy as np
import pytest
import torch

from skinaug import sampling
from skinaug.priors import sampling as torch_sampling
from skinaug.priors.cache import GridLayout

LOGITS = np.array([[2.0, 0.5, -1.0, 1.0, 0.0],
                   [0.0, 0.0, 0.0, 0.0, 0.0],
                   [-3.0, 4.0, 1.0, 1.5, -0.5]], np.float32)


def away_from_cdf_steps(logits: np.ndarray, temperature: float, top_k: int | None, count: int) -> np.ndarray:
    """(B, count) uniforms, each at least 1e-3 from every step of its row's CDF (computed in float64), so that float32
    rounding in either library cannot move a draw: the twins must then agree exactly."""
    tempered = logits.astype(np.float64) / temperature
    if top_k is not None:
        kth = np.sort(tempered, axis=-1)[:, -top_k][:, None]
        tempered = np.where(tempered < kth, -np.inf, tempered)
    probabilities = np.exp(tempered - tempered.max(axis=-1, keepdims=True))
    cdf = np.cumsum(probabilities / probabilities.sum(axis=-1, keepdims=True), axis=-1)
    grid = (np.arange(count) + 0.5) / count
    keep = [grid[np.abs(grid[:, None] - row[None, :]).min(axis=1) > 1e-3] for row in cdf]
    width = min(map(len, keep))
    assert width > count // 2  # the guard leaves most of the grid
    return np.stack([row[:width] for row in keep]).astype(np.float32)


@pytest.mark.parametrize("temperature", (1.0, 0.5, 2.0))
@pytest.mark.parametrize("top_k", (None, 1, 3, 5))
def test_the_numpy_draw_gives_the_torch_draws_codes(temperature, top_k):
    uniforms = away_from_cdf_steps(LOGITS, temperature, top_k, count=50)
    batch, draws = uniforms.shape
    logits = np.repeat(LOGITS, draws, axis=0)  # every uniform against its row's logits
    flat = uniforms.reshape(-1)
    expected = torch_sampling.draw_codes(torch.from_numpy(logits), torch.from_numpy(flat), temperature, top_k)
    drawn = sampling.draw_codes(logits, flat, temperature, top_k)
    assert drawn.dtype == np.int64
    assert drawn.tolist() == expected.tolist()
    # equal logits: any top-k keeps all five, and the draw is the uniform's fifth
    assert drawn.reshape(batch, draws)[1].tolist() == np.floor(uniforms[1] * 5).astype(int).tolist()
    if top_k == 1:
        assert set(drawn.reshape(batch, draws)[[0, 2]].flatten().tolist()) == {0, 1}  # greedy: each row's largest

def test_each_draw_twin_names_the_other():
    assert "skinaug.priors.sampling.draw_codes" in inspect.getsource(sampling).split("def draw_codes")[0].splitlines()[-1]
    source = inspect.getsource(torch_sampling)
    assert "skinaug.sampling.draw_codes" in source.split("def draw_codes")[0].splitlines()[-1]


@pytest.mark.parametrize("height, width, skew", [(3, 4, None), (3, 4, 2), (4, 3, 3), (1, 5, 2), (5, 1, 3)])
def test_the_steps_visit_every_position_once_after_what_it_reads(height, width, skew):
    steps = sampling.sampling_steps(height, width, skew)
    assert sorted(p for step in steps for p in step) == list(range(height * width))
    step_of = {p: t for t, step in enumerate(steps) for p in step}
    if skew is None:
        assert steps == [[p] for p in range(height * width)]
    else:
        assert len(steps) == width + skew * (height - 1)
        assert all(step_of[i * width + j] == j + skew * i for i in range(height) for j in range(width))


def test_the_torch_plan_follows_the_shared_steps():
    layout = GridLayout(height=3, width=4, kernel_size=5)
    for skew in (None, 2):
        raster = layout.plan(skew)[:, :, 1].tolist()
        steps = sampling.sampling_steps(3, 4, skew)
        assert [[p for p in row if p < 12] for row in raster] == steps
