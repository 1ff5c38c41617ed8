"""Calibration quality: the best point re-evaluated on fresh seeds, replicate seed modes,
biased aggregations flagged, binomial-type scores checked (real runs on Dask and inline)."""

from __future__ import annotations

import collections
import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.calibration.reevaluate import Candidate, choose, reevaluation_seeds, top_trials
from modelops_calabaria.calibration.seeds import STAGE_TRIALS, fresh_seeds, replicate_seeds, used_seeds
from modelops_calabaria.errors import JobSpecError, SimulationError
from modelops_calabaria.job import ScoreSpec
from modelops_calabaria.simulation.task import SimContext, run_replicate
from modelops_calabaria.targets.evaluate import compile_targets
from modelops_calabaria.targets.scores import biased_aggregations, score

from conftest import SUPPORT, make_job

QM = SUPPORT / "quality_models.py"


def qmodel(name: str) -> str:
    return f"{QM}:{name}"


def settings(scheduler: str, storage: str, parallel: bool = True) -> Settings:
    return Settings(parallel_trials=parallel, storage=storage, scheduler=scheduler, local_workers=4, log_format="json")


# --- seeds ------------------------------------------------------------------------------------

def test_seed_modes():
    common = [replicate_seeds(3, 4, n, "common") for n in range(50)]
    assert all(s == common[0] for s in common)
    independent = [tuple(replicate_seeds(3, 4, n, "independent")) for n in range(50)]
    assert len(set(independent)) == 50
    staged = [tuple(replicate_seeds(3, 4, n, "staged")) for n in range(3 * STAGE_TRIALS)]
    assert len(set(staged[:STAGE_TRIALS])) == 1 and len(set(staged)) == 3  # common within a stage, fresh across
    assert set(staged[0]).isdisjoint(common[0])


def test_fresh_seeds_avoid_every_excluded_seed():
    first = fresh_seeds(5, 8, set())
    assert len(set(first)) == 8
    excluded = set(first[:3])
    again = fresh_seeds(5, 8, excluded)
    assert excluded.isdisjoint(again) and len(set(again)) == 8
    assert again[:5] == first[3:]  # the same stream, skipping what is excluded
    assert set(fresh_seeds(5, 8, set(), round_=1)).isdisjoint(first)


def test_choose_ranks_failed_reevaluations_last_and_keeps_in_sample_when_all_fail():
    a = Candidate(0, {"a": 1}, 1.0, 5.0)
    b = Candidate(1, {"a": 2}, 2.0, 3.0)
    c = Candidate(2, {"a": 3}, 3.0, None, error="boom")
    assert choose([a, b, c]) == (b, "reevaluation")
    assert choose([a, b, c], maximize=True) == (a, "reevaluation")
    tie = Candidate(3, {"a": 4}, 4.0, 3.0)
    assert choose([a, b, tie])[0] is b  # ties keep the in-sample order
    failed = [Candidate(0, {}, 1.0, None, error="x"), Candidate(1, {}, 2.0, None, error="y")]
    assert choose(failed) == (failed[0], "in_sample")


# --- re-evaluation in real runs ----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["common", "independent", "staged"])
def test_reevaluation_runs_on_seeds_no_trial_used(tmp_path, scheduler, mode):
    log_dir = tmp_path / "calls"
    log_dir.mkdir()
    job = make_job(tmp_path, model=qmodel("seed_recorder"), fixed={"log_dir": str(log_dir)}, max_trials=12,
                   n_replicates=3, replicate_seeds=mode, sampler="random", reevaluate={"top_k": 4})
    result = run_calibration(job, settings(scheduler, f"sqlite:///{tmp_path}/s.db"), output_dir=tmp_path / "run",
                             concurrency=3)
    selection = result.selection
    assert selection is not None and selection["replicates"] == 6 and len(selection["reevaluated"]) == 4
    fresh = set(selection["seeds"])
    assert len(fresh) == 6
    calls = collections.Counter(int(p.name.split("-")[0]) for p in log_dir.iterdir())
    # What the model saw: every trial's replicates (12 x 3 calls) plus the re-evaluation (4 x 6 calls),
    # and the re-evaluation's seeds only in the re-evaluation's calls.
    assert sum(calls.values()) == 12 * 3 + 4 * 6
    assert sum(n for s, n in calls.items() if s in fresh) == 4 * 6
    trial_seeds = {s for s in calls if s not in fresh}
    assert trial_seeds == used_seeds(job.seed, 3, range(12), mode)
    assert fresh.isdisjoint(trial_seeds)


