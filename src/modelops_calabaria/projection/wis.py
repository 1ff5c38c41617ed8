"""The weighted interval score and interval coverage (Bracher, Ray, Gneiting & Reich 2021, PLoS Comput Biol 17(2): e1008618).

For an observation ``y``, the predictive median ``m`` and ``K`` central intervals
``[l_k, u_k]`` at levels ``1 - alpha_k``:

    IS_alpha(l, u; y) = (u - l) + (2 / alpha) (l - y) 1[y < l] + (2 / alpha) (y - u) 1[y > u]
    WIS = (1 / (K + 1/2)) * ( w_0 |y - m| + sum_k w_k IS_alpha_k ),   w_0 = 1/2,  w_k = alpha_k / 2

(their eq. 2-3; lower is better; in the units of ``y``). With the 23 hub levels
the intervals are the 11 pairs (0.01, 0.99), (0.025, 0.975), (0.05, 0.95), ...,
(0.45, 0.55) around the median. No well-kept, light Python library scores this
(``scoringutils`` is R); the definition is implemented here and checked against
a worked example and against its quantile-loss form, ``WIS = 2/(2K+1) * sum of the
pinball losses`` (their eq. 4). Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def interval_score(lower: np.ndarray, upper: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """IS_alpha of the central (1 - alpha) interval, elementwise."""
    lower, upper, y = np.asarray(lower, float), np.asarray(upper, float), np.asarray(y, float)
    return (upper - lower) + (2.0 / alpha) * np.clip(lower - y, 0, None) + (2.0 / alpha) * np.clip(y - upper, 0, None)


def intervals_of(levels: Sequence[float]) -> list[tuple[int, int, float]]:
    """(lower index, upper index, alpha) of every central interval in sorted quantile ``levels`` (median excluded)."""
    lv = [round(float(x), 10) for x in levels]
    out = []
    for i, lo in enumerate(lv):
        hi = round(1.0 - lo, 10)
        if lo < 0.5 and hi in lv:
            out.append((i, lv.index(hi), round(2 * lo, 10)))
    return out


def wis(quantiles: np.ndarray, levels: Sequence[float], y: np.ndarray) -> np.ndarray:
    """WIS of each observation; ``quantiles`` is (..., len(levels)) and must include the median (0.5).

    Raises:
        ValueError: no median among the levels.
    """
    q = np.asarray(quantiles, dtype=float)
    y = np.asarray(y, dtype=float)
    lv = [round(float(x), 10) for x in levels]
    if 0.5 not in lv:
        raise ValueError("WIS needs the median (level 0.5) among the quantile levels")
    pairs = intervals_of(lv)
    total = 0.5 * np.abs(y - q[..., lv.index(0.5)])
    for i, j, alpha in pairs:
        total = total + (alpha / 2.0) * interval_score(q[..., i], q[..., j], y, alpha)
    return total / (len(pairs) + 0.5)


def coverage(quantiles: np.ndarray, levels: Sequence[float], y: np.ndarray, width: float) -> np.ndarray:
    """Whether each observation lies in the central ``width`` interval (e.g. 0.95: between the 2.5 % and 97.5 % quantiles).

    Raises:
        ValueError: the levels hold no such interval.
    """
    lv = [round(float(x), 10) for x in levels]
    lo, hi = round((1 - width) / 2, 10), round(1 - (1 - width) / 2, 10)
    if lo not in lv or hi not in lv:
        raise ValueError(f"no {width:g} central interval among the levels")
    q = np.asarray(quantiles, dtype=float)
    y = np.asarray(y, dtype=float)
    return (q[..., lv.index(lo)] <= y) & (y <= q[..., lv.index(hi)])
