"""Start-up: a resumed study with nothing left to run starts no cluster, and still writes
its results and report as a finished run does; the pieces that decide it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from optuna.trial import TrialState

from modelops_calabaria.calibration.startup import nothing_to_run, study_state_key
from modelops_calabaria.errors import ServiceUnavailableError
from modelops_calabaria.simulation import DeferredService, SimContext, connect_service, few_runs_inline, per_run_seconds
from modelops_calabaria.simulation.local import local_cluster_shape, local_processes

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "examples" / "seir" / "job.yaml"
_BIN = Path(sys.executable).with_name("calabaria")
CLI = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "modelops_calabaria"]

C, R, W = TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING


def _small_reevaluation_job(where: Path) -> Path:
    """The demo job re-evaluating its best trial on 2 fresh replicates: a no-op resume runs
    them in-process however loaded the machine is (40 runs could pass the in-process limit)."""
    import shutil

    job_dir = where / "job"
    if not job_dir.exists():
        shutil.copytree(JOB.parent, job_dir)
        with (job_dir / "job.yaml").open("a") as f:
            f.write("\nreevaluate: {top_k: 1, replicates: 2}\n")
    return job_dir / "job.yaml"


def calibrate_watching_children(out: Path, *extra: str, env: dict[str, str] | None = None,
                                timeout_s: float = 120.0) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``calabaria calibrate`` and poll its process tree every 10 ms while it runs:
    the command lines of every descendant process ever seen."""
    cmd = [*CLI, "calibrate", str(_small_reevaluation_job(out.parent)), "--output", str(out), "--max-trials", "6",
           "--log-format", "json", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    seen: set[str] = set()
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            for child in parent.children(recursive=True):
                try:
                    seen.add(" ".join(child.cmdline()) or child.name())
                except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                    seen.add(f"pid {child.pid}")
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), seen


