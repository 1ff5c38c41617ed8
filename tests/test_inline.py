"""The in-process simulation backend (``scheduler: inline``): same contract as Dask."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.simulation import InlineSimulationService, connect_service
from modelops_calabaria.simulation.task import SimContext

from conftest import make_job, support_model


def settings(storage: str, parallel: bool = True, scheduler: str = "inline", threads: int = 4) -> Settings:
    return Settings(parallel_trials=parallel, storage=storage, scheduler=scheduler, local_workers=threads, log_format="json")


def trials_of(job, storage: str) -> list:
    from modelops_calabaria.backend.factory import open_optuna_storage
    from modelops_calabaria.storage import parse_storage_url

    study = optuna.load_study(study_name=job.study, storage=open_optuna_storage(parse_storage_url(storage), 1))
    return study.get_trials(deepcopy=False)


def test_scheduler_inline_selects_the_in_process_service():
    ctx = SimContext(support_model("linear"), {}, ())
    service = connect_service(" Inline ", ctx, local_workers=3)
    try:
        assert isinstance(service, InlineSimulationService)
        assert service.slots == 3 and service.address == "inline"
    finally:
        service.close()


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "batched"])
def test_exact_budget_and_every_trial_terminal(tmp_path, parallel):
    storage = f"sqlite:///{tmp_path}/s.db"
    job = make_job(tmp_path, max_trials=31)
    result = run_calibration(job, settings(storage, parallel), output_dir=tmp_path / "run", concurrency=6)
    trials = trials_of(job, storage)
    assert sorted(t.number for t in trials) == list(range(31))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert result.trials["RUNNING"] == 0 and result.utilization is not None


def test_same_trials_as_on_dask(tmp_path, scheduler):
    """Sequential runs with one seed: the inline backend and Dask give identical studies."""
    histories = []
    for name, sched in (("inline", "inline"), ("dask", scheduler)):
        storage = f"sqlite:///{tmp_path}/{name}.db"
        job = make_job(tmp_path, study="same-trials", model=support_model("noisy_linear"), max_trials=12)
        run_calibration(job, settings(storage, scheduler=sched), output_dir=tmp_path / name, concurrency=1)
        histories.append([(t.params, t.value) for t in trials_of(job, storage)])
    assert histories[0] == histories[1]


def test_failures_and_timeouts_fail_their_trials(tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    job = make_job(tmp_path, model=support_model("raises_above"), max_trials=30, sampler="random")
    run_calibration(job, settings(storage), output_dir=tmp_path / "r1", concurrency=4)
    trials = trials_of(job, storage)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(t.params["a"] > 1.6 and "unstable for a=" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.params["a"] <= 1.6 for t in trials if t.state == TrialState.COMPLETE)

    storage = f"sqlite:///{tmp_path}/t.db"
    job = make_job(tmp_path, model=support_model("hangs_above"), max_trials=12, sampler="random", timeout_s=1.0,
                   n_replicates=1)
    run_calibration(job, settings(storage), output_dir=tmp_path / "r2", concurrency=4)
    trials = trials_of(job, storage)
    assert len(trials) == 12
    assert any(t.params["a"] > 1.6 for t in trials)
    for t in trials:
        expected = TrialState.FAIL if t.params["a"] > 1.6 else TrialState.COMPLETE
        assert t.state == expected
        if expected == TrialState.FAIL:
            assert "timed out after 1 s" in t.user_attrs["fail_reason"]


def test_a_cancelled_trial_returns_at_once_while_its_model_still_runs():
    """After a signal's grace period the wire cancels its trials: an inline trial must stop
    waiting for a model thread that cannot be stopped (here one that sleeps 20 s)."""
    import threading

    ctx = SimContext(support_model("slow"), {"delay": 20.0}, ())
    service = InlineSimulationService(ctx, 2)
    try:
        handle = service.submit(0, {"a": 1.0, "b": 1.0}, [1, 2])
        waiting = threading.Thread(target=lambda: outcome.append(handle.result()))
        outcome: list = []
        waiting.start()
        handle.cancel()
        waiting.join(15)  # hang guard
        assert not waiting.is_alive() and outcome[0].error == "simulation cancelled"
        assert any(not f.done() for f in handle.replicates)  # the wait ended on the cancel: the models still run
    finally:
        service.close()


def test_a_model_that_calls_sys_exit_fails_its_replicate_inline():
    from modelops_calabaria.simulation.task import run_replicate

    ctx = SimContext(f"{support_model('linear').rsplit(':', 1)[0].replace('models.py', 'misbehaving.py')}:exits",
                     {"how": "sys_exit", "code": 3, "delay": 0.0}, ())
    result = run_replicate(ctx, {"a": 1.9, "b": 0.0}, 5, 0)
    assert result.error is not None and "the model called sys.exit(3)" in result.error
    assert run_replicate(ctx, {"a": 0.5, "b": 0.0}, 5, 0).error is None
