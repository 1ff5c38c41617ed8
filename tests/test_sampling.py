"""The mirror, and the sampler in a process of its own: same points, clear failures."""

from __future__ import annotations

import os
import signal
import time

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.calibration.mirror import AddTrial, FinishTrial, Mirror
from modelops_calabaria.calibration.sampling import HybridSampler, InlineSampler, ProcessSampler, SamplerProcessError

from conftest import make_job

SPACE = {"x": FloatDistribution(-5, 5), "y": FloatDistribution(-5, 5)}
MIN = [StudyDirection.MINIMIZE]


def tpe(seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)


def loss(p: dict) -> float:
    return (p["x"] - 1) ** 2 + (p["y"] + 2) ** 2


def drive(front, n: int) -> list[dict]:
    """Sequential ask/tell through a sampler front; returns the points in order."""
    points = []
    for _ in range(n):
        key, params = front.take()
        points.append(params)
        front.post(FinishTrial(key, TrialState.COMPLETE, loss(params)))
    return points


def test_mirror_keys_survive_a_rebuild_and_the_window_keeps_the_best():
    mirror = Mirror(tpe(0), MIN, SPACE, window=20, keep_best=5)
    open_points = [mirror.sample() for _ in range(3)]  # stay RUNNING through every rebuild
    best = None
    for _ in range(120):
        key, p = mirror.sample()
        mirror.apply([FinishTrial(key, TrialState.COMPLETE, loss(p))])
        best = loss(p) if best is None else min(best, loss(p))
    trials = mirror.trials()
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) <= 25
    assert min(t.value for t in trials if t.value is not None) == best
    for key, p in open_points:  # finishing a point sampled before the rebuilds finds the right trial
        mirror.apply([FinishTrial(key, TrialState.COMPLETE, -1.0)])
        assert [t.params for t in mirror.trials() if t.value == -1.0][-1] == p
    assert not [t for t in mirror.trials() if t.state == TrialState.RUNNING]


def test_mirror_follows_added_trials():
    mirror = Mirror(tpe(0), MIN, SPACE)
    mirror.apply([AddTrial(7, {"x": 1.0, "y": -2.0}, SPACE, TrialState.RUNNING, None),
                  AddTrial(8, {"x": 0.0, "y": 0.0}, SPACE, TrialState.COMPLETE, 5.0)])
    mirror.apply([FinishTrial(7, TrialState.COMPLETE, 0.0)])
    assert sorted((t.params["x"], t.value) for t in mirror.trials()) == [(0.0, 5.0), (1.0, 0.0)]
    with pytest.raises(ValueError, match="unknown mirror event"):
        mirror.apply([("drop", 7)])


def test_sampler_process_samples_exactly_what_the_inline_sampler_samples():
    inline = drive(InlineSampler(Mirror(tpe(5), MIN, SPACE)), 30)
    child = ProcessSampler((tpe(5), MIN, SPACE), {}, depth=1)
    try:
        assert drive(child, 30) == inline
    finally:
        child.close()


def test_sampler_process_ignores_signals_and_its_death_is_a_clear_error():
    child = ProcessSampler((tpe(1), MIN, SPACE), {}, depth=4)
    try:
        drive(child, 3)
        pid = child._process.pid
        os.kill(pid, signal.SIGINT)  # Ctrl-C reaches the whole process group: the coordinator handles it
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)
        drive(child, 3)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(SamplerProcessError, match=r"the sampler process died \(exit code -9\)"):
            drive(child, 10)
        with pytest.raises(SamplerProcessError):  # and stays an error
            child.take()
    finally:
        child.close()


