"""``calabaria validate`` runs the job's real aggregation over its replicates (calibration/preflight.py).

A per-replicate score can be finite while the trial loss is not; validate must see the
trial loss. Real CLI subprocesses, real model files, nothing mocked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import SUPPORT

MODEL = SUPPORT / "stochastic_models.py"


def _job(tmp_path: Path, rows: list[str], replicates: int = 14, posterior: bool = True, **target) -> Path:
    (tmp_path / "cases.csv").write_text("week,cases\n" + "\n".join(rows) + "\n")
    job = {"study": "v", "model": f"{MODEL}:poisson_curve", "n_replicates": replicates, "replicate_seeds": "independent",
           "parameters": {"scale": {"lower": 5.0, "upper": 15.0}},
           "targets": [{"name": "cases", "output": "cases", "data": "cases.csv", "score": "poisson_nll",
                        "aggregation": "synthetic_likelihood", **target}]}
    if posterior:
        job["posterior"] = {"initial": 20}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelops_calabaria", "validate", str(path)], capture_output=True,
                          text=True, timeout=300, cwd=path.parent)


def test_synthetic_likelihood_over_data_with_gaps_validates(tmp_path):
    rows = [f"{w},{10 * (1 + w)}" if w != 3 else f"{w}," for w in range(8)]  # week 3 blank
    proc = _validate(_job(tmp_path, rows))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_trial_loss_that_is_not_finite_fails_validate_with_one_line(tmp_path):
    """Two replicates: every cell pair is perfectly correlated with no sampling spread, the shrinkage
    intensity is 0 and the covariance singular: the per-replicate score is finite, the trial loss is not."""
    rows = [f"{w},{10 * (1 + w)}" for w in range(8)]
    proc = _validate(_job(tmp_path, rows, replicates=2, posterior=False))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "target 'cases'" in errors[0] and "synthetic_likelihood over 2 replicates is inf" in errors[0]
    assert "covariance of 2 replicates is singular" in errors[0]


def test_an_unbiased_estimate_of_zero_is_a_valid_trial_loss(tmp_path):
    """uBSL far from the data estimates the likelihood as 0: a finite stand-in loss (weight 0), not a failure."""
    rows = [f"{w},{1000 * (1 + w)}" for w in range(8)]
    proc = _validate(_job(tmp_path, rows, synthetic_estimator="ubsl"))
    assert proc.returncode == 0 and "estimate is 0 at the midpoint" in proc.stderr, proc.stderr


def test_calibrate_prints_a_warning_line_when_the_posterior_is_not_reliable(tmp_path):
    """30 trials cannot reach an ESS of 100: the terminal shows why and what to do."""
    rows = [f"{w},{10 * (1 + w)}" for w in range(8)]
    job = _job(tmp_path, rows, replicates=3, aggregation="logmeanexp")
    data = yaml.safe_load(job.read_text())
    data.update({"max_trials": 30, "posterior": {"initial": 20, "per_stage": 5}, "reevaluate": {"top_k": 0}})
    job.write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "-m", "modelops_calabaria", "calibrate", str(job), "--scheduler", "inline",
                           "--storage", f"sqlite:///{tmp_path}/s.db", "--output", str(tmp_path / "run"), "--no-report"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    terminal = proc.stdout + proc.stderr  # the log stream the CLI sets up (reporting/progress.py)
    assert "posterior not reliable: effective sample size" in terminal and "what to do:" in terminal, terminal
