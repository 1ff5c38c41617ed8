"""How far to trust an importance-weighted sample: ESS, the largest weight, Pareto k̂, Monte
Carlo standard errors, and the warnings they raise. Pure, no I/O.

- **ESS** (Kish): ``1 / Σ w²`` of the normalised weights.
- **Largest weight**: one trial holding most of the weight makes every summary that trial.
- **Pareto k̂** (Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto smoothed importance
  sampling"): the shape of a generalized Pareto fitted (Zhang & Stephens 2009) to the
  largest weights. k̂ < 0.5: the weights' variance is finite; 0.5–0.7: usable with care;
  above 0.7 the ESS and any estimate from the weights are unreliable whatever they say.
- **MCSE** of a self-normalised estimate of ``E[f]``: ``sqrt(Σ w_i² (f_i − μ̂)²)``; of a
  quantile ``q_p``: the weighted quantiles at ``p ± s`` with ``s = sqrt(Σ w_i² (1{x_i ≤ q_p} − p)²)``
  (the CDF's standard error mapped through the quantile function), half their distance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelops_calabaria.posterior.summary import weighted_quantile

MIN_ESS = 100.0
MAX_WEIGHT = 0.1
MAX_KHAT = 0.7


def _gpd_fit(x: np.ndarray) -> tuple[float, float]:
    """Zhang & Stephens (2009) estimate of a generalized Pareto's ``(k, sigma)`` from sorted
    positive exceedances ``x``, with PSIS's weakly informative prior pulling k towards 0.5."""
    n = len(x)
    prior_bs, prior_k = 3.0, 10.0
    m = 30 + int(math.sqrt(n))
    bs = 1 - np.sqrt(m / (np.arange(1, m + 1, dtype=float) - 0.5))
    bs /= prior_bs * x[int(n / 4 + 0.5) - 1]
    bs += 1 / x[-1]
    ks = np.log1p(-bs[:, None] * x).mean(axis=1)
    profile = n * (np.log(-bs / ks) - ks - 1)
    post = 1 / np.exp(profile - profile[:, None]).sum(axis=1)
    keep = post >= 10 * np.finfo(float).eps
    bs, post = bs[keep], post[keep] / post[keep].sum()
    b = float(np.sum(bs * post))
    k = float(np.log1p(-b * x).mean())
    sigma = -k / b
    k = (n * k + prior_k * 0.5) / (n + prior_k)
    return k, sigma


def pareto_khat(logw: np.ndarray) -> float:
    """PSIS's k̂ of the log importance weights (``inf`` when the tail has ≤ 4 points, as PSIS;
    ``nan`` with fewer than 10 finite weights). Tail: the largest ``min(0.2 S, 3 √S)`` weights."""
    lw = np.asarray(logw, dtype=float)
    lw = lw[np.isfinite(lw)]
    s = len(lw)
    if s < 10:
        return math.nan
    lw = np.sort(lw - lw.max())
    tail_len = int(math.ceil(min(0.2 * s, 3 * math.sqrt(s))))
    cutoff = max(lw[-tail_len - 1], math.log(np.finfo(float).tiny))
    tail = lw[lw > cutoff]
    if len(tail) <= 4:
        return math.inf
    exceed = np.exp(tail) - math.exp(cutoff)
    if not exceed.max() > 0:
        return math.inf
    return _gpd_fit(np.sort(exceed))[0]


def mcse_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """Monte Carlo standard error of the self-normalised weighted mean of ``values``."""
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    mu = float(w @ values)
    return float(math.sqrt(np.sum(w * w * (values - mu) ** 2)))


def mcse_quantile(values: np.ndarray, weights: np.ndarray, p: float) -> float:
    """Monte Carlo standard error of the weighted ``p``-quantile (module docstring)."""
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    q = float(weighted_quantile(values, w, p)[0])
    s = float(math.sqrt(np.sum(w * w * ((values <= q) - p) ** 2)))
    lo, hi = weighted_quantile(values, w, [max(p - s, 0.0), min(p + s, 1.0)])
    return float(hi - lo) / 2


def decimals_for(mcse: float, value: float = 0.0) -> int:
    """Decimal places a value with this Monte Carlo error supports: down to the MCSE's first
    significant digit (0 when it is ≥ 1; a generous 6 when it is 0, with a value-relative floor)."""
    if not math.isfinite(mcse):
        return 0
    if mcse <= 0:
        return 6
    return max(0, -int(math.floor(math.log10(mcse))))


def shown(value: float, mcse: float) -> str:
    """``value`` printed to the precision its Monte Carlo error supports."""
    return f"{value:.{decimals_for(mcse, value)}f}"


def diagnose(names: Sequence[str], x: np.ndarray, logw: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
    """results.json's ``posterior.diagnostics``: ESS, largest weight, k̂, MCSE per parameter
    (mean, median, 2.5 % and 97.5 % quantiles) and the warnings (:func:`warnings_for`)."""
    w = np.asarray(weights, dtype=float)
    n = len(w)
    out: dict[str, Any] = {"ess": float(1 / np.sum(w * w)) if n and w.any() else 0.0,
                           "max_weight": float(w.max()) if n else 0.0,
                           "pareto_k": pareto_khat(logw) if n else math.nan}
    mcse: dict[str, dict[str, float]] = {}
    if n and w.any():
        for j, name in enumerate(names):
            col = x[:, j]
            mcse[name] = {"mean": mcse_mean(col, w), "median": mcse_quantile(col, w, 0.5),
                          "q2.5": mcse_quantile(col, w, 0.025), "q97.5": mcse_quantile(col, w, 0.975)}
    out["mcse"] = mcse
    out["warnings"] = warnings_for(out["ess"], out["max_weight"], out["pareto_k"])
    return out


def warnings_for(ess: float, max_weight: float, khat: float) -> list[str]:
    """One line per reason not to trust the sample, each saying what to do (empty when fine)."""
    problems = []
    if ess < MIN_ESS:
        problems.append(f"effective sample size {ess:.1f} is below {MIN_ESS:g}")
    if max_weight > MAX_WEIGHT:
        problems.append(f"one trial holds {100 * max_weight:.0f} % of the weight (above {100 * MAX_WEIGHT:.0f} %)")
    if not (khat <= MAX_KHAT):  # nan (too few weights) and inf count as unreliable too
        problems.append(f"Pareto k̂ of the weights is {khat:.2f} (above {MAX_KHAT}: the weights' tail is too heavy "
                        "for the ESS or the intervals to be trusted)")
    if not problems:
        return []
    advice = ("raise max_trials (more stages), raise posterior.initial (a wider look at the prior before the "
              "mixture adapts), use more n_replicates (a less noisy likelihood estimate), or another aggregation "
              "(synthetic_likelihood for a stochastic model; synthetic_estimator: ubsl)")
    return [f"posterior not reliable: {p}" for p in problems] + [f"what to do: {advice}"]


def ess_by_stage(count_at: Sequence[int], ess_at: Sequence[float]) -> list[dict[str, float]]:
    """``[{"trials": n, "ess": e}, ...]``, rounded for results.json."""
    return [{"trials": int(n), "ess": round(float(e), 2)} for n, e in zip(count_at, ess_at)]
