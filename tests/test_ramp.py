"""The concurrency ramp (calibration/ramp.py): the rule, the job field, the scheduler core that
consults it (events in, instructions out), and the real wire on a LocalCluster, watched from the study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.backend.factory import open_optuna_storage
from modelops_calabaria.calibration.ramp import Ramp, ramp_of
from modelops_calabaria.calibration.scheduler import Rules
from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.job import RampSpec

from modelops_calabaria.storage import parse_storage_url

from conftest import make_job, support_model
from scheduler_drive import drive


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



@pytest.mark.parametrize("full, ramp", [(6, Ramp(per=2, floor=1)), (16, Ramp(per=4, floor=2)), (8, Ramp(per=3, floor=2, first=3))])
def test_parallel_loops_admit_only_under_the_ramp_and_widen_to_the_full_target(full, ramp):
    trace = drive(Rules(parallel=True, concurrency=full, stages=((0, 3),), ramp=ramp), budget=120)
    asks = trace.asks
    assert len(asks) == 120 and trace.core.told == 120
    over = [a for a in asks if a.flying > ramp.limit(a.index, a.told, full)]
    assert not over, f"asks above the ramp: {over}"
    wave = full if ramp.first is None else ramp.first
    assert max(a.flying for a in asks[:wave]) == wave  # the first wave goes at once
    assert min(a.flying for a in asks[wave:wave + 5]) < full and trace.holds > 0  # then the ramp holds loops back
    assert max(a.flying for a in asks[-20:]) == full  # and widens to every loop


def test_a_batched_round_takes_the_ramps_limit_of_claims():
    ramp, full = Ramp(per=2, floor=1), 6
    trace = drive(Rules(parallel=False, concurrency=full, stages=((0, 3),), ramp=ramp), budget=60)
    assert trace.core.told == 60
    admitted = 0
    for n, told in trace.claims[:-1]:  # the last claim finds the budget spent
        assert n == ramp.limit(admitted, told, full)
        admitted += n
    assert [n for n, _ in trace.claims[:3]] == [6, 3, 4]  # the first wave, then a round per 2 told


def test_auto_loops_look_ahead_only_once_the_ramp_is_at_full_width():
    ramp, full = Ramp(per=2, floor=1), 4
    rules = Rules(parallel=True, concurrency=full, stages=((0, 2),), ramp=ramp, look_ahead=True, loop_cap=8)
    trace = drive(rules, budget=60, tasks=2)  # two tasks a trial: every trial has a tail to fill
    ahead = [a for a in trace.asks if a.ahead]
    assert ahead, "no loop looked ahead: the test shows nothing"
    assert all(a.flying <= ramp.limit(a.index, a.told, full) or ramp.limit(a.index, a.told, full) >= full for a in ahead)
    assert not [a for a in trace.asks if not a.ahead and a.flying > ramp.limit(a.index, a.told, full)]
    assert max(a.flying for a in trace.asks) == 2 * full  # at most two trials per loop, reached at full width
    # While the ramp widens, no look-ahead goes above it.
    assert not [a for a in ahead if ramp.limit(a.index, a.told, full) < full and a.flying > ramp.limit(a.index, a.told, full)]


def _running_at_each_start(log: Path) -> list[tuple[int, int, int]]:
    """(start index, replicates running with it, replicates ended before it), from the model's own
    record of when it ran. A replicate runs only while its trial is in flight and ends before its
    trial is told, so these counts never exceed the wire's in flight, nor fall behind its tells:
    the ramp limit computed from them is at least the one the wire applied."""
    runs = sorted(tuple(map(float, line.split()[:2])) for line in log.read_text().splitlines())
    seen = []
    for i, (start, _) in enumerate(runs):
        running = sum(1 for s, e in runs[:i + 1] if e > start)
        ended = sum(1 for _, e in runs if e <= start)
        seen.append((i, running, ended))
    return seen


@pytest.mark.parametrize("parallel", [pytest.param(True, id="parallel"), pytest.param(False, id="batched")])
def test_the_wire_keeps_trials_in_flight_under_the_ramp_and_the_budget_is_exact(tmp_path, parallel):
    full, budget, ramp = 6, 26, Ramp(per=2, floor=1)
    # One replicate a trial, 8 threads in this process: every trial in flight runs at once.
    job = make_job(tmp_path, model=support_model("timed"), fixed={"delay": 0.3, "log_dir": str(tmp_path)}, n_replicates=1,
                   max_trials=budget, ramp={"per": ramp.per, "floor": ramp.floor}, reevaluate={"top_k": 0})
    storage = f"sqlite:///{tmp_path}/s.db"
    run_calibration(job, Settings(parallel_trials=parallel, storage=storage, scheduler="inline", local_workers=8,
                                  log_format="json"), output_dir=tmp_path / "run", concurrency=full)
    trials = optuna.load_study(study_name=job.study, storage=open_optuna_storage(parse_storage_url(storage), 1)).get_trials()
    assert len(trials) == budget and all(t.state == TrialState.COMPLETE for t in trials)
    seen = _running_at_each_start(tmp_path / "runs")
    assert len(seen) == budget
    over = [(i, running, ended) for i, running, ended in seen if running > ramp.limit(i, ended, full)]
    assert not over, f"(start, running, ended) above the ramp: {over}"
    # Trials did run side by side (else the check above shows nothing). How wide the first wave
    # is and how the limit widens depends on timing here; the core's tests above show it exactly.
    assert max(running for _, running, _ in seen) >= 2
