"""Posterior runs through the real wire (inline backend), against closed-form posteriors.

Tolerances follow from the effective sample size the run reports: an
importance-sampling mean is off by about sd/√ESS, an sd by about sd/√(2·ESS);
each check allows 4 of those plus a small term for the interval's finite budget.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.job import job_from_dict

from conftest import SUPPORT, unique

MODELS = SUPPORT / "posterior_models.py"
T_DESIGN = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])


def settings(storage: str = "memory", parallel: bool = True, fast_path: bool = True) -> Settings:
    return Settings(parallel_trials=parallel, storage=storage, scheduler="inline", local_workers=4, log_format="json",
                    fast_path=fast_path)


def posterior_job(tmp_path: Path, model: str, parameters: dict, target: dict, **overrides):
    data = {
        "study": unique("post"), "model": f"{MODELS}:{model}", "parameters": parameters, "targets": [target],
        "n_replicates": 1, "max_trials": 400, "seed": 11, "posterior": {"initial": 150, "per_stage": 25},
    }
    data.update(overrides)
    return job_from_dict(data, base_dir=tmp_path)


def normal_mean_job(tmp_path: Path, y: np.ndarray, sigma: float, bound: float = 20.0, **overrides):
    target = {"name": "y", "output": "y", "data": {"i": list(range(len(y))), "y": [float(v) for v in y]},
              "score": {"kind": "normal_nll", "sigma": sigma}, "aggregation": "logmeanexp"}
    return posterior_job(tmp_path, "constant", {"mu": {"lower": -bound, "upper": bound}}, target, **overrides)


def close(got: dict, mean: float, sd: float, n_eff: float) -> None:
    assert abs(got["mean"] - mean) < 4 * sd / math.sqrt(n_eff), (got, mean, sd, n_eff)
    assert abs(got["sd"] - sd) < 4 * sd / math.sqrt(2 * n_eff) + 0.02 * sd, (got, mean, sd, n_eff)


def test_binomial_counts_with_a_uniform_prior_give_the_beta_posterior(tmp_path):
    k, n = 7, 20
    target = {"name": "k", "output": "p", "data": {"i": [0], "k": [k], "n": [n]},
              "score": {"kind": "binomial_nll", "trials_column": "n"}}
    job = posterior_job(tmp_path, "proportion", {"p": {"lower": 0.0, "upper": 1.0}}, target)
    result = run_calibration(job, settings(), output_dir=tmp_path / "run")
    post = result.posterior
    exact = stats.beta(k + 1, n - k + 1)
    assert post["ess"] > 100 and post["n_trials"] == 400 and post["unrecorded_trials"] == 0
    close(post["parameters"]["p"], exact.mean(), exact.std(), post["ess"])
    lo, hi = post["parameters"]["p"]["ci95"]
    assert lo == pytest.approx(exact.ppf(0.025), abs=0.04) and hi == pytest.approx(exact.ppf(0.975), abs=0.04)

    rows = list(csv.DictReader((tmp_path / "run" / "posterior.csv").open()))
    assert len(rows) == 400 and set(rows[0]) == {"trial", "p", "weight"}
    assert sum(float(r["weight"]) for r in rows) == pytest.approx(1.0)
    stored = json.loads((tmp_path / "run" / "results.json").read_text())["posterior"]
    assert stored["ess"] == post["ess"] and set(stored["parameters"]["p"]) == {"mean", "sd", "median", "ci95", "mcse"}


@pytest.mark.parametrize("parallel, fast_path", [(True, True), (False, True), (True, False)],
                         ids=["parallel", "batched", "plain-ask"])
def test_normal_observations_give_the_normal_posterior(tmp_path, parallel, fast_path):
    rng = np.random.default_rng(0)
    y = rng.normal(3.0, 2.0, size=50)
    job = normal_mean_job(tmp_path, y, 2.0)
    post = run_calibration(job, settings(parallel=parallel, fast_path=fast_path), output_dir=tmp_path / "run",
                           concurrency=6).posterior
    close(post["parameters"]["mu"], y.mean(), 2.0 / math.sqrt(50), post["ess"])
    assert post["ess"] > 100


def test_a_correlated_two_parameter_posterior(tmp_path):
    """y = a + b t + N(0, σ²): flat priors give N(OLS, σ² (XᵀX)⁻¹), with a strong a–b correlation."""
    rng = np.random.default_rng(1)
    sigma = 0.5
    y = 1.0 + 0.8 * T_DESIGN + rng.normal(0, sigma, size=len(T_DESIGN))
    x = np.column_stack([np.ones_like(T_DESIGN), T_DESIGN])
    cov = sigma**2 * np.linalg.inv(x.T @ x)
    mean = np.linalg.solve(x.T @ x, x.T @ y)
    target = {"name": "y", "output": "y", "data": {"i": list(range(6)), "y": y.tolist()},
              "score": {"kind": "normal_nll", "sigma": sigma}}
    job = posterior_job(tmp_path, "line", {"a": {"lower": -5.0, "upper": 5.0}, "b": {"lower": -2.0, "upper": 3.0}},
                        target, max_trials=600)
    post = run_calibration(job, settings(), output_dir=tmp_path / "run").posterior
    for j, name in enumerate(("a", "b")):
        close(post["parameters"][name], mean[j], math.sqrt(cov[j, j]), post["ess"])
    r = cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1])
    assert r < -0.8
    assert post["correlation"]["a"]["b"] == pytest.approx(r, abs=4 * (1 - r**2) / math.sqrt(post["ess"]))


@pytest.mark.slow
def test_credible_intervals_cover_the_truth_at_their_level(tmp_path):
    """40 data sets: the 95 % interval covers the true mean Binomial(40, 0.95) times; intervals are not too wide."""
    n_sets, n_obs, sigma = 40, 10, 1.0
    rng = np.random.default_rng(2026)
    covered, width_ratio = 0, []
    for i in range(n_sets):
        truth = rng.uniform(-5, 5)
        y = rng.normal(truth, sigma, size=n_obs)
        job = normal_mean_job(tmp_path, y, sigma, max_trials=160, seed=i,
                              posterior={"initial": 80, "per_stage": 20}, bound=10.0)
        post = run_calibration(job, settings(), output_dir=tmp_path / f"run{i}", concurrency=4).posterior
        lo, hi = post["parameters"]["mu"]["ci95"]
        covered += lo <= truth <= hi
        width_ratio.append((hi - lo) / (2 * 1.959964 * sigma / math.sqrt(n_obs)))
    # Fewer than this many covered happens with probability < 0.5 % if the level is right.
    lowest = int(stats.binom.ppf(0.005, n_sets, 0.95))
    assert lowest <= covered <= n_sets, covered
    assert 0.85 < float(np.mean(width_ratio)) < 1.15, np.mean(width_ratio)


def test_the_run_stops_at_the_target_ess_and_reports_it(tmp_path):
    rng = np.random.default_rng(3)
    job = normal_mean_job(tmp_path, rng.normal(1.0, 2.0, size=50), 2.0, max_trials=2000,
                          posterior={"initial": 100, "per_stage": 25, "target_ess": 150})
    result = run_calibration(job, settings(), output_dir=tmp_path / "run")
    assert result.stop_reason.startswith("target ESS 150 reached")
    assert result.trials["total"] < 2000
    assert result.posterior["ess"] >= 150


@pytest.mark.slow
def test_a_resumed_run_continues_from_what_the_study_records(tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    rng = np.random.default_rng(4)
    job = normal_mean_job(tmp_path, rng.normal(-2.0, 2.0, size=50), 2.0, max_trials=120,
                          posterior={"initial": 80, "per_stage": 20})
    first = run_calibration(job, settings(storage), output_dir=tmp_path / "run").posterior
    second = run_calibration(job, settings(storage), output_dir=tmp_path / "run", max_trials=240).posterior
    assert first["n_trials"] == 120 and second["n_trials"] == 240 and second["unrecorded_trials"] == 0
    assert second["n_components"] > first["n_components"]
    assert second["ess"] > first["ess"]


def test_cli_refuses_a_posterior_of_a_least_squares_loss(tmp_path):
    job = {"study": "bad", "model": f"{MODELS}:constant", "parameters": {"mu": {"lower": 0, "upper": 1}},
           "targets": [{"name": "y", "output": "y", "data": {"i": [0], "y": [1.0]}, "score": "sse"}],
           "posterior": {"initial": 10}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    calabaria = Path(sys.executable).with_name("calabaria")
    proc = subprocess.run([str(calabaria), "calibrate", "job.yaml", "--output", "run", "--scheduler", "inline"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "sse is not one" in errors[0] and "Traceback" not in proc.stderr
    assert "poisson_nll" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


def _line_posterior_run(tmp_path: Path):
    """A finished 200-trial posterior run of the line model (SQLite, run directory tmp_path/run):
    the job, its storage URL and the observed y."""
    storage = f"sqlite:///{tmp_path}/s.db"
    y = 1.0 + 0.8 * T_DESIGN
    target = {"name": "y", "output": "y", "data": {"i": list(range(6)), "y": y.tolist()},
              "score": {"kind": "normal_nll", "sigma": 0.5}}
    job = posterior_job(tmp_path, "line", {"a": {"lower": -5.0, "upper": 5.0}, "b": {"lower": -2.0, "upper": 3.0}},
                        target, max_trials=200, posterior={"initial": 100, "per_stage": 25})
    run_calibration(job, settings(storage), output_dir=tmp_path / "run")
    return job, storage, y


@pytest.mark.slow
def test_figures_show_the_marginals_and_the_predictive_fit(tmp_path):

    from modelops_calabaria.posterior import posterior_figures, study_sample
    from modelops_calabaria.backend.factory import open_store
    from modelops_calabaria.storage import parse_storage_url

    job, storage, y = _line_posterior_run(tmp_path)
    store = open_store(parse_storage_url(storage), 1, read_only=True)
    sample = study_sample(job, store, store.study_id(job.study))
    figures = posterior_figures(job, sample, predictive_draws=10, replicates=1)
    assert len(figures) == 2
    (corner, corner_caption), (fit, fit_caption) = figures
    axes = [ax for ax in corner.axes if ax.get_visible()]
    assert len(axes) == 3 and "ESS" in corner_caption  # two 1-D marginals and one 2-D joint density
    (ax,) = fit.axes
    observed = [line for line in ax.get_lines() if line.get_label() == "observed"][0]
    assert np.allclose(observed.get_ydata(), y) and "resampled" in fit_caption
    assert "normal (sigma = 0.5)" in fit_caption and "observation model" in fit_caption and "prior dashed" in corner_caption
    (_, both_caption), = [f for f in posterior_figures(job, sample, predictive_draws=10, replicates=1, band="both")][1:]
    assert "right, the simulated values alone" in both_caption
    corner.savefig(tmp_path / "corner.png")
    assert (tmp_path / "corner.png").stat().st_size > 1000


@pytest.mark.slow
def test_one_loop_and_one_seed_give_the_same_posterior_study(tmp_path):
    rng = np.random.default_rng(8)
    y = rng.normal(0.5, 1.0, size=50)
    runs = []
    for name in ("first", "second"):
        job = normal_mean_job(tmp_path, y, 1.0, max_trials=60, posterior={"initial": 30, "per_stage": 10})
        result = run_calibration(job, settings(f"sqlite:///{tmp_path}/{name}.db"), output_dir=tmp_path / name,
                                 concurrency=1)
        runs.append(((tmp_path / name / "posterior.csv").read_text().splitlines()[1:], result.posterior["ess"]))
    assert runs[0] == runs[1]


@pytest.mark.slow
def test_the_report_of_a_posterior_run_shows_its_intervals_and_figures(tmp_path):
    """report.html gains a posterior section: the summary table equals results.json's posterior, two figures."""
    import base64
    import re

    from modelops_calabaria.reporting.report import make_report

    job, storage, y = _line_posterior_run(tmp_path)
    path = make_report(tmp_path / "run", study=job.study, storage=storage, scheduler="inline", replicates=2)
    page = path.read_text()
    section = page[page.index('<section id="posterior">'):]
    section = section[: section.index("</section>")]
    posterior = json.loads((tmp_path / "run" / "results.json").read_text())["posterior"]
    from modelops_calabaria.posterior.diagnostics import shown

    for name, summary in posterior["parameters"].items():
        row = re.search(rf'<tr data-key="{name}">(.*?)</tr>', section).group(1)
        assert shown(summary["median"], summary["mcse"]["median"]) in row  # to the digit its MC error supports
    # the banner is there exactly when results.json warns, and says what to do
    assert ('id="posterior-warning"' in section) == bool(posterior["warnings"])
    if posterior["warnings"]:
        assert "what to do" in section
    assert 'id="posterior-diagnostics"' in section and "Pareto" in section
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', section)
    assert len(images) == 2 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert (tmp_path / "run" / "fig-posterior-posterior-1.png").is_file()
