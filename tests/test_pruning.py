"""The pruning rule (calibration/pruning.py) against known answers, and the `pruning:` job field.

The error-rate tests draw many synthetic trials whose per-replicate differences
have a known mean and spread, and check the stated rate with a binomial margin
(4 standard errors: a correct rule fails with probability < 1e-4).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from modelops_calabaria.calibration import pruning
from modelops_calabaria.calibration.pruning import Board, Reference, decide, prediction_lower_bound
from modelops_calabaria.calibration.seeds import STAGE_TRIALS, replicate_seeds, shares_seeds
from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.targets.evaluate import aggregate_trial, compile_targets

from conftest import make_job


def _bounds(x: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """The rule's bound for each row of ``x`` (the first m values of n), vectorised the same way."""
    m = x.shape[1]
    t = stats.t.ppf(1 - alpha, m - 1)
    return x.mean(axis=1) - t * x.std(axis=1, ddof=1) * ((n - m) / n) * math.sqrt(1 / m + 1 / (n - m))


def test_bound_known_answer():
    # x = [1, 3]: mean 2, s = sqrt(2); n = 4: scale (2/4) sqrt(1/2 + 1/2) = 0.5; t(0.95, 1) = 6.313752
    assert prediction_lower_bound([1.0, 3.0], 4, 0.05) == pytest.approx(2 - 6.313752 * math.sqrt(2) * 0.5, rel=1e-6)
    # No spread (a deterministic model): the mean itself.
    assert prediction_lower_bound([2.5, 2.5, 2.5], 10, 0.01) == 2.5
    row = np.array([[0.3, -0.2, 1.1, 0.4]])
    assert prediction_lower_bound(row[0], 9, 0.1) == pytest.approx(_bounds(row, 9, 0.1)[0], rel=1e-12)
    for bad in (([1.0], 4, 0.05), ([1.0, 2.0], 2, 0.05), ([1.0, 2.0], 4, 0.0)):
        with pytest.raises(ValueError):
            prediction_lower_bound(*bad)


@pytest.mark.parametrize("m, n", [(2, 4), (3, 10), (5, 8)])
def test_prediction_bound_has_its_stated_coverage(m, n):
    """Normal differences: the full mean falls below the bound in alpha of the draws, no more, no less."""
    alpha, draws = 0.1, 40_000
    rng = np.random.default_rng(1000 + m * n)
    x = rng.normal(0.7, 2.0, size=(draws, n))
    below = (x.mean(axis=1) < _bounds(x[:, :m], n, alpha)).mean()
    se = math.sqrt(alpha * (1 - alpha) / draws)
    assert abs(below - alpha) < 4 * se


@pytest.mark.parametrize("mean_difference", [0.0, -0.3, 0.2])
def test_error_rate_of_pruning_a_trial_that_would_have_won(mean_difference):
    """P(pruned and its full loss <= the reference's) <= alpha, whatever the true mean difference,
    through decide() itself on paired per-replicate losses (common seeds: shared noise cancels)."""
    alpha, n, m, draws = 0.1, 6, 3, 4000
    rng = np.random.default_rng(7 + int(mean_difference * 10))
    shared = rng.normal(0, 5.0, (draws, n))  # the seed's effect, common to both trials
    refs = 10 + shared + rng.normal(0, 0.5, (draws, n))
    trials = 10 + mean_difference + shared + rng.normal(0, 0.5, (draws, n))
    bad = 0
    for ref, trial in zip(refs, trials):
        d = decide(trial[:m], Reference(0, float(ref.mean()), tuple(ref)), n, alpha, paired=True)
        bad += d.prune and trial.mean() <= ref.mean()
    assert bad / draws <= alpha + 4 * math.sqrt(alpha * (1 - alpha) / draws)


def test_bonferroni_over_looks_keeps_the_rate_per_trial():
    """Looks at 2 and 4 of 8, each at alpha/2: a trial that would have won is pruned at most alpha of the time."""
    alpha, n, draws = 0.1, 8, 40_000
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.0, size=(draws, n))  # the boundary case: as likely to win as not
    pruned = np.zeros(draws, dtype=bool)
    for m in pruning.looks([2, 4], n):
        pruned |= _bounds(x[:, :m], n, alpha / 2) > 0
    wrong = (pruned & (x.mean(axis=1) <= 0)).mean()
    assert wrong <= alpha + 4 * math.sqrt(alpha * (1 - alpha) / draws)
    single = ((_bounds(x[:, :2], n, alpha) > 0) | (_bounds(x[:, :4], n, alpha) > 0)) & (x.mean(axis=1) <= 0)
    assert single.mean() > wrong  # without the split, two looks err more often


