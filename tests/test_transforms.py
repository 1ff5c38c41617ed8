"""Parameter transforms: ``transform: none | log | logit`` (job/parameters.py, calibration/scales.py,
posterior/prior.py). The sampler searches the transformed scale; the study, model and
reports see natural values; a posterior's prior is stated for the natural value."""

from __future__ import annotations

import csv
import math

import numpy as np
import optuna
import pytest
from scipy import integrate, stats

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.calibration.mirror import Mirror
from modelops_calabaria.calibration.study import build_sampler, distributions
from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.job import ParameterSpec, job_from_dict
from modelops_calabaria.posterior.prior import prior_of

from conftest import SUPPORT, unique

MODELS = SUPPORT / "posterior_models.py"

# (spec, error field or None): every form of transform, with log true/false, the default first
FORMS = [
    ({"lower": 0.1, "upper": 0.9}, None),
    ({"lower": 0.1, "upper": 0.9, "transform": "none"}, None),
    ({"lower": 0.1, "upper": 0.9, "transform": "log"}, None),
    ({"lower": 0.1, "upper": 0.9, "transform": "logit"}, None),
    ({"lower": 0.1, "upper": 0.9, "log": True}, None),
    ({"lower": 0.1, "upper": 0.9, "log": True, "transform": "log"}, None),
    ({"lower": 0.1, "upper": 0.9, "log": True, "transform": "none"}, "transform"),
    ({"lower": 0.1, "upper": 0.9, "log": True, "transform": "logit"}, "transform"),
    ({"lower": 0.0, "upper": 0.9, "transform": "logit"}, "lower"),
    ({"lower": 0.1, "upper": 1.0, "transform": "logit"}, "upper"),
    ({"lower": -1.0, "upper": 0.9, "transform": "log"}, "lower"),
    ({"lower": 0.1, "upper": 0.9, "step": 0.1, "transform": "logit"}, "transform"),
    ({"kind": "int", "lower": 1, "upper": 9, "transform": "log"}, "transform"),
    ({"lower": 0.1, "upper": 0.9, "transform": "probit"}, "transform"),
]


def _job(params: dict, **extra):
    data = {"study": unique("tf"), "model": f"{MODELS}:proportion", "parameters": params,
            "targets": [{"name": "k", "output": "p", "data": {"i": [0], "k": [3], "n": [10]},
                         "score": {"kind": "binomial_nll", "trials_column": "n"}}]}
    data.update(extra)
    return job_from_dict(data)


@pytest.mark.parametrize("spec, bad", FORMS, ids=[str(s) for s, _ in FORMS])
def test_transform_forms_are_accepted_or_refused_at_their_field(spec, bad):
    if bad is None:
        job = _job({"p": spec})
        p = job.parameters["p"]
        assert p.log == (spec.get("log", False) or spec.get("transform") == "log")
        assert p.logit == (spec.get("transform") == "logit")
        return
    with pytest.raises(JobSpecError) as info:
        _job({"p": spec})
    assert any(loc.startswith("parameters.p") and (bad in loc or bad == "transform") for loc, _ in info.value.problems), info.value.problems


def test_transform_log_is_optunas_log_float():
    a = distributions(_job({"p": {"lower": 0.01, "upper": 0.9, "transform": "log"}}))["p"]
    b = distributions(_job({"p": {"lower": 0.01, "upper": 0.9, "log": True}}))["p"]
    assert a == b and a.log


