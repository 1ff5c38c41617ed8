"""Scores: losses (lower is better) comparing a simulated array with observations.

Pure functions of arrays of the same shape (n, m); likelihood scores return
the negative log-likelihood summed over every cell. Also the replicate
aggregations. No I/O here.

Gaps, one rule everywhere: an observed cell that is NaN (a blank in the data)
contributes nothing. :func:`score` leaves it out of the sum (and out of the
denominator of ``mse``/``rmse``); :func:`synthetic_nll` and :func:`ubsl_nll`
leave it out of the mean and covariance, i.e. they are the Gaussian density
of the observed cells only. ``score_of_mean``, ``mean_of_scores`` and
``logmeanexp`` aggregate per-replicate scores or a replicate mean scored by
:func:`score`, so they inherit the rule.
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
    present = ~np.isnan(obs)
    if not present.all():  # a gap contributes nothing (module docstring)
        if trials is not None:
            trials = np.broadcast_to(np.asarray(trials, dtype=float), obs.shape)[present]
        sim, obs = np.broadcast_to(sim, obs.shape)[present], obs[present]
        if obs.size == 0:
            return 0.0
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


def _observed_cells(sims: np.ndarray, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The replicate series (R, cells) and observations (cells,) at the observed (non-NaN) cells."""
    x = np.asarray(sims, dtype=float).reshape(len(sims), -1)
    y = np.asarray(obs, dtype=float).reshape(-1)
    present = ~np.isnan(y)
    return x[:, present], y[present]


def synthetic_nll(sims: np.ndarray, obs: np.ndarray, min_var: float = 1.0) -> float:
    """Synthetic likelihood (Wood 2010): the NLL of ``obs`` under a Gaussian whose mean and
    covariance are those of the replicate series ``sims`` (R, n, m), cells flattened.
    Gaps (NaN in ``obs``) are left out: the density is that of the observed cells.

    The Gaussian density evaluated at estimated parameters is a biased estimate of the
    Gaussian density itself, and the bias depends on R (:func:`ubsl_nll` is not).

    With few replicates the sample covariance is singular; it is shrunk towards its
    diagonal with the Schäfer–Strimmer (2005) intensity estimated from the replicates.
    Variances are floored at ``min_var`` (one count), so a cell every replicate agrees
    on does not make the likelihood infinite.
    """
    x, y = _observed_cells(sims, obs)
    if y.size == 0:
        return 0.0
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


ZERO_LIKELIHOOD_NLL = 1e300
"""The trial loss that stands for a likelihood estimate of exactly 0 (uBSL outside the
replicates' spread): finite, so the trial completes (a run is not stopped as a failure
storm, an optimiser sees a very bad loss), and read back as weight 0 by the posterior
(:func:`is_zero_likelihood`)."""


def is_zero_likelihood(loss: float) -> bool:
    """Whether a trial loss is :data:`ZERO_LIKELIHOOD_NLL` (or beyond): a likelihood estimate of 0."""
    return loss >= ZERO_LIKELIHOOD_NLL


def ubsl_min_replicates(cells: int) -> int:
    """The fewest replicates :func:`ubsl_nll` is defined for: ``cells + 4`` (R > d + 3)."""
    return cells + 4


def ubsl_nll(sims: np.ndarray, obs: np.ndarray, min_var: float = 1.0) -> float:
    """Unbiased synthetic likelihood (uBSL; Price, Drovandi, Lee & Nott 2018): ``-log`` of
    the Ghurye & Olkin (1969) estimator of the Gaussian density of ``obs``, whose mean
    and covariance are those of the distribution the R replicate series ``sims`` (R, n, m)
    are drawn from. Its *expectation over replicate sets* equals the Gaussian density
    exactly, for every R > d + 3 (d observed cells), so the target a posterior weighs
    with it does not move with R (the plug-in :func:`synthetic_nll` does).

    With ``M = (R-1) Σ_R`` and ``a = y - mean_R``, the estimate is
    ``(2π)^{-d/2} c(d,R-2) / (c(d,R-1) (1-1/R)^{d/2}) |M|^{-1/2} (1 - aᵀM⁻¹a/(1-1/R))^{(R-d-3)/2}``
    when the last factor is positive, and 0 (NLL ``inf``) otherwise, with
    ``c(k,v) = 2^{-kv/2} π^{-k(k-1)/4} / Π_{i=1..k} Γ((v-i+1)/2)`` (the determinant
    lemma turns the estimator's ``ψ(M - aaᵀ/(1-1/R))`` into the factor above).

    ``min_var`` > 0 adds independent N(0, min_var) noise to every replicate cell (seeded
    from the replicate values, so the result is a function of its inputs): the estimate is
    then unbiased for the Gaussian with covariance ``Σ + min_var·I``, and a cell every
    replicate agrees on (a zero early in an epidemic) does not make it undefined.
    Gaps (NaN in ``obs``) are left out, as everywhere.

    Raises:
        ValueError: fewer replicates than :func:`ubsl_min_replicates` of the observed cells.
    """
    x, y = _observed_cells(sims, obs)
    r, d = x.shape
    if d == 0:
        return 0.0
    if r < ubsl_min_replicates(d):
        raise ValueError(f"the unbiased synthetic likelihood needs more than {d + 3} replicates for {d} observed "
                         f"cells, got {r}")
    if min_var > 0:
        seed = np.frombuffer(np.ascontiguousarray(x).tobytes(), dtype=np.uint32)
        rng = np.random.default_rng(np.bitwise_xor.reduce(seed) if seed.size else 0)
        x = x + math.sqrt(min_var) * rng.standard_normal(x.shape)
    mean = x.mean(axis=0)
    dev = x - mean
    m = dev.T @ dev
    sign, logdet = np.linalg.slogdet(m)
    if sign <= 0:
        return math.inf
    a = y - mean
    q = float(a @ np.linalg.solve(m, a)) / (1 - 1 / r)
    if not q < 1:
        return math.inf

    def log_c(k: int, v: int) -> float:
        i = np.arange(1, k + 1)
        return -k * v / 2 * math.log(2) - k * (k - 1) / 4 * math.log(math.pi) - float(gammaln((v - i + 1) / 2).sum())

    log_p = (-d / 2 * math.log(2 * math.pi) + log_c(d, r - 2) - log_c(d, r - 1) - d / 2 * math.log(1 - 1 / r)
             - 0.5 * logdet + (r - d - 3) / 2 * math.log1p(-q))
    return float(-log_p)
