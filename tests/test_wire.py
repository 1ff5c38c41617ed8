"""The calibration wire end to end: real Dask cluster, real SQLite / journal files."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.errors import RunFailedError

from conftest import make_job, support_model

MODES = [pytest.param(True, id="parallel"), pytest.param(False, id="batched")]


def settings(scheduler: str, storage: str, parallel: bool, fast_path: bool = True) -> Settings:
    return Settings(parallel_trials=parallel, storage=storage, scheduler=scheduler, log_format="json", fast_path=fast_path)


def load(job, storage: str) -> optuna.Study:
    from modelops_calabaria.backend.factory import open_optuna_storage
    from modelops_calabaria.storage import parse_storage_url

    return optuna.load_study(study_name=job.study, storage=open_optuna_storage(parse_storage_url(storage), 1))


@pytest.mark.slow
@pytest.mark.parametrize("fast_path", [pytest.param(True, id="mirrored"), pytest.param(False, id="direct")])
@pytest.mark.parametrize("parallel", MODES)
@pytest.mark.parametrize("loops", [1, 8])
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_exact_budget_all_terminal(tmp_path, scheduler, parallel, loops, kind, fast_path):
    storage = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal:///{tmp_path}/s.log"
    job = make_job(tmp_path, max_trials=23)
    result = run_calibration(job, settings(scheduler, storage, parallel, fast_path), output_dir=tmp_path / "run",
                             concurrency=loops)
    trials = load(job, storage).get_trials(deepcopy=False)
    assert len(trials) == 23
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert result.trials["total"] == 23 and result.trials["RUNNING"] == 0
    assert {t.number for t in trials} == set(range(23))
    assert (tmp_path / "run" / "best.yaml").is_file() and (tmp_path / "run" / "trials.csv").is_file()


@pytest.mark.parametrize("parallel", MODES)
def test_multi_target_scores_are_exact(tmp_path, scheduler, parallel):
    """Two targets with hand-computable scores: per-target values and weighted loss match."""
    job = make_job(
        tmp_path,
        max_trials=12,
        targets=[
            {"name": "series", "output": "y", "data": {"t": [0, 1, 2], "y": [1.0, 2.0, 3.0]}, "score": "sse", "weight": 2.0},
            {"name": "total", "output": "z", "data": {"i": [0], "z": [2.0]}, "score": "mse", "weight": 3.0},
        ],
    )
    storage = f"sqlite:///{tmp_path}/s.db"
    run_calibration(job, settings(scheduler, storage, parallel), output_dir=tmp_path / "run", concurrency=4)
    for t in load(job, storage).get_trials(deepcopy=False):
        a, b = t.params["a"], t.params["b"]
        sse = sum((a * k + b - y) ** 2 for k, y in zip(range(3), [1.0, 2.0, 3.0]))
        mse = (a + b - 2.0) ** 2
        assert t.user_attrs["targets"]["series"] == pytest.approx(sse, rel=1e-12, abs=1e-12)
        assert t.user_attrs["targets"]["total"] == pytest.approx(mse, rel=1e-12, abs=1e-12)
        assert t.value == pytest.approx(2 * sse + 3 * mse, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("parallel", MODES)
def test_no_result_crosses_trials_or_targets(tmp_path, scheduler, parallel):
    """Each target's value comes from its own trial and output (catches Dask key collisions)."""
    job = make_job(
        tmp_path,
        model=support_model("echo"),
        max_trials=40,
        n_replicates=3,
        replicate_seeds="independent",
        sampler="random",
        targets=[
            {"name": "ta", "output": "a", "data": {"i": [0], "v": [0.0]}, "score": "sse"},
            {"name": "tb", "output": "b", "data": {"i": [0], "v": [0.0]}, "score": "sse"},
        ],
    )
    storage = f"sqlite:///{tmp_path}/s.db"
    run_calibration(job, settings(scheduler, storage, parallel), output_dir=tmp_path / "run", concurrency=8)
    trials = load(job, storage).get_trials(deepcopy=False)
    assert len(trials) == 40
    for t in trials:
        assert t.state == TrialState.COMPLETE
        assert t.user_attrs["targets"]["ta"] == pytest.approx(t.params["a"] ** 2)
        assert t.user_attrs["targets"]["tb"] == pytest.approx(t.params["b"] ** 2)