@pytest.mark.parametrize("name", ["random", "qmc", "tpe"])
def test_the_sampler_searches_the_logit_scale_and_hands_out_natural_values(name):
    """Uniform on the logit scale of [1e-4, 0.5] puts half the points below 0.01
    (logit 0.01 is half way from logit 1e-4 to 0); uniform on the natural scale, 2 %."""
    lo, hi, n = 1e-4, 0.5, 400
    share = {}
    for transform in ("none", "logit"):
        job = _job({"p": {"lower": lo, "upper": hi, "transform": transform}}, seed=3, sampler={"name": name})
        mirror = Mirror(build_sampler(job), [optuna.study.StudyDirection.MINIMIZE], distributions(job))
        xs = []
        for _ in range(n if name != "tpe" else 10):  # TPE: its random start-up only
            key, params = mirror.sample()
            xs.append(params["p"])
        xs = np.array(xs)
        assert ((xs >= lo) & (xs <= hi)).all()
        share[transform] = float((xs < 0.01).mean())
    if name == "tpe":
        return
    expected = (math.log(0.01 / 0.99) - math.log(lo / (1 - lo))) / (0 - math.log(lo / (1 - lo)))
    assert share["none"] < 0.06
    assert abs(share["logit"] - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_the_mirror_reads_natural_trials_onto_the_logit_scale():
    job = _job({"p": {"lower": 0.01, "upper": 0.99, "transform": "logit"}}, seed=1, sampler={"name": "tpe"})
    space = distributions(job)
    from modelops_calabaria.calibration.mirror import AddTrial

    mirror = Mirror(build_sampler(job), [optuna.study.StudyDirection.MINIMIZE], space)
    # every told trial is best near p = 0.02 (loss = |logit p - logit 0.02|): TPE must come near it
    rng = np.random.default_rng(0)
    events = []
    for i, x in enumerate(rng.uniform(0.01, 0.99, 30)):
        events.append(AddTrial(i, {"p": float(x)}, space, optuna.trial.TrialState.COMPLETE,
                               abs(math.log(x / (1 - x)) - math.log(0.02 / 0.98))))
    mirror.apply(events)
    stored = mirror.trials()[0]
    assert stored.params["p"] == pytest.approx(math.log(events[0].params["p"] / (1 - events[0].params["p"])))
    draws = [mirror.sample()[1]["p"] for _ in range(20)]
    assert np.median(draws) < 0.1


def test_a_calibration_stores_natural_values_and_the_model_sees_them(tmp_path):
    job = _job({"p": {"lower": 0.001, "upper": 0.2, "transform": "logit"}}, seed=2, max_trials=30, n_replicates=1,
               sampler={"name": "random"})
    settings = Settings(parallel_trials=True, storage="memory", scheduler="inline", local_workers=2, log_format="json")
    run_calibration(job, settings, output_dir=tmp_path / "run")
    rows = list(csv.DictReader((tmp_path / "run" / "trials.csv").open()))
    ps = [float(r["p"]) for r in rows]
    assert len(ps) == 30 and all(0.001 <= p <= 0.2 for p in ps)
    assert float(np.median(ps)) < 0.02  # uniform on the natural scale would give a median near 0.1
    # the model's output is the natural value: the loss of each trial is the binomial NLL at it
    for r in rows:
        exact = -stats.binom.logpmf(3, 10, float(r["p"]))
        assert float(r["loss"]) == pytest.approx(exact, rel=1e-6)


LOGIT_PRIORS = {
    "logit-uniform": ParameterSpec(lower=0.02, upper=0.95, transform="logit"),
    "logit-beta": ParameterSpec(lower=0.02, upper=0.95, transform="logit", prior={"dist": "beta", "a": 2, "b": 5}),
}


@pytest.mark.parametrize("name", list(LOGIT_PRIORS))
def test_logit_prior_density_integrates_to_one_and_draws_follow_it(name):
    p = prior_of(name, LOGIT_PRIORS[name])
    total, _ = integrate.quad(lambda u: math.exp(p.log_pdf_u(np.array([u]))[0]), -40, 40, limit=400)
    assert total == pytest.approx(1.0, abs=1e-4)
    total_x, _ = integrate.quad(lambda x: math.exp(p.log_pdf_x(np.array([x]))[0]), p.lower, p.upper, limit=400)
    assert total_x == pytest.approx(1.0, abs=1e-6)
    x = np.linspace(p.lower, p.upper, 7)
    assert np.allclose(p.from_u(p.to_u(x)), x, rtol=1e-9, atol=1e-12)
    draws = p.sample_x(np.random.default_rng(1), 4000)
    grid = np.linspace(p.lower, p.upper, 4001)
    cdf = np.concatenate([[0], integrate.cumulative_trapezoid(np.exp(p.log_pdf_x(grid)), grid)])
    assert stats.kstest(draws, lambda v: np.interp(v, grid, cdf / cdf[-1])).pvalue > 0.001


def test_the_default_logit_prior_is_uniform_on_the_logit_scale():
    p = prior_of("p", LOGIT_PRIORS["logit-uniform"])
    x = np.array([0.05, 0.3, 0.7])
    a, b = math.log(0.02 / 0.98), math.log(0.95 / 0.05)
    assert np.allclose(np.exp(p.log_pdf_x(x)), 1 / ((b - a) * x * (1 - x)))


def _truncated(dist, lo: float, hi: float):
    mass = dist.cdf(hi) - dist.cdf(lo)
    grid = np.linspace(lo, hi, 20001)
    dens = dist.pdf(grid) / mass
    mean = integrate.trapezoid(grid * dens, grid)
    sd = math.sqrt(integrate.trapezoid((grid - mean) ** 2 * dens, grid))
    return mean, sd


@pytest.mark.parametrize("prior", [None, {"dist": "beta", "a": 2, "b": 2}], ids=["default", "beta"])
def test_posterior_of_a_logit_parameter_matches_the_closed_form(tmp_path, prior):
    """Binomial k of n. The default prior is uniform in logit p, density ∝ 1/(p(1-p)):
    posterior Beta(k, n-k); an explicit Beta(2, 2) on p gives Beta(k+2, n-k+2); both truncated."""
    k, n, lo, hi = 3, 40, 0.005, 0.6
    spec = {"lower": lo, "upper": hi, "transform": "logit", **({"prior": prior} if prior else {})}
    job = _job({"p": spec}, seed=5, n_replicates=1, max_trials=400,
               targets=[{"name": "k", "output": "p", "data": {"i": [0], "k": [k], "n": [n]},
                         "score": {"kind": "binomial_nll", "trials_column": "n"}}],
               posterior={"initial": 150, "per_stage": 25})
    settings = Settings(parallel_trials=True, storage="memory", scheduler="inline", local_workers=4, log_format="json")
    post = run_calibration(job, settings, output_dir=tmp_path / "run").posterior
    exact = stats.beta(k, n - k) if prior is None else stats.beta(k + 2, n - k + 2)
    mean, sd = _truncated(exact, lo, hi)
    got, n_eff = post["parameters"]["p"], post["ess"]
    assert n_eff > 100
    assert abs(got["mean"] - mean) < 4 * sd / math.sqrt(n_eff), (got, mean, sd, n_eff)
    assert abs(got["sd"] - sd) < 4 * sd / math.sqrt(2 * n_eff) + 0.02 * sd, (got, mean, sd, n_eff)
