"""Masked resampling with --refine: Gibbs sweeps that re-draw the masked codes given all of their neighbours."""

import copy
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from near_ties import close_draws
from skinaug.cli import main
from skinaug.storage.codefile import read_codes
from skinaug.generation.commands import Generator, batch_seed, plan_per_source
from skinaug.storage.modeldir import ModelDir
from skinaug.generation.sampler import SamplingOptions
from skinaug.priors import PriorConfig, build_prior, conditional_log_probs, refine_codes, sample

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest: tiny models, busy shared cores

HEIGHT, WIDTH, CODEBOOK = 4, 5, 7
# |float32 - float64| of a candidate's probability, for the tiny priors here
PROBABILITY_TOLERANCE = 1e-4


def random_prior(*, attention=False, classes=3, conditioned=True, own_code=True):
    condition = {"condition_codebook_size": 6, "condition_height": 2, "condition_width": 3} if conditioned else {}
    config = PriorConfig(arch="pixelsnail", codebook_size=CODEBOOK, height=HEIGHT, width=WIDTH, channels=16,
                         n_blocks=1, n_res_blocks=2, kernel_size=3, attention=attention, n_heads=2, dropout=0.1,
                         num_classes=classes, attention_sees_own_code=own_code, **condition)
    torch.manual_seed(0)
    model = build_prior(config)
    with torch.no_grad():  # larger than the default init, so conditionals are far from uniform
        for parameter in model.parameters():
            parameter.normal_(0, parameter[0].numel() ** -0.5 if parameter.dim() >= 2 else 0.2)
    return model.eval()