def test_pairing_is_what_makes_it_sharp():
    """Common seeds: a trial worse by 1 with a seed effect of sd 5 is pruned almost always when paired,
    hardly ever when compared with the reference's loss alone."""
    n, m = 6, 3
    rng = np.random.default_rng(11)
    paired = unpaired = 0
    for _ in range(300):
        shared = rng.normal(0, 5.0, n)
        ref = 10 + shared + rng.normal(0, 0.1, n)
        trial = 11 + shared + rng.normal(0, 0.1, n)
        reference = Reference(0, float(ref.mean()), tuple(ref))
        paired += decide(trial[:m], reference, n, 0.05, paired=True).prune
        unpaired += decide(trial[:m], reference, n, 0.05, paired=False).prune
    assert paired > 290 and unpaired < 60


def test_decide_edges():
    ref = Reference(3, 1.0, (1.0, 1.0, 1.0, 1.0))
    worse = decide([5.0, 5.0], ref, 4, 0.05, paired=True)
    assert worse.prune and worse.reference == 3 and worse.replicates == 2 and worse.partial_loss == 5.0
    assert worse.estimate == pytest.approx(5.0) and worse.bound == pytest.approx(4.0)
    assert not decide([5.0, 5.0], None, 4, 0.05, paired=True).prune  # nothing to compare with yet
    assert not decide([0.5, 0.5], ref, 4, 0.05, paired=True).prune  # better
    assert not decide([math.nan, 5.0], ref, 4, 0.05, paired=True).prune
    # maximizing: lower is worse
    assert decide([-3.0, -3.0], ref, 4, 0.05, paired=True, minimize=False).prune
    assert not decide([5.0, 5.0], ref, 4, 0.05, paired=True, minimize=False).prune
    # a reference with the wrong number of replicate losses is compared unpaired (with its loss)
    short = Reference(3, 1.0, (1.0,))
    assert not decide([5.0, 5.0], short, 4, 0.05, paired=True).paired


def test_estimate_of_a_pruned_trial_is_worse_than_its_reference():
    rng = np.random.default_rng(5)
    for _ in range(500):
        ref = rng.normal(10, 3, 5)
        trial = ref + rng.normal(rng.uniform(-1, 3), 1, 5)
        for paired in (True, False):
            d = decide(trial[:3], Reference(0, float(ref.mean()), tuple(ref)), 5, 0.1, paired=paired)
            if d.prune:
                assert d.estimate > ref.mean()


def test_board_keeps_the_kth_best():
    board = Board(2)
    assert board.kth() is None
    board.add(0, 5.0, [5.0])
    assert board.kth() is None  # one completed trial, the 2nd best does not exist yet
    board.add(1, 3.0, [3.0])
    board.add(2, 4.0, [4.0])
    board.add(2, 0.0, [0.0])  # a trial is counted once
    board.add(3, math.inf, [math.inf])
    assert board.kth().number == 2
    board.add(4, 1.0, [1.0])
    assert board.kth().number == 1
    high = Board(1, minimize=False)
    for i, v in enumerate([1.0, 7.0, 3.0]):
        high.add(i, v, [v])
    assert high.kth().number == 1


def test_stages_and_looks():
    assert pruning.looks(None, 4) == (2,) and pruning.looks(None, 9) == (5,) and pruning.looks(None, 3) == (2,)
    assert pruning.looks([2, 5], 8) == (2, 5)
    assert pruning.stages((2, 5), 8) == [(0, 2), (2, 5), (5, 8)]


def test_combine_is_the_mean_of_scores_aggregation(tmp_path):
    job = make_job(tmp_path, targets=[
        {"name": "a", "output": "y", "data": {"t": [0, 1], "y": [1.0, 2.0]}, "score": "sse", "aggregation": "mean_of_scores", "weight": 2.0},
        {"name": "b", "output": "z", "data": {"i": [0], "z": [2.0]}, "score": "mse", "aggregation": "mean_of_scores", "weight": 0.5},
    ])
    reps = [{"a": 1.25, "b": 3.0}, {"a": 0.5, "b": 0.0}, {"a": 2.0, "b": 1.5}]
    expected = aggregate_trial(compile_targets(job), reps, [{}] * 3)
    weights = {t.name: t.weight for t in job.targets}
    assert pruning.combine(reps, weights) == expected
    assert pruning.replicate_losses(reps, weights) == [4.0, 1.0, 4.75]
    assert np.mean(pruning.replicate_losses(reps, weights)) == pytest.approx(expected[1])


