"""Summaries of a weighted sample: moments, quantiles, credible intervals, correlation. Pure, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float | Sequence[float]) -> np.ndarray:
    """Quantiles of a weighted sample: the inverse of its weighted empirical CDF, with
    each point's mass centred on it (so equal weights reproduce the Hazen quantile)."""
    values = np.asarray(values, dtype=float)
    weights = np.asarray(weights, dtype=float)
    keep = weights > 0  # a zero-weight point is no part of the distribution, not even to interpolate to
    values, weights = values[keep], weights[keep]
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cdf = (np.cumsum(w) - 0.5 * w) / w.sum()
    return np.interp(np.atleast_1d(q), cdf, v)


def weighted_moments(x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean vector and covariance of the rows of ``x`` (n, d)."""
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    mean = w @ x
    dev = x - mean
    return mean, (dev * w[:, None]).T @ dev


def summarise(names: Sequence[str], x: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
    """Per-parameter mean, sd, median and 95 % interval; the correlation matrix."""
    mean, cov = weighted_moments(x, weights)
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    params = {}
    for j, name in enumerate(names):
        lo, med, hi = weighted_quantile(x[:, j], weights, [0.025, 0.5, 0.975])
        params[name] = {"mean": float(mean[j]), "sd": float(sd[j]), "median": float(med), "ci95": [float(lo), float(hi)]}
    denom = np.outer(sd, sd)
    corr = np.divide(cov, denom, out=np.zeros_like(cov), where=denom > 0)
    correlation = {a: {b: float(np.clip(corr[i, j], -1, 1)) for j, b in enumerate(names)} for i, a in enumerate(names)}
    return {"parameters": params, "correlation": correlation}


def resample(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` systematic resamples (lower variance than multinomial)."""
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    positions = (rng.random() + np.arange(n)) / n
    return np.minimum(np.searchsorted(np.cumsum(w), positions), len(w) - 1)