def _lucky_job(tmp_path, **overrides):
    lucky = replicate_seeds(11, 2, 0, "common")  # the trials' seeds (common random numbers)
    data = dict(model=qmodel("lucky_outlier"), fixed={"lucky_seeds": lucky}, max_trials=30, n_replicates=2,
                sampler="random", seed=11)
    data.update(overrides)
    return make_job(tmp_path, **data)


def test_reported_best_changes_when_the_lucky_in_sample_best_does_not_survive(tmp_path, scheduler):
    job = _lucky_job(tmp_path)
    out = tmp_path / "run"
    result = run_calibration(job, settings(scheduler, f"sqlite:///{tmp_path}/s.db"), output_dir=out, concurrency=2)
    best = yaml.safe_load((out / "best.yaml").read_text())
    results = json.loads((out / "results.json").read_text())
    sel = results["selection"]
    # The setup did what it is for: the in-sample best is a lucky outlier (loss 0 on the trials' seeds)...
    assert sel["in_sample_best"]["params"]["a"] > 1.8 and sel["in_sample_best"]["loss"] == 0.0
    top = sel["reevaluated"]
    assert any(c["params"]["a"] <= 1.8 for c in top), "need an honest trial among the top k"
    # ... which fresh seeds expose; the reported best is the best re-evaluated one, an honest trial.
    lucky = [c for c in top if c["params"]["a"] > 1.8]
    honest = [c for c in top if c["params"]["a"] <= 1.8]
    assert min(c["loss"] for c in lucky) > max(c["loss"] for c in honest) or \
        min(c["loss"] for c in honest) < min(c["loss"] for c in lucky)
    chosen = min(top, key=lambda c: c["loss"])
    assert sel["selected_by"] == "reevaluation" and chosen["params"]["a"] <= 1.8
    assert results["best_trial"] == best["best_trial"] == chosen["trial"] != sel["in_sample_best"]["trial"]
    assert results["best_params"] == best["best_params"] == chosen["params"]
    assert best["selected_by"] == "reevaluation"
    assert best["in_sample_best"]["trial"] == sel["in_sample_best"]["trial"]
    assert [c["trial"] for c in best["reevaluated"]] == [c["trial"] for c in top]
    assert best["reevaluated_loss"] == pytest.approx(chosen["loss"])
    # best_loss is the reported trial's own (in-sample) loss, as stored in the study
    assert result.best_loss == pytest.approx(chosen["in_sample_loss"])
    # the candidates are the top k in-sample, best first
    assert [c["in_sample_loss"] for c in top] == sorted(c["in_sample_loss"] for c in top)


def test_top_k_zero_reports_the_in_sample_best(tmp_path):
    job = _lucky_job(tmp_path, reevaluate={"top_k": 0})
    out = tmp_path / "run"
    result = run_calibration(job, settings("inline", f"sqlite:///{tmp_path}/s.db"), output_dir=out, concurrency=2)
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert result.selection is None and "selected_by" not in best
    assert result.best_params["a"] > 1.8 and result.best_loss == 0.0  # the lucky outlier stands