def _events(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


@pytest.mark.slow
def test_noop_resume_starts_no_cluster_and_writes_what_a_finished_run_writes(tmp_path):
    out = tmp_path / "run"
    # Worker processes, so that a cluster start shows in the process tree; one, to keep it short.
    env = {"CALABARIA_LOCAL_PROCESSES": "true", "CALABARIA_LOCAL_WORKERS": "1"}
    first, first_children = calibrate_watching_children(out, env=env)
    assert first.returncode == 0, first.stderr
    assert first_children, "the first run's worker process was not seen: the watch cannot see a cluster"
    results_1 = json.loads((out / "results.json").read_text())
    report_mtime = (out / "report.html").stat().st_mtime_ns

    results_bytes = (out / "results.json").read_bytes()

    # Outputs current: nothing is simulated or redrawn; the files stay as the run wrote them.
    second, second_children = calibrate_watching_children(out, env=env)
    assert second.returncode == 0, second.stderr
    assert second_children == set()  # no Dask worker, nanny, scheduler or sampler process
    events = _events(second.stdout)
    assert any(e.get("event") == "nothing left to run and the results are current" for e in events)
    assert any(e.get("event") == "report is current" for e in events)
    assert not any(e.get("event", "").startswith(("trial finished", "best trials re-evaluated")) for e in events)
    summary_1, summary_2 = json.loads(first.stdout.splitlines()[-1]), json.loads(second.stdout.splitlines()[-1])
    assert summary_2 == summary_1  # the command's last line
    assert (out / "results.json").read_bytes() == results_bytes  # the run's own facts (wall time, this_run) kept
    assert (out / "report.html").stat().st_mtime_ns == report_mtime

    # Outputs gone (or written for another state of the study): written again as a finished
    # run writes them, still without a cluster.
    (out / "results.json").unlink()
    (out / "report.html").unlink()
    third, third_children = calibrate_watching_children(out, env=env)
    assert third.returncode == 0, third.stderr
    assert third_children == set()
    events = _events(third.stdout)
    assert any(e.get("event", "").startswith("nothing left to run: no simulation cluster") for e in events)
    assert not any(e.get("event") == "trial finished" for e in events)
    assert json.loads(third.stdout.splitlines()[-1]) == summary_1
    results_3 = json.loads((out / "results.json").read_text())
    assert set(results_3) == set(results_1)
    assert results_3["study_state"] == results_1["study_state"]
    assert results_3["this_run"] == {"told": 0, "completed": 0, "failed": 0, "pruned": 0}
    assert results_3["trials"] == results_1["trials"] and results_3["stop_reason"] == "budget spent"
    # The re-evaluation ran again, in this process, on the same fresh seeds: the same losses as on the cluster.
    assert results_3["selection"] == results_1["selection"]
    assert (out / "report.html").is_file()
    assert {"best.yaml", "trials.csv", "report.html"} <= {p.name for p in out.iterdir()}


def test_nothing_to_run_only_when_the_budget_is_spent_and_nothing_is_unfinished():
    spent = dict(claimed=3, stored_max=3, wanted=3, extend=None, joining=False)
    assert nothing_to_run([C, C, C], **spent)
    assert not nothing_to_run([C, C, C], **{**spent, "extend": 2})  # --extend: more trials
    assert not nothing_to_run([C, C, C], **{**spent, "wanted": 4})  # --max-trials above the study's
    assert nothing_to_run([C, C, C, C], **{**spent, "claimed": 4, "wanted": 3})  # below it: nothing to ask
    assert not nothing_to_run([C, C, R], **spent)  # a trial to recover
    assert not nothing_to_run([C, C, C, W], **{**spent, "claimed": 4})  # an enqueued start to ask
    assert not nothing_to_run([C, C], **{**spent, "claimed": 2})  # a slot given back
    assert not nothing_to_run([C, C, C], **{**spent, "claimed": 2})  # claims behind the trials: reconcile, not skip
    assert not nothing_to_run([], **{**spent, "claimed": 0, "stored_max": 0})  # no budget yet
    # A worker keeps the study's budget, whatever its job file says.
    assert nothing_to_run([C, C, C], **{**spent, "wanted": 10, "joining": True})
    assert not nothing_to_run([C, C], **{**spent, "claimed": 2, "wanted": 2, "joining": True})


def test_few_short_runs_go_inline_only_instead_of_a_local_cluster():
    assert per_run_seconds([0.4, 0.8, None, 0.6], 4) == pytest.approx(0.15)
    assert per_run_seconds([None], 4) is None
    assert few_runs_inline(None, 40, 0.005)
    assert not few_runs_inline(None, 40, 0.1)  # 4 s one after the other: start the cluster
    assert not few_runs_inline(None, 40, None)  # never measured
    assert not few_runs_inline("tcp://10.0.0.1:8786", 40, 0.005)  # a remote cluster is already up


def test_local_cluster_shape_threads_for_builtins_processes_for_user_models():
    assert not local_processes("seir", None) and local_processes("pkg.mod:fn", None)
    assert local_processes("seir", True) and not local_processes("pkg.mod:fn", False)
    assert local_cluster_shape(3, True) == (3, 1) and local_cluster_shape(3, False) == (1, 3)


def _context() -> SimContext:
    return SimContext("seir", {}, (), None, 0)


def test_deferred_service_connects_once_in_the_background_and_only_when_asked():
    calls = []

    def connect():
        calls.append(time.monotonic())
        return connect_service("inline", _context(), local_workers=2)

    service = DeferredService(connect, slots=2)
    assert service.slots == 2 and not service.started and "not started" in service.address
    service.close()  # never started: nothing to connect or close
    assert calls == []
    service.start()
    service.start()
    assert service.get().slots == 2 and service.address == "inline" and len(calls) == 1
    service.close()


def test_deferred_service_raises_the_connection_error_where_the_service_is_needed():
    service = DeferredService(lambda: connect_service("tcp://127.0.0.1:1", _context()), slots=None,
                              description="tcp://127.0.0.1:1")
    service.start()
    with pytest.raises(ServiceUnavailableError, match="127.0.0.1:1"):
        service.submit(0, {}, [1])
    service.close()


def _worker_state() -> tuple:
    import sys as _sys

    from modelops_calabaria.models import load_model

    return (load_model.cache_info().currsize, "modelops_calabaria.simulation.task" in _sys.modules)


@pytest.mark.slow
def test_local_worker_processes_load_the_model_before_any_task():
    model = f"{ROOT / 'benchmarks' / 'synthetic.py'}:cpu"
    service = connect_service(None, SimContext(model, {}, (), None, 0), local_workers=1, processes=True)
    try:
        states = service.client.run(_worker_state)  # no task has run: only the preload can have loaded it
    finally:
        service.close()
    assert list(states.values()) == [(1, True)]


def test_the_study_state_key_changes_with_what_the_outputs_are_made_of():
    job, trials = {"study": "s", "reevaluate": {"top_k": 5}}, ([0, 1], [C, TrialState.FAIL], [1.5, float("nan")])
    key = study_state_key(job, "sqlite:///x.db", "1", *trials)
    assert key == study_state_key(dict(reversed(job.items())), "sqlite:///x.db", "1", [0, 1], [C, TrialState.FAIL], [1.5, None])
    assert key == study_state_key(job, "sqlite:///x.db", "1", [1, 0], [TrialState.FAIL, C], [None, 1.5])  # any order
    assert key != study_state_key({**job, "reevaluate": {"top_k": 1}}, "sqlite:///x.db", "1", *trials)
    assert key != study_state_key(job, "sqlite:///y.db", "1", *trials)
    assert key != study_state_key(job, "sqlite:///x.db", "2", *trials)
    assert key != study_state_key(job, "sqlite:///x.db", "1", [0, 1], [C, C], [1.5, 2.0])  # a trial finished
    assert key != study_state_key(job, "sqlite:///x.db", "1", [0, 1, 2], [C, TrialState.FAIL, C], [1.5, None, 3.0])


def test_results_are_current_only_whole_and_for_the_same_key(tmp_path):
    from modelops_calabaria.outcome import RunResult
    from modelops_calabaria.reporting.results import current_result, report_is_current, report_state_tag, write_results

    result = RunResult(study="s", storage="memory", mode="parallel", concurrency=2, slots=2, best_params={"a": 1.0},
                       best_loss=0.5, best_trial=0, best_targets={}, trials={"COMPLETE": 1, "total": 1},
                       this_run={"told": 1}, wall_time_s=1.0, trials_per_minute=60.0, utilization=0.5,
                       stop_reason="budget spent", study_state="k1")
    write_results(tmp_path, result, [])
    got = current_result(tmp_path, "k1")
    assert got is not None and got.best_loss == 0.5 and got.output_dir == str(tmp_path) and got.study_state == "k1"
    assert current_result(tmp_path, "k2") is None
    result.posterior = {"ess": 10.0}
    write_results(tmp_path, result, [])
    assert current_result(tmp_path, "k1") is None  # a posterior run without its sample
    (tmp_path / "posterior.csv").write_text("trial,weight\n")
    assert current_result(tmp_path, "k1") is not None
    (tmp_path / "trials.csv").unlink()
    assert current_result(tmp_path, "k1") is None  # not every file: write them again
    report = tmp_path / "report.html"
    report.write_text(f"<html><head>{report_state_tag({'study_state': 'k1'})}</head></html>")
    assert report_is_current(report, "k1") and not report_is_current(report, "k2")
    assert not report_is_current(report, None) and not report_is_current(tmp_path / "none.html", "k1")
    assert report_state_tag({"study_state": 'x" onload="'}) == ""  # only a digest is written into the page
