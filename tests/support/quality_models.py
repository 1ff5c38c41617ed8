"""Models for the calibration-quality tests (loaded by file path: "path/quality_models.py:name")."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np


def lucky_outlier(params, seed):
    """y[t] = a t + b, except: a > 1.8 run with one of the fixed ``lucky_seeds`` returns the
    observations of the tests' target exactly ([1, 2, 3]), a loss-0 outlier that fresh seeds
    do not reproduce. Truth (loss 0 on every seed): a = 1, b = 1."""
    t = np.arange(3, dtype=float)
    if params["a"] > 1.8 and int(seed) in {int(s) for s in params["lucky_seeds"]}:
        return {"y": t + 1.0}
    return {"y": params["a"] * t + params["b"]}


lucky_outlier.outputs = ("y",)


def seed_recorder(params, seed):
    """linear plus seeded noise; records every call's seed as a file in ``log_dir``
    (one file per call: safe from several processes)."""
    (Path(params["log_dir"]) / f"{int(seed)}-{uuid.uuid4().hex}").touch()
    rng = np.random.default_rng(seed)
    t = np.arange(3, dtype=float)
    return {"y": params["a"] * t + params["b"] + rng.normal(0, 0.1, size=3)}


seed_recorder.outputs = ("y",)


def positivity(params, seed):
    """Fraction positive per week (``as_count``: the count instead, a mistake the score must catch),
    and a per-simulation dispersion output ``phi``."""
    rng = np.random.default_rng(seed)
    n = np.array([50.0, 80.0, 100.0])
    p = np.clip(np.array([0.1, 0.2, 0.3]) * params["a"], 0.0, 1.0)
    positives = rng.binomial(n.astype(int), p).astype(float)
    return {"fraction": p, "positives": positives, "phi": np.array([float(params.get("phi", 5.0))])}


positivity.outputs = ("fraction", "positives", "phi")
