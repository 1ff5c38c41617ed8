"""Pruning end to end: real Dask LocalCluster, real SQLite studies, both modes, both ask paths.

The model is ``noisy_linear`` (y = a t + b plus seeded noise of sd 0.1): every
replicate loss can be recomputed here from the trial's parameters and seeds.
"""

from __future__ import annotations

import threading

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.backend.factory import open_optuna_storage
from modelops_calabaria.calibration.seeds import replicate_seeds
from modelops_calabaria.storage import parse_storage_url

from conftest import make_job, support_model

MODES = [pytest.param(True, id="parallel"), pytest.param(False, id="batched")]
OBSERVED = [1.0, 2.0, 3.0]
TARGETS = [{"name": "y", "output": "y", "data": {"t": [0, 1, 2], "y": OBSERVED}, "score": "sse",
            "aggregation": "mean_of_scores"}]


def _job(tmp_path, **overrides):
    data = {"model": support_model("noisy_linear"), "n_replicates": 4, "targets": TARGETS, "sampler": "random",
            "reevaluate": {"top_k": 0}, "pruning": {"after": [2]}, "max_trials": 24}
    data.update(overrides)
    return make_job(tmp_path, **data)


def _settings(scheduler: str, storage: str, parallel: bool, **kw) -> Settings:
    return Settings(parallel_trials=parallel, storage=storage, scheduler=scheduler, log_format="json", **kw)


def _trials(job, storage: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=job.study, storage=open_optuna_storage(parse_storage_url(storage), 1))
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def _replicate_loss(params: dict, seed: int) -> float:
    """noisy_linear's sse for one seed, computed here (tests/support/models.py)."""
    rng = np.random.default_rng(seed)
    y = params["a"] * np.arange(3.0) + params["b"] + rng.normal(0, 0.1, size=3)
    return float(((y - np.array(OBSERVED)) ** 2).sum())


