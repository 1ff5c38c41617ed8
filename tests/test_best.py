"""One definition of the study's best: calibrate, worker, status and report name the same trial."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from modelops_calabaria.reporting.best import Row, current_selection, finished_digest, in_sample_best, study_best

from conftest import support_model, unique
from test_multiprocess import env, run_all

CLI = [sys.executable, "-m", "modelops_calabaria"]
C, F, R = TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING


def test_digest_is_order_free_and_sees_every_finished_trial() -> None:
    rows = [Row(0, C, 1.0), Row(1, F, None), Row(2, C, 0.5)]
    assert finished_digest(rows) == finished_digest(list(reversed(rows)))
    assert finished_digest(rows) == finished_digest([*rows, Row(3, R, None)])  # a running trial is not part of it
    assert finished_digest(rows) != finished_digest([*rows, Row(3, C, 2.0)])
    assert finished_digest(rows) != finished_digest([Row(0, C, 1.0), Row(1, F, None), Row(2, C, 0.25)])


def test_a_stored_selection_counts_only_for_the_trials_it_was_chosen_from() -> None:
    rows = [Row(0, C, 1.0), Row(1, C, 0.5), Row(2, C, 0.7)]
    stored = {"digest": finished_digest(rows), "selection": {"best_trial": 2, "selected_by": "reevaluation"}}
    best, selection = study_best(rows, stored)
    assert best is not None and best.number == 2 and selection == stored["selection"]
    later = [*rows, Row(3, C, 0.9)]  # one more trial finished since: the in-sample best until re-chosen
    assert current_selection(stored, later) is None
    assert study_best(later, stored)[0] == Row(1, C, 0.5)
    assert study_best(rows, {"digest": "x", "selection": {"best_trial": 2}})[0] == Row(1, C, 0.5)
    assert study_best(rows, None)[0] == Row(1, C, 0.5)
    assert study_best(rows, "garbage")[0] == Row(1, C, 0.5)


def test_in_sample_best_ties_go_to_the_lower_number_and_direction_counts() -> None:
    rows = [Row(4, C, 1.0), Row(2, C, 1.0), Row(3, F, None), Row(5, C, float("nan"))]
    assert in_sample_best(rows).number == 2  # type: ignore[union-attr]
    assert in_sample_best([Row(0, C, 1.0), Row(1, C, 3.0)], maximize=True).number == 1  # type: ignore[union-attr]
    assert in_sample_best([Row(0, F, None)]) is None


def _job(tmp_path: Path, study: str) -> Path:
    data = {
        "study": study,
        "model": support_model("noisy_linear"),
        "parameters": {"a": {"lower": 0.0, "upper": 2.0}, "b": {"lower": 0.0, "upper": 2.0}},
        "targets": [{"name": "y", "output": "y", "data": {"t": [0, 1, 2], "y": [1.0, 2.0, 3.0]}, "score": "sse"}],
        "n_replicates": 2,
        "max_trials": 24,
        "seed": 5,
        "reevaluate": {"top_k": 4},
        "report": {"replicates": 0},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_calibrate_worker_status_and_report_name_one_best(tmp_path: Path) -> None:
    study = unique("best")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    job = _job(tmp_path, study)
    worker_cwd = tmp_path / "elsewhere"
    worker_cwd.mkdir()
    procs = [
        subprocess.Popen([*CLI, "calibrate", str(job), "--storage", storage, "--output", str(tmp_path / "run"),
                          "--workers", "2", "--scheduler", "inline", "--no-report"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=tmp_path),
        subprocess.Popen([*CLI, "worker", "--study", study, "--storage", storage, "--workers", "2", "--scheduler", "inline"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=worker_cwd),
    ]
    for code, _out, err in run_all(procs):
        assert code == 0, err[-2000:]
    # The worker writes where the job implies (runs/<study> under its working directory), not a worker-* subdirectory.
    worker_dir = worker_cwd / "runs" / study
    assert (worker_dir / "results.json").is_file(), sorted(p.name for p in worker_cwd.rglob("*"))
    calibrate = json.loads((tmp_path / "run" / "results.json").read_text())
    worker = json.loads((worker_dir / "results.json").read_text())
    status = subprocess.run([*CLI, "status", "--study", study, "--storage", storage, "--json"], capture_output=True,
                            text=True, env=env(), cwd=tmp_path, timeout=120)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["trials"]["total"] == 24
    # The coordinator that ended last re-evaluated the finished study and stored its choice; the other one
    # ended first (its trials done while the other's ran) or on the same trials: every name is one trial.
    assert shown["best_chosen_by"] == "reevaluation"
    finished = [r for r in (calibrate, worker) if r["trials"].get("RUNNING", 0) == 0 and r["trials"]["total"] == 24]
    assert finished, (calibrate["trials"], worker["trials"])  # the last coordinator to end saw every trial finished
    for r in finished:
        assert r["best_trial"] == shown["best_trial"]
        assert r["selection"]["best_trial"] == shown["best_trial"]
    report = subprocess.run([*CLI, "report", "--study", study, "--storage", storage, "--output", str(tmp_path / "r.html"),
                             "--replicates", "0"], capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=180)
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert f"<td>{shown['best_trial']}</td>" in html.replace(" ", "") or f">{shown['best_trial']}<" in html