def test_on_demand_reevaluation_draws_another_fresh_set(tmp_path):
    import optuna

    from modelops_calabaria.backend.factory import open_optuna_storage
    from modelops_calabaria.calibration.reevaluate import reevaluate
    from modelops_calabaria.simulation import connect_service
    from modelops_calabaria.storage import parse_storage_url

    job = _lucky_job(tmp_path, max_trials=16)
    storage = f"sqlite:///{tmp_path}/s.db"
    run_calibration(job, settings("inline", storage), output_dir=tmp_path / "run", concurrency=1)
    study = optuna.load_study(study_name=job.study, storage=open_optuna_storage(parse_storage_url(storage), 1))
    trials = study.get_trials(deepcopy=False)
    targets = compile_targets(job)
    service = connect_service("inline", SimContext(job.model, dict(job.fixed), targets), local_workers=2)
    try:
        first = reevaluate(job, trials, service, top_k=3)
        second = reevaluate(job, trials, service, top_k=3, replicates=5, round_=1)
    finally:
        service.close()
    assert [c.trial for c in first.reevaluated] == [t.number for t in top_trials(trials, 3)]
    assert len(second.seeds) == 5 and set(first.seeds).isdisjoint(second.seeds)
    assert set(second.seeds).isdisjoint(used_seeds(job.seed, job.n_replicates, range(16), "common"))
    assert reevaluation_seeds(job, trials, 4) == list(first.seeds)[:4]


# --- aggregation warnings ----------------------------------------------------------------------

def test_biased_combinations_are_named_with_their_fix(tmp_path):
    def targets(agg, kind="poisson_nll"):
        return make_job(tmp_path, targets=[{"name": "c", "output": "y", "data": {"t": [0, 1, 2], "y": [1, 2, 3]},
                                             "score": kind, "aggregation": agg}]).targets

    [(problem, fix)] = biased_aggregations(targets("mean_of_scores"), 4)
    assert "target 'c'" in problem and "mean_of_scores" in problem and "score_of_mean" in fix
    [(problem, fix)] = biased_aggregations(targets("logmeanexp"), 3)
    assert "3 replicate" in problem and "n_replicates" in fix
    assert biased_aggregations(targets("logmeanexp"), 20) == []
    assert biased_aggregations(targets("score_of_mean"), 2) == []
    assert biased_aggregations(targets("mean_of_scores", "sse"), 2) == []


def test_the_default_aggregation_is_not_flagged(tmp_path):
    job = make_job(tmp_path, targets=[{"name": "c", "output": "y", "data": {"t": [0, 1, 2], "y": [1, 2, 3]},
                                       "score": "poisson_nll"}])
    assert biased_aggregations(job.targets, job.n_replicates) == []


# --- binomial-type scores ----------------------------------------------------------------------

def _positivity_job(tmp_path, output: str, **score):
    return make_job(tmp_path, model=qmodel("positivity"), parameters={"a": {"lower": 0.5, "upper": 2.0}},
                    targets=[{"name": "positivity", "output": output, "aggregation": "mean_of_scores",
                              "data": {"week": [0, 1, 2], "positive": [6, 15, 31], "tested": [50, 80, 100]},
                              "score": {"kind": "betabinomial_nll", "trials_column": "tested", **score}}])


def test_a_count_given_to_a_binomial_score_fails_the_replicate_saying_what_to_return(tmp_path):
    job = _positivity_job(tmp_path, "positives", dispersion=5.0)
    ctx = SimContext(job.model, {}, compile_targets(job))
    rep = run_replicate(ctx, {"a": 1.0}, 7, 0)
    assert rep.error is not None
    assert "target 'positivity' (output 'positives')" in rep.error and "probability" in rep.error
    assert "outside [0, 1]" in rep.error and "return the fraction" in rep.error and "'tested'" in rep.error
    good = run_replicate(SimContext(job.model, {}, compile_targets(_positivity_job(tmp_path, "fraction", dispersion=5.0))),
                         {"a": 1.0}, 7, 0)
    assert good.error is None and math.isfinite(good.scores["positivity"])


def test_binomial_range_check_in_the_score_itself():
    spec = ScoreSpec(kind="binomial_nll", trials_column="n")
    obs, n = np.array([[3.0], [4.0]]), np.array([[10.0], [10.0]])
    with pytest.raises(SimulationError, match=r"binomial_nll scores a probability.*from 0.3 to 4"):
        score(spec, np.array([[0.3], [4.0]]), obs, n)
    with pytest.raises(SimulationError, match="outside"):
        score(spec, np.array([[-0.01], [0.5]]), obs, n)
    assert math.isfinite(score(spec, np.array([[0.0], [1.0]]), obs, n))  # the bounds themselves are probabilities


