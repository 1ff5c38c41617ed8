"""Weight diagnostics against known answers: Pareto k̂ of generalized-Pareto weights of known
shape, Monte Carlo standard errors against the spread of repeated estimates, the warning rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from modelops_calabaria.posterior.diagnostics import (decimals_for, diagnose, mcse_mean, mcse_quantile, pareto_khat,
                                                       shown, warnings_for)
from modelops_calabaria.posterior.summary import weighted_quantile


@pytest.mark.parametrize("k", [0.2, 0.5, 0.9, 1.3])
def test_pareto_khat_recovers_the_shape_of_generalized_pareto_weights(k):
    rng = np.random.default_rng(int(k * 10))
    estimates = [pareto_khat(np.log(stats.genpareto.rvs(k, size=8000, random_state=rng))) for _ in range(20)]
    # tail of 3·√8000 ≈ 268 points: the estimator's sd is about (1 + k)/√268 ≈ 0.07–0.14; the mean of 20 is within 0.1
    assert np.mean(estimates) == pytest.approx(k, abs=0.1), estimates


def test_pareto_khat_of_bounded_weights_is_small_and_of_too_few_is_undefined():
    rng = np.random.default_rng(1)
    assert pareto_khat(np.log(rng.uniform(0.5, 1.0, 4000))) < 0.2
    assert math.isnan(pareto_khat(np.zeros(5)))


def test_an_importance_sample_with_a_too_narrow_proposal_has_a_large_khat():
    """Proposal N(0, 1), target N(0, 3²): weights ∝ exp(x²(1 − 1/9)/2) have P(w > t) ~ t^(−9/8), a tail of
    shape k = 1 − 1/σ² = 8/9 (infinite variance): k̂ must flag it."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=20000)
    logw = stats.norm.logpdf(x, 0, 3) - stats.norm.logpdf(x)
    assert pareto_khat(logw) > 0.7
    wide = rng.normal(0, 2, size=20000)  # the other way round the weights are bounded
    assert pareto_khat(stats.norm.logpdf(wide) - stats.norm.logpdf(wide, 0, 2)) < 0.5


def test_mcse_matches_the_spread_of_repeated_importance_estimates():
    """Target N(1, 1) from proposal N(0, 2²), 400 draws, 500 repetitions: the sd of the estimates
    (mean and median) agrees with the average reported MCSE within 15 % / 25 %."""
    rng = np.random.default_rng(3)
    means, medians, se_mean, se_median = [], [], [], []
    for _ in range(500):
        x = rng.normal(0, 2, size=400)
        w = np.exp(stats.norm.logpdf(x, 1, 1) - stats.norm.logpdf(x, 0, 2))
        w /= w.sum()
        means.append(w @ x)
        medians.append(weighted_quantile(x, w, 0.5)[0])
        se_mean.append(mcse_mean(x, w))
        se_median.append(mcse_quantile(x, w, 0.5))
    assert np.std(means) / np.mean(se_mean) == pytest.approx(1.0, abs=0.15)
    assert np.std(medians) / np.mean(se_median) == pytest.approx(1.0, abs=0.25)


@pytest.mark.parametrize("ess, top, khat, reasons", [
    (500.0, 0.01, 0.3, []),
    (50.0, 0.01, 0.3, ["effective sample size"]),
    (500.0, 0.89, 0.3, ["holds 89 %"]),
    (500.0, 0.01, 0.9, ["Pareto k̂"]),
    (500.0, 0.01, math.nan, ["Pareto k̂"]),
    (1.25, 0.89, 1.4, ["effective sample size", "holds 89 %", "Pareto k̂"]),
])
def test_warnings_name_every_problem_and_what_to_do(ess, top, khat, reasons):
    lines = warnings_for(ess, top, khat)
    if not reasons:
        assert lines == []
        return
    assert len(lines) == len(reasons) + 1 and all(r in line for r, line in zip(reasons, lines))
    assert lines[-1].startswith("what to do:") and "max_trials" in lines[-1] and "initial" in lines[-1]
    assert "n_replicates" in lines[-1] and "aggregation" in lines[-1]


def test_values_are_shown_to_the_precision_their_mc_error_supports():
    assert decimals_for(0.0031) == 3 and decimals_for(0.03) == 2 and decimals_for(4.2) == 0
    assert shown(0.55491234, 0.0031) == "0.555" and shown(12345.678, 42.0) == "12346"


def test_diagnose_on_a_single_dominant_trial():
    x = np.linspace(0, 1, 200).reshape(-1, 1)
    logw = np.zeros(200)
    logw[17] = 8.0  # 89 % of the weight on one trial, as in the dated age-stratified case
    w = np.exp(logw - logw.max())
    w /= w.sum()
    d = diagnose(["a"], x, logw, w)
    assert d["max_weight"] == pytest.approx(w.max()) and d["max_weight"] > 0.8 and d["ess"] < 2
    assert len(d["warnings"]) == 4 and set(d["mcse"]["a"]) == {"mean", "median", "q2.5", "q97.5"}


def test_a_sample_whose_every_likelihood_estimate_is_zero_has_no_summary_and_says_why():
    from modelops_calabaria.job import job_from_dict
    from modelops_calabaria.posterior.outputs import posterior_summary
    from modelops_calabaria.posterior.records import WeightedSample

    job = job_from_dict({"study": "z", "model": "seir", "parameters": {"a": {"lower": 0.0, "upper": 1.0}},
                         "targets": [{"name": "c", "output": "cases", "data": {"w": [0], "c": [1]}, "score": "poisson_nll"}],
                         "posterior": {"initial": 10}})
    x = np.linspace(0.1, 0.9, 12).reshape(-1, 1)
    sample = WeightedSample(list(range(12)), x, x, np.full(12, -np.inf), ["prior"] * 12, np.zeros(12), 0.0, 0, 0,
                            np.full(12, -np.inf), 12)
    out = posterior_summary(job, sample, 12)
    assert out["parameters"] == {} and "every one of 12 trials has a likelihood estimate of 0" in out["warnings"][0]
