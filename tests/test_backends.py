"""One Generator over either backend: the interfaces, the random numbers each backend draws, codes_from_images."""

import shutil

import numpy as np
import pytest
import torch

from skinaug.backends.base import Backend, CodeModel, PriorSampler
from skinaug.backends.onnx import NumpyRandom
from skinaug.backends.torch import TorchRandom
from skinaug.cli import main
from skinaug.storage.codefile import read_codes
from skinaug.generation.commands import Generator, Job, batch_seed, plan_mix, plan_per_source
from skinaug.generation.sampler import SamplingOptions

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def exported(generator_model, tmp_path_factory):
    model = tmp_path_factory.mktemp("backends") / "model"
    shutil.copytree(generator_model["model"], model)
    assert main(["export", "onnx", "--model", str(model), "--quiet"]) == 0
    return {**generator_model, "model": model}


@pytest.fixture(scope="module")
def generators(exported):
    return {name: Generator(exported["model"], "cpu", backend=name) for name in ("torch", "onnx")}


def test_both_backends_offer_the_interfaces(generators):
    for name, generator in generators.items():
        backend = generator.backend
        assert isinstance(backend, Backend) and isinstance(backend.code_model, CodeModel)
        assert backend.spec == generator.spec and backend.info()["backend"] == name
        for level, side in (("top", 4), ("bottom", 8)):
            prior = backend.prior(level)
            assert isinstance(prior, PriorSampler)
            assert (prior.height, prior.width, prior.codebook_size, prior.num_classes) == (side, side, 16, 3)
            assert prior.trained_classes is None  # trained on every class
        assert backend.distributed().world_size == 1


@pytest.mark.parametrize("method", ["mix", "rand-bottom", "rand-top"])
def test_given_the_same_random_numbers_both_backends_make_the_same_codes(generators, exported, method, monkeypatch):
    source = read_codes(exported["codes"])
    jobs = (plan_mix(source, 6, np.random.default_rng(0)) if method == "mix"
            else plan_per_source(method, range(len(source)), 1, source))
    made = {}
    for name, generator in generators.items():
        monkeypatch.setattr(generator.backend, "random", NumpyRandom)  # the onnx backend's source, on both
        made[name] = generator.codes_for(method, jobs, source, seed=7)
    for level in ("top", "bottom"):
        np.testing.assert_array_equal(made["torch"][level], made["onnx"][level])
        assert made["torch"][level].dtype == np.uint16
    kept = "bottom" if method == "rand-top" else "top"
    np.testing.assert_array_equal(made["torch"][kept], source.codes[kept][[job.source_top if kept == "top"
                                                                           else job.source_bottom for job in jobs]])
    images = {name: generators[name].images_for(made[name]).astype(np.int16) for name in generators}
    assert images["torch"].shape == (len(jobs), 32, 32, 3) and np.abs(images["torch"] - images["onnx"]).max() <= 1


def test_torch_synthesis_draws_what_a_torch_generator_seeded_with_the_batch_seed_draws(generators):
    """The torch backend's random numbers are those the sampler drew before the backends: seeds keep their images."""
    from skinaug.priors import sample

    generator, seed = generators["torch"], batch_seed(3, 1)
    labels = np.array([0, 1, 2, 2])
    made = generator.codes_for("synthesize", [Job("synthesize", int(label)) for label in labels], None, seed)
    random, label_tensor = torch.Generator().manual_seed(seed), torch.as_tensor(labels)
    with torch.no_grad():
        top = sample(generator.backend.prior("top").network, label_tensor, generator=random)
        bottom = sample(generator.backend.prior("bottom").network, label_tensor, top, generator=random)
    np.testing.assert_array_equal(made["top"], top.numpy())
    np.testing.assert_array_equal(made["bottom"], bottom.numpy())


def test_onnx_synthesis_draws_from_numpy_seeded_with_the_batch_seed(generators):
    runtime = generators["onnx"].backend.runtime
    seed, labels = batch_seed(3, 1), np.array([2, 0, 1])
    for sampler in ("fast", "reference"):
        generator = Generator(runtime.model_dir.path, "cpu", backend="onnx")
        made = generator.codes_for("synthesize", [Job("synthesize", int(label)) for label in labels], None, seed,
                                   SamplingOptions(sampler=sampler, top_k=4))
        rng = np.random.default_rng(seed)
        draw = {level: getattr(runtime.prior(level), "sample_reference" if sampler == "reference" else "sample")
                for level in ("top", "bottom")}
        top = draw["top"](labels, None, n=3, rng=rng, top_k=4)
        np.testing.assert_array_equal(made["top"], top)
        np.testing.assert_array_equal(made["bottom"], draw["bottom"](labels, top, n=3, rng=rng, top_k=4))


def test_the_random_sources_draw_in_the_order_asked(generators):
    torch_random, numpy_random = TorchRandom(5, torch.device("cpu")), NumpyRandom(5)
    reference = torch.Generator().manual_seed(5)
    np.testing.assert_array_equal(torch_random.uniforms(2, 3), torch.rand(2, 3, generator=reference).numpy())
    np.testing.assert_array_equal(torch_random.integers(16, (2, 4)), torch.randint(16, (2, 4), generator=reference).numpy())
    rng = np.random.default_rng(5)
    np.testing.assert_array_equal(numpy_random.uniforms(2, 3), rng.random((2, 3), dtype=np.float32))
    np.testing.assert_array_equal(numpy_random.integers(16, (2, 4)), rng.integers(16, size=(2, 4)))
    assert numpy_random.uniforms(1, 2).dtype == np.float32 and torch_random.uniforms(1, 2).dtype == np.float32


def test_codes_from_images_is_the_encode_command_in_memory(generators, exported, tmp_path):
    from skinaug.generation.encode_decode import codes_from_images

    from skinaug.data.scan import load_image

    data = exported["data"]
    expected = read_codes(exported["codes"])  # written by `skinaug encode`
    for generator in generators.values():
        made = codes_from_images(generator.code_model, data.images, data.labels_csv, batch_size=5)
        assert made.images == expected.images and made.class_names == expected.class_names
        np.testing.assert_array_equal(made.labels, expected.labels)
        assert made.groups == expected.groups and made.fingerprint == expected.fingerprint
        assert made.files == {name: data.images / f"{name}.png" for name in expected.images}
        # the code model's codes of each file, batch by batch (a near-tie may fall either way in another batching)
        images = np.stack([load_image(made.files[name], 32) for name in made.images])
        batches = [generator.code_model.encode(images[start : start + 5]) for start in range(0, len(images), 5)]
        for level in ("top", "bottom"):
            np.testing.assert_array_equal(made.codes[level], np.concatenate([batch[level] for batch in batches]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="no image"):
        codes_from_images(generators["torch"].code_model, empty)