@pytest.mark.slow
@pytest.mark.parametrize("fast_path", [pytest.param(True, id="mirrored"), pytest.param(False, id="direct")])
@pytest.mark.parametrize("parallel", MODES)
def test_same_job_and_seed_give_identical_study(tmp_path, scheduler, parallel, fast_path):
    job = make_job(tmp_path, model=support_model("noisy_linear"), max_trials=15, study="repro")
    histories = []
    for run in ("one", "two"):
        storage = f"sqlite:///{tmp_path}/{run}.db"
        run_calibration(job, settings(scheduler, storage, parallel, fast_path), output_dir=tmp_path / run, concurrency=1)
        histories.append([(t.params, t.value) for t in load(job, storage).get_trials(deepcopy=False)])
    assert histories[0] == histories[1]


@pytest.mark.parametrize("parallel", MODES)
@pytest.mark.parametrize("model, fragment", [("raises_above", "unstable for a="), ("nan_above", "NaN")])
def test_failing_simulations_fail_their_trial_and_run_goes_on(tmp_path, scheduler, parallel, model, fragment):
    job = make_job(tmp_path, model=support_model(model), max_trials=40, sampler="random")
    storage = f"sqlite:///{tmp_path}/s.db"
    result = run_calibration(job, settings(scheduler, storage, parallel), output_dir=tmp_path / "run", concurrency=4)
    trials = load(job, storage).get_trials(deepcopy=False)
    assert len(trials) == 40
    failed = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert failed and complete and len(failed) + len(complete) == 40
    for t in failed:
        assert t.params["a"] > 1.6
        assert fragment in t.user_attrs["fail_reason"]
    assert all(t.params["a"] <= 1.6 for t in complete)
    assert result.best_loss == min(t.value for t in complete)


def test_run_with_no_completed_trial_fails_with_reason(tmp_path, scheduler):
    job = make_job(tmp_path, model=support_model("always_fails"), max_trials=5)
    with pytest.raises(RunFailedError, match="broken model: missing input file"):
        run_calibration(job, settings(scheduler, f"sqlite:///{tmp_path}/s.db", True), output_dir=tmp_path / "run")


def test_failure_storm_stops_early_quoting_first_traceback(tmp_path, scheduler):
    job = make_job(tmp_path, model=support_model("always_fails"), max_trials=200, stop={"max_consecutive_failures": 6})
    storage = f"sqlite:///{tmp_path}/s.db"
    with pytest.raises(RunFailedError) as err:
        run_calibration(job, settings(scheduler, storage, True), output_dir=tmp_path / "run", concurrency=2)
    assert "consecutive failed trials" in str(err.value) and "Traceback" in str(err.value)
    trials = load(job, storage).get_trials(deepcopy=False)
    assert 6 <= len(trials) < 200
    assert all(t.state == TrialState.FAIL for t in trials)


def test_target_loss_stops_the_run(tmp_path, scheduler):
    job = make_job(tmp_path, max_trials=300, sampler="random", stop={"target_loss": 1.0})
    result = run_calibration(job, settings(scheduler, f"sqlite:///{tmp_path}/s.db", True), output_dir=tmp_path / "run")
    assert result.best_loss is not None and result.best_loss <= 1.0
    assert result.trials["total"] < 300 and result.trials["RUNNING"] == 0
    assert "target loss" in result.stop_reason


def test_simulation_timeout_fails_trial(tmp_path, scheduler):
    job = make_job(tmp_path, model=support_model("hangs_above"), max_trials=12, sampler="random", timeout_s=1.0,
                   n_replicates=1)
    storage = f"sqlite:///{tmp_path}/s.db"
    run_calibration(job, settings(scheduler, storage, True), output_dir=tmp_path / "run", concurrency=4)
    trials = load(job, storage).get_trials(deepcopy=False)
    assert len(trials) == 12 and all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    for t in trials:
        if t.params["a"] > 1.6:
            assert t.state == TrialState.FAIL and "timed out after 1 s" in t.user_attrs["fail_reason"]


def test_results_files(tmp_path, scheduler):
    import csv
    import json

    import yaml

    job = make_job(tmp_path, max_trials=8)
    run_calibration(job, settings(scheduler, f"sqlite:///{tmp_path}/s.db", True), output_dir=tmp_path / "run")
    best = yaml.safe_load((tmp_path / "run" / "best.yaml").read_text())
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = list(csv.DictReader((tmp_path / "run" / "trials.csv").open()))
    assert len(rows) == 8 and {"number", "state", "loss", "a", "b", "loss:y", "fail_reason"} <= set(rows[0])
    assert best["best_loss"] == results["best_loss"] == min(float(r["loss"]) for r in rows)
    assert set(best["best_params"]) == {"a", "b"}
    for key in ("best_params", "best_loss", "trials", "wall_time_s", "trials_per_minute", "utilization"):
        assert key in results
    assert results["trials"]["COMPLETE"] == 8 and 0 < results["utilization"] <= 1
    assert math.isclose(results["trials_per_minute"], 60 * 8 / results["wall_time_s"], rel_tol=0.01)
