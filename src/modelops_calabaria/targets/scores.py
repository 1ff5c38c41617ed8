"""Scores: losses (lower is better) comparing a simulated array with observations.

Pure functions of arrays of the same shape (n, m); likelihood scores return
the negative log-likelihood summed over every cell. Also the replicate
aggregations. No I/O here.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import betaln, gammaln, logsumexp

from modelops_calabaria.job import ScoreSpec


def _log_binom(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def score(spec: ScoreSpec, sim: np.ndarray, obs: np.ndarray, trials: np.ndarray | None = None) -> float:
    """Loss of ``sim`` against ``obs`` (same shape) under ``spec``."""
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
    p = np.clip(sim, spec.floor, 1 - spec.floor)
    if kind == "binomial_nll":
        ll = _log_binom(trials, obs) + obs * np.log(p) + (trials - obs) * np.log1p(-p)
        return float(-ll.sum())
    if kind == "betabinomial_nll":
        phi = float(spec.dispersion)  # type: ignore[arg-type]
        a, b = p * phi, (1 - p) * phi
        ll = _log_binom(trials, obs) + betaln(obs + a, trials - obs + b) - betaln(a, b)
        return float(-ll.sum())
    raise ValueError(f"unknown score {kind!r}")  # unreachable: ScoreSpec validates kind


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
