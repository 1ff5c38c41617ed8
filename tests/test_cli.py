"""The CLI's own commands: simulate, validate, schema, version, status errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "modelops_calabaria"]
JOB = ROOT / "examples" / "seir" / "job.yaml"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_simulate_writes_one_csv_per_output(tmp_path):
    proc = run("simulate", str(JOB), "-p", "beta=0.55", "-p", "reporting_rate=0.3", "--seed", "20261123",
               "--output", str(tmp_path / "sim"))
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in (tmp_path / "sim").iterdir())
    assert files == ["attack_rate.csv", "cases.csv", "incidence.csv", "prevalence.csv"]
    rows = list(csv.reader((tmp_path / "sim" / "cases.csv").open()))
    observed = list(csv.reader((ROOT / "examples" / "seir" / "cases.csv").open()))
    assert rows[0] == ["index", "value"] and len(rows) == len(observed)
    # the true parameters and the generator's seed reproduce the example data exactly
    assert [float(r[1]) for r in rows[1:]] == [float(r[1]) for r in observed[1:]]


def test_simulate_rejects_unknown_parameter(tmp_path):
    proc = run("simulate", str(JOB), "-p", "nosuch=1", "--output", str(tmp_path / "sim"))
    assert proc.returncode == 2 and "not a parameter of this job" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "sim").exists()


def test_validate_and_schema_and_version():
    ok = run("validate", str(JOB))
    assert ok.returncode == 0 and "valid" in ok.stdout and "2 parameters" in ok.stdout
    schema = json.loads(run("schema").stdout)
    assert {"study", "model", "parameters", "targets"} <= set(schema["properties"])
    version = run("version")
    assert version.returncode == 0 and version.stdout.startswith("modelops-calabaria ")


def test_status_of_missing_study_is_a_clear_error(tmp_path):
    proc = run("status", "--study", "nope", "--storage", f"sqlite:///{tmp_path}/x.db")
    assert proc.returncode == 1 and "study 'nope' does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.db").exists()  # asking about a study creates nothing
