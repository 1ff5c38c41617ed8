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


def _job(tmp_path: Path, rows: list[str], **target) -> Path:
    (tmp_path / "cases.csv").write_text("week,cases\n" + "\n".join(rows) + "\n")
    job = {"study": "v", "model": f"{MODEL}:poisson_curve", "n_replicates": 14, "replicate_seeds": "independent",
           "parameters": {"scale": {"lower": 5.0, "upper": 15.0}},
           "targets": [{"name": "cases", "output": "cases", "data": "cases.csv", "score": "poisson_nll",
                        "aggregation": "synthetic_likelihood", **target}],
           "posterior": {"initial": 20}}
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
    rows = [f"{w},{1000 * (1 + w)}" for w in range(8)]  # far outside every replicate: uBSL estimate 0
    proc = _validate(_job(tmp_path, rows, synthetic_estimator="ubsl"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "target 'cases'" in errors[0] and "synthetic_likelihood over 14 replicates is inf" in errors[0]
    assert "outside the replicates' spread" in errors[0]