def test_beta_binomial_dispersion_from_a_model_output(tmp_path):
    job = _positivity_job(tmp_path, "fraction", dispersion_output="phi")
    ctx = SimContext(job.model, {}, compile_targets(job, ("fraction", "positives", "phi")))
    for phi in (2.0, 30.0):
        rep = run_replicate(ctx, {"a": 1.2, "phi": phi}, 3, 0)
        p = np.array([0.1, 0.2, 0.3]) * 1.2
        expected = -stats.betabinom.logpmf([6, 15, 31], [50, 80, 100], p * phi, (1 - p) * phi).sum()
        assert rep.error is None and rep.scores["positivity"] == pytest.approx(expected)
    bad = run_replicate(ctx, {"a": 1.2, "phi": -1.0}, 3, 0)
    assert "dispersion output 'phi' must be one positive finite number" in bad.error


@pytest.mark.parametrize("score_spec, aggregation, message", [
    ({"kind": "negbin_nll", "dispersion_output": "phi"}, "mean_of_scores", "'dispersion_output' is for betabinomial_nll"),
    ({"kind": "betabinomial_nll", "trials_column": "tested", "dispersion": 3, "dispersion_output": "phi"},
     "mean_of_scores", "not both"),
    ({"kind": "betabinomial_nll", "trials_column": "tested", "dispersion_output": "phi"}, "score_of_mean",
     "use aggregation mean_of_scores or logmeanexp"),
])
def test_dispersion_output_misuse_is_a_job_error(tmp_path, score_spec, aggregation, message):
    with pytest.raises(JobSpecError) as err:
        make_job(tmp_path, targets=[{"name": "p", "output": "fraction", "aggregation": aggregation,
                                     "data": {"week": [0], "positive": [1], "tested": [5]}, "score": score_spec}])
    assert message in str(err.value) + " ".join(m for _, m in err.value.problems)


def test_dispersion_output_must_be_a_declared_output(tmp_path):
    job = _positivity_job(tmp_path, "fraction", dispersion_output="nope")
    with pytest.raises(JobSpecError) as err:
        compile_targets(job, ("fraction", "positives", "phi"))
    assert err.value.problems[0][0] == "targets[0].score.dispersion_output"


# --- the sampler's start-up under concurrency ---------------------------------------------------

def test_tpe_random_start_up_shrinks_with_trials_in_flight(tmp_path):
    """Optuna counts only finished trials toward n_startup_trials: with c trials in flight about
    n_startup + c - 1 points are random. The default keeps that near one loop's 10."""
    import optuna

    from modelops_calabaria.calibration.mirror import FinishTrial, Mirror
    from modelops_calabaria.calibration.study import build_sampler, distributions, tpe_startup_trials

    assert [tpe_startup_trials(c) for c in (1, 4, 10, 16, 64)] == [10, 7, 1, 1, 1]
    job = make_job(tmp_path, parameters={"x": {"lower": -5.0, "upper": 5.0}, "y": {"lower": -5.0, "upper": 5.0}})

    def first_model_based(sampler, in_flight: int) -> int:
        """Index of the first point TPE's model drew (random points do not call _sample)."""
        calls = []
        original = sampler._sample
        sampler._sample = lambda study, trial, space: calls.append(trial.number) or original(study, trial, space)
        mirror = Mirror(sampler, [optuna.study.StudyDirection.MINIMIZE], distributions(job))
        running = [mirror.sample() for _ in range(in_flight)]
        while not calls:
            key, p = running.pop(0)
            mirror.apply([FinishTrial(key, optuna.trial.TrialState.COMPLETE, p["x"] ** 2 + p["y"] ** 2)])
            running.append(mirror.sample())
        return calls[0]

    assert first_model_based(build_sampler(job, 1), 1) == 10
    assert first_model_based(build_sampler(job, 16), 16) == 16  # one loop's 10 would make it 25
    given = make_job(tmp_path, sampler={"name": "tpe", "options": {"n_startup_trials": 10}})
    assert first_model_based(build_sampler(given, 16), 16) == 25  # an explicit option still wins
