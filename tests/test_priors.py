"""The priors: causal in raster order, conditioned by class and top codes, trainable, and configured from one place."""

import math

import pytest
import torch
import torch.nn.functional as F

from skinaug.errors import UsageError
from skinaug.priors import PriorConfig, build_prior

ARCHS = ("pixelsnail", "gated-pixelcnn")


pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest: tiny models, busy shared cores


def tiny_prior(arch="pixelsnail", *, height=4, width=5, attention=True, classes=0, conditioned=False, **overrides):
    condition = {"condition_codebook_size": 6, "condition_height": 2, "condition_width": 3} if conditioned else {}
    config = PriorConfig(arch=arch, codebook_size=9, height=height, width=width, channels=16, n_blocks=2,
                         n_res_blocks=2, kernel_size=3, attention=attention, n_heads=2, dropout=0.0,
                         num_classes=classes, **{**condition, **overrides})
    model = build_prior(config).eval()
    with torch.no_grad():  # larger than the default init, so every path visibly moves the logits
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0, parameter[0].numel() ** -0.5)
            else:
                parameter.normal_(0, 0.2)
    return model


def inputs_for(model, batch, generator):
    config = model.config
    codes = torch.randint(config.codebook_size, (batch, config.height, config.width), generator=generator)
    labels = torch.randint(config.num_classes, (batch,), generator=generator) if config.num_classes else None
    condition = (torch.randint(config.condition_codebook_size, (batch, config.condition_height,
                                                                config.condition_width), generator=generator)
                 if config.conditioned else None)
    return codes, labels, condition


# attention: none, legacy (keys from the codes before their position), fixed (keys see their position's own code)
ATTENTIONS = {"none": {"attention": False}, "legacy": {"attention_sees_own_code": False},
              "fixed": {"attention_sees_own_code": True}}


