"""The CLI's own commands: simulate, validate, schema, version, status errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert rows[0] == ["week", "cases"] and len(rows) == len(observed)  # the target's index and column names
    # the true parameters and the generator's seed reproduce the example data exactly
    assert [float(r[1]) for r in rows[1:]] == [float(r[1]) for r in observed[1:]]


@pytest.mark.slow
def test_simulate_replicates_of_best_params_with_plot(tmp_path):
    (tmp_path / "best.yaml").write_text("study: x\nbest_params: {beta: 0.55, reporting_rate: 0.3}\n")
    out = tmp_path / "sim"
    proc = run("simulate", str(JOB), "--best", str(tmp_path), "--replicates", "3", "--plot", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert list(rows[0]) == ["replicate", "seed", "week", "cases"]
    assert sorted({r["replicate"] for r in rows}) == ["0", "1", "2"] and len({r["seed"] for r in rows}) == 3
    from PIL import Image

    assert Image.open(out / "fit-weekly_cases.png").size[0] > 300
    # --params takes the same file; -p overrides one value
    again = run("simulate", str(JOB), "--params", str(tmp_path / "best.yaml"), "-p", "beta=0.9", "--output", str(tmp_path / "s2"))
    assert again.returncode == 0, again.stderr


def test_simulate_bad_outputs_are_one_line_exit_2(tmp_path):
    (tmp_path / "file").write_text("x")
    under_file = run("simulate", str(JOB), "--output", str(tmp_path / "file" / "sim"))
    assert under_file.returncode == 2 and "is a file" in under_file.stderr and len(under_file.stderr.strip().splitlines()) == 1
    (tmp_path / "m.py").write_text("import numpy as np\ndef bare(params, seed):\n    return np.zeros(3)\n")
    job = tmp_path / "job.yaml"
    job.write_text(
        "study: s\nmodel: m.py:bare\nparameters: {a: {lower: 0, upper: 1}}\n"
        "targets: [{name: y, output: y, data: {t: [0, 1], y: [1, 2]}, score: sse}]\n"
    )
    bare = run("simulate", str(job), "--output", str(tmp_path / "sim"))
    assert bare.returncode == 2 and "expected a mapping" in bare.stderr and len(bare.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sim").exists()


def test_help_shows_flags_plainly_and_the_version_command():
    top = run("--help")
    assert top.returncode == 0 and "version" in top.stdout and "report" in top.stdout and "<bool>" not in top.stdout
    calibrate = run("calibrate", "--help")
    assert "--no-report" in calibrate.stdout and "<bool>" not in calibrate.stdout
    assert run("--version").stdout.startswith("modelops-calabaria ")


def test_simulate_rejects_unknown_parameter(tmp_path):
    proc = run("simulate", str(JOB), "-p", "nosuch=1", "--output", str(tmp_path / "sim"))
    assert proc.returncode == 2 and "not a parameter of this job" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "sim").exists()


@pytest.mark.slow
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


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return lines[0]


def test_usage_errors_are_one_line_exit_2(tmp_path):
    for args, piece in ((["calibrate", str(JOB), "--workers", "many"], "--workers"),
                        (["calibrate", str(JOB), "--no-such-flag"], "No such option"),
                        (["simulate", str(JOB), "--seed", str(2**32)], "--seed"),
                        (["worker", "--storage", "sqlite:///x.db"], "--study")):
        proc = run(*args, cwd=tmp_path)
        assert proc.returncode == 2 and piece in _one_error_line(proc), (args, proc.stderr)
        assert "╭" not in proc.stderr  # no boxed usage panel
    assert not list(tmp_path.iterdir())


def test_worker_and_status_check_the_study_name_like_a_job(tmp_path):
    for command in ("worker", "status"):
        proc = run(command, "--study", "a/../../b", "--storage", f"sqlite:///{tmp_path}/s.db", cwd=tmp_path)
        assert proc.returncode == 2 and "not a valid study name" in _one_error_line(proc), proc.stderr
    assert not list(tmp_path.iterdir())


def test_worker_flags_are_checked_before_waiting_for_the_study(tmp_path):
    proc = run("worker", "--study", "s", "--storage", f"sqlite:///{tmp_path}/s.db", "--workers", "100000", "--wait", "30",
               cwd=tmp_path)
    assert proc.returncode == 2 and "--workers must be at most 256" in _one_error_line(proc)
    assert not list(tmp_path.iterdir())


def test_worker_job_file_with_another_study_name_is_refused(tmp_path):
    proc = run("worker", "--study", "other-study", "--storage", f"sqlite:///{tmp_path}/s.db", "--job", str(JOB), "--wait", "0",
               cwd=tmp_path)
    assert proc.returncode == 2 and "is for study 'seir-demo'" in _one_error_line(proc)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_worker_job_file_with_the_stored_model_joins(tmp_path):
    """The check lets the right job through: a worker with the study's own job file works on it."""
    storage = f"sqlite:///{tmp_path}/s.db"
    first = run("calibrate", str(JOB), "--storage", storage, "--max-trials", "3", "--scheduler", "inline",
                "--local-workers", "1", "--output", str(tmp_path / "run"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([*CLI, "calibrate", str(JOB), "--storage", storage, "--extend", "2", "--scheduler", "inline",
                             "--local-workers", "1", "--output", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    joined = run("worker", "--study", "seir-demo", "--storage", storage, "--job", str(JOB), "--scheduler", "inline",
                 "--local-workers", "1", "--wait", "0", "--output", str(tmp_path / "w"), cwd=tmp_path)
    assert joined.returncode == 0, joined.stderr
    assert json.loads(joined.stdout.strip().splitlines()[-1])["trials"]["COMPLETE"] == 5
