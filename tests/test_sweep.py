"""``calabaria sweep`` end to end: the real command, real Dask workers, SQLite / journal / PostgreSQL.

The kill test runs the SEIR demo's sweep with two coordinators (``calabaria sweep`` and a
joining ``calabaria worker``) on PostgreSQL, SIGKILLs the sweep coordinator mid-run and
restarts it: every design row must end with exactly one COMPLETE trial and its outputs kept.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pyarrow.parquet as pq
import pytest
import yaml
from optuna.trial import TrialState

from modelops_calabaria.backend.factory import open_optuna_storage, open_store
from modelops_calabaria.job import load_job
from modelops_calabaria.job.sweep import POINT_ATTR, SUMMARIES_ATTR
from modelops_calabaria.sensitivity.analysis import indices
from modelops_calabaria.sensitivity.design import problem, scaled_design
from modelops_calabaria.storage import parse_storage_url

from conftest import SUPPORT, unique

sys.path.insert(0, str(SUPPORT))
import ishigami  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "modelops_calabaria"]
PI = math.pi


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def ishigami_job(tmp_path: Path, **sweep) -> Path:
    job = {"study": unique("ishi"), "model": f"{SUPPORT / 'ishigami.py'}:ishigami", "seed": 3,
           "parameters": {f"x{i}": {"lower": -PI, "upper": PI} for i in (1, 2, 3)},
           "sweep": {"design": "sobol", "points": 64, "replicates": 2,
                     "summaries": [{"output": "y"}, {"output": "series", "stat": "peak"}, {"output": "series", "stat": "at", "at": 5}],
                     **sweep}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.sections: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "section":
            self.sections.append(a.get("data-output", ""))


def check_outputs(run: Path, job_path: Path) -> dict:
    """sweep.parquet holds every point x replicate x summary; the indices are the analysis of it."""
    job = load_job(job_path)
    result = json.loads((run / "sensitivity.json").read_text())
    names = [s.label for s in job.sweep.summaries] + [f"loss:{t.name}" for t in job.targets]
    n, reps = job.sweep.size(len(job.parameters)), job.sweep.replicates
    assert result["points"] == result["complete_points"] == n and result["failed_points"] == 0
    table = pq.read_table(run / "sweep.parquet").to_pydict()
    assert len(table["point"]) == n * reps * len(names)
    assert set(table["summary"]) == set(names) == set(result["outputs"])
    x = scaled_design(job)
    for name in names:
        values = np.full((n, reps), np.nan)
        for i, r, s, v in zip(table["point"], table["replicate"], table["summary"], table["value"]):
            if s == name:
                values[i, r] = v
        again = indices(job.sweep.design, problem(job), x, values, second_order=job.sweep.second_order,
                        levels=job.sweep.levels, resamples=job.sweep.bootstrap, confidence=job.sweep.confidence, seed=job.seed)
        assert again == result["outputs"][name]
    page = Page()
    page.feed((run / "sensitivity.html").read_text())
    assert page.sections == names
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    with_indices = [k for k, v in result["outputs"].items() if "reason" not in v]
    assert len(page.images) == len(with_indices)
    return result


@pytest.mark.slow
def test_an_ishigami_sweep_through_the_command_recovers_the_analytic_indices(tmp_path, dask_cluster):
    path = ishigami_job(tmp_path)
    proc = cli("sweep", str(path), "--output", str(tmp_path / "run"), "--scheduler", dask_cluster.scheduler_address,
               "--log-format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["complete"] == 64 * 5
    result = check_outputs(tmp_path / "run", path)
    for name in ("y_final", "series_peak", "series_at_5"):  # the series is y x (0, 0.1, ..., 1): the same indices
        res = result["outputs"][name]
        assert res["noise_share"] == pytest.approx(0.0, abs=1e-12)
        for key in ("S1", "ST"):
            for j in range(3):
                assert abs(res[key][j] - ishigami.EXACT[key][j]) <= res[f"{key}_conf"][j], (name, key, j, res)


@pytest.mark.parametrize("design, storage", [("morris", "journal"), ("lhs", "sqlite"), ("grid", "sqlite")])
def test_designs_and_storages(tmp_path, design, storage):
    sweep = {"design": design, "points": {"morris": 6, "lhs": 20, "grid": 3}[design], "replicates": 1}
    path = ishigami_job(tmp_path, **sweep)
    url = f"journal:///{tmp_path / 'study.journal'}" if storage == "journal" else f"sqlite:///{tmp_path / 'study.db'}"
    proc = cli("sweep", str(path), "--output", str(tmp_path / "run"), "--scheduler", "inline", "--storage", url,
               "--log-format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = check_outputs(tmp_path / "run", path)
    y = result["outputs"]["y_final"]
    if design == "morris":
        assert len(y["mu_star"]) == 3 and all(v >= 0 for v in y["mu_star"])
    else:
        assert "reason" in y
    # run again: the study is done, nothing runs, the same files come out
    again = cli("sweep", str(path), "--output", str(tmp_path / "run"), "--scheduler", "inline", "--storage", url,
                "--log-format", "json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "sensitivity.json").read_text())["outputs"] == result["outputs"]


def test_a_sweep_with_targets_keeps_their_losses(tmp_path):
    job = yaml.safe_load((ROOT / "examples" / "seir" / "job.yaml").read_text())
    job.update(study=unique("seir-sweep"), sweep={"design": "sobol", "points": 4, "replicates": 2,
                                                  "summaries": [{"output": "cases", "stat": "peak"}]})
    job["targets"][0]["data"] = str(ROOT / "examples" / "seir" / "cases.csv")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    proc = cli("sweep", str(path), "--output", str(tmp_path / "run"), "--scheduler", "inline", "--log-format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = check_outputs(tmp_path / "run", path)
    assert set(result["outputs"]) == {"cases_peak", "loss:weekly_cases"}
    assert result["outputs"]["cases_peak"]["noise_share"] > 0  # a stochastic model: replicates differ


@pytest.mark.parametrize("case", ["no-sweep-block", "memory-storage", "bad-summary", "unknown-output"])
def test_bad_sweep_inputs_are_one_line_and_create_nothing(tmp_path, case):
    path = ishigami_job(tmp_path)
    args = []
    if case == "no-sweep-block":
        data = yaml.safe_load(path.read_text())
        del data["sweep"]
        data["targets"] = [{"name": "t", "output": "y", "data": {"i": [0], "y": [1.0]}, "score": "sse"}]
        path.write_text(yaml.safe_dump(data))
    elif case == "memory-storage":
        args = ["--storage", "memory"]
    else:
        data = yaml.safe_load(path.read_text())
        data["sweep"]["summaries"] = [{"output": "y", "stat": "at"}] if case == "bad-summary" else [{"output": "deaths"}]
        path.write_text(yaml.safe_dump(data))
    proc = cli("sweep", str(path), *args, "--scheduler", "inline", cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3
    assert {"no-sweep-block": "sweep", "memory-storage": "storage", "bad-summary": "needs 'at'",
            "unknown-output": "no output 'deaths'"}[case] in proc.stderr
    assert not (tmp_path / "runs").exists()


def trials_of(storage: str, study: str):
    return optuna.load_study(study_name=study, storage=open_optuna_storage(parse_storage_url(storage), 1)).get_trials(deepcopy=False)


@pytest.mark.slow
def test_a_killed_sweep_coordinator_restarts_and_every_row_runs_once(pg_url, tmp_path, dask_cluster):
    job = yaml.safe_load((ROOT / "examples" / "seir" / "job.yaml").read_text())
    study = unique("seir-kill")
    job.update(study=study, sweep={"design": "sobol", "points": 64, "replicates": 2,
                                   "summaries": [{"output": "cases", "stat": "peak"}, {"output": "cases", "stat": "peak_time"},
                                                 {"output": "attack_rate"}]})
    job["targets"][0]["data"] = str(ROOT / "examples" / "seir" / "cases.csv")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    rows = 64 * 4
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALABARIA_", "PARALLEL_TRIALS"))}
    # A killed coordinator on this host is lost at once; the grace period only guards live ones on a
    # loaded machine (a live coordinator declared lost over-claims past the design).
    env.update(CALABARIA_GRACE_PERIOD_S="20", CALABARIA_HEARTBEAT_INTERVAL_S="1")

    def start(kind: str, out: str) -> subprocess.Popen:
        head = ["sweep", str(path)] if kind == "sweep" else ["worker", "--study", study, "--wait", "120"]
        return subprocess.Popen([*CLI, *head, "--storage", pg_url, "--scheduler", dask_cluster.scheduler_address,
                                 "--workers", "4", "--output", str(tmp_path / out), "--log-format", "json"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)

    victim = start("sweep", "a")
    helper = start("worker", "b")
    procs = [victim, helper]
    try:
        tag = f"-{victim.pid}-"
        deadline = time.monotonic() + 300
        mine: list = []
        while time.monotonic() < deadline and len(mine) < 20:
            time.sleep(0.3)
            try:
                mine = [t for t in trials_of(pg_url, study) if tag in str(t.system_attrs.get("calabaria:coordinator"))]
            except KeyError:
                continue
        assert mine, "the sweep coordinator never asked a trial"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        restarted = start("sweep", "a")
        procs.append(restarted)
        for p in (restarted, helper):
            _, err = p.communicate(timeout=900)
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    trials = trials_of(pg_url, study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    points = [t.user_attrs.get(POINT_ATTR, -1) for t in complete]  # -1: a trial past the design
    assert sorted(points) == list(range(rows))  # every row exactly once
    assert all(len(t.user_attrs[SUMMARIES_ATTR]["cases_peak"]) == 2 for t in complete)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    lost = [t for t in trials if t.state == TrialState.FAIL]
    assert lost, "the kill left no trial lost: the top-up went untested"
    assert all("coordinator lost" in t.user_attrs.get("fail_reason", "") for t in lost)
    assert len(trials) == rows + len(lost)  # nothing but the design's rows, and the lost ones asked again
    backend = open_store(parse_storage_url(pg_url), 1, read_only=True)
    try:
        claimed, budget = backend.ledger.budget(study)
    finally:
        backend.close()
    assert claimed == len(trials) == budget
    result = check_outputs(tmp_path / "a", path)
    assert {"cases_peak", "cases_peak_time", "attack_rate_final", "loss:weekly_cases"} == set(result["outputs"])
    assert all("S1" in v for v in result["outputs"].values())
