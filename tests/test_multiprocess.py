"""Many coordinator processes on one PostgreSQL study: real subprocesses, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import yaml
from optuna.trial import TrialState

from modelops_calabaria.backend.factory import open_optuna_storage

from modelops_calabaria.storage import parse_storage_url

from conftest import support_model, unique

CLI = [sys.executable, "-m", "modelops_calabaria"]


def write_job(tmp_path: Path, **overrides) -> Path:
    data = {
        "study": unique("mp"),
        "model": support_model("linear"),
        "parameters": {"a": {"lower": 0.0, "upper": 2.0}, "b": {"lower": 0.0, "upper": 2.0}},
        "targets": [{"name": "y", "output": "y", "data": {"t": [0, 1, 2], "y": [1.0, 2.0, 3.0]}, "score": "sse"}],
        "n_replicates": 2,
        "max_trials": 20,
        "seed": 3,
    }
    data.update(overrides)
    path = tmp_path / f"{data['study']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("CALABARIA_", "PARALLEL_TRIALS"))}
    e.update(extra)
    return e


def trials_of(storage: str, study: str):
    return optuna.load_study(study_name=study, storage=open_optuna_storage(parse_storage_url(storage), 1)).get_trials(deepcopy=False)


def run_all(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str, str]]:
    out = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            so, se = p.communicate(timeout=max(1, deadline - time.monotonic()))
            out.append((p.returncode, so, se))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


@pytest.mark.slow
def test_three_processes_by_eight_loops_spend_exactly_the_budget(pg_url, scheduler, tmp_path):
    job = write_job(tmp_path, max_trials=300)
    study = yaml.safe_load(job.read_text())["study"]
    first = subprocess.Popen([*CLI, "calibrate", str(job), "--storage", pg_url, "--scheduler", scheduler, "--workers", "8",
                              "--output", str(tmp_path / "c")], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    joiners = [
        subprocess.Popen([*CLI, "worker", "--study", study, "--storage", pg_url, "--scheduler", scheduler, "--workers", "8",
                          "--output", str(tmp_path / f"w{i}"), "--wait", "60"], env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    results = run_all([first, *joiners])
    for code, _so, se in results:
        assert code == 0, se[-3000:]
    trials = trials_of(pg_url, study)
    assert len(trials) == 300
    assert all(t.state == TrialState.COMPLETE for t in trials)
    told = [json.loads((tmp_path / d / "results.json").read_text())["this_run"]["told"] for d in ("c", "w0", "w1")]
    assert sum(told) == 300 and min(told) > 0, told  # every process did some of the work


@pytest.mark.slow
def test_four_processes_starting_together_on_an_empty_database(pg_url, scheduler, tmp_path):
    name = f"calabaria_race_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = pg_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        job = write_job(tmp_path, max_trials=40)
        study = yaml.safe_load(job.read_text())["study"]
        procs = [
            subprocess.Popen([*CLI, "calibrate", str(job), "--storage", url, "--scheduler", scheduler, "--workers", "4",
                              "--output", str(tmp_path / f"c{i}")], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(4)
        ]
        for code, _so, se in run_all(procs):
            assert code == 0, se[-3000:]
            assert "Traceback" not in se and "error" not in se.lower(), se[-3000:]
        storage = open_optuna_storage(parse_storage_url(url), 1)
        assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == [study]
        trials = trials_of(url, study)
        assert len(trials) == 40 and all(t.state == TrialState.COMPLETE for t in trials), [
            (t.number, t.state.name, t.user_attrs.get("fail_reason"), t.system_attrs.get("calabaria:coordinator"))
            for t in trials if t.state != TrialState.COMPLETE]
        storage.engine.dispose()
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.mark.slow
def test_sigkilled_worker_trials_become_coordinator_lost_and_survivor_finishes(pg_url, scheduler, tmp_path):
    grace = 20.0  # the victim dies on this host: found lost by its pid at once; a starved survivor is not passed for lost
    job = write_job(tmp_path, model=support_model("slow"), fixed={"delay": 0.4}, max_trials=60, n_replicates=1,
                    retry_lost_trials=True)
    study = yaml.safe_load(job.read_text())["study"]
    e = env(CALABARIA_GRACE_PERIOD_S=str(grace), CALABARIA_HEARTBEAT_INTERVAL_S="0.5")
    survivor = subprocess.Popen([*CLI, "calibrate", str(job), "--storage", pg_url, "--scheduler", scheduler, "--workers", "2",
                                 "--output", str(tmp_path / "s")], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen([*CLI, "worker", "--study", study, "--storage", pg_url, "--scheduler", scheduler, "--workers", "3",
                               "--output", str(tmp_path / "v"), "--wait", "60"], env=e, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        # Wait until the victim has trials in flight, then kill it without warning.
        tag = f"-{victim.pid}-"

        def victims_unfinished() -> dict:
            return {t.number: t for t in trials_of(pg_url, study)
                    if tag in str(t.system_attrs.get("calabaria:coordinator")) and t.state != TrialState.COMPLETE}

        deadline = time.monotonic() + 90
        in_flight: dict = {}
        while time.monotonic() < deadline and not in_flight:
            time.sleep(0.3)
            try:
                in_flight = victims_unfinished()
            except KeyError:
                continue
        assert in_flight, "the victim never ran a trial"
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        # Read the lost set only now: a trial seen RUNNING before the signal may have been told
        # in between, and a dead process can finish nothing more.
        lost = set(victims_unfinished())
        assert lost, "every trial the victim held finished before the kill; nothing was lost"
        # After the grace period (+ one heartbeat interval) they are FAIL. The bound below is loose on
        # purpose: at a load of 17 on 2 cores the survivor's heartbeat thread was once 6 s late.
        while time.monotonic() - killed_at < grace + 20:
            states = {t.number: t for t in trials_of(pg_url, study) if t.number in lost}
            if all(t.state == TrialState.FAIL for t in states.values()):
                break
            time.sleep(0.25)
        recovered_after = time.monotonic() - killed_at
        for t in states.values():
            assert t.state == TrialState.FAIL, t
            assert "coordinator lost" in t.user_attrs["fail_reason"]
        assert recovered_after <= grace + 15, recovered_after
        code, so, se = run_all([survivor])[0]
        assert code == 0, se[-3000:]
    finally:
        for p in (survivor, victim):
            if p.poll() is None:
                p.kill()
    trials = trials_of(pg_url, study)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len(trials) == 60  # the survivor spent the whole budget, retries included
    lost_params = [t.params for t in trials if "coordinator lost" in t.user_attrs.get("fail_reason", "")]
    assert len(lost_params) >= len(states)
    retried = [t for t in trials if t.system_attrs.get("calabaria:retry_of_lost")]
    assert retried and all(t.params in lost_params for t in retried), (lost_params, [t.params for t in retried])


@pytest.mark.slow
def test_password_never_appears_in_output_or_files(pg_url, scheduler, tmp_path):
    secret = "Sup3rS3cretPassw0rd"
    # trust auth ignores the password, so the URL works while carrying a secret
    url = pg_url.replace("://postgres@", f"://postgres:{secret}@", 1)
    assert secret in url
    job = write_job(tmp_path, max_trials=5)
    study = yaml.safe_load(job.read_text())["study"]
    out = tmp_path / "run"
    calib = subprocess.run([*CLI, "calibrate", str(job), "--storage", url, "--scheduler", scheduler, "--output", str(out),
                            "--log-format", "json"], env=env(), capture_output=True, text=True, timeout=120)
    assert calib.returncode == 0, calib.stderr[-2000:]
    status = subprocess.run([*CLI, "status", "--study", study, "--storage", url], env=env(), capture_output=True, text=True, timeout=60)
    status_json = subprocess.run([*CLI, "status", "--study", study, "--storage", url, "--json"], env=env(),
                                 capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and status_json.returncode == 0, status.stderr
    bad = subprocess.run([*CLI, "status", "--study", "nope-" + study, "--storage", url.replace("5432", "1")], env=env(),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    texts = [calib.stdout, calib.stderr, status.stdout, status.stderr, status_json.stdout, bad.stderr]
    texts += [p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()]
    assert all(secret not in t for t in texts)
    assert "postgres:***@" in calib.stdout and "trials:" in status.stdout
    info = json.loads(status_json.stdout)
    assert info["trials"]["COMPLETE"] == 5, (info, calib.stdout[-3000:])
    # nor in the job stored with the study
    storage = open_optuna_storage(parse_storage_url(url), 1)
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(study))
    assert secret not in json.dumps(attrs)
