"""The cached sampler computes exactly what the reference sampler computes, from the same uniforms."""

import itertools

import pytest
import torch

from near_ties import assert_same_draws, close_draws
from skinaug.errors import UsageError
from skinaug.priors import PriorConfig, StepOptions, build_prior, draw_codes, sample, sample_reference
from skinaug.priors import fast
from skinaug.priors.cache import GridLayout

HEIGHT, WIDTH = 5, 7  # non-square on purpose
# |cached - full forward| on logits; the reference sampler's full forwards on partial grids differ by as much again
LOGIT_TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest: tiny models, busy shared cores


# "fixed": attention whose keys see their position's own code; "legacy": keys from the codes before it; None: none
ATTENTIONS = ("fixed", "legacy", None)


def random_prior(arch, *, attention="fixed", classes=0, conditioned=False, kernel_size=3):
    condition = {"condition_codebook_size": 6, "condition_height": 3, "condition_width": 4} if conditioned else {}
    config = PriorConfig(arch=arch, codebook_size=11, height=HEIGHT, width=WIDTH, channels=16, n_blocks=2,
                         n_res_blocks=2, kernel_size=kernel_size, attention=attention is not None, n_heads=2,
                         dropout=0.1, num_classes=classes, attention_sees_own_code=attention != "legacy", **condition)
    torch.manual_seed(0)  # the same weights whatever ran before in this process (a test must not depend on order)
    model = build_prior(config)
    with torch.no_grad():  # larger than the default init, so logits are far from uniform
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0, parameter[0].numel() ** -0.5)
            else:
                parameter.normal_(0, 0.2)
    return model


