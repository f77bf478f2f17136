"""The eager CPU sampler's faster paths (prepacked oneDNN matmuls, above taps once per row, the valid key/value
prefix) compute what the plain step computes."""

import pytest
import torch

from skinaug.priors import PriorConfig, build_prior, sample_reference
from skinaug.priors import fast
from skinaug.priors.cache import StepMatmul, onednn_matmuls

from near_ties import assert_same_draws, close_draws, same_context

pytestmark = pytest.mark.usefixtures("single_thread")


def random_prior(arch, attention, kernel_size, own_code=True):
    config = PriorConfig(arch=arch, codebook_size=11, height=5, width=7, channels=16, n_blocks=2, n_res_blocks=2,
                         kernel_size=kernel_size, attention=attention, n_heads=2, num_classes=3,
                         condition_codebook_size=6, condition_height=3, condition_width=4,
                         attention_sees_own_code=own_code)
    torch.manual_seed(0)
    model = build_prior(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, parameter[0].numel() ** -0.5 if parameter.dim() >= 2 else 0.2)
    return model.eval()


def run_sampler(model, labels, condition, uniforms, eager):
    with torch.no_grad():
        sampler = fast._CachedSampler(model, len(labels), labels, condition, uniforms, (None, None), 1.0, None,
                                      torch.float32, True, compile=False, eager=eager)
        sampler.run(cuda_graph=False)
    positions = model.config.height * model.config.width
    return sampler, sampler.codes[:, :positions], sampler.logits[:, :positions]


@pytest.mark.parametrize("arch, attention, kernel_size, own_code",
                         [("pixelsnail", True, 5, True), ("pixelsnail", True, 5, False), ("pixelsnail", False, 3, True),
                          ("gated-pixelcnn", True, 3, True)])
def test_the_eager_paths_give_the_plain_steps_codes_and_logits(arch, attention, kernel_size, own_code):
    model = random_prior(arch, attention, kernel_size, own_code)
    generator = torch.Generator().manual_seed(2)
    labels = torch.tensor([0, 2, 1, 1])
    condition = torch.randint(6, (4, 3, 4), generator=generator)
    uniforms = torch.rand(4, 35, generator=generator)
    fast_sampler, codes, logits = run_sampler(model, labels, condition, uniforms, eager=True)
    plain, plain_codes, plain_logits = run_sampler(model, labels, condition, uniforms, eager=False)
    assert not plain.spec.packed and not plain.spec.rows_above and not plain.spec.conv_steps
    assert fast_sampler.spec.packed == onednn_matmuls(torch.device("cpu"), torch.float32)
    # raster order (attention) sums the above taps per row; the wavefront cannot (rows overlap in time)
    assert fast_sampler.spec.rows_above == attention
    assert all(conv.split for conv in fast_sampler.spec.conv_steps) and bool(fast_sampler.spec.conv_steps) == attention
    with torch.no_grad():
        forward = model(codes.view(4, 5, 7), labels, condition)
    teacher_forced = forward.flatten(2).transpose(1, 2)
    assert (logits - teacher_forced).abs().max() < 1e-4
    # the same codes, except where a draw lies so near a tie that another kernel's rounding may flip it
    close = close_draws(forward, uniforms, logit_tolerance=2e-4)
    assert_same_draws(codes, plain_codes, close)
    same = torch.from_numpy(same_context(codes, plain_codes))
    assert (logits - plain_logits)[same].abs().max() < 1e-4
    assert_same_draws(codes, sample_reference(model, labels, condition, uniforms=uniforms).view(4, -1), close)


def test_a_prepacked_matmul_is_the_plain_one():
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(40, 24, generator=generator), torch.randn(24, generator=generator)
    x, rows = torch.randn(9, 40, generator=generator), torch.randn(9, 24, generator=generator)
    for packed in (False, True):
        for b in (None, bias):
            for add in (None, rows):
                expected = x @ weight + (0 if b is None else b) + (0 if add is None else add)
                assert (StepMatmul(weight, b, packed)(x, add) - expected).abs().max() < 1e-5
    if onednn_matmuls(torch.device("cpu"), torch.float32):
        assert StepMatmul(weight, bias, True).packed is not None
