"""Custom scores: ``score: {kind: custom, function: path/file.py:fn}`` (targets/custom.py).

The user's file runs on the Dask worker processes; its value is the target's loss in
trials.csv and the report; the validate run refuses a function that fails, returns
something other than a finite number, or answers twice differently; a posterior refuses
it unless it declares itself a negative log-likelihood.
"""

from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.job import job_from_dict
from modelops_calabaria.posterior import check_posterior_job
from modelops_calabaria.targets.evaluate import compile_targets

from conftest import unique

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "seir"
CLI = [sys.executable, "-m", "modelops_calabaria"]

SCORES = '''
import os
import numpy as np

def mae(observed, simulated, keys):
    """Mean absolute error over the present cells; writes who ran it."""
    assert observed.shape == simulated.shape and observed.ndim == 2
    assert set(keys) == {"index"} and len(keys["index"]) == observed.shape[0]
    with open(os.path.join(os.path.dirname(__file__), "calls.log"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    present = ~np.isnan(observed)
    return float(np.abs(observed[present] - simulated[present]).mean())

def nan(observed, simulated, keys):
    return float("nan")

def text(observed, simulated, keys):
    return "small"

def moody(observed, simulated, keys):
    return float(np.random.default_rng().random())

def raises(observed, simulated, keys):
    raise ValueError("no good")
'''


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, **(env or {})})


def custom_job(tmp_path: Path, fn: str = "mae", **score) -> Path:
    (tmp_path / "scores.py").write_text(SCORES)
    job = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
    job.update(study=unique("custom"), max_trials=12, n_replicates=2)
    target = job["targets"][0]
    target.update(data=str(EXAMPLE / "cases.csv"), name="abs_error", aggregation="mean_of_scores",
                  score={"kind": "custom", "function": f"scores.py:{fn}", **score})
    second = copy.deepcopy(target)
    second.update(name="poisson", score="poisson_nll", aggregation="score_of_mean")
    job["targets"].append(second)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.mark.slow
def test_a_custom_score_runs_on_the_workers_and_shows_per_target(tmp_path, dask_cluster):
    log = tmp_path / "calls.log"
    job = custom_job(tmp_path)
    proc = cli("calibrate", str(job), "--output", str(tmp_path / "run"), "--scheduler", dask_cluster.scheduler_address,
               "--log-format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from distributed import Client

    with Client(dask_cluster.scheduler_address) as client:
        worker_pids = set(client.run(os.getpid).values())
    callers = {int(line) for line in log.read_text().split()}
    assert callers & worker_pids, (callers, worker_pids)  # scored on the worker processes
    rows = list(csv.DictReader((tmp_path / "run" / "trials.csv").open()))
    assert len(rows) == 12 and {"loss:abs_error", "loss:poisson"} <= set(rows[0])
    for r in rows:
        assert r["state"] == "COMPLETE"
        assert float(r["loss"]) == pytest.approx(float(r["loss:abs_error"]) + float(r["loss:poisson"]), rel=1e-9)
    report = (tmp_path / "run" / "report.html").read_text()
    assert "abs_error" in report


@pytest.mark.parametrize("fn, says", [("nan", "finite"), ("text", "finite"), ("moody", "same inputs"),
                                      ("raises", "no good"), ("absent", "no function named")])
def test_validate_refuses_a_bad_custom_score_in_one_line(tmp_path, fn, says):
    job = custom_job(tmp_path, fn)
    proc = cli("validate", str(job), cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_validate_accepts_a_good_custom_score(tmp_path):
    job = custom_job(tmp_path)
    proc = cli("validate", str(job), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


BASE = {"study": "s", "model": "sir", "parameters": {"beta": {"lower": 0.1, "upper": 1.0}}}


@pytest.mark.parametrize("score, where", [
    ({"kind": "custom"}, "function"),
    ({"kind": "custom", "function": "nocolon"}, "function"),
    ({"kind": "sse", "function": "m:f"}, "function"),
    ({"kind": "sse", "log_likelihood": True}, "log_likelihood"),
])
def test_custom_score_spec_errors(score, where):
    data = dict(BASE, targets=[{"name": "t", "output": "infected", "data": {"t": [0], "y": [1]}, "score": score}])
    with pytest.raises(JobSpecError) as info:
        job_from_dict(data)
    assert where in str(info.value) + str(info.value.problems)


@pytest.mark.parametrize("log_likelihood", [False, True])
def test_a_posterior_takes_a_custom_score_only_as_a_log_likelihood(tmp_path, log_likelihood):
    (tmp_path / "scores.py").write_text(SCORES)
    data = dict(BASE, posterior={}, targets=[{
        "name": "t", "output": "infected", "data": {"t": [0], "y": [1]}, "aggregation": "logmeanexp",
        "score": {"kind": "custom", "function": "scores.py:mae", "log_likelihood": log_likelihood}}])
    if not log_likelihood:
        with pytest.raises(JobSpecError, match="logmeanexp"):
            job_from_dict(data, base_dir=tmp_path)
        data["targets"][0]["aggregation"] = "score_of_mean"
        with pytest.raises(JobSpecError, match="likelihood"):
            check_posterior_job(job_from_dict(data, base_dir=tmp_path))
        return
    check_posterior_job(job_from_dict(data, base_dir=tmp_path))


def test_the_function_gets_the_aligned_cells_with_gaps_as_nan_and_the_keys(tmp_path):
    (tmp_path / "keyed.py").write_text(
        "import numpy as np\n"
        "SEEN = []\n"
        "def f(observed, simulated, keys):\n"
        "    SEEN.append((observed.copy(), simulated.copy(), {k: v.copy() for k, v in keys.items()}))\n"
        "    return float(np.nansum(observed))\n")
    data = dict(BASE, targets=[{"name": "t", "output": "y", "on": ["date"],
                                "data": {"date": ["2024-01-01", "2024-01-08"], "y": [3.0, None]},
                                "score": {"kind": "custom", "function": "keyed.py:f"}}])
    job = job_from_dict(data, base_dir=tmp_path)
    (t,) = compile_targets(job)
    assert Path(t.score.function.rpartition(":")[0]).is_absolute()
    value = t.loss(np.array([[1.0], [2.0]]))
    assert value == 3.0
    from modelops_calabaria.targets.custom import load_function

    seen = sys.modules[load_function(t.score.function).__module__].SEEN[-1]
    assert np.isnan(seen[0][1, 0]) and seen[1].tolist() == [[1.0], [2.0]]
    assert seen[2]["date"].tolist() == list(np.array(["2024-01-01", "2024-01-08"], dtype="datetime64[D]"))
