"""The concurrency ramp (calibration/ramp.py): the rule, the job field, and the wire on a real LocalCluster."""

from __future__ import annotations

import threading

import optuna
import pytest
from optuna.trial import TrialState

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.calibration import runner
from modelops_calabaria.calibration.ramp import Ramp, ramp_of
from modelops_calabaria.calibration.wire import Wire
from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.job import RampSpec

from conftest import make_job, support_model


def test_first_wave_goes_at_once_then_one_trial_per_k_finished():
    r = Ramp(per=4, floor=2)
    assert [r.limit(a, 0, 16) for a in (0, 1, 15)] == [16, 16, 16]  # the first wave: nothing known yet either way
    assert [r.limit(16, f, 16) for f in (0, 7, 8, 12, 20, 63, 64, 1000)] == [2, 2, 2, 3, 5, 15, 16, 16]
    assert Ramp(per=1, floor=1).limit(5, 0, 4) == 1  # never below 1
    assert Ramp(per=2, floor=50).limit(100, 0, 8) == 8  # never above full, whatever the floor
    assert r.limit(0, 0, 0) == 1 and r.limit(3, 3, 1) == 1  # one loop: the ramp changes nothing
    small = Ramp(per=8, floor=2, first=10)  # a first wave smaller than the loops, then the same rule
    assert [small.limit(a, 0, 16) for a in (0, 9, 10)] == [10, 10, 2] and small.limit(10, 40, 16) == 5
    assert Ramp(per=8, first=50).limit(0, 0, 16) == 16  # never above full


def test_limit_never_falls_as_trials_finish_after_the_first_wave():
    for per, floor, full in [(1, 1, 3), (4, 2, 16), (8, 3, 10), (3, 20, 16)]:
        r = Ramp(per, floor)
        limits = [r.limit(full + f, f, full) for f in range(200)]
        assert limits == sorted(limits) and limits[-1] == full and min(limits) >= 1


def test_job_field_off_on_or_spec(tmp_path):
    default = ramp_of(make_job(tmp_path))  # absent: on for TPE, with RampSpec's defaults
    assert make_job(tmp_path).ramp is None and default == Ramp(RampSpec().per, RampSpec().floor)
    for sampler in ("random", "qmc", "cmaes"):
        assert ramp_of(make_job(tmp_path, sampler=sampler)) is None
    assert ramp_of(make_job(tmp_path, sampler="random", ramp="on")) == default  # asked for: on whatever the sampler
    for off in ("off", False, " OFF "):
        assert make_job(tmp_path, ramp=off).ramp == RampSpec(enabled=False) and ramp_of(make_job(tmp_path, ramp=off)) is None
    assert ramp_of(make_job(tmp_path, ramp="on")) == ramp_of(make_job(tmp_path, ramp=True)) == default
    assert ramp_of(make_job(tmp_path, ramp={"per": 3, "floor": 5})) == Ramp(3, 5)
    assert ramp_of(make_job(tmp_path, ramp={"first": 10})) == Ramp(RampSpec().per, RampSpec().floor, 10)
    for bad, where in [("fast", "ramp"), ({"per": 0}, "ramp.per"), ({"floor": 0}, "ramp.floor"), ({"pre": 3}, "ramp.pre"),
                       ({"per": "4"}, "ramp.per"), ({"first": 0}, "ramp.first"), (4, "ramp")]:
        with pytest.raises(JobSpecError) as e:
            make_job(tmp_path, ramp=bad)
        assert where in str(e.value) + str(getattr(e.value, "problems", ""))


class _Watched(Wire):
    """The real wire, with what it asks and tells counted from outside its own bookkeeping."""

    seen: list[_Watched] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        self.watch_lock = threading.Lock()
        self.asks: list[tuple[int, int]] = []  # (in flight after this ask, told before it)
        self.told = 0
        self.flying = 0
        ask = self.asker.ask

        def counted_ask():
            trial = ask()
            with self.watch_lock:
                self.flying += 1
                self.asks.append((self.flying, self.told))
            return trial

        self.asker.ask = counted_ask  # type: ignore[method-assign]
        _Watched.seen.append(self)

    def _tell(self, trial, ev, duration_s):
        with self.watch_lock:
            self.flying -= 1
            self.told += 1
        super()._tell(trial, ev, duration_s)


