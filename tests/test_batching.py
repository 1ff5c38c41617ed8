"""Several replicates per Dask task: the policy, and identical results whatever the batching."""

from __future__ import annotations

import optuna
import pytest

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.simulation.replicates_per_task import DurationStats, replicates_per_task

from conftest import make_job, support_model


@pytest.mark.parametrize("n, mean, in_flight, slots, expected", [
    (5, None, 16, 20, 1),  # nothing measured yet
    (1, 0.01, 16, 20, 1),  # a single replicate
    (5, 0.06, 16, 20, 3),  # 3 x 60 ms fit in 0.2 s; 16 trials x 2 tasks >= 20 slots
    (5, 0.06, 8, 20, 2),  # 8 trials: 2 tasks each would leave slots idle; 3 (2+2+1) do not
    (5, 0.06, 4, 20, 1),  # 4 trials: only one replicate per task fills the slots
    (5, 0.3, 16, 20, 1),  # long enough on their own
    (4, 0.0, 4, 2, 4),  # instant: the whole trial in one task
    (4, 0.0, 1, 2, 2),  # ...unless that leaves a slot empty
])
def test_policy(n, mean, in_flight, slots, expected):
    assert replicates_per_task(n, mean, in_flight, slots) == expected


def test_duration_stats_wait_for_enough_trials():
    stats = DurationStats(min_observed=3)
    stats.observe(0.3, 3)
    stats.observe(float("nan"), 3)  # ignored
    stats.observe(0.6, 3)
    assert stats.mean is None
    stats.observe(0.9, 3)
    assert stats.mean == pytest.approx(0.2)


def test_batched_replicates_give_identical_results(tmp_path, scheduler):
    """Same job, same seed, sequential: one replicate per task or three gives the same study."""
    histories = []
    for per_task in (1, 3):
        storage = f"sqlite:///{tmp_path}/b{per_task}.db"
        job = make_job(tmp_path, study="batching", model=support_model("noisy_linear"), n_replicates=5, max_trials=10)
        settings = Settings(storage=storage, scheduler=scheduler, log_format="json", replicates_per_task=per_task)
        run_calibration(job, settings, output_dir=tmp_path / f"r{per_task}", concurrency=1)
        from modelops_calabaria.backend.factory import open_optuna_storage
        from modelops_calabaria.storage import parse_storage_url

        study = optuna.load_study(study_name="batching", storage=open_optuna_storage(parse_storage_url(storage), 1))
        histories.append([(t.params, t.value, t.user_attrs["targets"]) for t in study.trials])
    assert histories[0] == histories[1]


def test_score_of_mean_targets_reduce_batched_replicates_on_a_worker(tmp_path, scheduler):
    storage = f"sqlite:///{tmp_path}/s.db"
    targets = [{"name": "y", "output": "y", "data": {"t": [0, 1, 2], "y": [1.0, 2.0, 3.0]}, "score": "sse",
                "aggregation": "score_of_mean"}]
    values = []
    for per_task in (1, 2):
        job = make_job(tmp_path, study=f"som-{per_task}", model=support_model("noisy_linear"), n_replicates=5,
                       max_trials=6, targets=targets)
        settings = Settings(storage=storage, scheduler=scheduler, log_format="json", replicates_per_task=per_task)
        result = run_calibration(job, settings, output_dir=tmp_path / f"r{per_task}", concurrency=1)
        assert result.trials["COMPLETE"] == 6
        from modelops_calabaria.backend.factory import open_optuna_storage
        from modelops_calabaria.storage import parse_storage_url

        study = optuna.load_study(study_name=job.study, storage=open_optuna_storage(parse_storage_url(storage), 1))
        values.append([t.value for t in study.trials])
    assert values[0] == values[1]


def test_setting_comes_from_job_then_environment(monkeypatch):
    from modelops_calabaria.errors import ConfigurationError
    from modelops_calabaria.settings import resolve_settings

    monkeypatch.delenv("CALABARIA_REPLICATES_PER_TASK", raising=False)
    assert resolve_settings({}).replicates_per_task is None
    assert resolve_settings({"replicates_per_task": 2}).replicates_per_task == 2
    monkeypatch.setenv("CALABARIA_REPLICATES_PER_TASK", "3")
    assert resolve_settings({"replicates_per_task": 2}).replicates_per_task == 3
    monkeypatch.setenv("CALABARIA_REPLICATES_PER_TASK", "0")
    with pytest.raises(ConfigurationError, match="replicates_per_task"):
        resolve_settings({})