def test_hybrid_sampler_starts_here_and_hands_over_to_the_process():
    hybrid = HybridSampler((tpe(2), MIN, SPACE), {}, depth=4)
    try:
        first = hybrid.take()  # at once: the process is not up yet
        assert first[0].startswith("local") and not hybrid.handed_over
        hybrid.post(FinishTrial(first[0], TrialState.COMPLETE, loss(first[1])))
        deadline = time.monotonic() + 30
        keys = []
        while not hybrid.handed_over and time.monotonic() < deadline:
            key, p = hybrid.take()
            keys.append(key)
            hybrid.post(FinishTrial(key, TrialState.COMPLETE, loss(p)))
            time.sleep(0.01)
        assert hybrid.handed_over
        later = [hybrid.take()[0] for _ in range(5)]
        assert all(k.startswith("s") for k in later)
        assert len(set(keys + later)) == len(keys) + 5
    finally:
        hybrid.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_runs_with_the_sampler_process_spend_the_exact_budget(tmp_path, scheduler, kind, request):
    storage = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else request.getfixturevalue("pg_url")
    job = make_job(tmp_path, max_trials=60)
    settings = Settings(parallel_trials=True, storage=storage, scheduler=scheduler, log_format="json", sampler_process=True)
    result = run_calibration(job, settings, output_dir=tmp_path / "run", concurrency=12)
    from modelops_calabaria.backend.factory import open_optuna_storage
    from modelops_calabaria.storage import parse_storage_url

    trials = optuna.load_study(study_name=job.study, storage=open_optuna_storage(parse_storage_url(storage), 1)).trials
    assert len(trials) == 60 and all(t.state == TrialState.COMPLETE for t in trials)
    assert result.trials["RUNNING"] == 0
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 60  # the liar kept points apart


def test_mirror_rebuild_keeps_sampler_state_in_system_attrs():
    """CMA-ES keeps its optimizer in trial system attributes: a window rebuild must carry them."""
    mirror = Mirror(optuna.samplers.CmaEsSampler(seed=0), MIN, SPACE, window=20, keep_best=5)
    for _ in range(80):
        key, p = mirror.sample()
        mirror.apply([FinishTrial(key, TrialState.COMPLETE, loss(p))])
    trials = mirror.trials()
    assert len(trials) <= 26
    assert all(any(k.startswith("cma:") for k in t.system_attrs) for t in trials)
    assert min(t.value for t in trials) < 0.05  # still converging after three rebuilds


def test_trials_added_running_survive_rebuilds_after_they_finish():
    """Points another sampler produced (a hybrid's first points, other coordinators' trials)
    arrive RUNNING, finish later, and must be copied like any other trial when the window rebuilds."""
    mirror = Mirror(tpe(4), MIN, SPACE, window=20, keep_best=5)
    for i in range(60):
        p = {"x": (i % 10) - 4.5, "y": (i // 10) - 2.5}
        mirror.apply([AddTrial(("other", i), p, SPACE, TrialState.RUNNING, None),
                      FinishTrial(("other", i), TrialState.COMPLETE, loss(p))])
        key, q = mirror.sample()
        mirror.apply([FinishTrial(key, TrialState.FAIL if i % 7 == 0 else TrialState.COMPLETE, loss(q))])
    trials = mirror.trials()
    assert len(trials) <= 26 and all(t.datetime_start is not None for t in trials)
    added_best = min(loss({"x": (i % 10) - 4.5, "y": (i // 10) - 2.5}) for i in range(60))
    assert min(t.value for t in trials if t.value is not None) <= added_best  # the best are kept


@pytest.mark.slow
def test_long_run_with_the_sampler_process_rebuilds_its_window(tmp_path):
    """400 trials: past the mirror's window on both sides of the hand-over."""
    storage = f"sqlite:///{tmp_path}/s.db"
    job = make_job(tmp_path, max_trials=400, n_replicates=1)
    settings = Settings(parallel_trials=True, storage=storage, scheduler="inline", local_workers=4, log_format="json",
                        sampler_process=True)
    result = run_calibration(job, settings, output_dir=tmp_path / "run", concurrency=8)
    assert result.trials["COMPLETE"] == 400 and result.trials["total"] == 400
    assert result.best_loss < 0.05
