"""Coverage of IMIS credible intervals over 200 synthetic data sets (closed-form posterior).

Normal observations with known sigma, a flat prior much wider than the posterior: the
exact posterior of the mean is N(ȳ, σ²/n), and its 95 % interval covers the truth in 95 %
of data sets. The IMIS sampler (the real one, asked through a real in-memory Optuna study)
runs 150 trials per data set; the weighted 95 % interval must cover the truth at a rate a
one-sided binomial test at 5 % does not reject against 0.95. With 200 data sets the test
rejects a true coverage of 0.90 with probability > 0.8 (checked below), so it can fail.
"""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from scipy import stats

from modelops_calabaria.backend.factory import open_store
from modelops_calabaria.job import job_from_dict
from modelops_calabaria.posterior import build_posterior_sampler
from modelops_calabaria.posterior.summary import weighted_quantile
from modelops_calabaria.storage import parse_storage_url

DATASETS = 200
TRIALS = 150
N_OBS, SIGMA, TRUTH = 10, 2.0, 1.3
ALPHA = 0.05


def _interval(y: np.ndarray, seed: int) -> tuple[float, float]:
    job = job_from_dict({
        "study": f"cov-{seed}", "model": "seir", "seed": seed, "n_replicates": 1,
        "parameters": {"mu": {"lower": -20.0, "upper": 20.0}},
        "targets": [{"name": "c", "output": "cases", "data": {"w": [0], "c": [1]}, "score": "poisson_nll"}],
        "posterior": {"initial": 60, "per_stage": 15}})
    store = open_store(parse_storage_url("memory"))
    sampler = build_posterior_sampler(job)
    study = optuna.create_study(study_name=job.study, storage=store.optuna_storage, sampler=sampler)
    sid = store.study_id(job.study)
    sampler.attach(store, sid, None)
    space = {"mu": FloatDistribution(-20.0, 20.0)}
    for _ in range(TRIALS):
        trial = study.ask(space)
        mu = trial.params["mu"]
        study.tell(trial, float(0.5 * np.sum((y - mu) ** 2) / SIGMA**2))
    sampler._read_new(store.optuna_storage, sid)
    sample = sampler._state.sample()
    lo, hi = weighted_quantile(sample.x[:, 0], sample.weights, [0.025, 0.975])
    return float(lo), float(hi)


@pytest.mark.slow
def test_imis_95_percent_intervals_cover_the_truth_at_their_level_over_200_datasets():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(2026)
    covered = 0
    widths = []
    for k in range(DATASETS):
        y = rng.normal(TRUTH, SIGMA, N_OBS)
        lo, hi = _interval(y, k)
        covered += lo <= TRUTH <= hi
        widths.append(hi - lo)
    exact_width = 2 * 1.959964 * SIGMA / np.sqrt(N_OBS)
    critical = stats.binom.ppf(ALPHA, DATASETS, 0.95)  # reject at or below this
    assert stats.binom.cdf(critical - 1, DATASETS, 0.90) > 0.8  # the test has power against 0.90
    assert stats.binomtest(covered, DATASETS, 0.95, alternative="less").pvalue > ALPHA, (covered, DATASETS)
    assert abs(np.mean(widths) / exact_width - 1) < 0.1, (np.mean(widths), exact_width)
