"""How large a gain `score benefit` could have seen: the minimum detectable effect (MDE) of a mean gain.

The mean gain over seeds varies for two reasons: the classifiers' training randomness (the spread of the per-seed
gains, shrinking with more seeds) and which lesions happen to be in the test side (the spread of the gain over
bootstrap resamples of the test lesions). Taken as independent, the standard error of the mean gain is

    SE = sqrt(var(per-seed gains) / seeds + var(bootstrap gains))

(sample variances, ddof=1), and a true gain of MDE = (z_{1 - alpha/2} + z_{power}) x SE is found different from 0
by a two-sided test at level alpha with probability `power`: 2.80 x SE at the usual 0.05 and 80%. A gain much
smaller than the MDE is one the study could not tell from noise, whatever its point estimate.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

ALPHA = 0.05  # two-sided
POWER = 0.80


def z_factor(alpha: float = ALPHA, power: float = POWER) -> float:
    """z_{1 - alpha/2} + z_{power}: 1.95996 + 0.84162 = 2.80158 at the defaults."""
    normal = NormalDist()
    return normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)


def gain_standard_error(seed_gains, bootstrap_gains, seeds: int | None = None) -> float | None:
    """SE of the mean gain (module docstring); `seeds` projects it to another number of seeds (the variances stay
    the measured ones). None when it cannot be estimated: fewer than two seeds or two finite bootstrap gains."""
    seed_gains = np.asarray(seed_gains, dtype=np.float64)
    bootstrap_gains = np.asarray(bootstrap_gains, dtype=np.float64)
    bootstrap_gains = bootstrap_gains[np.isfinite(bootstrap_gains)]  # a resample without a class has no AUC
    if len(seed_gains) < 2 or not np.isfinite(seed_gains).all() or len(bootstrap_gains) < 2:
        return None
    seeds = len(seed_gains) if seeds is None else seeds
    return float(np.sqrt(np.var(seed_gains, ddof=1) / seeds + np.var(bootstrap_gains, ddof=1)))


def minimum_detectable_effect(seed_gains, bootstrap_gains, *, seeds: int | None = None, alpha: float = ALPHA,
                              power: float = POWER) -> float | None:
    """The smallest true mean gain that a two-sided test at `alpha` detects with probability `power`, from the
    per-seed gains (method minus real alone, seed by seed) and the gains over bootstrap resamples of the test
    lesions; `seeds` projects it to another number of seeds. None when the SE cannot be estimated.

        minimum_detectable_effect([0.01, 0.03], [-0.01, 0.01])   # 2.80158 x sqrt(0.0002 / 2 + 0.0002) = 0.0485
    """
    error = gain_standard_error(seed_gains, bootstrap_gains, seeds)
    return None if error is None else z_factor(alpha, power) * error
