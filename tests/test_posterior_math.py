"""The posterior's pure math, without a cluster: priors, weights, ESS, quantiles, synthetic likelihood, checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.job import ParameterSpec, job_from_dict
from modelops_calabaria.posterior import check_posterior_job
from modelops_calabaria.posterior.imis import PRIOR, Component, ess, log_q_total, log_weights, new_component, normalise
from modelops_calabaria.posterior.prior import joint_prior, prior_of
from modelops_calabaria.posterior.summary import resample, summarise, weighted_quantile
from modelops_calabaria.targets.scores import synthetic_nll

PRIORS = {
    "uniform": ParameterSpec(lower=0.2, upper=1.2),
    "log-uniform": ParameterSpec(lower=0.01, upper=10.0, log=True),
    "normal": ParameterSpec(lower=-1.0, upper=3.0, prior={"dist": "normal", "mean": 0.5, "sd": 0.7}),
    "beta": ParameterSpec(lower=0.05, upper=0.9, prior={"dist": "beta", "a": 2, "b": 5}),
    "gamma": ParameterSpec(lower=0.1, upper=20.0, log=True, prior={"dist": "gamma", "shape": 2, "rate": 0.5}),
}


@pytest.mark.parametrize("name", list(PRIORS))
def test_prior_density_in_the_unconstrained_space_integrates_to_one(name):
    p = prior_of(name, PRIORS[name])
    total, _ = integrate.quad(lambda u: math.exp(p.log_pdf_u(np.array([u]))[0]), -40, 40, limit=400)
    assert total == pytest.approx(1.0, abs=1e-4)
    x = np.linspace(p.lower, p.upper, 7)
    assert np.allclose(p.from_u(p.to_u(x)), x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(PRIORS))
def test_prior_draws_follow_the_prior(name):
    p = prior_of(name, PRIORS[name])
    draws = p.sample_x(np.random.default_rng(1), 4000)
    assert draws.min() >= p.lower and draws.max() <= p.upper
    grid = np.linspace(p.lower, p.upper, 2001)
    cdf = np.concatenate([[0], integrate.cumulative_trapezoid(np.exp(p.log_pdf_x(grid)), grid)])
    result = stats.kstest(draws, lambda v: np.interp(v, grid, cdf / cdf[-1]))
    assert result.pvalue > 0.001


def test_prior_draws_alone_weigh_by_the_likelihood():
    prior = joint_prior({"a": ParameterSpec(lower=0, upper=1)})
    u = prior.sample_u(np.random.default_rng(0), 50)
    loglik = -np.arange(50.0) / 10
    w = normalise(log_weights(u, loglik, [PRIOR] * 50, {}, prior))
    assert np.allclose(w, np.exp(loglik) / np.exp(loglik).sum())


def test_mixture_density_counts_each_source_by_its_draws():
    prior = joint_prior({"a": ParameterSpec(lower=0, upper=1)})
    c = Component((0.3,), ((0.25,),))
    u = np.array([[0.0], [1.0]])
    got = log_q_total(u, [PRIOR, c.id, c.id, c.id], {c.id: c}, prior)
    want = np.log(0.25 * np.exp(prior.log_pdf_u(u)) + 0.75 * stats.norm(0.3, 0.5).pdf(u[:, 0]))
    assert np.allclose(got, want)
    assert Component.from_json(c.to_json()).id == c.id


def test_importance_sampling_recovers_a_normal_posterior_from_a_mixture_proposal():
    """Weights with q_total are right however the sources were chosen: a two-source proposal."""
    rng = np.random.default_rng(5)
    prior = joint_prior({"m": ParameterSpec(lower=-10, upper=10)})
    c = Component((0.3,), ((0.04,),))  # in u; roughly around m = 1.5
    u = np.vstack([prior.sample_u(rng, 400), c.sample(rng, 1600)])
    sources = [PRIOR] * 400 + [c.id] * 1600
    x = prior.from_u(u)[:, 0]
    loglik = stats.norm(1.2, 0.8).logpdf(x)  # flat prior x normal likelihood: posterior N(1.2, 0.8), essentially untruncated
    w = normalise(log_weights(u, loglik, sources, {c.id: c}, prior))
    n_eff = ess(w)
    mean = float(w @ x)
    sd = math.sqrt(float(w @ (x - mean) ** 2))
    assert abs(mean - 1.2) < 4 * 0.8 / math.sqrt(n_eff)
    assert abs(sd - 0.8) < 4 * 0.8 / math.sqrt(2 * n_eff)


def test_new_component_centres_on_the_heaviest_point():
    rng = np.random.default_rng(2)
    u = rng.normal(size=(200, 2))
    w = normalise(-0.5 * ((u - [0.5, -0.2]) ** 2).sum(axis=1) / 0.1)
    comp, centre = new_component(u, w, 30)
    assert centre == int(np.argmax(w))
    assert np.all(np.linalg.eigvalsh(np.array(comp.cov)) > 0)
    _, second = new_component(u, w, 30, exclude=[centre])
    assert second != centre


def test_ess_and_weighted_summaries():
    assert ess(np.full(10, 0.1)) == pytest.approx(10)
    assert ess(np.array([1.0, 0, 0])) == pytest.approx(1)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20000, 2)) @ np.linalg.cholesky([[1.0, 0.6], [0.6, 1.0]]).T
    s = summarise(["a", "b"], x, np.ones(len(x)))
    assert s["correlation"]["a"]["b"] == pytest.approx(0.6, abs=0.03)
    assert s["parameters"]["a"]["ci95"] == pytest.approx([-1.96, 1.96], abs=0.08)
    assert weighted_quantile(np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 0.0]), 0.5)[0] == pytest.approx(2.0)
    idx = resample(np.array([0.0, 0.25, 0.75]), 4000, rng)
    assert np.bincount(idx, minlength=3)[0] == 0 and abs(np.mean(idx == 2) - 0.75) < 0.01


def test_synthetic_likelihood_matches_the_gaussian_it_estimates():
    rng = np.random.default_rng(4)
    mean = np.array([10.0, 20.0, 30.0])
    cov = np.array([[4.0, 3.0, 0.0], [3.0, 9.0, 2.0], [0.0, 2.0, 16.0]])
    sims = rng.multivariate_normal(mean, cov, size=4000).reshape(4000, 3, 1)
    obs = np.array([[12.0], [18.0], [33.0]])
    exact = -stats.multivariate_normal(mean, cov).logpdf(obs[:, 0])
    assert synthetic_nll(sims, obs) == pytest.approx(exact, abs=0.05)
    few = synthetic_nll(sims[:5], obs)  # fewer replicates than cells: shrinkage keeps it finite
    assert math.isfinite(few)


def _job(**overrides):
    data = {"study": "p", "model": "seir", "parameters": {"beta": {"lower": 0.2, "upper": 1.2}},
            "targets": [{"name": "c", "output": "cases", "data": {"w": [0], "c": [1]}, "score": "poisson_nll",
                         "aggregation": "logmeanexp"}],
            "posterior": {"initial": 10}}
    data.update(overrides)
    return job_from_dict(data)


@pytest.mark.parametrize("overrides, where", [
    ({"targets": [{"name": "c", "output": "cases", "data": {"w": [0], "c": [1]}, "score": "sse"}]}, "targets[0].score"),
    ({"targets": [{"name": "c", "output": "cases", "data": {"w": [0], "c": [1]}, "score": "poisson_nll",
                   "aggregation": "mean_of_scores"}]}, "targets[0].aggregation"),
    ({"parameters": {"n": {"kind": "int", "lower": 1, "upper": 5}}}, "parameters.n"),
    ({"direction": "maximize"}, "direction"),
    ({"parameters": {"p": {"lower": 2, "upper": 3, "prior": {"dist": "beta", "a": 2, "b": 2}}}}, "parameters.p.prior"),
])
def test_jobs_whose_loss_is_not_a_likelihood_are_refused(overrides, where):
    with pytest.raises(JobSpecError) as e:
        check_posterior_job(_job(**overrides))
    assert e.value.exit_code == 2 and e.value.problems[0][0] == where


def test_a_likelihood_job_is_accepted():
    check_posterior_job(_job())
    # the default aggregation, score_of_mean, is the likelihood of observation noise around the mean path
    check_posterior_job(_job(targets=[{"name": "c", "output": "cases", "data": {"w": [0], "c": [1]}, "score": "poisson_nll"}]))
    check_posterior_job(_job(n_replicates=1, targets=[
        {"name": "c", "output": "cases", "data": {"w": [0], "c": [1]}, "score": "poisson_nll"}]))


def test_synthetic_likelihood_aggregation_scores_the_replicate_series():
    from modelops_calabaria.targets.evaluate import aggregate_trial, compile_targets, evaluate_replicate

    job = _job(n_replicates=20, targets=[{"name": "c", "output": "cases", "data": {"w": [0, 1], "c": [10, 30]},
                                          "score": "poisson_nll", "aggregation": "synthetic_likelihood"}])
    (target,) = compile_targets(job)
    rng = np.random.default_rng(6)
    series = [np.array([rng.normal(12, 2), rng.normal(28, 3)]) for _ in range(20)]
    evaluated = [evaluate_replicate((target,), {"cases": s}) for s in series]
    assert all("c" in kept for _, kept in evaluated)  # the series are kept for the aggregation
    per_target, loss = aggregate_trial((target,), [s for s, _ in evaluated], [k for _, k in evaluated])
    want = synthetic_nll(np.stack([s.reshape(2, 1) for s in series]), np.array([[10.0], [30.0]]))
    assert per_target["c"] == pytest.approx(want) and loss == pytest.approx(want)
    check_posterior_job(job)


def test_the_ess_stop_rule():
    from modelops_calabaria.calibration.run_state import RunState
    from modelops_calabaria.job import StopSpec

    ess = {"now": None}
    state = RunState("minimize", StopSpec(), 0.0, target_ess=100, ess_probe=lambda: ess["now"])
    assert state.check_stop(1.0) is None  # no stage yet: no ESS
    ess["now"] = 99.5
    assert state.check_stop(1.0) is None
    ess["now"] = 100.2
    assert state.check_stop(2.0) == "target ESS 100 reached (ESS 100.2)"


def test_the_sampler_records_every_draw_before_handing_it_out():
    """Plain Optuna ask/tell on an in-memory study: each point's source is in the study when ask returns."""
    import optuna

    from modelops_calabaria.job import PosteriorSpec
    from modelops_calabaria.posterior import ImisSampler
    from modelops_calabaria.posterior.records import COMPONENT_PREFIX, draw_key, parse_records

    sampler = ImisSampler({"m": ParameterSpec(lower=-5, upper=5)}, PosteriorSpec(initial=20, per_stage=10), seed=3)
    from modelops_calabaria.backend.factory import open_store
    from modelops_calabaria.storage import parse_storage_url

    store = open_store(parse_storage_url("memory"))
    storage = store.optuna_storage
    study = optuna.create_study(sampler=sampler, storage=storage)
    study_id = storage.get_study_id_from_name(study.study_name)
    sampler.attach(store, study_id)

    def attrs() -> dict:
        return storage.get_study_system_attrs(study_id)

    for i in range(50):
        trial = study.ask()
        m = trial.suggest_float("m", -5, 5)
        components, sources = parse_records(attrs())
        source = sources[draw_key(["m"], {"m": m})]
        assert source == PRIOR if i < 20 else source in components
        if i % 7 == 3:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # failures carry no likelihood: left out
        else:
            study.tell(trial, 0.5 * ((m - 1.0) / 0.5) ** 2)
    components, _ = parse_records(attrs())
    assert len(components) == 3 and sum(k.startswith(COMPONENT_PREFIX) for k in attrs()) == 3
    assert all(abs(c.mean[0] - prior_of("m", ParameterSpec(lower=-5, upper=5)).to_u(np.array([1.0]))[0]) < 1.0
               for c in components.values())
