"""Stochastic "models" for the posterior's noise-aware tests (tests/test_posterior_*.py).

Loaded by file path ("path/stochastic_models.py:name").
"""

from __future__ import annotations

import numpy as np

WEEKS = 8


def poisson_curve(params, seed):
    """Poisson counts around ``scale * (1 + week)``: a replicate is one noisy realisation."""
    rng = np.random.default_rng(seed)
    mean = params["scale"] * (1.0 + np.arange(WEEKS))
    return {"cases": rng.poisson(mean).astype(float), "mean": mean}


poisson_curve.outputs = ("cases", "mean")


def counted(params, seed):
    """poisson_curve, appending one line per call to the file named by $CALABARIA_TEST_CALLS: counts model runs."""
    import os

    with open(os.environ["CALABARIA_TEST_CALLS"], "a") as f:
        f.write(f"{seed}\n")
    return poisson_curve(params, seed)


counted.outputs = ("cases", "mean")
