"""The VQ-VAE-2 network: code-map shapes per image size and level, decoding codes, pixel scaling."""

from pathlib import Path

import pytest
import torch

from skinaug.vqvae.model import VQVAE2, VQVAEConfig, to_model_input, to_uint8, vqvae_loss

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_WIDTHS = dict(channels=16, res_channels=8, n_res_blocks=1)


@pytest.mark.parametrize("codebook_size, code_dim", [(16, 4), (32, 8)])
@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("image_size", [32, 48, 64])
def test_code_maps_have_the_grid_shapes_and_decode_back_to_images(image_size, levels, codebook_size, code_dim):
    torch.manual_seed(0)
    config = VQVAEConfig(image_size=image_size, levels=levels, codebook_size=codebook_size, code_dim=code_dim, **TINY_WIDTHS)
    model = VQVAE2(config)
    images = torch.rand(2, 3, image_size, image_size) * 2 - 1

    model.train()
    reconstruction, codes, commitment = model(images)  # one training step's forward initialises the codebooks
    assert reconstruction.shape == images.shape
    assert commitment.ndim == 0 and torch.isfinite(commitment)

    model.eval()
    quantized, codes, _ = model.encode(images)
    expected = {"bottom": (image_size // 4, image_size // 4)}
    if levels == 2:
        expected["top"] = (image_size // 8, image_size // 8)
    assert {level: tuple(c.shape[1:]) for level, c in codes.items()} == expected
    assert set(model.quantizers) == set(expected)
    assert {level: tuple(q.shape) for level, q in quantized.items()} == {
        level: (2, code_dim, *shape) for level, shape in expected.items()}
    for values in codes.values():
        assert values.dtype == torch.long and values.shape[0] == 2
        assert 0 <= int(values.min()) and int(values.max()) < codebook_size

    with torch.no_grad():
        from_codes = model.decode_codes(codes)
        from_vectors = model.decode(quantized)
    assert from_codes.shape == (2, 3, image_size, image_size)
    # the code maps carry everything the decoder uses: decoding them equals decoding the quantized vectors
    torch.testing.assert_close(from_codes, from_vectors, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("levels, expected", [
    (1, {"bottom": (32, 32)}),
    (2, {"bottom": (32, 32), "top": (16, 16)}),
])
def test_grid_shapes_are_a_quarter_and_an_eighth_of_the_image(levels, expected):
    assert VQVAEConfig(image_size=128, levels=levels).grid_shapes() == expected
    assert VQVAEConfig().grid_shapes() == {"bottom": (64, 64), "top": (32, 32)}  # 256px default (paper)
    assert VQVAEConfig(image_size=48, levels=2).grid_shapes() == {"bottom": (12, 12), "top": (6, 6)}


def test_config_round_trips_through_a_dict_and_refuses_unknown_keys_naming_them():
    from skinaug.errors import UsageError

    config = VQVAEConfig(image_size=64, levels=1, codebook_size=32, code_dim=4, restart_after=7)
    values = config.to_dict()
    assert VQVAEConfig.from_dict(values) == config
    with pytest.raises(UsageError, match="unknown VQ-VAE config keys: added_in_a_later_version, zz$"):
        VQVAEConfig.from_dict({**values, "zz": 0, "added_in_a_later_version": 1})


@pytest.mark.parametrize("field, value, message", [
    ("image_size", 36, "image_size must be a multiple of 8"),
    ("image_size", 0, "image_size must be a multiple of 8"),
    ("levels", 3, "levels must be 1 or 2, not 3"),
    ("downsample", 2, "downsample must be one of 4, 8, not 2"),
    ("codebook_size", 1, "codebook_size must be an integer from 2 to 65535, not 1"),
    ("code_dim", 0, "code_dim must be an integer of at least 1, not 0"),
    ("channels", 8.5, "channels must be an integer of at least 2, not 8.5"),
    ("n_res_blocks", -1, "n_res_blocks must be an integer of at least 0, not -1"),
    ("restart_after", True, "restart_after must be an integer of at least 1, not True"),
    ("commitment_weight", float("nan"), "commitment_weight must be a finite number of at least 0, not nan"),
    ("ema_decay", 1.0, "ema_decay must be in [0, 1), not 1.0"),
])
def test_a_bad_config_value_is_refused_naming_the_field(field, value, message):
    from skinaug.errors import UsageError

    with pytest.raises(UsageError, match="^invalid VQ-VAE config: ") as raised:
        VQVAEConfig(**{field: value})
    assert message in str(raised.value)
    with pytest.raises(UsageError, match="invalid VQ-VAE config"):
        VQVAEConfig.from_dict({**VQVAEConfig().to_dict(), field: value})


def test_the_coarsest_grid_sets_the_image_size_multiple():
    from skinaug.errors import UsageError

    assert VQVAEConfig(image_size=36, levels=1).grid_shapes() == {"bottom": (9, 9)}  # one level: a multiple of 4
    assert VQVAEConfig(image_size=48, downsample=8, levels=1).grid_shapes() == {"bottom": (6, 6)}
    with pytest.raises(UsageError, match="image_size must be a multiple of 16"):
        VQVAEConfig(image_size=40, downsample=8)


def test_the_shipped_config_loads_with_its_fingerprint():
    """config.json of ham10000-64 predates `downsample` (no key): it loads as 4 and hashes as it always did."""
    import json

    from skinaug.storage import modeldir

    shipped = Path(modeldir.__file__).parents[1] / "models" / "ham10000-64"  # skinaug/models/
    config = json.loads((shipped / "config.json").read_text())
    assert "downsample" not in config["vqvae"]
    loaded = VQVAEConfig.from_dict(modeldir.vqvae_config(modeldir.validate_config(config, shipped / "config.json")))
    assert (loaded.image_size, loaded.levels, loaded.downsample) == (64, 2, 4)
    assert loaded.to_dict() == modeldir.vqvae_config(config)  # what the fingerprint hashes, unchanged
    if (shipped / "vqvae.safetensors").is_file():
        state = modeldir.load_weights(shipped / modeldir.VQVAE_WEIGHTS)
        assert modeldir.fingerprint(loaded.to_dict(), state) == config["fingerprint"]


def test_uint8_pixels_round_trip_exactly_in_both_layouts():
    shuffled = torch.randperm(256, generator=torch.Generator().manual_seed(0)).to(torch.uint8)  # every value once
    channels_last = shuffled.view(1, 16, 16, 1).repeat(2, 1, 1, 3)
    channels_last[1] = 255 - channels_last[1]
    model_input = to_model_input(channels_last)
    assert model_input.shape == (2, 3, 16, 16) and model_input.dtype == torch.float32
    assert model_input.min().item() == -1.0 and model_input.max().item() == 1.0
    assert torch.equal(to_uint8(model_input), channels_last)

    channels_first = channels_last.permute(0, 3, 1, 2).contiguous()
    assert torch.equal(to_model_input(channels_first), model_input)
    assert torch.equal(to_uint8(to_model_input(channels_first)), channels_last)


def test_to_uint8_rounds_and_clamps_out_of_range_outputs():
    values = torch.tensor([-3.0, -1.0, 0.0, 1.0, 5.0, (10 + 0.4) / 127.5 - 1, (10 + 0.6) / 127.5 - 1])
    pixels = to_uint8(values.view(1, 1, 1, 7).expand(1, 3, 1, 7))
    assert pixels[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255, 10, 11]  # 0.0 is 127.5, rounded half to even


def test_loss_is_mse_plus_weighted_commitment():
    images = torch.zeros(1, 3, 4, 4)
    reconstruction = torch.full((1, 3, 4, 4), 0.5)
    loss, mse = vqvae_loss((reconstruction, {}, torch.tensor(2.0)), images, commitment_weight=0.25)
    assert mse.item() == 0.25 and loss.item() == 0.25 + 0.25 * 2.0


@pytest.mark.parametrize("levels", [1, 2])
def test_downsample_8_halves_both_grids_and_decodes_to_the_full_image(levels):
    torch.manual_seed(0)
    config = VQVAEConfig(image_size=64, levels=levels, codebook_size=16, code_dim=4, downsample=8, **TINY_WIDTHS)
    expected = {"bottom": (8, 8), "top": (4, 4)} if levels == 2 else {"bottom": (8, 8)}
    assert config.grid_shapes() == expected
    assert VQVAEConfig(image_size=128, downsample=8).grid_shapes() == {"bottom": (16, 16), "top": (8, 8)}  # = 64px/4
    model = VQVAE2(config)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    model.train()
    reconstruction, codes, _ = model(images)
    assert reconstruction.shape == images.shape
    assert {level: tuple(c.shape[1:]) for level, c in codes.items()} == expected
    model.eval()
    with torch.no_grad():
        assert model.decode_codes(model.encode(images)[1]).shape == (2, 3, 64, 64)
    # the extra halving is one more strided convolution on each side, at half width
    strided = [m for m in model.encode_bottom.net if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert [(m.in_channels, m.out_channels) for m in strided] == [(3, 8), (8, 8), (8, 16)]
    upsampling = [m for m in model.decoder.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in upsampling] == [(16, 8), (8, 8), (8, 3)]


def test_downsample_4_builds_the_networks_models_were_saved_with():
    """The shipped model's weights were saved before `downsample` existed: the default must name and shape every
    tensor as then, and leave the config dict (which the fingerprint hashes) as it was."""
    from skinaug.storage import modeldir

    shipped = Path(modeldir.__file__).parents[1] / "models" / "ham10000-64"  # skinaug/models/
    if not (shipped / "vqvae.safetensors").is_file():
        pytest.skip("the shipped model is not installed")
    config = modeldir.ModelDir(shipped).config()
    saved = modeldir.load_weights(shipped / modeldir.VQVAE_WEIGHTS)
    built = VQVAE2(VQVAEConfig.from_dict(modeldir.vqvae_config(config))).state_dict()
    assert {name: tuple(t.shape) for name, t in built.items()} == {name: tuple(t.shape) for name, t in saved.items()}
    assert "downsample" not in VQVAEConfig(image_size=64).to_dict()
    assert VQVAEConfig(downsample=8).to_dict()["downsample"] == 8
    assert VQVAEConfig.from_dict(VQVAEConfig(downsample=8).to_dict()).downsample == 8
