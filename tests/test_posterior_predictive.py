"""The posterior predictive band includes the observation model (posterior/predictive.py).

Data drawn from the model at known parameters must fall inside the band at its nominal
rate: a binomial test over many cells, seeded. For discrete data an observation can sit
on a band edge, so the rate strictly inside may not exceed the nominal rate and the rate
inside-or-on may not fall short of it (both one-sided tests must pass). The band of the
simulated mean alone fails the same test (so the test can fail).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from modelops_calabaria.job import ScoreSpec
from modelops_calabaria.posterior.predictive import band, coverage, observation_draw, observation_model

CELLS = 12
DATASETS = 50
LEVEL = 0.9
ALPHA = 0.001

FORMS = {  # score -> (spec, true simulated mean per cell, trials)
    "poisson_nll": (ScoreSpec(kind="poisson_nll"), np.linspace(2, 60, CELLS), None),
    "negbin_nll": (ScoreSpec(kind="negbin_nll", dispersion=5.0), np.linspace(2, 60, CELLS), None),
    "binomial_nll": (ScoreSpec(kind="binomial_nll", trials_column="n"), np.linspace(0.05, 0.6, CELLS),
                     np.full((CELLS, 1), 40.0)),
    "betabinomial_nll": (ScoreSpec(kind="betabinomial_nll", dispersion=20.0, trials_column="n"),
                         np.linspace(0.05, 0.6, CELLS), np.full((CELLS, 1), 40.0)),
    "normal_nll": (ScoreSpec(kind="normal_nll", sigma=3.0), np.linspace(-5, 5, CELLS), None),
}


def _truth_draws(spec, mean, trials, rng, k):
    """Observations from the true generative process (scipy, independent of the code under test)."""
    n = None if trials is None else trials[:, 0]
    if spec.kind == "poisson_nll":
        return stats.poisson.rvs(mean, size=(k, CELLS), random_state=rng)
    if spec.kind == "negbin_nll":
        r = spec.dispersion
        return stats.nbinom.rvs(r, r / (r + mean), size=(k, CELLS), random_state=rng)
    if spec.kind == "binomial_nll":
        return stats.binom.rvs(n.astype(int), mean, size=(k, CELLS), random_state=rng)
    if spec.kind == "betabinomial_nll":
        phi = spec.dispersion
        return stats.betabinom.rvs(n.astype(int), mean * phi, (1 - mean) * phi, size=(k, CELLS), random_state=rng)
    return stats.norm.rvs(mean, spec.sigma, size=(k, CELLS), random_state=rng)


@pytest.mark.parametrize("kind", list(FORMS))
def test_the_band_covers_data_from_the_model_at_its_nominal_rate(kind):
    spec, mean, trials = FORMS[kind]
    rng = np.random.default_rng(list(FORMS).index(kind))
    sim = mean.reshape(CELLS, 1)
    draws = np.stack([observation_draw(spec, "score_of_mean", sim, trials, rng) for _ in range(4000)])
    lo, hi = band(draws, (LEVEL,))[LEVEL]
    data = _truth_draws(spec, mean, trials, rng, DATASETS).reshape(DATASETS, CELLS, 1).astype(float)
    inside = on_or_inside = n = 0
    for y in data:
        a, b, c = coverage(y, lo, hi)
        inside, on_or_inside, n = inside + a, on_or_inside + b, n + c
    assert n == DATASETS * CELLS
    if kind == "normal_nll":
        assert stats.binomtest(inside, n, LEVEL).pvalue > ALPHA, (inside, n)
    else:
        assert stats.binomtest(on_or_inside, n, LEVEL, alternative="less").pvalue > ALPHA, (on_or_inside, n)
        assert stats.binomtest(inside, n, LEVEL, alternative="greater").pvalue > ALPHA, (inside, n)
    # the band of the simulated mean alone (what the figure drew before) fails the same test
    mean_scale = sim * (trials if trials is not None else 1.0)
    only = sum(coverage(y, mean_scale, mean_scale)[1] for y in data)
    assert stats.binomtest(only, n, LEVEL, alternative="less").pvalue < ALPHA
    assert observation_model(spec, "score_of_mean") is not None


def test_a_synthetic_likelihood_band_is_the_simulations_and_sse_has_no_observation_model():
    rng = np.random.default_rng(0)
    sim = np.array([[3.5], [7.25]])
    spec = ScoreSpec(kind="poisson_nll")
    assert np.array_equal(observation_draw(spec, "synthetic_likelihood", sim, None, rng), sim)
    assert observation_model(spec, "synthetic_likelihood") is None
    assert np.array_equal(observation_draw(ScoreSpec(kind="sse"), "score_of_mean", sim, None, rng), sim)
    assert observation_model(ScoreSpec(kind="sse"), "score_of_mean") is None
