"""The minimum detectable effect of `score benefit`'s mean gain (skinaug.studies.power), on arrays whose variances
are known exactly."""

import numpy as np
import pytest

from skinaug.studies.power import gain_standard_error, minimum_detectable_effect, z_factor

Z = 1.959963984540054 + 0.8416212335729143  # z_0.975 + z_0.80


def test_the_z_factor_is_the_two_sided_5_percent_and_80_percent_power_quantiles():
    assert z_factor() == pytest.approx(Z, abs=1e-12)
    assert z_factor(alpha=0.01, power=0.9) == pytest.approx(2.5758293035489 + 1.2815515655446, abs=1e-9)


def test_known_variances_give_a_known_mde():
    seed_gains = [0.01, 0.03]  # sample variance 0.0002, over 2 seeds: 0.0001
    bootstrap = [-0.01, 0.01, np.nan]  # sample variance 0.0002 (a resample without a class is left out)
    assert gain_standard_error(seed_gains, bootstrap) == pytest.approx(np.sqrt(0.0003), rel=1e-12)
    assert minimum_detectable_effect(seed_gains, bootstrap) == pytest.approx(Z * np.sqrt(0.0003), rel=1e-12)
    assert minimum_detectable_effect(seed_gains, bootstrap) == pytest.approx(0.048525, abs=1e-6)


def test_more_seeds_shrink_the_seed_part_by_the_square_root_of_their_ratio():
    seed_gains, no_lesion_spread = [0.0, 0.02, 0.04], [0.01, 0.01]  # seed variance 0.0004; no bootstrap variance
    three = minimum_detectable_effect(seed_gains, no_lesion_spread)
    assert three == pytest.approx(Z * np.sqrt(0.0004 / 3), rel=1e-12)
    assert minimum_detectable_effect(seed_gains, no_lesion_spread, seeds=12) == pytest.approx(three / 2, rel=1e-12)
    # the lesions' part does not shrink with seeds: 12 seeds cannot go below it
    lesion_only = minimum_detectable_effect([0.01, 0.01], [-0.01, 0.01])
    assert minimum_detectable_effect([0.0, 0.02, 0.04], [-0.01, 0.01], seeds=10**9) == pytest.approx(lesion_only, rel=1e-6)


@pytest.mark.parametrize("seed_gains, bootstrap", [([0.02], [-0.01, 0.01]), ([0.01, 0.03], []), ([0.01, 0.03], [np.nan, 0.1])])
def test_the_mde_is_none_when_a_variance_cannot_be_estimated(seed_gains, bootstrap):
    assert minimum_detectable_effect(seed_gains, bootstrap) is None
