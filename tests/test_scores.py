"""Scores and aggregation against closed forms and scipy.stats (pure, no cluster)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from modelops_calabaria.job import ScoreSpec
from modelops_calabaria.targets.scores import log_mean_exp_loss, score

OBS = np.array([[3.0], [0.0], [7.0], [12.0]])
SIM = np.array([[2.5], [0.4], [9.0], [10.0]])
TRIALS = np.array([[10.0], [5.0], [20.0], [30.0]])


def test_least_squares():
    sq = ((SIM - OBS) ** 2).ravel()
    assert score(ScoreSpec(kind="sse"), SIM, OBS) == pytest.approx(sq.sum())
    assert score(ScoreSpec(kind="mse"), SIM, OBS) == pytest.approx(sq.mean())
    assert score(ScoreSpec(kind="rmse"), SIM, OBS) == pytest.approx(math.sqrt(sq.mean()))


def test_poisson_matches_scipy():
    expected = -stats.poisson.logpmf(OBS, SIM).sum()
    assert score(ScoreSpec(kind="poisson_nll"), SIM, OBS) == pytest.approx(expected)


def test_negative_binomial_matches_scipy():
    r = 4.0
    p = r / (r + SIM)
    expected = -stats.nbinom.logpmf(OBS, r, p).sum()
    assert score(ScoreSpec(kind="negbin_nll", dispersion=r), SIM, OBS) == pytest.approx(expected)


def test_normal_matches_scipy():
    expected = -stats.norm.logpdf(OBS, SIM, 2.0).sum()
    assert score(ScoreSpec(kind="normal_nll", sigma=2.0), SIM, OBS) == pytest.approx(expected)


def test_binomial_and_beta_binomial_match_scipy():
    p = np.array([[0.3], [0.1], [0.4], [0.5]])
    spec = ScoreSpec(kind="binomial_nll", trials_column="n")
    assert score(spec, p, OBS, TRIALS) == pytest.approx(-stats.binom.logpmf(OBS, TRIALS, p).sum())
    phi = 6.0
    bb = ScoreSpec(kind="betabinomial_nll", dispersion=phi, trials_column="n")
    expected = -stats.betabinom.logpmf(OBS, TRIALS, p * phi, (1 - p) * phi).sum()
    assert score(bb, p, OBS, TRIALS) == pytest.approx(expected)


def test_zero_mean_against_a_count_is_large_but_finite():
    value = score(ScoreSpec(kind="poisson_nll"), np.zeros((1, 1)), np.array([[5.0]]))
    assert math.isfinite(value) and value > 50


def test_log_mean_exp_is_nll_of_averaged_likelihood():
    nlls = np.array([10.0, 12.0, 11.0])
    expected = -math.log(np.mean(np.exp(-nlls)))
    assert log_mean_exp_loss(nlls) == pytest.approx(expected)
    # stable far beyond exp's range
    big = np.array([5000.0, 5001.0])
    assert log_mean_exp_loss(big) == pytest.approx(5000.0 - math.log((1 + math.exp(-1)) / 2))


def test_aggregations_over_replicates():
    from modelops_calabaria.targets.data import Observed
    from modelops_calabaria.targets.evaluate import CompiledTarget, aggregate_trial, evaluate_replicate

    obs = Observed(index=np.array([0, 1]), values=np.array([[1.0], [3.0]]), columns=("v",))
    targets = [
        CompiledTarget("mean_of", "x", obs, ScoreSpec(kind="sse"), "mean_of_scores", 1.0),
        CompiledTarget("of_mean", "x", obs, ScoreSpec(kind="sse"), "score_of_mean", 2.0),
        CompiledTarget("lme", "x", obs, ScoreSpec(kind="normal_nll", sigma=1.0), "logmeanexp", 0.5),
    ]
    reps = [np.array([0.0, 2.0]), np.array([2.0, 4.0])]
    evaluated = [evaluate_replicate(targets, {"x": r}) for r in reps]
    per_target, loss = aggregate_trial(targets, [e[0] for e in evaluated], [e[1] for e in evaluated])
    assert per_target["mean_of"] == pytest.approx(2.0)  # each replicate: 1 + 1
    assert per_target["of_mean"] == pytest.approx(0.0)  # mean series [1, 3] equals the data
    nll = [-stats.norm.logpdf([1.0, 3.0], r, 1.0).sum() for r in reps]
    assert per_target["lme"] == pytest.approx(-math.log(np.mean(np.exp(-np.array(nll)))))
    assert loss == pytest.approx(1.0 * 2.0 + 2.0 * 0.0 + 0.5 * per_target["lme"])


def test_alignment_errors_are_specific():
    from modelops_calabaria.errors import SimulationError
    from modelops_calabaria.targets.data import Observed
    from modelops_calabaria.targets.evaluate import CompiledTarget

    obs = Observed(index=np.array([0, 5]), values=np.array([[1.0], [3.0]]), columns=("v",))
    t = CompiledTarget("t", "x", obs, ScoreSpec(kind="sse"), "mean_of_scores", 1.0)
    with pytest.raises(SimulationError, match="no output 'x'"):
        t.align({"y": np.zeros(10)})
    with pytest.raises(SimulationError, match="only 3 rows"):
        t.align({"x": np.zeros(3)})
    with pytest.raises(SimulationError, match="NaN"):
        t.align({"x": np.full(10, np.nan)})
    with pytest.raises(SimulationError, match="2 column"):
        t.align({"x": np.zeros((10, 2))})


@pytest.mark.parametrize("replicates", [8, 12, 30])
def test_ubsl_is_an_unbiased_estimate_of_the_gaussian_density_for_any_replicate_count(replicates):
    """Price et al. (2018): the mean of exp(-ubsl_nll) over many replicate sets equals the exact
    Gaussian density, whatever R (> d + 3). A z-test (|z| < 4, seeded); the same test rejects the
    plug-in synthetic likelihood at small R (so it can fail)."""
    from modelops_calabaria.targets.scores import synthetic_nll, ubsl_nll

    rng = np.random.default_rng(replicates)
    mean = np.array([10.0, 20.0, 30.0])
    cov = np.array([[4.0, 1.5, 0.0], [1.5, 9.0, 2.0], [0.0, 2.0, 16.0]])
    y = np.array([[11.0], [18.5], [33.0]])
    exact = stats.multivariate_normal(mean, cov).pdf(y[:, 0])
    sets = 6000
    draws = rng.multivariate_normal(mean, cov, size=(sets, replicates)).reshape(sets, replicates, 3, 1)
    est = np.exp([-ubsl_nll(d, y, min_var=0.0) for d in draws])
    z = (est.mean() - exact) / (est.std(ddof=1) / math.sqrt(sets))
    assert abs(z) < 4, f"uBSL mean {est.mean():.4g} vs exact {exact:.4g} (z = {z:.1f})"
    if replicates == 8:
        plug = np.exp([-synthetic_nll(d, y, min_var=0.0) for d in draws])
        zp = (plug.mean() - exact) / (plug.std(ddof=1) / math.sqrt(sets))
        assert abs(zp) > 4, "the plug-in estimate is biased at 8 replicates; the test must be able to see it"


def test_ubsl_refuses_too_few_replicates_and_adds_min_var_to_the_covariance():
    from modelops_calabaria.targets.scores import ubsl_nll

    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="more than 6 replicates for 3 observed cells"):
        ubsl_nll(rng.normal(size=(6, 3, 1)), np.zeros((3, 1)))
    same = np.ones((20, 3, 1))  # every replicate agrees: defined only through min_var
    assert math.isfinite(ubsl_nll(same, np.ones((3, 1)))) and ubsl_nll(same, np.ones((3, 1)), min_var=0.0) == math.inf
