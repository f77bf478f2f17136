"""Our metrics against well-kept implementations: AUC against scikit-learn, the Fréchet distance against a scipy
`sqrtm` formula, and KID against its definition computed pair by pair."""

import numpy as np
import pytest

from skinaug.scores.fid import feature_statistics, frechet_distance, kernel_distance, standardiser
from skinaug.scores.roc import macro_auc, roc_auc


@pytest.mark.parametrize("seed", range(4))
def test_auc_equals_scikit_learn(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300).astype(bool)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounded: many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    classes = rng.integers(0, 4, 300)
    probabilities = rng.dirichlet(np.ones(4), 300)
    assert macro_auc(classes, probabilities) == pytest.approx(
        roc_auc_score(classes, probabilities, multi_class="ovr", average="macro"), abs=1e-12)


@pytest.mark.parametrize("n, dim", [(200, 8), (50, 16)])
def test_frechet_distance_equals_the_scipy_sqrtm_formula(n, dim):
    from scipy import linalg

    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, dim))
    b = rng.normal(0.3, 1.2, size=(n, dim)) @ rng.normal(size=(dim, dim)) * 0.5
    mu_a, sigma_a = feature_statistics(a)
    mu_b, sigma_b = feature_statistics(b)
    covmean = linalg.sqrtm(sigma_a @ sigma_b).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean)
    assert frechet_distance(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(expected, rel=1e-8)


def kid_by_definition(x, y) -> float:
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, pair by pair."""
    d, m = x.shape[1], len(x)
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    same = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return same - 2 * cross


def test_kid_is_the_unbiased_polynomial_mmd_and_near_zero_for_one_distribution():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.5, 1.0, size=(12, 5))
    mean, std, size = kernel_distance(x, y, subsets=1, subset_size=12)
    assert size == 12 and std == 0.0 and mean == pytest.approx(kid_by_definition(x, y), rel=1e-10)
    same, _, _ = kernel_distance(rng.normal(size=(400, 5)), rng.normal(size=(400, 5)), subsets=20, subset_size=200)
    shifted, spread, _ = kernel_distance(rng.normal(size=(400, 5)), rng.normal(1.0, 1.0, size=(400, 5)), subsets=20,
                                         subset_size=200)
    assert abs(same) < 0.05 < shifted and spread > 0


def test_kid_of_z_scored_features_does_not_depend_on_their_magnitudes():
    rng = np.random.default_rng(3)
    real, generated = rng.gamma(2.0, 1.0, size=(300, 16)), rng.gamma(2.5, 1.0, size=(300, 16))
    mean, std = standardiser(generated, real)
    both = np.concatenate([generated, real])
    np.testing.assert_allclose(((both - mean) / std).mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(((both - mean) / std).std(axis=0), 1, rtol=1e-12)
    gains = np.geomspace(1, 1e4, 16)  # one channel per gain: a few huge channels, as a trained network has
    kids = []
    for g, r in ((generated, real), (generated * gains, real * gains)):
        mean, std = standardiser(g, r)
        kids.append(kernel_distance((g - mean) / std, (r - mean) / std, subsets=5, subset_size=100)[0])
    assert kids[0] == pytest.approx(kids[1], rel=1e-9) and kids[0] > 0
    raw = kernel_distance(generated * gains, real * gains, subsets=5, subset_size=100)[0]
    assert abs(raw) > 1e6 * abs(kids[0])  # unscaled, the largest channels rule the cubic kernel
    assert standardiser(np.ones((10, 3)))[1].tolist() == [1.0, 1.0, 1.0]


def test_a_channel_nearly_dead_in_the_real_set_does_not_blow_the_kid_up():
    rng = np.random.default_rng(4)
    real, generated = np.maximum(rng.normal(size=(200, 8)), 0), np.maximum(rng.normal(size=(200, 8)), 0)
    real[:, 0] = 0.0
    real[0, 0] = 1e-4  # all but dead in the real set, active in the generated one
    mean, std = standardiser(generated, real)
    z_generated, z_real = (generated - mean) / std, (real - mean) / std
    assert np.abs(z_generated).max() < np.sqrt(len(real) + len(generated))  # a pooled z-score is bounded
    kid = kernel_distance(z_generated, z_real, subsets=5, subset_size=100)[0]
    assert 0 < kid < 10
