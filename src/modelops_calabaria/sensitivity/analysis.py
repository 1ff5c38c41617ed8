"""Sensitivity indices from a sweep's kept summaries (pure; SALib's analysers).

For each summary, ``values`` is (design rows, replicates). The indices are those of the
**replicate mean** of each point (the model's expected output given its parameters); the
replicate noise is reported beside them as

    noise_share = mean over points of the within-point variance (ddof 1)
                  / the variance of every value (points and replicates pooled),

the share of the output's variance that no parameter explains (0 for a deterministic
model; with R replicates the mean's own noise is that within-point variance / R).

- ``sobol``: first-order ``S1`` and total ``ST`` (and ``S2`` with second order), with
  bootstrap half-widths ``*_conf`` at the sweep's ``confidence`` (SALib's
  ``analyze.sobol``); the interval is ``S ± conf``.
- ``morris``: ``mu``, ``mu_star`` (with its bootstrap half-width ``mu_star_conf``) and
  ``sigma`` of the elementary effects, on the search scale (SALib's ``analyze.morris``).
- ``lhs`` / ``grid``: no indices (the outputs are kept; sweep.parquet).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

NO_INDICES = ("lhs", "grid")


def noise_share(values: np.ndarray) -> float:
    """Within-point variance over total variance (0 with one replicate or a constant output)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] < 2:
        return 0.0
    total = float(values.var(ddof=1))
    if not total > 0:
        return 0.0
    return float(values.var(axis=1, ddof=1).mean() / total)


def _floats(values: Any) -> list[float | None]:
    return [None if not math.isfinite(float(v)) else float(v) for v in np.ravel(values)]


def sobol_indices(problem: Mapping[str, Any], y: np.ndarray, *, second_order: bool, resamples: int, confidence: float,
                  seed: int) -> dict[str, Any]:
    """Sobol' indices of one output ``y`` (one value per Saltelli row, in the design's order)."""
    from SALib.analyze import sobol

    with warnings.catch_warnings():  # SALib warns about a constant output; that is reported as zeros
        warnings.simplefilter("ignore")
        res = sobol.analyze(dict(problem), np.asarray(y, dtype=float), calc_second_order=second_order,
                            num_resamples=resamples, conf_level=confidence, print_to_console=False, seed=seed)
    out = {k: _floats(res[k]) for k in ("S1", "S1_conf", "ST", "ST_conf")}
    if second_order:
        out["S2"] = [_floats(row) for row in np.asarray(res["S2"])]
        out["S2_conf"] = [_floats(row) for row in np.asarray(res["S2_conf"])]
    return out


def morris_indices(problem: Mapping[str, Any], x: np.ndarray, y: np.ndarray, *, levels: int, resamples: int,
                   confidence: float, seed: int) -> dict[str, Any]:
    """Morris μ, μ* (with its interval) and σ of one output ``y`` over the design ``x`` (search scale)."""
    from SALib.analyze import morris

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = morris.analyze(dict(problem), np.asarray(x, dtype=float), np.asarray(y, dtype=float),
                             num_resamples=resamples, conf_level=confidence, num_levels=levels, seed=seed)
    return {k: _floats(res[k]) for k in ("mu", "mu_star", "mu_star_conf", "sigma")}


def indices(design: str, problem: Mapping[str, Any], x: np.ndarray, values: np.ndarray, *, second_order: bool = False,
            levels: int = 4, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Indices of one summary: ``values`` (rows, replicates), NaN where a replicate is missing.

    Returns ``{"noise_share", "points", "missing", ...indices}``; without indices (``lhs``,
    ``grid``, or a point with no value at all) only the first three and ``reason``.
    """
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    counts = finite.sum(axis=1) if values.size else np.array([])
    sums = np.where(finite, values, 0.0).sum(axis=1) if values.size else np.array([])
    mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)  # a point without any value stays NaN
    missing = int((~np.isfinite(mean)).sum())
    out: dict[str, Any] = {"noise_share": noise_share(values[finite.all(axis=1)] if values.size else values),
                           "points": int(len(values)), "missing": missing}
    if design in NO_INDICES:
        out["reason"] = f"a {design} design has no indices"
        return out
    if missing:
        out["reason"] = f"{missing} point(s) have no value: indices need every point of the design"
        return out
    if float(np.var(mean)) == 0.0:
        out["reason"] = "the output does not vary over the design"
        return out
    if design == "sobol":
        out.update(sobol_indices(problem, mean, second_order=second_order, resamples=resamples, confidence=confidence, seed=seed))
    else:
        out.update(morris_indices(problem, x, mean, levels=levels, resamples=resamples, confidence=confidence, seed=seed))
    return out