def _check_trials(job, trials) -> tuple[list, list]:
    """Every trial is COMPLETE or PRUNED with what the brief asks of it; returns (complete, pruned)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(complete) + len(pruned) == len(trials)
    by_number = {t.number: t for t in trials}
    for t in trials:
        seeds = replicate_seeds(job.seed, job.n_replicates, t.number, job.replicate_seeds)
        used = t.user_attrs["replicates"]
        expected = [_replicate_loss(t.params, s) for s in seeds[:used]]
        assert t.user_attrs["replicate_losses"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        if t.state == TrialState.COMPLETE:
            assert used == job.n_replicates
            assert t.value == pytest.approx(np.mean(expected), rel=1e-9)
        else:
            assert used == 2 and t.value is None  # no objective value: nothing ranks it with completed trials
            assert t.user_attrs["partial_loss"] == pytest.approx(np.mean(expected), rel=1e-9)
            reference = by_number[t.user_attrs["pruned_against"]]
            assert reference.state == TrialState.COMPLETE and reference.number != t.number
            assert t.user_attrs["estimated_loss"] > reference.value
    return complete, pruned


@pytest.mark.parametrize("parallel", MODES)
@pytest.mark.parametrize("fast_path", [pytest.param(True, id="mirrored"),
                                       pytest.param(False, id="direct", marks=pytest.mark.slow)])
def test_pruned_trials_carry_replicates_and_partial_loss_and_the_budget_is_exact(tmp_path, scheduler, parallel, fast_path):
    job = _job(tmp_path)
    storage = f"sqlite:///{tmp_path}/s.db"
    # Batching of short replicates: two replicates per Dask task (a stage of 2 is then one task).
    result = run_calibration(job, _settings(scheduler, storage, parallel, fast_path=fast_path, replicates_per_task=2),
                             output_dir=tmp_path / "run", concurrency=4)
    trials = _trials(job, storage)
    assert len(trials) == 24 and {t.number for t in trials} == set(range(24))  # one budget slot per trial, pruned or not
    complete, pruned = _check_trials(job, trials)
    assert pruned and complete
    assert result.trials["PRUNED"] == len(pruned) and result.trials["total"] == 24 and result.trials["RUNNING"] == 0
    assert result.this_run == {"told": 24, "completed": len(complete), "failed": 0, "pruned": len(pruned)}
    # The reported best is a COMPLETE trial, even where a pruned trial's partial loss is lower.
    assert result.best_trial in {t.number for t in complete}
    assert result.best_loss == min(t.value for t in complete)


@pytest.mark.parametrize("parallel, loops", [pytest.param(True, 1, id="parallel", marks=pytest.mark.slow),
                                             pytest.param(False, 4, id="batched")])
def test_pruning_never_prunes_the_best_trial_of_a_seeded_run(tmp_path, scheduler, parallel, loops):
    """The same seeded run without and with pruning (a random sampler: the same points in the same
    order): the best trial is known from the unpruned run; the pruned run completes it, with the same
    loss, and every trial it pruned was indeed worse than the one it was pruned against."""
    runs = {}
    for arm, pruning in (("off", None), ("on", {"after": [2]})):
        job = _job(tmp_path, max_trials=20, pruning=pruning, study=f"best-{arm}")
        storage = f"sqlite:///{tmp_path}/{arm}.db"
        run_calibration(job, _settings(scheduler, storage, parallel), output_dir=tmp_path / arm, concurrency=loops)
        runs[arm] = (job, _trials(job, storage))
    off, on = runs["off"][1], runs["on"][1]
    assert [t.params for t in off] == [t.params for t in on]
    best = min(off, key=lambda t: t.value)
    assert on[best.number].state == TrialState.COMPLETE and on[best.number].value == pytest.approx(best.value, rel=1e-12)
    _, pruned = _check_trials(runs["on"][0], on)
    assert len(pruned) >= 6  # pruning did happen, and often
    for t in pruned:
        assert off[t.number].value > on[t.user_attrs["pruned_against"]].value
    assert min(t.value for t in on if t.state == TrialState.COMPLETE) == pytest.approx(best.value, rel=1e-12)


@pytest.mark.slow
def test_several_coordinators_share_references_and_spend_the_budget_exactly(tmp_path, scheduler):
    """A first coordinator completes the optimum (a start point) and 9 more trials; then two joining
    workers at once take the budget from 10 to 40. The budget is exact, and the joiners prune against
    the first coordinator's best, which they read from the shared study."""
    from modelops_calabaria.backend.factory import open_ledger
    from modelops_calabaria.calibration.runner import load_joined_job

    job = _job(tmp_path, max_trials=10, start=[{"a": 1.0, "b": 1.0}])  # y = t + 1: the data without noise
    storage = f"sqlite:///{tmp_path}/s.db"
    run_calibration(job, _settings(scheduler, storage, True), output_dir=tmp_path / "first", concurrency=2)
    ledger = open_ledger(parse_storage_url(storage), 1)
    ledger.set_max_trials(job.study, 40)
    ledger.close()
    joined = load_joined_job(job.study, parse_storage_url(storage), wait_s=0)
    results: dict[str, object] = {}

    def worker(name: str, parallel: bool) -> None:
        try:
            results[name] = run_calibration(joined, _settings(scheduler, storage, parallel), output_dir=tmp_path / name,
                                            concurrency=2, joining=True)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            results[name] = e

    threads = [threading.Thread(target=worker, args=(n, p)) for n, p in (("w0", True), ("w1", False))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert set(results) == {"w0", "w1"} and not any(isinstance(r, BaseException) for r in results.values()), results
    trials = _trials(job, storage)
    assert len(trials) == 40 and sum(results[n].this_run["told"] for n in ("w0", "w1")) == 30
    assert trials[0].params == {"a": 1.0, "b": 1.0} and trials[0].state == TrialState.COMPLETE
    _, pruned = _check_trials(job, trials)
    later = [t for t in pruned if t.number >= 10]
    assert len(later) >= 10 and all(t.user_attrs["pruned_against"] == 0 for t in later)


def test_the_mirror_learns_a_pruned_trial_as_worse_than_its_reference(tmp_path, storage_url):
    """The fast path's sampler never sees a pruned trial's partial loss as a completed value: it sees
    the estimated loss (worse than the trial it lost to); the shared study keeps it PRUNED, valueless
    (on every backend: SQLite, journal, PostgreSQL)."""
    from modelops_calabaria.backend.factory import open_store
    from modelops_calabaria.calibration.asktell import MirroredAsker
    from modelops_calabaria.calibration.study import build_sampler, distributions

    job = _job(tmp_path)
    backend = open_store(parse_storage_url(storage_url), 1)
    try:
        study = optuna.create_study(study_name=job.study, storage=backend.optuna_storage)
        space = distributions(job)

        def mirror_view(asker) -> dict:
            extra = asker.ask()  # applies the events posted so far
            view = {tuple(t.params.values()): (t.state, t.value) for t in asker._front.mirror.trials()}
            asker.tell_fail(extra, "test: only here to sync the mirror")
            return view

        asker = MirroredAsker(study, space, "c1", build_sampler(job, 1), writers=0, backend=backend)
        first, second = asker.ask(), asker.ask()
        asker.tell_complete(first, 5.0, {"y": 5.0}, 0.1, [5.0, 5.0, 5.0, 5.0])
        asker.tell_pruned(second, 0.5, [0.4, 0.6], 0.05, first.number, 7.5)  # a low partial loss, lost on pairs
        view = mirror_view(asker)
        assert view[tuple(second.params.values())] == (TrialState.COMPLETE, 7.5)
        assert view[tuple(first.params.values())] == (TrialState.COMPLETE, 5.0)
        asker.close()
        stored = {t.number: t for t in study.get_trials(deepcopy=False)}
        assert stored[second.number].state == TrialState.PRUNED and stored[second.number].value is None
        assert stored[second.number].user_attrs["partial_loss"] == 0.5
        assert study.best_trial.number == first.number
        # Another coordinator's mirror, built from the shared study, learns the same, and takes the
        # completed trial (with its per-replicate losses) as a pruning reference.
        other = MirroredAsker(study, space, "c2", build_sampler(job, 1), writers=0, backend=backend)
        assert other.completed_elsewhere() == [(first.number, 5.0, [5.0, 5.0, 5.0, 5.0])]
        view = mirror_view(other)
        assert view[tuple(second.params.values())] == (TrialState.COMPLETE, 7.5)
        other.close()
    finally:
        backend.close()
