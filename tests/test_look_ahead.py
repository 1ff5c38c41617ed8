"""A parallel loop submits its next trial while the last task of its current one runs
(``concurrency: auto``): the handles' partial wait, and the wire's overlap on a real cluster."""

from __future__ import annotations

import threading

import optuna
import pytest
from optuna.trial import TrialState

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.calibration import runner
from modelops_calabaria.calibration.wire import Wire
from modelops_calabaria.simulation import InlineSimulationService
from modelops_calabaria.simulation.dask import DaskSimulationService
from modelops_calabaria.simulation.task import SimContext

from conftest import make_job, support_model


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


class OpenTrials:
    """Trials asked and not yet told, per loop thread, as the real wire asks and tells them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open: dict[str, int] = {}
        self.most: dict[str, int] = {}

    def change(self, d: int) -> None:
        name = threading.current_thread().name  # a loop asks and tells its trials on its own thread
        with self._lock:
            self.open[name] = self.open.get(name, 0) + d
            self.most[name] = max(self.most.get(name, 0), self.open[name])


def _run(tmp_path, scheduler, monkeypatch, concurrency):
    seen = OpenTrials()

    class CountingWire(Wire):  # the real wire; asks and tells are counted on their way through
        def __post_init__(self) -> None:
            super().__post_init__()
            told = self.on_trial
            self.on_trial = lambda record: (seen.change(-1), told(record))

        def _claim_and_ask(self):
            trial = super()._claim_and_ask()
            if trial is not None:
                seen.change(+1)
            return trial

    monkeypatch.setattr(runner, "Wire", CountingWire)
    storage = f"sqlite:///{tmp_path}/s.db"
    job = make_job(tmp_path, max_trials=24, n_replicates=4, model=support_model("slow"), fixed={"delay": 0.05},
                   concurrency=concurrency)
    settings = Settings(parallel_trials=True, storage=storage, scheduler=scheduler, log_format="json", replicates_per_task=1)
    result = run_calibration(job, settings, output_dir=tmp_path / "run")
    from modelops_calabaria.backend.factory import open_optuna_storage
    from modelops_calabaria.storage import parse_storage_url

    trials = optuna.load_study(study_name=job.study, storage=open_optuna_storage(parse_storage_url(storage), 1)).get_trials()
    assert sorted(t.number for t in trials) == list(range(24))  # exactly the budget
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert set(seen.open.values()) == {0}  # every asked trial told
    return result, seen


def test_auto_loops_ask_the_next_trial_before_telling_the_current(tmp_path, scheduler, monkeypatch):
    result, seen = _run(tmp_path, scheduler, monkeypatch, "auto")
    assert result.concurrency == 2  # 4 threads, 4 replicates
    # Each trial runs as 4 tasks: every loop asks its next trial once 3 have ended, before it
    # tells the current one, and never holds more than two.
    assert max(seen.most.values()) == 2 and len(seen.most) >= 2


def test_a_fixed_count_keeps_one_trial_per_loop(tmp_path, scheduler, monkeypatch):
    result, seen = _run(tmp_path, scheduler, monkeypatch, 2)
    assert result.concurrency == 2 and set(seen.most.values()) == {1}
