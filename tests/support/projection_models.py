"""A cheap model with a closed-form posterior, for the forecast check's coverage test.

``normal_level``: weekly values ``y_w = mu + SIGMA * e_w`` (e_w standard normal), w = 0 .. n_weeks - 1.
With the prior mu ~ N(PRIOR_MEAN, PRIOR_SD^2) and n observed weeks of mean ybar, the posterior is
normal with precision 1/PRIOR_SD^2 + n/SIGMA^2 (conjugate): the exact "calibration".
"""

from __future__ import annotations

import numpy as np

SIGMA = 10.0
PRIOR_MEAN = 0.0
PRIOR_SD = 100.0


def normal_level(params, seed):
    rng = np.random.default_rng(seed)
    n = int(params.get("n_weeks", 20))
    return {"y": float(params["mu"]) + SIGMA * rng.standard_normal(n)}


normal_level.outputs = ("y",)


def posterior(y: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of mu given the observed weeks ``y``."""
    precision = 1 / PRIOR_SD**2 + len(y) / SIGMA**2
    mean = (PRIOR_MEAN / PRIOR_SD**2 + y.sum() / SIGMA**2) / precision
    return float(mean), float(precision**-0.5)


def counted(params, seed):
    """As :func:`normal_level`, a little slower, and appending ``tag,seed`` to the file named by
    CALABARIA_TEST_CALL_LOG after each finished simulation (the kill-and-resume test counts them)."""
    import os
    import time

    time.sleep(float(params.get("sleep", 0.05)))
    out = normal_level(params, seed)
    log = os.environ.get("CALABARIA_TEST_CALL_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{params.get('tag', '-')},{seed}\n")
    return out


counted.outputs = ("y",)