def inputs(model, batch=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    codes = torch.randint(CODEBOOK, (batch, HEIGHT, WIDTH), generator=generator)
    labels = torch.randint(config.num_classes, (batch,), generator=generator) if config.num_classes else None
    condition = (torch.randint(config.condition_codebook_size, (batch, config.condition_height, config.condition_width),
                               generator=generator) if config.conditioned else None)
    return codes, labels, condition


def brute_force_conditional(model, codes, position, labels, condition, temperature):
    """(B, K) float64: log p(c_p = k | every other code), from the joint of every grid with k written at p."""
    exact = copy.deepcopy(model).double()
    joints = []
    with torch.no_grad():
        for code in range(CODEBOOK):
            grid = codes.clone().flatten(1)
            grid[:, position] = code
            grid = grid.view_as(codes)
            log_probs = (exact(grid, labels, condition) / temperature).log_softmax(dim=1)
            joints.append(log_probs.gather(1, grid[:, None]).flatten(1).sum(dim=1))
    return torch.stack(joints, dim=1).log_softmax(dim=1)


# ------------------------------------------------------------------------- the maths, on a random tiny prior


@pytest.mark.parametrize("attention, own_code, classes, conditioned",
                         [(False, True, 3, True), (True, True, 0, False), (True, False, 0, False)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("position", [0, 7, HEIGHT * WIDTH - 1])
def test_the_refined_conditional_is_the_joint_normalised_over_every_code(attention, own_code, classes, conditioned,
                                                                         temperature, position):
    model = random_prior(attention=attention, classes=classes, conditioned=conditioned, own_code=own_code)
    codes, labels, condition = inputs(model)
    log_probs, choices = conditional_log_probs(model, codes, position, labels, condition, candidates=CODEBOOK,
                                               temperature=temperature)
    expected = brute_force_conditional(model, codes, position, labels, condition, temperature)
    np.testing.assert_array_equal(choices, np.tile(np.arange(CODEBOOK), (3, 1)))
    np.testing.assert_allclose(log_probs.exp().double(), expected.exp(), atol=PROBABILITY_TOLERANCE)
    # the codes after p weigh in: the conditional is not p's raster conditional, except at the last position
    row, column = divmod(position, WIDTH)
    with torch.no_grad():
        logits = copy.deepcopy(model).double()(codes, labels, condition)[:, :, row, column]
    raster = (logits / temperature).softmax(dim=1)
    gap = (raster - expected.exp()).abs().max().item()
    assert gap < 1e-9 if position == HEIGHT * WIDTH - 1 else gap > 0.05


@pytest.mark.parametrize("candidates, top_k", [(4, None), (32, 4)])
def test_fewer_candidates_are_the_likeliest_of_the_raster_conditional(candidates, top_k):
    model = random_prior()
    codes, labels, condition = inputs(model, batch=4)
    position = 12
    row, column = divmod(position, WIDTH)
    log_probs, choices = conditional_log_probs(model, codes, position, labels, condition, candidates=candidates,
                                               top_k=top_k)
    assert choices.shape == log_probs.shape == (4, 4)
    with torch.no_grad():
        raster = copy.deepcopy(model).double()(codes, labels, condition)[:, :, row, column]
    ordered = raster.sort(dim=1, descending=True)
    joint = brute_force_conditional(model, codes, position, labels, condition, 1.0)
    checked = 0
    for image in range(4):
        if ordered.values[image, 3] - ordered.values[image, 4] < 1e-3:
            continue  # the fourth and fifth likeliest nearly tie: either may be a candidate on another CPU
        expected_codes = ordered.indices[image, :4].sort().values
        np.testing.assert_array_equal(choices[image], expected_codes)
        restricted = joint[image, expected_codes].softmax(dim=0)
        np.testing.assert_allclose(log_probs[image].exp().double(), restricted, atol=PROBABILITY_TOLERANCE)
        checked += 1
    assert checked >= 2


def test_refine_draws_each_masked_code_from_its_conditional_by_its_uniform():
    model = random_prior()
    codes, labels, condition = inputs(model, batch=6)
    positions = [0, 3, 9, 10, 16, 19]  # one masked code per image, so each draw follows from the initial grid
    region = torch.zeros(6, HEIGHT * WIDTH, dtype=torch.bool)
    region[torch.arange(6), positions] = True
    uniforms = torch.rand(1, 6, HEIGHT * WIDTH, generator=torch.Generator().manual_seed(2))
    refined = refine_codes(model, codes, region.view(6, HEIGHT, WIDTH), labels, condition, candidates=CODEBOOK,
                           uniforms=uniforms).flatten(1)
    checked = 0
    for image, position in enumerate(positions):
        others = np.arange(HEIGHT * WIDTH) != position
        np.testing.assert_array_equal(refined[image, others], codes.flatten(1)[image, others])
        conditional = brute_force_conditional(model, codes[image : image + 1], position, pick(labels, image),
                                              pick(condition, image), 1.0)
        uniform = uniforms[0, image, position]
        if close_draws(conditional.view(1, CODEBOOK, 1, 1), uniform.view(1, 1), logit_tolerance=1e-4)[0, 0]:
            continue  # the uniform falls by a CDF boundary: another CPU may draw the neighbouring code
        expected = int(torch.searchsorted(conditional.exp().cumsum(dim=1), uniform.double().view(1, 1), right=True))
        assert refined[image, position] == expected
        checked += 1
    assert checked >= 4


def pick(tensor, index):
    return None if tensor is None else tensor[index : index + 1]


def test_refine_changes_nothing_outside_the_region_and_is_seeded():
    model = random_prior(attention=True)
    codes, labels, condition = inputs(model, batch=4)
    region = torch.zeros(4, HEIGHT, WIDTH, dtype=torch.bool)
    region[:, 1:3, 1:4] = True
    region[0] = False  # an image with nothing to refine
    run = lambda seed: refine_codes(model, codes, region, labels, condition, sweeps=3, candidates=3,  # noqa: E731
                                    generator=torch.Generator().manual_seed(seed))
    first, again, other = run(0), run(0), run(1)
    np.testing.assert_array_equal(first[~region], codes[~region])
    np.testing.assert_array_equal(first, again)
    assert not torch.equal(first[region], other[region])
    np.testing.assert_array_equal(refine_codes(model, codes, region, labels, condition, sweeps=0), codes)


# ------------------------------------------------------------------------- resample --mask-dir --refine


@pytest.fixture
def square_masks(generator_model, tmp_path):
    """A centred square (half the side, a quarter of the area) as every image's lesion mask: kept codes on all sides."""
    masks = tmp_path / "masks"
    masks.mkdir()
    square = np.zeros((32, 32), np.uint8)
    square[8:24, 8:24] = 255
    for name in generator_model["data"].names:
        Image.fromarray(square).save(masks / f"{name}.png")
    inside = np.zeros((8, 8), bool)  # on the 8x8 bottom grid
    inside[2:6, 2:6] = True
    return masks, inside


def read_rows(out):
    with open(out / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def resample(generator_model, out, *options):
    return main([str(a) for a in ["resample", "--codes", generator_model["codes"], "--model", generator_model["model"],
                                  "--out", out, "--per-image", 2, "--device", "cpu", "--quiet", *options]])


def test_refine_zero_draws_exactly_the_codes_of_a_masked_draw(generator_model, square_masks, tmp_path):
    masks, inside = square_masks
    model = generator_model["model"]
    source = read_codes(generator_model["codes"])
    jobs = plan_per_source("resample", range(len(source)), 1, source)
    seed = batch_seed(0, 0)
    made = Generator(model, "cpu", mask_dir=masks).codes_for("resample", jobs, source, seed, SamplingOptions(refine=0))
    # the masked draw without refinement, straight from the sampler
    prior, _ = ModelDir(model).load_prior("bottom", "cpu")
    bottom = torch.as_tensor(source.codes["bottom"].astype(np.int64))
    kept = torch.as_tensor(~np.broadcast_to(inside, bottom.shape))
    labels = torch.as_tensor(source.labels)
    with torch.no_grad():
        expected = sample(prior, labels, torch.as_tensor(source.codes["top"].astype(np.int64)), keep=(bottom, kept),
                          generator=torch.Generator().manual_seed(seed))
    np.testing.assert_array_equal(made["bottom"], expected.numpy())
    # and through the command: --refine 0 is the command without it, image for image
    assert resample(generator_model, tmp_path / "plain", "--mask-dir", masks) == 0
    assert resample(generator_model, tmp_path / "zero", "--mask-dir", masks, "--refine", 0) == 0
    plain, zero = read_codes(tmp_path / "plain" / "codes.h5"), read_codes(tmp_path / "zero" / "codes.h5")
    for level in ("top", "bottom"):
        np.testing.assert_array_equal(plain.codes[level], zero.codes[level])
    assert (tmp_path / "plain" / "labels.csv").read_text() == (tmp_path / "zero" / "labels.csv").read_text()
    assert json.loads((tmp_path / "zero" / "run.json").read_text())["refine"] == 0


def test_refine_redraws_only_inside_the_mask_and_keeps_the_top_codes(generator_model, square_masks, tmp_path):
    masks, inside = square_masks
    assert resample(generator_model, tmp_path / "raster", "--mask-dir", masks) == 0
    assert resample(generator_model, tmp_path / "refined", "--mask-dir", masks, "--refine", 2,
                    "--refine-candidates", 8) == 0
    source = read_codes(generator_model["codes"])
    raster, refined = read_codes(tmp_path / "raster" / "codes.h5"), read_codes(tmp_path / "refined" / "codes.h5")
    rows, raster_rows = read_rows(tmp_path / "refined"), read_rows(tmp_path / "raster")
    index = {name: i for i, name in enumerate(source.images)}
    sources = [index[row["source_top"]] for row in rows]
    np.testing.assert_array_equal(refined.codes["top"], source.codes["top"][sources])
    np.testing.assert_array_equal(refined.codes["bottom"][:, ~inside], source.codes["bottom"][sources][:, ~inside])
    # the sweeps came after the same raster draw (same seeds) and moved some of its codes
    assert (refined.codes["bottom"][:, inside] != raster.codes["bottom"][:, inside]).any()
    assert [row["seed"] for row in rows] == [row["seed"] for row in raster_rows]
    run = json.loads((tmp_path / "refined" / "run.json").read_text())
    assert (run["refine"], run["refine_candidates"]) == (2, 8)


def test_refined_codes_depend_only_on_the_seed(generator_model, square_masks):
    masks, inside = square_masks
    source = read_codes(generator_model["codes"])
    jobs = plan_per_source("resample", range(len(source)), 1, source)
    generator = Generator(generator_model["model"], "cpu", mask_dir=masks)
    sampling = SamplingOptions(refine=1, refine_candidates=5)
    first, again, other = (generator.codes_for("resample", jobs, source, seed, sampling)["bottom"] for seed in (3, 3, 4))
    np.testing.assert_array_equal(first, again)
    assert (first[:, inside] != other[:, inside]).any()
    np.testing.assert_array_equal(first[:, ~inside], source.codes["bottom"][:, ~inside])


@pytest.mark.parametrize("options, message", [
    (["--refine", "-1"], "--refine must be at least 0"),
    (["--refine", "1", "--refine-candidates", "0"], "--refine-candidates must be at least 1"),
    (["--refine", "1"], "give --mask-dir"),
    (["--mask-dir", "MASKS", "--refine-candidates", "4"], "--refine-candidates goes with --refine"),
    (["--mask-dir", "MASKS", "--refine", "1", "--backend", "onnx"], "does not apply to --backend onnx"),
])
def test_bad_refine_options_are_one_line_usage_errors(generator_model, square_masks, tmp_path, capsys, options,
                                                      message):
    masks, _ = square_masks
    options = [str(masks) if option == "MASKS" else option for option in options]
    capsys.readouterr()
    assert resample(generator_model, tmp_path / "out", *options) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out").exists()
