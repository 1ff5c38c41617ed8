"""Gaps (blank observed cells): one rule for every score and aggregation, against closed forms.

A missing cell contributes nothing: every aggregation of data with a gap equals the same
aggregation computed by hand on the observed cells only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from modelops_calabaria.job import LIKELIHOOD_SCORES, ScoreSpec
from modelops_calabaria.targets.data import Observed
from modelops_calabaria.targets.evaluate import CompiledTarget, aggregate_trial, evaluate_replicate
from modelops_calabaria.targets.scores import score, synthetic_nll, ubsl_nll

OBS = np.array([[3.0, 5.0], [np.nan, 8.0], [7.0, np.nan], [12.0, 10.0]])
TRIALS = np.array([[20.0], [20.0], [20.0], [25.0]])
PRESENT = ~np.isnan(OBS)

SPECS = {
    "sse": ScoreSpec(kind="sse"), "mse": ScoreSpec(kind="mse"), "rmse": ScoreSpec(kind="rmse"),
    "normal_nll": ScoreSpec(kind="normal_nll", sigma=2.0), "poisson_nll": ScoreSpec(kind="poisson_nll"),
    "negbin_nll": ScoreSpec(kind="negbin_nll", dispersion=4.0),
    "binomial_nll": ScoreSpec(kind="binomial_nll", trials_column="n"), "betabinomial_nll": ScoreSpec(kind="betabinomial_nll", dispersion=30.0, trials_column="n"),
}


def _by_hand(kind: str, sim: np.ndarray) -> float:
    """The score over the observed cells only, from scipy.stats / the definition."""
    o, s = OBS[PRESENT], sim[PRESENT]
    n = np.broadcast_to(TRIALS, OBS.shape)[PRESENT]
    if kind == "sse":
        return float(((s - o) ** 2).sum())
    if kind == "mse":
        return float(((s - o) ** 2).mean())
    if kind == "rmse":
        return math.sqrt(float(((s - o) ** 2).mean()))
    if kind == "normal_nll":
        return float(-stats.norm.logpdf(o, s, 2.0).sum())
    if kind == "poisson_nll":
        return float(-stats.poisson.logpmf(o, s).sum())
    if kind == "negbin_nll":
        return float(-stats.nbinom.logpmf(o, 4.0, 4.0 / (4.0 + s)).sum())
    if kind == "binomial_nll":
        return float(-stats.binom.logpmf(o, n, s).sum())
    return float(-stats.betabinom.logpmf(o, n, s * 30.0, (1 - s) * 30.0).sum())


def _sims(kind: str, rng: np.random.Generator, r: int) -> list[np.ndarray]:
    if kind in ("binomial_nll", "betabinomial_nll"):
        return [rng.uniform(0.1, 0.6, OBS.shape) for _ in range(r)]
    return [np.abs(OBS_FILLED + rng.normal(0, 2, OBS.shape)) + 0.5 for _ in range(r)]


OBS_FILLED = np.nan_to_num(OBS, nan=6.0)


@pytest.mark.parametrize("kind", list(SPECS))
def test_a_gap_contributes_nothing_to_any_score(kind):
    rng = np.random.default_rng(1)
    obs = OBS if kind not in ("binomial_nll", "betabinomial_nll") else OBS
    sim = _sims(kind, rng, 1)[0]
    got = score(SPECS[kind], sim, obs, TRIALS if "binomial" in kind else None)
    assert math.isfinite(got) and got == pytest.approx(_by_hand(kind, sim), rel=1e-10)


AGGREGATIONS = ["mean_of_scores", "score_of_mean", "logmeanexp", "synthetic_likelihood"]


def _cases():
    for agg in AGGREGATIONS:
        kinds = [k for k in SPECS if agg != "logmeanexp" or k in LIKELIHOOD_SCORES]
        if agg == "synthetic_likelihood":
            kinds = ["poisson_nll"]  # the score is unused by the synthetic likelihood
        for kind in kinds:
            yield agg, kind


@pytest.mark.parametrize("agg, kind", list(_cases()))
def test_every_aggregation_with_a_gap_equals_its_closed_form_on_the_observed_cells(agg, kind):
    rng = np.random.default_rng(2)
    obs = Observed(index=np.arange(4), values=OBS, columns=("a", "b"),
                   trials=TRIALS if "binomial" in kind else None, present=PRESENT)
    target = CompiledTarget("t", "x", obs, SPECS[kind], agg, 1.0)
    reps = _sims(kind, rng, 12)
    evaluated = [evaluate_replicate((target,), {"x": r}) for r in reps]
    per_target, loss = aggregate_trial((target,), [e[0] for e in evaluated], [e[1] for e in evaluated])
    if agg == "mean_of_scores":
        want = float(np.mean([_by_hand(kind, r) for r in reps]))
    elif agg == "score_of_mean":
        want = _by_hand(kind, np.mean(reps, axis=0))
    elif agg == "logmeanexp":
        nll = np.array([_by_hand(kind, r) for r in reps])
        want = -math.log(np.mean(np.exp(-(nll - nll.min())))) + nll.min()
    else:
        x = np.stack([r[PRESENT] for r in reps])
        want = synthetic_nll(x.reshape(12, -1, 1), OBS[PRESENT].reshape(-1, 1))
    assert math.isfinite(per_target["t"]) and per_target["t"] == pytest.approx(want, rel=1e-9)
    assert loss == pytest.approx(want, rel=1e-9)


def test_synthetic_likelihood_with_a_gap_is_the_gaussian_density_of_the_observed_cells():
    """Many replicates: the plug-in estimate converges to the exact Gaussian log-density of the
    observed cells (computed by hand from the known mean and covariance)."""
    rng = np.random.default_rng(3)
    mean = np.array([10.0, 20.0, 30.0, 40.0])
    cov = np.array([[4.0, 3.0, 0.0, 1.0], [3.0, 9.0, 2.0, 0.0], [0.0, 2.0, 16.0, 4.0], [1.0, 0.0, 4.0, 25.0]])
    sims = rng.multivariate_normal(mean, cov, size=20000).reshape(20000, 4, 1)
    obs = np.array([[12.0], [np.nan], [33.0], [38.0]])
    keep = [0, 2, 3]
    sub = cov[np.ix_(keep, keep)]
    d = obs[keep, 0] - mean[keep]
    by_hand = 0.5 * (len(keep) * math.log(2 * math.pi) + math.log(np.linalg.det(sub)) + d @ np.linalg.solve(sub, d))
    assert synthetic_nll(sims, obs, min_var=0.0) == pytest.approx(by_hand, abs=0.03)
    assert ubsl_nll(sims[:400], obs, min_var=0.0) == pytest.approx(by_hand, abs=0.3)
    # the same data without the gap's row and column: the same number, bit for bit
    assert synthetic_nll(sims[:50], obs) == synthetic_nll(sims[:50, keep], obs[keep])
