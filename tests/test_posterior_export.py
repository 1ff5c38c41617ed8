"""posterior.nc: arviz InferenceData of a posterior run (the optional 'posterior' extra)."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.job import job_from_dict

from conftest import SUPPORT, unique


def _job(tmp_path, **posterior):
    target = {"name": "k", "output": "p", "data": {"i": [0], "k": [7], "n": [20]},
              "score": {"kind": "binomial_nll", "trials_column": "n"}}
    return job_from_dict({"study": unique("nc"), "model": f"{SUPPORT / 'posterior_models.py'}:proportion",
                          "parameters": {"p": {"lower": 0.0, "upper": 1.0}}, "targets": [target], "n_replicates": 1,
                          "max_trials": 200, "seed": 4, "posterior": {"initial": 100, "per_stage": 25, **posterior}},
                         base_dir=tmp_path)


def test_posterior_nc_holds_a_weighted_resample_the_weights_and_the_data(tmp_path):
    pytest.importorskip("arviz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    job = _job(tmp_path, arviz=True)
    settings = Settings(parallel_trials=True, storage="memory", scheduler="inline", local_workers=2, log_format="json")
    result = run_calibration(job, settings, output_dir=tmp_path / "run")
    idata = az.from_netcdf(str(tmp_path / "run" / "posterior.nc"))
    draws = idata.posterior["p"].values.ravel()
    post = result.posterior["parameters"]["p"]
    assert len(draws) == 4000 and abs(draws.mean() - post["mean"]) < 4 * post["mcse"]["mean"] + 0.005
    weights = idata.sample_stats["weight"].values.ravel()
    trials = idata.sample_stats["trial"].values.ravel()
    assert len(weights) == len(trials) == 4000 and (weights > 0).all()
    # a trial's share of the resample is its weight (systematic resampling: within 1/4000)
    number, count = np.unique(trials, return_counts=True)
    top = int(np.argmax(count))
    assert abs(count[top] / 4000 - weights[trials == number[top]][0]) <= 1 / 4000 + 1e-12
    assert idata.observed_data["obs_k"].values.tolist() == [[7.0]]


def test_without_arviz_the_job_is_refused_in_one_line_naming_the_extra(tmp_path, monkeypatch):
    from modelops_calabaria.posterior import check_posterior_job

    monkeypatch.setitem(sys.modules, "arviz", None)  # as if not installed: `import arviz` raises ImportError
    with pytest.raises(JobSpecError) as e:
        check_posterior_job(_job(tmp_path, arviz=True))
    assert e.value.exit_code == 2 and "modelops-calabaria[posterior]" in str(e.value) and "\n" not in str(e.value)
    check_posterior_job(_job(tmp_path))  # not asked for: not needed
