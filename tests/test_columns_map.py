"""A target maps data column names to the output's (``columns: {week_ending: date}``).

Surveillance files rarely use the model's column names; the map renames the data's
columns before anything else reads them, through the real command, and the study
stores the renamed inline table so that a joining worker needs no file.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import unique
from test_multiprocess import env

CLI = [sys.executable, "-m", "modelops_calabaria"]
DATA = Path(__file__).parent / "data" / "keyed"
MODELS = Path(__file__).parent / "support" / "keyed_models.py"


def _renamed_copy(src: Path, dst: Path, names: dict[str, str]) -> None:
    rows = list(csv.reader(src.open()))
    rows[0] = [names.get(c, c) for c in rows[0]]
    with dst.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def _job(tmp_path: Path, data: str, columns: dict[str, str] | None, **target: object) -> Path:
    spec = {"name": "cases", "output": "cases", "data": data, "on": ["date"], "match": "accumulate",
            "score": "poisson_nll", **target}
    if columns is not None:
        spec["columns"] = columns
    job = {"study": unique("cols"), "model": f"{MODELS}:daily_wave",
           "parameters": {"amp": {"lower": 100, "upper": 1000}, "peak": {"lower": 40, "upper": 120}},
           "targets": [spec], "start": [{"amp": 400.0, "peak": 80.0}], "max_trials": 3, "n_replicates": 1,
           "reevaluate": {"top_k": 0}, "report": {"replicates": 0}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env(), cwd=cwd, timeout=240)


@pytest.mark.slow
def test_renamed_columns_give_the_same_losses_as_the_original_file(tmp_path: Path) -> None:
    _renamed_copy(DATA / "weekly_cases.csv", tmp_path / "surveillance.csv", {"date": "week_ending", "cases": "reported"})
    losses = []
    for name, data, columns in (("original", str(DATA / "weekly_cases.csv"), None),
                                ("renamed", "surveillance.csv", {"week_ending": "date", "reported": "cases"})):
        run = tmp_path / name
        run.mkdir()
        job = _job(run, data if name == "original" else str(tmp_path / data), columns)
        done = _run("calibrate", str(job), "--scheduler", "inline", "--no-report", "--output", str(run / "out"), cwd=run)
        assert done.returncode == 0, done.stderr[-2000:]
        trials = list(csv.DictReader((run / "out" / "trials.csv").open()))
        losses.append(float(next(t for t in trials if t["number"] == "0")["loss"]))
        stored = json.loads((run / "out" / "results.json").read_text())
        assert stored["trials"]["COMPLETE"] == 3
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)


@pytest.mark.parametrize("columns, message", [
    ({"week_end": "date"}, "no column 'week_end' to rename (did you mean 'week_ending'?)"),
    ({"week_ending": "date", "reported": "date"}, "renames two data columns to the same name: date"),
    ({"reported": "week_ending"}, "two columns named 'week_ending'"),
])
def test_a_bad_map_is_one_line_and_creates_nothing(tmp_path: Path, columns: dict[str, str], message: str) -> None:
    _renamed_copy(DATA / "weekly_cases.csv", tmp_path / "surveillance.csv", {"date": "week_ending", "cases": "reported"})
    job = _job(tmp_path, str(tmp_path / "surveillance.csv"), columns)
    done = _run("validate", str(job), "--no-run", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()