def conditioning(model, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    labels = torch.randint(config.num_classes, (batch,), generator=generator) if config.num_classes else None
    condition = (torch.randint(config.condition_codebook_size, (batch, config.condition_height,
                                                                config.condition_width), generator=generator)
                 if config.conditioned else None)
    return labels, condition


MATRIX = list(itertools.product(("pixelsnail", "gated-pixelcnn"), ATTENTIONS, (0, 3), (False, True), (3, 5)))


@pytest.mark.parametrize("arch, attention, classes, conditioned, kernel_size", MATRIX)
def test_cached_logits_and_codes_equal_the_reference(arch, attention, classes, conditioned, kernel_size):
    model = random_prior(arch, attention=attention, classes=classes, conditioned=conditioned,
                         kernel_size=kernel_size).train()  # the samplers must switch dropout off themselves
    labels, condition = conditioning(model)
    uniforms = torch.rand(3, HEIGHT * WIDTH, generator=torch.Generator().manual_seed(1))
    codes, logits = sample(model, labels, condition, n=3, uniforms=uniforms, return_logits=True)
    reference = sample_reference(model, labels, condition, n=3, uniforms=uniforms)
    assert model.training
    with torch.no_grad():
        teacher_forced = model.eval()(codes, labels, condition)
    assert teacher_forced.std() > 0.3  # logits worth comparing
    assert (logits - teacher_forced).abs().max() < LOGIT_TOLERANCE
    # the same codes, except where a uniform falls by a CDF boundary: there the kernels' rounding decides
    assert_same_draws(reference, codes, close_draws(teacher_forced, uniforms, logit_tolerance=2 * LOGIT_TOLERANCE))
    assert len(codes.unique()) > 3


DRAW_MATRIX = list(itertools.product(("pixelsnail", "gated-pixelcnn"), ATTENTIONS, ((0.7, None), (1.3, 4), (1.0, 1)),
                                     (1, 5), (False, True)))


@pytest.mark.parametrize("arch, attention, draw, batch, masked", DRAW_MATRIX)
def test_the_samplers_agree_for_every_temperature_top_k_batch_and_mask(arch, attention, draw, batch, masked):
    temperature, top_k = draw
    torch.manual_seed(11)  # seeded weights: the same prior whatever ran before
    model = random_prior(arch, attention=attention, classes=3, conditioned=True)
    labels, condition = conditioning(model, batch=batch, seed=batch)
    generator = torch.Generator().manual_seed(2)
    uniforms = torch.rand(batch, HEIGHT * WIDTH, generator=generator)
    keep = None
    if masked:  # kept codes outside a random region: later positions are conditioned on them
        kept_codes = torch.randint(11, (batch, HEIGHT, WIDTH), generator=generator)
        keep = (kept_codes, torch.rand(batch, HEIGHT, WIDTH, generator=generator) < 0.5)
    codes, logits = sample(model, labels, condition, n=batch, uniforms=uniforms, temperature=temperature, top_k=top_k,
                           keep=keep, return_logits=True)
    reference = sample_reference(model, labels, condition, n=batch, uniforms=uniforms, temperature=temperature,
                                 top_k=top_k, keep=keep)
    if keep is not None:
        assert torch.equal(codes[keep[1]], keep[0][keep[1]]) and torch.equal(reference[keep[1]], keep[0][keep[1]])
    with torch.no_grad():
        teacher_forced = model.eval()(codes, labels, condition)
    assert (logits - teacher_forced).abs().max() < LOGIT_TOLERANCE
    close = close_draws(teacher_forced, uniforms, logit_tolerance=2 * LOGIT_TOLERANCE, temperature=temperature, top_k=top_k)
    if keep is not None:
        close |= keep[1].reshape(batch, -1).numpy()  # kept positions are no draws: equal above, not judged here
    assert_same_draws(reference, codes, close)
    if top_k is not None:  # never a code outside the top k of its logits (a near-tie at the k-th may go either way)
        ranks = (teacher_forced > teacher_forced.gather(1, codes.unsqueeze(1))).sum(dim=1)
        assert ((ranks < top_k).reshape(batch, -1).numpy() | close).all()


def test_the_same_seed_gives_the_same_codes_and_another_seed_other_codes():
    model = random_prior("pixelsnail", classes=2)
    labels = torch.tensor([0, 1, 1, 0])

    def seeded(seed):
        return sample(model, labels, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(seeded(5), seeded(5))
    assert not torch.equal(seeded(5), seeded(6))
    # uniforms are drawn once, up front, in raster order
    uniforms = torch.rand(4, HEIGHT * WIDTH, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sample(model, labels, uniforms=uniforms), seeded(5))


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_top_k_one_is_greedy_decoding(attention):
    model = random_prior("pixelsnail", attention=attention, conditioned=True)
    _, condition = conditioning(model)
    codes = sample(model, condition=condition, top_k=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        teacher_forced = model.eval()(codes, None, condition)
    # the largest logit, except where two nearly tie and the kernels' rounding decides
    near_tie = close_draws(teacher_forced, torch.full((len(codes), HEIGHT * WIDTH), 0.5), logit_tolerance=2 * LOGIT_TOLERANCE,
                           top_k=1)
    assert near_tie[(teacher_forced.argmax(dim=1) != codes).view(len(codes), -1).numpy()].all()  # given the same codes
    assert_same_draws(sample_reference(model, condition=condition, top_k=1), codes, near_tie)


def test_draws_follow_the_tempered_top_k_softmax():
    logits = torch.tensor([[2.0, 0.5, -1.0, 1.0, 0.0]])
    draws = 10_000
    uniforms = (torch.arange(draws) + 0.5) / draws  # evenly spaced: frequencies are the probabilities to 1/draws
    for temperature, top_k in ((1.0, None), (0.5, None), (2.0, 3), (1.0, 1)):
        codes = draw_codes(logits.expand(draws, -1), uniforms, temperature, top_k)
        tempered = logits[0] / temperature
        if top_k is not None:
            tempered[tempered < tempered.topk(top_k).values[-1]] = float("-inf")
        expected = tempered.softmax(dim=0)
        observed = torch.bincount(codes, minlength=5) / draws
        assert (observed - expected).abs().max() <= 1.5 / draws, (temperature, top_k)
    assert draw_codes(logits, torch.tensor([0.9999999])).item() == 4  # the last code, never past it


def test_a_uniform_past_the_rounded_cdf_never_draws_a_code_top_k_excluded():
    from skinaug.sampling import draw_codes as draw_codes_numpy

    # the largest logits sit first and the excluded ones last: a uniform at or above the float32 cdf[-1] used to
    # fall on the last code, which top-k gives probability 0
    logits = torch.tensor([[3.0, 2.5, 2.0, -1.0, -2.0], [0.0, 1.0, 0.5, 2.0, -3.0]])
    uniforms = torch.tensor([1.0, 1.0])  # beyond any cdf: the extreme of "at or above cdf[-1]"
    for top_k, expected in ((3, [2, 3]), (1, [0, 3]), (None, [4, 4])):
        assert draw_codes(logits, uniforms, top_k=top_k).tolist() == expected, top_k
        assert draw_codes_numpy(logits.numpy(), uniforms.numpy(), top_k=top_k).tolist() == expected, top_k


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_kept_codes_stay_and_the_rest_is_drawn_given_them(attention):
    model = random_prior("gated-pixelcnn", attention=attention, classes=2)
    labels = torch.tensor([0, 1, 1])
    generator = torch.Generator().manual_seed(3)
    source = torch.randint(11, (3, HEIGHT, WIDTH), generator=generator)
    kept = torch.rand(3, HEIGHT, WIDTH, generator=generator) < 0.5
    uniforms = torch.rand(3, HEIGHT * WIDTH, generator=generator)
    codes, logits = sample(model, labels, uniforms=uniforms, keep=(source, kept), return_logits=True)
    assert torch.equal(codes[kept], source[kept])
    assert not torch.equal(codes[~kept], source[~kept])
    with torch.no_grad():
        teacher_forced = model.eval()(codes, labels)
    assert (logits - teacher_forced).abs().max() < LOGIT_TOLERANCE
    close = close_draws(teacher_forced, uniforms, logit_tolerance=2 * LOGIT_TOLERANCE) & ~kept.view(3, -1).numpy()
    assert_same_draws(sample_reference(model, labels, uniforms=uniforms, keep=(source, kept)), codes, close)


def test_bfloat16_sampling_stays_close_to_float32():
    model = random_prior("pixelsnail", classes=3, conditioned=True, kernel_size=5)
    labels, condition = conditioning(model)
    codes, logits = sample(model, labels, condition, step=StepOptions(dtype=torch.bfloat16), return_logits=True,
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (logits - model.eval()(codes, labels, condition)).abs().max()
    assert 0 < difference < 0.1  # bfloat16 really ran, and kept about two decimals of logits around 1


def test_without_attention_rows_run_as_a_wavefront_and_visit_every_position_once():
    layout = GridLayout(height=HEIGHT, width=WIDTH, kernel_size=5)
    plan = layout.plan(skew=3)
    raster = plan[:, :, 1]
    assert plan.shape[0] == WIDTH + 3 * (HEIGHT - 1)  # instead of HEIGHT * WIDTH
    assert sorted(raster[raster < HEIGHT * WIDTH].tolist()) == list(range(HEIGHT * WIDTH))
    step_of = {p: t for t, row in enumerate(raster.tolist()) for p in row}
    assert all(step_of[i * WIDTH + j] == j + 3 * i for i in range(HEIGHT) for j in range(WIDTH))
    assert random_prior("gated-pixelcnn", attention=None, kernel_size=5).wavefront_skew == 3
    assert random_prior("pixelsnail", attention="fixed").wavefront_skew is None
    assert random_prior("pixelsnail", attention="legacy").wavefront_skew is None


def test_sampling_arguments_are_checked():
    model = random_prior("pixelsnail", classes=2)
    with pytest.raises(UsageError, match="class-conditional"):
        sample(model, n=2)
    with pytest.raises(UsageError, match="disagree on the batch size"):
        sample(model, torch.tensor([0, 1]), n=3)
    with pytest.raises(UsageError, match="temperature"):
        sample(model, torch.tensor([0, 1]), temperature=0.0)
    with pytest.raises(UsageError, match="uniforms must be"):
        sample(model, torch.tensor([0, 1]), uniforms=torch.rand(2, 3))
    with pytest.raises(UsageError, match="keep must be"):
        sample(model, torch.tensor([0, 1]), keep=(torch.zeros(2, HEIGHT, WIDTH), torch.ones(2, 1, 1)))
    with pytest.raises(UsageError, match="CUDA graphs"):
        sample(model, torch.tensor([0, 1]), step=StepOptions(use_cuda_graph=True))
    with pytest.raises(UsageError, match="compile must be"):
        sample(model, torch.tensor([0, 1]), step=StepOptions(compile="yes"))


def test_a_failing_compilation_falls_back_to_the_plain_step_unless_compile_was_asked_for(monkeypatch):
    def broken_compiler():
        def compiled(*args):
            raise RuntimeError("no compiler here")
        return compiled

    monkeypatch.setattr(fast, "_compiled_step", broken_compiler)
    model = random_prior("pixelsnail", classes=2)
    labels = torch.tensor([0, 1])
    uniforms = torch.rand(2, HEIGHT * WIDTH, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="no compiler here"):
        sample(model, labels, uniforms=uniforms, step=StepOptions(compile=True))
    with torch.no_grad():  # "fallback" is what compile="auto" means on CUDA
        sampler = fast._CachedSampler(model.eval(), 2, labels, None, uniforms, (None, None), 1.0, None,
                                      torch.float32, False, compile="fallback")
        with pytest.warns(RuntimeWarning, match="torch.compile failed"):
            sampler.run(cuda_graph=False)
    codes = sampler.codes[:, : HEIGHT * WIDTH].view(2, HEIGHT, WIDTH)
    assert torch.equal(codes, sample(model, labels, uniforms=uniforms, step=StepOptions(compile=False)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch, attention", (("pixelsnail", "fixed"), ("pixelsnail", "legacy"), ("pixelsnail", None),
                                             ("gated-pixelcnn", None)))
def test_cuda_graph_replays_give_the_eager_and_the_reference_codes(arch, attention):
    model = random_prior(arch, attention=attention, classes=3, conditioned=True).cuda()
    labels, condition = (t.cuda() for t in conditioning(model))

    def seeded():
        return torch.Generator(device="cuda").manual_seed(0)

    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # float32 on both sides
        codes, logits = sample(model, labels, condition, generator=seeded(), return_logits=True)
        eager_codes, eager_logits = sample(model, labels, condition, generator=seeded(), return_logits=True,
                                           step=StepOptions(use_cuda_graph=False))
        reference = sample_reference(model, labels, condition, generator=seeded())
        with torch.no_grad():
            teacher_forced = model.eval()(codes, labels, condition)
    assert torch.equal(codes, eager_codes) and (logits - eager_logits).abs().max() < 1e-5
    assert torch.equal(codes, reference)
    assert (logits - teacher_forced).abs().max() < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_the_compiled_step_gives_the_reference_codes_on_cuda(attention):
    model = random_prior("pixelsnail", attention=attention, classes=3, conditioned=True).cuda()
    labels, condition = (t.cuda() for t in conditioning(model))
    generator = torch.Generator(device="cuda").manual_seed(0)
    uniforms = torch.rand(3, HEIGHT * WIDTH, generator=generator, device="cuda")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for cuda_graph in (True, False):
            codes, logits = sample(model, labels, condition, uniforms=uniforms, return_logits=True,
                                   step=StepOptions(compile=True, use_cuda_graph=cuda_graph))
            reference = sample_reference(model, labels, condition, uniforms=uniforms)
            with torch.no_grad():
                teacher_forced = model.eval()(codes, labels, condition)
            assert torch.equal(codes, reference)
            assert (logits - teacher_forced).abs().max() < 1e-4
