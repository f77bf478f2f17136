"""Step matmuls on the CPU: SKINAUG_STEP_MATMUL, and packed weights kept for later sampling calls."""

import pytest
import torch

from skinaug.errors import UsageError
from skinaug.priors import cache
from skinaug.priors.cache import StepMatmul, onednn_matmuls, step_matmul_choice

CPU, F32 = torch.device("cpu"), torch.float32


def test_the_environment_chooses_addmm(monkeypatch):
    monkeypatch.delenv("SKINAUG_STEP_MATMUL", raising=False)
    assert step_matmul_choice() == "packed"
    monkeypatch.setenv("SKINAUG_STEP_MATMUL", "addmm")
    assert step_matmul_choice() == "addmm" and not onednn_matmuls(CPU, F32)
    monkeypatch.setenv("SKINAUG_STEP_MATMUL", "fast")
    with pytest.raises(UsageError, match="SKINAUG_STEP_MATMUL"):
        step_matmul_choice()


@pytest.mark.skipif(not onednn_matmuls(CPU, F32), reason="no oneDNN matmul in this torch")
def test_a_packed_weight_is_reused_only_while_it_is_equal():
    weight, bias = torch.randn(24, 16), torch.randn(16)
    first = StepMatmul(weight, bias, packed=True)
    assert StepMatmul(weight, bias, packed=True).packed is first.packed  # the next call's step matmul
    x = torch.randn(5, 24)
    weight.mul_(2)  # the same memory, other values (a training step, or freed memory reused)
    again = StepMatmul(weight, bias, packed=True)
    assert again.packed is not first.packed
    assert torch.allclose(again(x), torch.addmm(bias, x, weight), atol=1e-5)
    bias.add_(1)
    assert torch.allclose(StepMatmul(weight, bias, packed=True)(x), torch.addmm(bias, x, weight), atol=1e-5)


def test_the_kept_packings_are_bounded(monkeypatch):
    monkeypatch.setattr(cache, "_PACKED_LIMIT", 3)
    monkeypatch.setattr(cache, "_PACKED", type(cache._PACKED)())
    monkeypatch.setattr(cache, "_pack", lambda weight, bias: object())
    weights = [torch.randn(4, 4) for _ in range(5)]
    for weight in weights:
        cache._packed_if_faithful(weight, None)
    assert len(cache._PACKED) == 3