@pytest.mark.parametrize("parallel", [pytest.param(True, id="parallel"), pytest.param(False, id="batched")])
def test_in_flight_stays_under_the_ramp_and_the_budget_is_exact(tmp_path, scheduler, monkeypatch, parallel):
    _Watched.seen = []
    monkeypatch.setattr(runner, "Wire", _Watched)
    full, budget, ramp = 6, 26, Ramp(per=2, floor=1)
    # Each trial sleeps: with 6 loops on the 4 threads of the cluster, loops would keep 6 trials in flight.
    job = make_job(tmp_path, model=support_model("slow"), fixed={"delay": 0.3}, n_replicates=1, max_trials=budget,
                   ramp={"per": ramp.per, "floor": ramp.floor})
    storage = f"sqlite:///{tmp_path}/s.db"
    run_calibration(job, Settings(parallel_trials=parallel, storage=storage, scheduler=scheduler, log_format="json"),
                    output_dir=tmp_path / "run", concurrency=full)
    (wire,) = _Watched.seen
    assert len(wire.asks) == budget and wire.told == budget
    assert max(flying for flying, _ in wire.asks[:full]) == full  # the first wave: every loop at once
    after = wire.asks[full:]
    # The wire admits a trial under the limit of the trials it had told; it may count a tell a moment
    # after this watcher does, never before, so the watcher's count gives a limit at least as high.
    over = [(i + full, flying, told) for i, (flying, told) in enumerate(after) if flying > ramp.limit(full + i, told, full)]
    assert not over, f"(ask, in flight, told) above the ramp: {over}"
    assert min(flying for flying, _ in after) < full  # the ramp held trials back after the first wave
    study = optuna.load_study(study_name=job.study, storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == budget and all(t.state == TrialState.COMPLETE for t in trials)


def test_auto_loops_look_ahead_only_once_the_ramp_is_at_full_width(tmp_path, scheduler, monkeypatch):
    _Watched.seen = []
    monkeypatch.setattr(runner, "Wire", _Watched)
    budget, ramp = 30, Ramp(per=2, floor=1)
    # concurrency auto on 4 threads, 2 replicates as 2 tasks: 4 loops, each may look ahead
    # (ask its next trial while its current trial's last task runs).
    job = make_job(tmp_path, model=support_model("slow"), fixed={"delay": 0.05}, n_replicates=2, max_trials=budget,
                   ramp={"per": ramp.per, "floor": ramp.floor})
    storage = f"sqlite:///{tmp_path}/s.db"
    settings = Settings(parallel_trials=True, storage=storage, scheduler=scheduler, log_format="json",
                        replicates_per_task=1)
    result = run_calibration(job, settings, output_dir=tmp_path / "run")
    (wire,) = _Watched.seen
    full = result.concurrency
    assert full == 4 and len(wire.asks) == budget and wire.told == budget
    ramping = [(i, flying, told) for i, (flying, told) in enumerate(wire.asks)
               if i >= full and ramp.limit(i, told, full) < full]
    assert ramping, "the ramp never held trials back: the test shows nothing"
    over = [(i, flying, told) for i, flying, told in ramping if flying > ramp.limit(i, told, full)]
    assert not over, f"(ask, in flight, told) above the ramp while it widens: {over}"
    assert max(flying for flying, _ in wire.asks) <= 2 * full  # at most two trials per loop
    # At full width the loops look ahead again: more trials in flight than loops.
    assert max(flying for i, (flying, told) in enumerate(wire.asks) if ramp.limit(i, told, full) >= full) > full
    trials = optuna.load_study(study_name=job.study, storage=storage).get_trials(deepcopy=False)
    assert len(trials) == budget and all(t.state == TrialState.COMPLETE for t in trials)