@pytest.mark.parametrize("mode", ["common", "independent", "staged"])
def test_shares_seeds_matches_the_seeds(mode):
    for a, b in [(0, 0), (0, 1), (3, STAGE_TRIALS - 1), (3, STAGE_TRIALS + 3), (41, 45)]:
        same = replicate_seeds(9, 4, a, mode) == replicate_seeds(9, 4, b, mode)
        assert shares_seeds(mode, a, b) == same


# -- the job field -------------------------------------------------------------------------------

MOS = [{"name": "y", "output": "y", "data": {"t": [0, 1, 2], "y": [1.0, 2.0, 3.0]}, "score": "sse",
        "aggregation": "mean_of_scores"}]


def test_pruning_is_off_by_default(tmp_path):
    assert make_job(tmp_path).pruning is None
    job = make_job(tmp_path, n_replicates=6, targets=MOS, pruning={})
    assert job.pruning.after is None and job.pruning.against == 1 and job.pruning.error_rate == 0.05


@pytest.mark.parametrize("overrides, fragment", [
    ({"targets": [{**MOS[0], "aggregation": "score_of_mean"}]}, "target 'y' uses score_of_mean"),
    ({"targets": [{k: v for k, v in MOS[0].items() if k != "aggregation"}]}, "needs aggregation mean_of_scores"),
    ({"targets": [{**MOS[0], "score": "poisson_nll", "aggregation": "logmeanexp"}]}, "uses logmeanexp"),
    ({"n_replicates": 2}, "n_replicates >= 3"),
    ({"pruning": {"after": [1]}}, "must be >= 2"),
    ({"pruning": {"after": [3, 2]}}, "must increase"),
    ({"pruning": {"after": [4]}}, "below n_replicates 4"),
    ({"pruning": {"after": []}}, "pruning.after"),
    ({"pruning": {"error_rate": 0.6}}, "pruning.error_rate"),
    ({"pruning": {"against": 0}}, "pruning.against"),
    ({"pruning": {"every": 2}}, "pruning.every"),
    ({"posterior": {"initial": 10}}, "cannot be combined with posterior"),
])
def test_bad_pruning_is_refused(tmp_path, overrides, fragment):
    data = {"n_replicates": 4, "targets": MOS, "pruning": {}, **overrides}
    with pytest.raises(JobSpecError) as e:
        make_job(tmp_path, **data)
    text = str(e.value) + " " + " ".join(f"{p}: {m}" for p, m in getattr(e.value, "problems", []) or [])
    assert fragment in text


# -- a pruned trial in the run's counts ----------------------------------------------------------

def test_a_pruned_trial_is_neither_a_failure_nor_an_improvement(tmp_path):
    from modelops_calabaria.calibration.run_state import RunState
    from modelops_calabaria.outcome import TrialRecord
    from modelops_calabaria.reporting.progress import Progress

    job = make_job(tmp_path, stop={"patience": 2, "max_consecutive_failures": 2})
    state = RunState("minimize", job.stop, 0.0)
    state.record_complete(0, 1.0, {})
    state.record_fail(1, "boom")
    state.record_pruned(2, busy_s=0.5)
    assert (state.completed, state.failed, state.pruned, state.consecutive_failures) == (1, 1, 1, 0)
    assert state.busy_s == 0.5 and state.best_number == 0
    state.record_fail(3, "boom")
    assert state.check_stop(0.0) is None  # fail, pruned, fail: no storm of 2 consecutive failures
    state.record_pruned(4)
    assert state.check_stop(0.0) == "no improvement in 2 trials (patience 2)"  # pruned trials did not improve
    progress = Progress(4, bar=False)
    progress(TrialRecord(0, "COMPLETE", 1.0, {}, {}, 0.1))
    progress(TrialRecord(1, "PRUNED", None, {}, {}, 0.1, reason="pruned after 2 of 4 replicates"))
    assert (progress.completed, progress.pruned, progress.failed, progress.best) == (1, 1, 0, 1.0)
    assert "1 pruned" in progress.status()
