"""Posterior predictive draws: what new observations would look like. Pure, no I/O.

A simulation is the *mean* of the observation model its target's score implies
(docs/posterior.md); new data are draws from that observation model around it.
A band of simulations alone leaves the observation noise out and is far too
narrow for data (on a Poisson problem 12 of 20 observed weeks fell outside it;
with Poisson draws added, 1 of 20). :func:`observation_draw` adds it:

| score | one draw of an observation around simulated value ``s`` |
| --- | --- |
| ``poisson_nll`` | Poisson(max(s, floor)) |
| ``negbin_nll`` | negative binomial, mean s, dispersion r (Gamma–Poisson) |
| ``binomial_nll`` | Binomial(trials, s) |
| ``betabinomial_nll`` | Binomial(trials, p), p ~ Beta(s·φ, (1−s)·φ) |
| ``normal_nll`` | Normal(s, sigma) |
| ``sse`` / ``mse`` / ``rmse`` | none: no observation model (the band is the simulations') |

With ``aggregation: synthetic_likelihood`` the model's own run-to-run spread is
the noise the likelihood uses, so the simulations are the draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modelops_calabaria.job import ScoreSpec

NOISE_KINDS = frozenset({"poisson_nll", "negbin_nll", "binomial_nll", "betabinomial_nll", "normal_nll"})


def observation_model(spec: ScoreSpec, aggregation: str) -> str | None:
    """A short name of the observation model draws come from (None: the simulations themselves)."""
    if aggregation == "synthetic_likelihood":
        return None
    return {"poisson_nll": "Poisson", "negbin_nll": f"negative binomial (r = {spec.dispersion:g})" if spec.dispersion else
            "negative binomial", "binomial_nll": "binomial", "betabinomial_nll": "beta-binomial",
            "normal_nll": f"normal (sigma = {spec.sigma:g})" if spec.sigma else "normal"}.get(spec.kind)


def on_data_scale(spec: ScoreSpec, sim: np.ndarray, trials: np.ndarray | None) -> np.ndarray:
    """The simulated mean on the scale of the observations (a probability times its trials for binomials)."""
    sim = np.asarray(sim, dtype=float)
    if spec.kind in ("binomial_nll", "betabinomial_nll") and trials is not None:
        return sim * np.nan_to_num(np.broadcast_to(trials, sim.shape))
    return sim


def observation_draw(spec: ScoreSpec, aggregation: str, sim: np.ndarray, trials: np.ndarray | None,
                     rng: np.random.Generator, dispersion: float | None = None) -> np.ndarray:
    """One draw of new observations around the simulated array ``sim`` (module docstring's table).

    ``trials`` are the binomial denominators (blank ones count as 0 trials);
    ``dispersion`` overrides ``spec.dispersion`` (a per-simulation beta-binomial dispersion).
    Returns an array of ``sim``'s shape on the data's scale.
    """
    sim = np.asarray(sim, dtype=float)
    if aggregation == "synthetic_likelihood" or spec.kind not in NOISE_KINDS:
        return on_data_scale(spec, sim, trials)
    kind = spec.kind
    if kind == "poisson_nll":
        return rng.poisson(np.maximum(sim, spec.floor)).astype(float)
    if kind == "negbin_nll":
        r = float(spec.dispersion)  # type: ignore[arg-type]
        return rng.poisson(rng.gamma(r, np.maximum(sim, spec.floor) / r)).astype(float)
    if kind == "normal_nll":
        return sim + float(spec.sigma) * rng.standard_normal(sim.shape)  # type: ignore[arg-type]
    n = np.nan_to_num(np.broadcast_to(np.asarray(trials, dtype=float), sim.shape)).astype(np.int64)
    p = np.clip(sim, spec.floor, 1 - spec.floor)
    if kind == "betabinomial_nll":
        phi = float(dispersion if dispersion is not None else spec.dispersion)  # type: ignore[arg-type]
        p = rng.beta(p * phi, (1 - p) * phi)
    return rng.binomial(n, p).astype(float)


def band(draws: np.ndarray, levels: Sequence[float] = (0.5, 0.95)) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """Equal-tailed bands ``{level: (lower, upper)}`` over the first axis of ``draws`` (k, ...)."""
    out = {}
    for level in levels:
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        out[level] = (lo, hi)
    return out


def coverage(obs: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[int, int, int]:
    """``(inside, on_or_inside, n)`` over the observed (non-NaN) cells: strictly inside the band,
    inside or on its edge, and how many cells. For discrete data both bracket the nominal rate."""
    obs = np.asarray(obs, dtype=float)
    present = ~np.isnan(obs)
    o, lo, hi = obs[present], np.asarray(lower)[present], np.asarray(upper)[present]
    return int(((o > lo) & (o < hi)).sum()), int(((o >= lo) & (o <= hi)).sum()), int(present.sum())
