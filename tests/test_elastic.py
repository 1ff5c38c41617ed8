"""Loops that follow the cluster (``concurrency: auto``): the sizing rule, the job field, the
scheduler core that follows resizes, and a real LocalCluster that gains two worker processes
mid-run and loses one gracefully and one by SIGKILL, the wire watched from its logs and the study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import optuna
import pytest
from distributed import Client, LocalCluster
from optuna.trial import TrialState
from structlog.testing import capture_logs

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.backend.factory import open_ledger
from modelops_calabaria.calibration import runner
from modelops_calabaria.calibration.elastic import loop_cap, target_loops
from modelops_calabaria.calibration.scheduler import Rules
from modelops_calabaria.calibration.scheduler import events as ev
from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.job import MAX_CONCURRENCY
from modelops_calabaria.storage import parse_storage_url

from conftest import make_job, support_model
from scheduler_drive import drive


def test_target_loops_fills_the_threads_within_bounds():
    # parallel: twice the trials that fill every thread, at least 2
    assert [target_loops(t, 1, 256) for t in (0, 1, 2, 3, 8)] == [2, 2, 4, 6, 16]
    assert [target_loops(t, 4, 256) for t in (1, 4, 5, 8, 9)] == [2, 2, 4, 4, 6]
    # batched: one round fills the threads, at least 1
    assert [target_loops(t, 1, 256, parallel=False) for t in (0, 1, 3)] == [1, 1, 3]
    assert [target_loops(t, 4, 256, parallel=False) for t in (1, 4, 5, 8)] == [1, 1, 2, 2]
    # the cap, and never below 1 whatever the cap
    assert target_loops(10_000, 1, 256) == 256 and target_loops(10_000, 1, 7, parallel=False) == 7
    assert target_loops(5, 1, 1) == 1 and target_loops(-3, 1, 1, parallel=False) == 1
    # the cap keeps the simulations submitted at once under the in-flight limit
    assert loop_cap(1) == MAX_CONCURRENCY and loop_cap(1_000) == 100 and loop_cap(100_000) == 1


def test_default_concurrency_is_the_start_of_auto():
    assert runner.default_concurrency(3, 1, True) == target_loops(3, 1, loop_cap(1)) == 6
    assert runner.default_concurrency(3, 2, False) == 2


def test_concurrency_field_takes_auto_or_a_count(tmp_path):
    assert make_job(tmp_path).concurrency is None  # auto by default
    assert make_job(tmp_path, concurrency="auto").concurrency is None
    assert make_job(tmp_path, concurrency=" AUTO ").concurrency is None
    assert make_job(tmp_path, concurrency=3).concurrency == 3
    for bad in ("many", "4", 0, MAX_CONCURRENCY + 1, True):
        with pytest.raises(JobSpecError) as e:
            make_job(tmp_path, concurrency=bad)
        assert "concurrency" in str(e.value) + str(getattr(e.value, "problems", ""))


def test_the_core_starts_loops_up_to_the_target_and_retires_those_above_it():
    live = {0: 3, 40: 1, 80: 2}  # round -> the cluster's threads from then on (1 replicate a trial)
    def resize(rnd: int, core) -> list:
        return [ev.Resized(live[rnd])] if rnd in live else []

    trace = drive(Rules(parallel=True, concurrency=2, stages=((0, 1),), loop_cap=loop_cap(1)), budget=200,
                  between_rounds=resize)
    assert trace.core.told == 200 and trace.core.target == target_loops(2, 1, loop_cap(1)) == 4
    assert trace.started[:6] == [0, 1, 2, 3, 4, 5] and trace.most_loops == 6  # 3 threads: 6 loops
    assert {2, 3, 4, 5} <= set(trace.exits[:4])  # 1 thread: the loops above 2 left first
    assert sorted(set(trace.started)) == [0, 1, 2, 3, 4, 5]  # loops 2 and 3 came back under their ids


def test_a_batched_round_follows_the_target():
    def resize(rnd: int, core) -> list:
        return [ev.Resized(3)] if rnd == 10 else []

    trace = drive(Rules(parallel=False, concurrency=1, stages=((0, 1),), loop_cap=8), budget=40, between_rounds=resize)
    sizes = [n for n, _ in trace.claims]
    assert sizes[0] == 1 and 3 in sizes and trace.most_loops == 1 and trace.core.told == 40


def _resizes(logs: list[dict]) -> list[tuple[int, int]]:
    return [(e["from"], e["to"]) for e in list(logs) if e["event"] == "trials at once resized"]


def _target(logs: list[dict]) -> int | None:
    """The target the last resize set (None: no resize yet)."""
    resizes = _resizes(logs)
    return resizes[-1][1] if resizes else None


def _told(logs: list[dict]) -> int:
    return sum(1 for e in list(logs) if e["event"] == "trial finished")


def _wait(what: str, cond: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``cond()`` held (polled every 50 ms); fails naming ``what`` after ``timeout_s``."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout_s, f"{what}: not within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - t0


def _start_worker(address: str, name: str) -> subprocess.Popen:
    # A nanny and its worker in a process group of their own: one killpg ends both, and
    # nothing restarts the worker (a LocalCluster would replace a worker it started).
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                             "--name", name, "--no-dashboard", "--host", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.slow
def test_loops_follow_workers_joining_and_leaving(tmp_path):
    budget, cap = 80, loop_cap(1)
    job = make_job(tmp_path, model=support_model("slow"), fixed={"delay": 0.25}, n_replicates=1, max_trials=budget)
    storage = f"sqlite:///{tmp_path}/s.db"
    extra: list[subprocess.Popen] = []
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client, capture_logs() as logs:
        outcome: dict[str, object] = {}

        def calibrate() -> None:
            try:
                outcome["result"] = run_calibration(job, Settings(storage=storage, scheduler=cluster.scheduler_address, log_format="json"),
                                                    output_dir=tmp_path / "run")
            except BaseException as e:  # noqa: BLE001 - re-raised by the test below
                outcome["error"] = e

        def threads() -> int:
            return sum(client.nthreads().values())

        def busy() -> bool:  # every live worker thread has a replicate
            processing, nthreads = client.processing(), client.nthreads()
            return all(len(processing.get(w, ())) >= n for w, n in nthreads.items())

        run = threading.Thread(target=calibrate)
        run.start()
        timings: dict[str, float] = {}
        try:
            _wait("first trials told", lambda: _told(logs) >= 5, 60)
            assert _resizes(logs) == [] and target_loops(1, 1, cap) == 2  # started at 2 loops: nothing to resize
            extra = [_start_worker(cluster.scheduler_address, f"extra-{i}") for i in range(2)]
            _wait("two workers joined", lambda: threads() == 3, 30)
            timings["join: loops"] = _wait("loops rose", lambda: _target(logs) == target_loops(3, 1, cap) == 6, 10)
            timings["join: busy"] = _wait("3 threads busy", busy, 10)
            told = _told(logs)
            _wait("more trials on 3 workers", lambda: _told(logs) >= told + 10, 30)

            client.retire_workers(names=["extra-0"], close_workers=True)  # graceful: its replicate finishes first
            _wait("retired worker gone", lambda: threads() == 2, 30)
            timings["retire: loops"] = _wait("loops fell", lambda: _target(logs) == target_loops(2, 1, cap) == 4, 10)
            timings["retire: busy"] = _wait("2 threads busy", busy, 10)
            told = _told(logs)
            _wait("more trials on 2 workers", lambda: _told(logs) >= told + 6, 30)

            os.killpg(extra[1].pid, signal.SIGKILL)  # nanny and worker: it does not come back
            _wait("killed worker gone", lambda: threads() == 1, 30)
            timings["kill: loops"] = _wait("loops fell", lambda: _target(logs) == target_loops(1, 1, cap) == 2, 10)
            timings["kill: busy"] = _wait("1 thread busy", busy, 10)
            run.join(90)
            assert not run.is_alive()
        finally:
            for p in extra:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
            run.join(60)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    print("elastic timings (s):", {k: round(v, 2) for k, v in timings.items()}, "resizes:", _resizes(logs))
    # The workers may be seen joining one at a time (2 -> 4 -> 6): the targets pass 6, 4 and 2 in that order.
    targets = iter(to for _, to in _resizes(logs))
    assert all(t in targets for t in (6, 4, 2)) and _target(logs) == 2
    trials = optuna.load_study(study_name=job.study, storage=storage).get_trials(deepcopy=False)
    assert len(trials) == budget and {t.number for t in trials} == set(range(budget))  # the budget, exactly
    # No trial lost: Dask reran the replicate of the killed worker on another one.
    assert [t.number for t in trials if t.state != TrialState.COMPLETE] == []
    ledger = open_ledger(parse_storage_url(storage), 1)
    try:
        assert ledger.budget(job.study) == (budget, budget)  # every slot claimed became a trial; the reserve came back
    finally:
        ledger.close()


@pytest.mark.slow
def test_batched_rounds_follow_a_joining_worker(tmp_path):
    budget = 30
    job = make_job(tmp_path, model=support_model("slow"), fixed={"delay": 0.2}, n_replicates=1, max_trials=budget)
    storage = f"sqlite:///{tmp_path}/s.db"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client, capture_logs() as logs:
        settings = Settings(storage=storage, scheduler=cluster.scheduler_address, log_format="json", parallel_trials=False)
        run = threading.Thread(target=run_calibration, args=(job, settings), kwargs={"output_dir": tmp_path / "run"})
        run.start()
        worker = None
        try:
            _wait("first trials told", lambda: _told(logs) >= 3, 60)
            submitted = max(len(client.processing()[w]) for w in client.nthreads())
            assert submitted <= 1  # a round of one trial of one replicate
            worker = _start_worker(cluster.scheduler_address, "extra")
            _wait("worker joined", lambda: sum(client.nthreads().values()) == 2, 30)
            _wait("round size rose", lambda: _resizes(logs) == [(1, 2)], 10)
            # a round of two trials: two replicates at the scheduler at once
            _wait("two replicates at once", lambda: sum(len(v) for v in client.processing().values()) == 2, 10)
            run.join(60)
            assert not run.is_alive()
        finally:
            if worker is not None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)
            run.join(60)
    assert _resizes(logs) == [(1, 2)]
    trials = optuna.load_study(study_name=job.study, storage=storage).get_trials(deepcopy=False)
    assert len(trials) == budget and all(t.state == TrialState.COMPLETE for t in trials)