def code_changes(model, codes, labels, condition):
    """change[q, p]: how much the logits at raster position p move when only the code at q changes."""
    positions = codes[0].numel()
    # one batch: the codes as they are, then for every position q a copy with only the code at q changed
    batch = codes.repeat(positions + 1, 1, 1).view(positions + 1, positions)
    batch[1:].diagonal().add_(1).remainder_(model.config.codebook_size)
    repeat = (lambda t: None if t is None else t.repeat(positions + 1, *([1] * (t.dim() - 1))))
    with torch.no_grad():
        logits = model(batch.view(-1, *codes.shape[1:]), repeat(labels), repeat(condition)).flatten(2)
    return (logits[1:] - logits[:1]).abs().amax(dim=1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("conditioned", (False, True))
def test_logits_at_a_position_never_see_that_code_or_later_ones(arch, attention, conditioned):
    model = tiny_prior(arch, classes=3 if conditioned else 0, conditioned=conditioned, **ATTENTIONS[attention])
    codes, labels, condition = inputs_for(model, 1, torch.Generator().manual_seed(0))
    change = code_changes(model, codes, labels, condition)
    positions = codes[0].numel()
    q, p = torch.meshgrid(torch.arange(positions), torch.arange(positions), indexing="ij")
    assert change[p <= q].max() < 1e-5
    width = model.config.width
    assert change[(p == q + 1) & (q % width < width - 1)].min() > 1e-3  # the next position on the row sees it
    if attention == "fixed":  # every later position sees every code
        assert change[p > q].min() > 1e-4
    if attention == "legacy":
        # Attention reaches every earlier position, but a key at p carries the codes before p, so a code becomes
        # visible once a later position's convolutions have read it: at once along its row, one row later at a
        # row's end.
        seen = (p > q) & ((q % width < width - 1) | (p >= q + width))
        assert change[seen].min() > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_a_rows_last_code_reaches_the_start_of_the_next_row_only_through_fixed_attention(arch):
    # kernel 3 (r = 1) on a row of 5: the convolutions of (i + 1, j) read row i at columns up to j + 1, so the
    # last code of row i, at column 4, reaches row i + 1 at columns 3 and 4 only; legacy attention adds nothing
    # (its keys at row i + 1 carry what those positions' convolutions read), fixed attention adds columns 0 to 2
    width = 5
    changes = {}
    for kind in ("legacy", "fixed"):
        torch.manual_seed(0)
        model = tiny_prior(arch, width=width, classes=3, conditioned=True, **ATTENTIONS[kind])
        codes, labels, condition = inputs_for(model, 1, torch.Generator().manual_seed(5))
        changes[kind] = code_changes(model, codes, labels, condition)
    for row in range(model.config.height - 1):
        last, next_row = row * width + width - 1, slice((row + 1) * width, (row + 2) * width)
        legacy, fixed = changes["legacy"][last, next_row], changes["fixed"][last, next_row]
        assert legacy[:3].max() < 1e-6, (row, legacy)  # rounding at most: nothing read there depends on it
        assert legacy[3:].min() > 1e-3 and fixed.min() > 1e-3, (row, legacy, fixed)


@pytest.mark.parametrize("arch", ARCHS)
def test_class_and_top_codes_each_change_the_logits(arch):
    model = tiny_prior(arch, classes=3, conditioned=True)
    generator = torch.Generator().manual_seed(1)
    codes, labels, condition = inputs_for(model, 2, generator)
    with torch.no_grad():
        logits = model(codes, labels, condition)
        other_class = model(codes, (labels + 1) % 3, condition)
        other_top = model(codes, labels, (condition + 1) % model.config.condition_codebook_size)
    # including at the first position, which sees no codes at all
    assert (other_class - logits)[:, :, 0, 0].abs().max() > 1e-2
    assert (other_top - logits)[:, :, 0, 0].abs().max() > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_a_prefix_of_rows_gives_the_full_grids_logits_on_those_rows(arch):
    model = tiny_prior(arch, classes=2, conditioned=True)
    codes, labels, condition = inputs_for(model, 2, torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(codes, labels, condition)
        prefix = model(codes[:, :2], labels, condition)
    torch.testing.assert_close(prefix, full[:, :, :2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch, own_code", [("pixelsnail", True), ("pixelsnail", False), ("gated-pixelcnn", True)])
def test_a_tiny_prior_memorises_four_code_maps_of_two_classes(arch, own_code):
    torch.manual_seed(0)
    model = build_prior(PriorConfig(arch=arch, codebook_size=16, height=6, width=6, channels=32, n_blocks=1,
                                    n_res_blocks=2, kernel_size=3, attention=True, n_heads=4, dropout=0.0,
                                    num_classes=2, attention_sees_own_code=own_code)).train()
    codes = torch.randint(16, (4, 6, 6), generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 0, 1, 1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = F.cross_entropy(model(codes, labels), codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        bits_per_code = F.cross_entropy(model.eval()(codes, labels), codes).item() / math.log(2)
    # from 4 bits at chance; the floor is 1 bit at each map's first code (which of its class's two maps), 4 / 144
    assert 4 / 144 - 1e-3 < bits_per_code < 0.1


def test_inputs_that_do_not_fit_the_config_are_rejected():
    model = tiny_prior(classes=2, conditioned=True)
    codes, labels, condition = inputs_for(model, 2, torch.Generator().manual_seed(4))
    with pytest.raises(UsageError, match="class-conditional"):
        model(codes, None, condition)
    with pytest.raises(UsageError, match="conditioned on a code map"):
        model(codes, labels, condition[:, :1])
    with pytest.raises(UsageError, match="codes must be"):
        model(codes[:, :, :3], labels, condition)


def test_config_round_trips_through_a_dict():
    config = PriorConfig.default_for("bottom", 256, 16, 24, 3, arch="gated-pixelcnn", top_shape=(8, 12),
                                     top_codebook_size=128)
    assert PriorConfig.from_dict(config.to_dict()) == config
    assert PriorConfig.from_dict(dict(config.to_dict())).to_dict() == config.to_dict()
    with pytest.raises(UsageError, match="unknown prior config keys: colour"):
        PriorConfig.from_dict({**config.to_dict(), "colour": 1})


def test_a_config_without_the_attention_field_is_legacy_and_writes_back_unchanged():
    new = PriorConfig.default_for("top", 256, 8, 8, num_classes=7)
    assert new.attention and new.attention_sees_own_code and new.to_dict()["attention_sees_own_code"] is True
    assert PriorConfig.from_dict(new.to_dict()) == new
    old = {k: v for k, v in new.to_dict().items() if k != "attention_sees_own_code"}  # as skinaug 0.1 wrote it
    legacy = PriorConfig.from_dict(old)
    assert legacy.attention and not legacy.attention_sees_own_code
    assert legacy.to_dict() == old  # the same entry, hence the same prior fingerprint
    own_code_weights = lambda config: sorted(k for k in build_prior(config).state_dict() if "own_code" in k)  # noqa: E731
    assert own_code_weights(legacy) == []
    assert own_code_weights(new) == ["blocks.0.attention.own_code.weight", "blocks.1.attention.own_code.weight"]


@pytest.mark.parametrize("arch", ARCHS)
def test_without_attention_the_field_changes_nothing(arch):
    # the default bottom prior: no attention, conditioned on the top codes and the class
    priors = []
    for own_code in (False, True):
        torch.manual_seed(0)
        priors.append(tiny_prior(arch, attention=False, classes=3, conditioned=True, attention_sees_own_code=own_code))
    legacy, fixed = (prior.state_dict() for prior in priors)
    assert legacy.keys() == fixed.keys() and all(torch.equal(legacy[k], fixed[k]) for k in legacy)
    codes, labels, condition = inputs_for(priors[0], 2, torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(priors[0](codes, labels, condition), priors[1](codes, labels, condition))


@pytest.mark.parametrize("bad", [{"arch": "transformer"}, {"kernel_size": 4}, {"channels": 30, "n_heads": 8},
                                 {"dropout": 1.0}, {"condition_height": 4}])
def test_config_rejects_impossible_values(bad):
    with pytest.raises(UsageError):
        PriorConfig(**{"arch": "pixelsnail", "codebook_size": 8, "height": 4, "width": 4, "channels": 32, **bad})


def test_defaults_match_the_reference_at_256px_and_shrink_for_64px():
    top = PriorConfig.default_for("top", 512, 32, 32, num_classes=2)
    bottom = PriorConfig.default_for("bottom", 512, 64, 64, num_classes=2, top_shape=(32, 32), top_codebook_size=512)
    assert (top.channels, top.n_blocks, top.n_res_blocks, top.kernel_size, top.attention) == (256, 4, 4, 5, True)
    assert (bottom.channels, bottom.n_blocks, bottom.attention, bottom.n_cond_res_blocks) == (256, 4, False, 3)
    assert (bottom.condition_codebook_size, bottom.condition_height, bottom.condition_width) == (512, 32, 32)
    assert top.dropout == bottom.dropout == 0.1 and not top.conditioned
    small_top = PriorConfig.default_for("top", 512, 8, 8, num_classes=2)
    small_bottom = PriorConfig.default_for("bottom", 512, 16, 16, num_classes=2, top_shape=(8, 8),
                                           top_codebook_size=512)
    for small in (small_top, small_bottom):
        assert (small.channels, small.n_blocks, small.n_res_blocks) == (128, 2, 2)
    with pytest.raises(UsageError, match="conditioned on the top codes"):
        PriorConfig.default_for("bottom", 512, 16, 16, num_classes=2)


def test_defaults_build_priors_with_the_right_output_shape():
    top = PriorConfig.default_for("top", 32, 8, 8, num_classes=2)
    bottom = PriorConfig.default_for("bottom", 64, 16, 16, num_classes=2, top_shape=(8, 8), top_codebook_size=32)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        top_logits = build_prior(top)(torch.zeros(2, 8, 8, dtype=torch.long), labels)
        bottom_logits = build_prior(bottom)(torch.zeros(2, 16, 16, dtype=torch.long), labels,
                                            torch.zeros(2, 8, 8, dtype=torch.long))
    assert top_logits.shape == (2, 32, 8, 8) and bottom_logits.shape == (2, 64, 16, 16)
