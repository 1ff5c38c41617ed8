"""Pure run-state logic, seeds and settings precedence (no cluster, no database)."""

from __future__ import annotations

import pytest

from modelops_calabaria.calibration.seeds import replicate_seeds
from modelops_calabaria.calibration.run_state import RunState
from modelops_calabaria.job import StopSpec
from modelops_calabaria.settings import resolve_settings


def test_common_seeds_are_shared_by_trials_and_independent_ones_are_not():
    assert replicate_seeds(7, 4, 0) == replicate_seeds(7, 4, 99)
    assert len(set(replicate_seeds(7, 4, 0))) == 4
    assert replicate_seeds(7, 4, 0, "independent") != replicate_seeds(7, 4, 1, "independent")
    assert replicate_seeds(7, 4, 3, "independent") == replicate_seeds(7, 4, 3, "independent")
    assert replicate_seeds(7, 4, 0) != replicate_seeds(8, 4, 0)


def test_best_and_patience():
    s = RunState("minimize", StopSpec(patience=2), started=0.0)
    assert s.record_complete(0, 5.0, {"a": 1})
    assert not s.record_complete(1, 6.0, {"a": 2})
    assert s.check_stop(1.0) is None
    assert not s.record_complete(2, 5.5, {"a": 3})
    assert "patience 2" in s.check_stop(2.0)
    assert (s.best_loss, s.best_number, s.best_params) == (5.0, 0, {"a": 1})


def test_maximize_direction():
    s = RunState("maximize", StopSpec(target_loss=10.0), started=0.0)
    s.record_complete(0, 3.0, {})
    assert s.check_stop(0.0) is None
    s.record_complete(1, 11.0, {})
    assert s.best_loss == 11.0 and "target loss" in s.check_stop(0.0)


def test_failure_storm_resets_on_success():
    s = RunState("minimize", StopSpec(max_consecutive_failures=3), started=0.0)
    s.record_fail(0, "boom")
    s.record_fail(1, "boom")
    s.record_complete(2, 1.0, {})
    s.record_fail(3, "x")
    s.record_fail(4, "x")
    assert not s.failure_storm and s.check_stop(0.0) is None
    s.record_fail(5, "x")
    assert s.failure_storm and "failure storm" in s.check_stop(0.0)
    assert s.first_failure == "trial 0: boom"


def test_wall_clock_limit_and_utilization():
    s = RunState("minimize", StopSpec(max_wall_time_s=10), started=100.0)
    s.record_complete(0, 1.0, {}, busy_s=8.0)
    assert s.check_stop(105.0) is None
    assert "wall-clock" in s.check_stop(110.0)
    assert s.utilization(110.0, slots=2) == pytest.approx(8.0 / 20.0)


def test_settings_precedence_cli_over_env_over_job_over_default(monkeypatch):
    for var in ("PARALLEL_TRIALS", "CALABARIA_STORAGE", "CALABARIA_SCHEDULER"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_settings().parallel_trials is True  # default
    job = {"parallel_trials": False, "storage": "sqlite:///job.db", "scheduler": None}
    s = resolve_settings(job)
    assert s.parallel_trials is False and s.storage == "sqlite:///job.db"
    monkeypatch.setenv("PARALLEL_TRIALS", "true")
    monkeypatch.setenv("CALABARIA_STORAGE", "sqlite:///env.db")
    s = resolve_settings(job)
    assert s.parallel_trials is True and s.storage == "sqlite:///env.db"
    s = resolve_settings(job, parallel_trials=False, storage="sqlite:///cli.db")
    assert s.parallel_trials is False and s.storage == "sqlite:///cli.db"
    monkeypatch.setenv("PARALLEL_TRIALS", "false")
    assert resolve_settings().parallel_trials is False


def test_bad_setting_names_it(monkeypatch):
    from modelops_calabaria.errors import ConfigurationError

    monkeypatch.setenv("PARALLEL_TRIALS", "perhaps")
    with pytest.raises(ConfigurationError, match="parallel_trials"):
        resolve_settings()


def test_failure_storm_message_count_is_the_stop_reasons():
    # trials in flight when the storm stops the run fail too: the message keeps the count that stopped it
    s = RunState("minimize", StopSpec(max_consecutive_failures=25), started=0.0)
    for n in range(25):
        s.record_fail(n, "x")
    reason = s.check_stop(0.0)
    s.record_fail(25, "x")  # one more, in flight at the stop
    assert reason == "failure storm: 25 consecutive trials failed" and s.storm_count == 25 and s.consecutive_failures == 26
