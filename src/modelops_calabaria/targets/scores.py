"""Scores: losses (lower is better) comparing a simulated array with observations.

Pure functions of arrays of the same shape (n, m); likelihood scores return
the negative log-likelihood summed over every cell. Also the replicate
aggregations. No I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import betaln, gammaln, logsumexp

from modelops_calabaria.errors import SimulationError
from modelops_calabaria.job import LIKELIHOOD_SCORES, ScoreSpec, TargetSpec

PROBABILITY_SCORES = frozenset({"binomial_nll", "betabinomial_nll"})


def _log_binom(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def check_probability(spec: ScoreSpec, sim: np.ndarray, label: str = "the output") -> None:
    """Binomial-type scores take a probability per cell; anything outside [0, 1]
    (typically a count) would be clipped and scored as nonsense, so it fails the replicate.

    Raises:
        SimulationError: a value of ``sim`` is outside [0, 1], saying what to return.
    """
    bad = (sim < 0) | (sim > 1)
    if bad.any():
        raise SimulationError(
            f"{label}: {spec.kind} scores a probability per observed row, but the simulated values go from "
            f"{float(sim.min()):g} to {float(sim.max()):g} ({int(bad.sum())} of {sim.size} outside [0, 1]); "
            f"return the fraction (e.g. positives / tested) and keep the denominators in the data's "
            f"'{spec.trials_column}' column, or use poisson_nll / negbin_nll for a count"
        )


def dispersion_of(spec: ScoreSpec, outputs: Mapping[str, Any], label: str = "target") -> float | None:
    """The beta-binomial dispersion of one simulation: the constant ``spec.dispersion``,
    or the single positive number the model returned as ``spec.dispersion_output``.

    Raises:
        SimulationError: the dispersion output is missing, not one number, or not > 0.
    """
    if spec.dispersion_output is None:
        return spec.dispersion
    name = spec.dispersion_output
    if name not in outputs:
        raise SimulationError(f"{label}: model returned no output '{name}' (the score's dispersion_output)")
    value = np.asarray(outputs[name], dtype=float).ravel()
    if value.size != 1 or not math.isfinite(value[0]) or value[0] <= 0:
        shown = value[0] if value.size == 1 else f"{value.size} values"
        raise SimulationError(f"{label}: dispersion output '{name}' must be one positive finite number per simulation, got {shown}")
    return float(value[0])


def score(spec: ScoreSpec, sim: np.ndarray, obs: np.ndarray, trials: np.ndarray | None = None,
          dispersion: float | None = None, label: str = "the output") -> float:
    """Loss of ``sim`` against ``obs`` (same shape) under ``spec``.

    ``dispersion`` overrides ``spec.dispersion`` (a per-simulation value, see
    :func:`dispersion_of`); ``label`` names the target in error messages.

    Raises:
        SimulationError: a binomial-type score got values outside [0, 1].
    """
    sim = np.asarray(sim, dtype=float)
    obs = np.asarray(obs, dtype=float)
    kind = spec.kind
    if kind in ("sse", "mse", "rmse"):
        sq = (sim - obs) ** 2
        if kind == "sse":
            return float(sq.sum())
        return float(sq.mean()) if kind == "mse" else math.sqrt(float(sq.mean()))
    if kind == "normal_nll":
        sigma = float(spec.sigma)  # type: ignore[arg-type]
        return float((0.5 * math.log(2 * math.pi * sigma**2) + (obs - sim) ** 2 / (2 * sigma**2)).sum())
    if kind == "poisson_nll":
        mu = np.maximum(sim, spec.floor)
        return float((mu - obs * np.log(mu) + gammaln(obs + 1)).sum())
    if kind == "negbin_nll":
        r = float(spec.dispersion)  # type: ignore[arg-type]
        mu = np.maximum(sim, spec.floor)
        ll = gammaln(obs + r) - gammaln(r) - gammaln(obs + 1) + r * np.log(r / (r + mu)) + obs * np.log(mu / (r + mu))
        return float(-ll.sum())
    assert trials is not None, "binomial scores need trials"
    check_probability(spec, sim, label)
    p = np.clip(sim, spec.floor, 1 - spec.floor)
    if kind == "binomial_nll":
        ll = _log_binom(trials, obs) + obs * np.log(p) + (trials - obs) * np.log1p(-p)
        return float(-ll.sum())
    if kind == "betabinomial_nll":
        phi = float(dispersion if dispersion is not None else spec.dispersion)  # type: ignore[arg-type]
        a, b = p * phi, (1 - p) * phi
        ll = _log_binom(trials, obs) + betaln(obs + a, trials - obs + b) - betaln(a, b)
        return float(-ll.sum())
    raise ValueError(f"unknown score {kind!r}")  # unreachable: ScoreSpec validates kind


LOGMEANEXP_MIN_REPLICATES = 10


def biased_aggregations(targets: Sequence[TargetSpec], n_replicates: int) -> list[tuple[str, str]]:
    """``(problem, fix)`` for each target whose score and aggregation are known to be
    biased for a stochastic model (measured in docs/quality.md).

    - a likelihood with ``mean_of_scores`` estimates E[nll(obs | one simulation)]: each
      replicate's output is taken as the observation model's mean, so simulation noise
      adds to the loss (Jensen) and the fit drifts toward parameters whose simulations
      are less noisy; more replicates do not remove it;
    - ``logmeanexp`` with few replicates: -log of an R-sample average of likelihoods is
      biased upward by O(variance / R), most where replicates disagree most.
    """
    out = []
    for t in targets:
        where = f"target '{t.name}'"
        if t.score.kind in LIKELIHOOD_SCORES and t.aggregation == "mean_of_scores":
            out.append((f"{where}: {t.score.kind} with aggregation mean_of_scores is biased for a stochastic model "
                        "(it scores every replicate as if it were the expected output; more replicates do not fix it)",
                        "use aggregation: score_of_mean (the likelihood of the replicate mean), "
                        f"or logmeanexp with n_replicates >= {LOGMEANEXP_MIN_REPLICATES}"))
        elif t.aggregation == "logmeanexp" and n_replicates < LOGMEANEXP_MIN_REPLICATES:
            out.append((f"{where}: logmeanexp with {n_replicates} replicate(s) overestimates the loss "
                        "(the log of a small average of likelihoods)",
                        f"raise n_replicates to >= {LOGMEANEXP_MIN_REPLICATES}, or use aggregation: score_of_mean"))
    return out


def log_mean_exp_loss(nlls: np.ndarray) -> float:
    """``-log(mean(exp(-nll)))``: the NLL of the replicate-averaged likelihood, computed stably."""
    nlls = np.asarray(nlls, dtype=float)
    return float(-(logsumexp(-nlls) - math.log(len(nlls))))


def synthetic_nll(sims: np.ndarray, obs: np.ndarray, min_var: float = 1.0) -> float:
    """Synthetic likelihood (Wood 2010): the NLL of ``obs`` under a Gaussian whose mean and
    covariance are those of the replicate series ``sims`` (R, n, m), cells flattened.

    With few replicates the sample covariance is singular; it is shrunk towards its
    diagonal with the Schäfer–Strimmer (2005) intensity estimated from the replicates.
    Variances are floored at ``min_var`` (one count), so a cell every replicate agrees
    on does not make the likelihood infinite.
    """
    x = np.asarray(sims, dtype=float).reshape(len(sims), -1)
    y = np.asarray(obs, dtype=float).reshape(-1)
    r = x.shape[0]
    mean = x.mean(axis=0)
    sd = np.sqrt(np.maximum(x.var(axis=0, ddof=1), min_var))
    z = (x - mean) / sd
    corr = (z.T @ z) / (r - 1)
    # Schäfer–Strimmer target D: off-diagonal correlations shrink towards 0.
    w = np.einsum("ki,kj->kij", z, z)
    var_r = r / (r - 1) ** 3 * ((w - w.mean(axis=0)) ** 2).sum(axis=0)
    off = ~np.eye(len(y), dtype=bool)
    denom = float((corr[off] ** 2).sum())
    lam = 1.0 if denom == 0 else float(np.clip(var_r[off].sum() / denom, 0.0, 1.0))
    shrunk = (1 - lam) * corr
    np.fill_diagonal(shrunk, 1.0)
    cov = shrunk * np.outer(sd, sd)
    sign, logdet = np.linalg.slogdet(2 * math.pi * cov)
    if sign <= 0:
        return math.inf
    d = y - mean
    return float(0.5 * (logdet + d @ np.linalg.solve(cov, d)))
