"""A parallel loop submits its next trial while the last task of its current one runs
(``concurrency: auto``): the handles' partial wait, the scheduler core's look-ahead rule, and the
real wire on a real cluster, watched from the study and from the model's own record of its runs."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import optuna
import pytest
from optuna.trial import TrialState

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.backend.factory import open_optuna_storage
from modelops_calabaria.calibration.scheduler import Rules
from modelops_calabaria.calibration.seeds import replicate_seeds
from modelops_calabaria.simulation import InlineSimulationService
from modelops_calabaria.simulation.dask import DaskSimulationService
from modelops_calabaria.simulation.task import SimContext
from modelops_calabaria.storage import parse_storage_url

from conftest import make_job, support_model
from scheduler_drive import drive


def _in_time(fn, timeout_s: float = 60.0) -> None:
    """Run ``fn`` on a thread; fail (instead of hanging the suite) when it does not return in time."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (fn(), done.set()), daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert done.is_set(), f"{fn} did not return within {timeout_s} s"


@pytest.fixture(params=["dask", "inline"])
def service(request, scheduler):
    ctx = SimContext(support_model("gated"), {}, ())
    svc = (DaskSimulationService.connect(scheduler, ctx, replicates_per_task=1) if request.param == "dask"
           else InlineSimulationService(ctx, threads=4))
    yield svc
    svc.close()


def test_wait_left_returns_while_the_last_task_runs(service, tmp_path):
    gate = tmp_path / "gate"
    params = {"a": 1.0, "b": 1.0, "gate": str(gate), "gated_seed": 7}
    handle = service.submit(0, params, [1, 2, 3, 7])
    assert handle.tasks == 4
    # The gated replicate cannot end before the gate exists: returning here means three of four ended.
    _in_time(lambda: handle.wait_left(1))
    assert not gate.exists()
    waited = threading.Thread(target=lambda: handle.wait_left(0), daemon=True)
    waited.start()
    waited.join(0.5)
    assert waited.is_alive(), "wait_left(0) returned while a task was still gated"
    gate.touch()
    waited.join(60)
    assert not waited.is_alive()
    ev = handle.result()
    assert ev.error is None and ev.busy_s >= 0


def test_the_core_looks_ahead_only_with_tasks_to_overlap():
    rules = Rules(parallel=True, concurrency=2, stages=((0, 4),), look_ahead=True, loop_cap=8)
    several = drive(rules, budget=24, tasks=4)
    assert sum(a.ahead for a in several.asks) > 0 and max(a.flying for a in several.asks) == 4  # two per loop
    whole = drive(rules, budget=24, tasks=1)  # a trial of one task is waited for whole
    assert not any(a.ahead for a in whole.asks) and max(a.flying for a in whole.asks) == 2
    fixed = drive(Rules(parallel=True, concurrency=2, stages=((0, 4),)), budget=24, tasks=4)
    assert not any(a.ahead for a in fixed.asks) and max(a.flying for a in fixed.asks) == 2


def _trials(job, storage: str) -> list:
    return optuna.load_study(study_name=job.study, storage=open_optuna_storage(parse_storage_url(storage), 1)).get_trials()


def _count(job, storage: str) -> int:
    try:
        return len(_trials(job, storage))
    except KeyError:  # the study is not created yet
        return 0


def test_auto_loops_ask_the_next_trial_while_the_current_ones_last_replicate_runs(tmp_path, scheduler):
    """Every trial's last replicate waits on a gate: while it is closed, a loop that looks ahead
    asks its next trial; one that does not cannot. Two loops (4 threads, 4 replicates) hold
    four trials at the gate: two each."""
    gate = tmp_path / "gate"
    job = make_job(tmp_path, max_trials=8, n_replicates=4, model=support_model("gated"), reevaluate={"top_k": 0})
    gated_seed = replicate_seeds(job.seed, 4, 0, job.replicate_seeds)[3]  # common seeds: every trial's last one
    job = make_job(tmp_path, max_trials=8, n_replicates=4, model=support_model("gated"), reevaluate={"top_k": 0},
                   fixed={"gate": str(gate), "gated_seed": gated_seed})
    assert replicate_seeds(job.seed, 4, 5, job.replicate_seeds)[3] == gated_seed
    storage = f"sqlite:///{tmp_path}/s.db"
    settings = Settings(parallel_trials=True, storage=storage, scheduler=scheduler, log_format="json", replicates_per_task=1)
    outcome: dict[str, object] = {}
    run = threading.Thread(target=lambda: outcome.setdefault("result", run_calibration(job, settings, output_dir=tmp_path / "run")))
    run.start()
    try:
        deadline = time.monotonic() + 120  # a hang guard only
        while _count(job, storage) < 4:
            assert time.monotonic() < deadline and run.is_alive(), "the loops never asked past their gated trials"
            time.sleep(0.1)
        assert len(_trials(job, storage)) == 4  # two per loop, no more, while every current trial waits
    finally:
        gate.touch()
        run.join(120)
    assert outcome["result"].concurrency == 2
    trials = _trials(job, storage)
    assert sorted(t.number for t in trials) == list(range(8)) and all(t.state == TrialState.COMPLETE for t in trials)


def test_a_fixed_count_keeps_one_trial_per_loop(tmp_path, scheduler):
    """From the model's record of its replicates: a trial's replicates start only after the loop
    told its previous trial, so at no moment do more than 2 trials (2 loops) have replicates in flight."""
    job = make_job(tmp_path, max_trials=24, n_replicates=4, model=support_model("timed"), concurrency=2,
                   fixed={"delay": 0.05, "log_dir": str(tmp_path)}, reevaluate={"top_k": 0})
    storage = f"sqlite:///{tmp_path}/s.db"
    settings = Settings(parallel_trials=True, storage=storage, scheduler=scheduler, log_format="json", replicates_per_task=1)
    result = run_calibration(job, settings, output_dir=tmp_path / "run")
    assert result.concurrency == 2
    spans: dict[tuple[str, str], list[float]] = defaultdict(list)
    for line in (tmp_path / "runs").read_text().splitlines():
        start, end, a, b = line.split()
        spans[(a, b)] += [float(start), float(end)]
    trials = [(min(v), max(v)) for v in spans.values()]
    assert len(trials) == 24 and all(len(v) == 8 for v in spans.values())
    overlapping = max(sum(1 for s, e in trials if s <= t < e) for t, _ in trials)
    assert overlapping <= 2
    stored = _trials(job, storage)
    assert sorted(t.number for t in stored) == list(range(24)) and all(t.state == TrialState.COMPLETE for t in stored)
