"""Deterministic "models" whose posteriors are known in closed form (tests/test_posterior*.py).

Loaded by file path ("path/posterior_models.py:name"). Each returns the mean of
the observation model; the job's likelihood score does the rest.
"""

from __future__ import annotations

import numpy as np

T_DESIGN = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # uncentred: slope and intercept correlate


def proportion(params, seed):
    """p: one probability, scored by binomial_nll against k successes out of n."""
    return {"p": np.array([params["p"]])}


def constant(params, seed):
    """mu repeated: normal_nll against n observations with known sigma."""
    return {"y": np.full(50, params["mu"])}


def line(params, seed):
    """a + b * t at T_DESIGN: normal_nll gives a bivariate normal posterior, correlated."""
    return {"y": params["a"] + params["b"] * T_DESIGN}


proportion.outputs = ("p",)
constant.outputs = ("y",)
line.outputs = ("y",)


def slow_constant(params, seed):
    """constant after sleeping ``delay`` seconds (fixed parameter): trials stay in flight long enough to kill."""
    import time

    time.sleep(float(params.get("delay", 0.05)))
    return constant(params, seed)


slow_constant.outputs = ("y",)
