"""The EMA vector quantizer: nearest codes, the EMA update by hand, initialisation, restarts, gradients, precision."""

import pytest
import torch

from skinaug.vqvae.quantize import VectorQuantizer, nearest_codes

pytestmark = pytest.mark.usefixtures("single_thread")


def as_feature_map(vectors: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """(B*H*W, D) rows -> (B, D, H, W), in the row order the quantizer flattens them back to."""
    return vectors.view(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()


def squared_distances(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N, K) in float64, by differences (torch.cdist's matmul shortcut loses ~1e-2 at these norms)."""
    return ((vectors[:, None, :].double() - codebook[None, :, :].double()) ** 2).sum(-1)


def brute_force_nearest(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return squared_distances(vectors, codebook).argmin(1)


def ready_quantizer(codebook, *, decay=0.99, eps=1e-5, restart_after=200, cluster_size=None) -> VectorQuantizer:
    """A quantizer past its data-dependent initialisation, with a chosen codebook and EMA state."""
    codebook = torch.as_tensor(codebook, dtype=torch.float32)
    quantizer = VectorQuantizer(codebook.shape[0], codebook.shape[1], decay=decay, eps=eps, restart_after=restart_after)
    cluster_size = torch.ones(codebook.shape[0]) if cluster_size is None else torch.as_tensor(cluster_size, dtype=torch.float32)
    quantizer.codebook.copy_(codebook)
    quantizer.cluster_size.copy_(cluster_size)
    quantizer.code_sum.copy_(codebook * cluster_size[:, None])
    quantizer.initialised.fill_(True)
    return quantizer


@pytest.mark.parametrize("codebook_size, code_dim", [(16, 4), (7, 3), (64, 8)])
def test_nearest_code_is_the_brute_force_argmin(codebook_size, code_dim):
    generator = torch.Generator().manual_seed(codebook_size)
    codebook = torch.randn(codebook_size, code_dim, generator=generator)
    vectors = torch.randn(500, code_dim, generator=generator)
    expected = brute_force_nearest(vectors, codebook)
    assert torch.equal(nearest_codes(vectors, codebook), expected)

    quantizer = ready_quantizer(codebook).eval()
    quantized, code_map, _ = quantizer(as_feature_map(vectors, 5, 10, 10))
    assert code_map.shape == (5, 10, 10)
    assert torch.equal(code_map.reshape(-1), expected)
    # every output vector is its code's codebook row
    assert torch.allclose(quantized.permute(0, 2, 3, 1).reshape(-1, code_dim), codebook[expected], atol=1e-6)
    assert torch.equal(quantizer.lookup(code_map), codebook[code_map].permute(0, 3, 1, 2))


def test_ema_update_matches_a_hand_computation():
    decay, eps = 0.9, 1e-5
    quantizer = ready_quantizer([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]], decay=decay, eps=eps, cluster_size=[2.0, 1.0, 1.0])
    # code_sum starts as codebook x cluster_size: [[0, 0], [1, 1], [5, 5]]
    vectors = torch.tensor([[0.1, 0.0], [0.0, 0.2], [1.2, 1.0], [0.9, 0.8]])  # -> codes 0, 0, 1, 1
    _, code_map, _ = quantizer.train()(as_feature_map(vectors, 1, 2, 2))
    assert code_map.reshape(-1).tolist() == [0, 0, 1, 1]

    # counts [2, 2, 0]; sums [[0.1, 0.2], [2.1, 1.8], [0, 0]]
    cluster_size = torch.tensor([0.9 * 2 + 0.1 * 2, 0.9 * 1 + 0.1 * 2, 0.9 * 1 + 0.1 * 0])  # [2.0, 1.1, 0.9]
    code_sum = torch.tensor([[0.9 * 0 + 0.1 * 0.1, 0.9 * 0 + 0.1 * 0.2],
                             [0.9 * 1 + 0.1 * 2.1, 0.9 * 1 + 0.1 * 1.8],
                             [0.9 * 5 + 0.1 * 0.0, 0.9 * 5 + 0.1 * 0.0]])
    total = 4.0
    smoothed = (cluster_size + eps) / (total + 3 * eps) * total  # Laplace smoothing over the 3 codes
    torch.testing.assert_close(quantizer.cluster_size, cluster_size)
    torch.testing.assert_close(quantizer.code_sum, code_sum)
    torch.testing.assert_close(quantizer.codebook, code_sum / smoothed[:, None])
    # e.g. code 1 moves from (1, 1) towards its members' mean (1.05, 0.9): (1.11, 1.08) / 1.1
    torch.testing.assert_close(quantizer.codebook[1], torch.tensor([1.11, 1.08]) / 1.1, rtol=1e-4, atol=1e-4)
    assert quantizer.steps_unused.tolist() == [0, 0, 1]
    assert quantizer.restarted_total == 0


def test_initialisation_puts_every_code_on_an_encoder_output():
    torch.manual_seed(0)
    # decay 1 freezes the EMA, so after the first step the codebook is exactly the initial seeds
    quantizer = VectorQuantizer(16, 4, decay=1.0)
    assert not bool(quantizer.initialised)
    vectors = torch.randn(2 * 5 * 5, 4) * 3 + 10  # far from the N(0, 1) codebook the module is built with
    quantizer.train()(as_feature_map(vectors, 2, 5, 5))
    assert bool(quantizer.initialised)
    distances = squared_distances(quantizer.codebook, vectors)
    assert distances.min(1).values.max() < 1e-8
    # drawn without replacement: 16 different encoder outputs
    assert distances.argmin(1).unique().numel() == 16
    assert quantizer.cluster_size.tolist() == [1.0] * 16
    assert torch.allclose(quantizer.code_sum, quantizer.codebook, atol=1e-4)


def test_initialisation_with_fewer_outputs_than_codes_adds_small_noise():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(16, 4, decay=1.0)
    vectors = torch.randn(1 * 2 * 2, 4) + 10  # 4 encoder outputs for 16 codes
    quantizer.train()(as_feature_map(vectors, 1, 2, 2))
    nearest = squared_distances(quantizer.codebook, vectors).min(1).values.sqrt()
    # each code is a drawn output plus noise of 0.01 x the outputs' std (about 0.01 here, so well under 0.1)
    assert (nearest < 0.1).all() and (nearest > 0).all()
    assert quantizer.codebook.unique(dim=0).shape[0] == 16  # the noise keeps repeated draws apart


def test_dead_codes_are_restarted_from_recent_outputs():
    codebook = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]]
    quantizer = ready_quantizer(codebook, restart_after=2).train()
    step_1 = torch.tensor([[0.1, 0.0], [0.9, 0.1], [0.0, 0.9], [0.1, 1.1]])  # codes 0, 1, 2, 2
    step_2 = torch.tensor([[0.0, 0.1], [1.1, 0.0], [0.2, 0.0], [0.8, 0.0]])  # codes 0, 1, 0, 1

    quantizer(as_feature_map(step_1, 1, 2, 2))
    assert quantizer.steps_unused.tolist() == [0, 0, 0, 1]
    # unused, so only Laplace smoothing moves it (by total / (total + K eps), about 1e-5 relative)
    torch.testing.assert_close(quantizer.codebook[3], torch.tensor([100.0, 100.0]))
    assert quantizer.restarted_total == 0

    quantizer(as_feature_map(step_2, 1, 2, 2))
    # code 3 went unused for restart_after=2 steps: re-seeded on one of this step's outputs, its state reset
    assert quantizer.restarted_total == 1
    assert any(torch.equal(quantizer.codebook[3], row) for row in step_2)
    assert torch.equal(quantizer.code_sum[3], quantizer.codebook[3])
    assert quantizer.cluster_size[3].item() == 1.0
    # code 2 has been unused for one step only: kept, and counting
    assert quantizer.steps_unused.tolist() == [0, 0, 1, 0]
    assert (quantizer.codebook[:3] - torch.tensor(codebook[:3])).abs().max() < 0.2

    quantizer(as_feature_map(step_2, 1, 2, 2))  # code 2 now reaches 2 unused steps as well
    assert quantizer.restarted_total == 2
    assert any(torch.equal(quantizer.codebook[2], row) for row in step_2)
    assert quantizer.steps_unused[2].item() == 0


def test_straight_through_gradient_is_the_identity_and_commitment_is_the_mse():
    generator = torch.Generator().manual_seed(3)
    codebook = torch.randn(8, 4, generator=generator)
    quantizer = ready_quantizer(codebook).eval()
    z = torch.randn(2, 4, 3, 3, generator=generator, requires_grad=True)
    quantized, code_map, commitment = quantizer(z)
    chosen = codebook[code_map].permute(0, 3, 1, 2)

    upstream = torch.randn(quantized.shape, generator=generator)
    (grad_z,) = torch.autograd.grad(quantized, z, upstream, retain_graph=True)
    assert torch.equal(grad_z, upstream)  # d(output)/dz = I: the encoder sees the decoder's gradient unchanged
    assert torch.allclose(quantized, chosen, atol=1e-6)  # while the forward value is the code vector

    expected = ((z.detach() - chosen) ** 2).mean()
    torch.testing.assert_close(commitment, expected)
    (grad_commitment,) = torch.autograd.grad(commitment, z)
    torch.testing.assert_close(grad_commitment, 2 * (z.detach() - chosen) / z.numel())  # only z is pulled


def test_eval_mode_leaves_every_buffer_untouched():
    torch.manual_seed(0)
    fresh = VectorQuantizer(16, 4).eval()
    before = {name: buffer.clone() for name, buffer in fresh.named_buffers()}
    fresh(torch.randn(2, 4, 4, 4))
    assert not bool(fresh.initialised)  # no data-dependent initialisation outside training
    for name, buffer in fresh.named_buffers():
        assert torch.equal(buffer, before[name]), name

    trained = ready_quantizer(torch.randn(16, 4), restart_after=1).eval()
    before = {name: buffer.clone() for name, buffer in trained.named_buffers()}
    for _ in range(3):
        trained(torch.randn(2, 4, 4, 4))
    for name, buffer in trained.named_buffers():
        assert torch.equal(buffer, before[name]), name
    assert trained.restarted_total == 0


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("training", [False, True])
def test_codebook_maths_stays_fp32_under_autocast(input_dtype, training, device):
    # Codes 4 units from the origin and 0.1 apart: fp32 distances pick the right code, bf16 ones mostly do not
    # (bf16 keeps 8 bits, so |v|^2 ~ 64 is rounded by 0.25, more than the gaps between the distances).
    generator = torch.Generator().manual_seed(0)
    codebook = 4 + 0.1 * torch.randn(16, 4, generator=generator)
    vectors = 4 + 0.1 * torch.randn(256, 4, generator=generator)
    expected = brute_force_nearest(vectors.to(input_dtype).float(), codebook)
    with torch.autocast(device, dtype=torch.bfloat16):
        bf16_codes = nearest_codes(vectors.to(device), codebook.to(device))  # what the quantizer would do unguarded
    assert (bf16_codes.cpu() != expected).float().mean() > 0.5

    quantizer = ready_quantizer(codebook, restart_after=1000).train(training).to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        quantized, code_map, commitment = quantizer(as_feature_map(vectors.to(device, input_dtype), 4, 8, 8))
    assert torch.equal(code_map.reshape(-1).cpu(), expected)
    assert quantized.dtype == input_dtype and commitment.dtype == torch.float32
    for name, buffer in quantizer.named_buffers():
        if buffer.is_floating_point():
            assert buffer.dtype == torch.float32, name
    if training:  # the EMA ran in fp32 too: codebook = code_sum / smoothed counts, to fp32 precision
        total = quantizer.cluster_size.sum()
        smoothed = (quantizer.cluster_size + quantizer.eps) / (total + 16 * quantizer.eps) * total
        torch.testing.assert_close(quantizer.codebook, quantizer.code_sum / smoothed[:, None])
