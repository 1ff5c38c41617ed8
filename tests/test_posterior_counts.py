"""results.json's ``posterior.n_simulations`` counts every model run the run made: the trials'
replicates and the end-of-run re-evaluation's (a model that counts its own calls; real wire)."""

from __future__ import annotations

import json

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.job import job_from_dict

from conftest import SUPPORT, unique


def test_n_simulations_counts_every_model_call(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("CALABARIA_TEST_CALLS", str(calls))
    data = {"week": list(range(8)), "cases": [10 * (1 + w) for w in range(8)]}
    job = job_from_dict({
        "study": unique("count"), "model": f"{SUPPORT / 'stochastic_models.py'}:counted", "n_replicates": 3,
        "replicate_seeds": "independent", "parameters": {"scale": {"lower": 5.0, "upper": 15.0}},
        "targets": [{"name": "cases", "output": "cases", "data": data, "score": "poisson_nll", "aggregation": "logmeanexp"}],
        "max_trials": 40, "seed": 3, "posterior": {"initial": 20, "per_stage": 10},
        "reevaluate": {"top_k": 4, "replicates": 5},
    }, base_dir=tmp_path)
    settings = Settings(parallel_trials=True, storage="memory", scheduler="inline", local_workers=2, log_format="json")
    result = run_calibration(job, settings, output_dir=tmp_path / "run")
    made = len(calls.read_text().splitlines())
    post = json.loads((tmp_path / "run" / "results.json").read_text())["posterior"]
    assert post["simulations"]["reevaluation"] == 4 * 5 and post["simulations"]["trials"] == 40 * 3
    assert post["n_simulations"] == made == result.posterior["n_simulations"], (post["simulations"], made)
