"""One contract, run against SQLite, journal file and PostgreSQL: budget, resume, extend,
stale-trial recovery, status. Real files and a real PostgreSQL server."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.backend.factory import open_ledger
from modelops_calabaria.backend.ledger import Coordinator
from modelops_calabaria.calibration.recovery import LOST_REASON, recover_stale_trials
from modelops_calabaria.calibration.study import COORDINATOR_ATTR
from modelops_calabaria.reporting.status import study_status
from modelops_calabaria.backend.factory import open_optuna_storage
from modelops_calabaria.storage import parse_storage_url

from conftest import make_job, unique


def _settings(scheduler: str, storage: str, **kw) -> Settings:
    return Settings(storage=storage, scheduler=scheduler, log_format="json", **kw)


def _trials(storage: str, study: str):
    return optuna.load_study(study_name=study, storage=open_optuna_storage(parse_storage_url(storage), 1)).get_trials(deepcopy=False)


def test_claims_never_exceed_budget_under_threads(storage_url):
    target = parse_storage_url(storage_url)
    ledger = open_ledger(target, 8)
    study = unique("ledger")
    assert ledger.ensure_budget(study, 50) == 50
    assert ledger.ensure_budget(study, 999) == 50  # first creator wins
    granted: list[int] = []
    lock = threading.Lock()

    def grab() -> None:
        while True:
            g = ledger.claim(study, 3)
            if g == 0:
                return
            with lock:
                granted.append(g)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 50 and max(granted) <= 3
    assert ledger.budget(study) == (50, 50)
    ledger.release(study, 2)
    assert ledger.claim(study, 5) == 2
    ledger.set_max_trials(study, 60)
    assert ledger.claim(study, 20) == 10
    ledger.close()


def test_heartbeats_and_forget(storage_url):
    ledger = open_ledger(parse_storage_url(storage_url), 1)
    study = unique("hb")
    ledger.beat(study, Coordinator("c1", "h", 1, 100.0))
    ledger.beat(study, Coordinator("c1", "h", 1, 200.0))
    ledger.beat(study, Coordinator("c2", "h", 2, 150.0))
    seen = {c.coordinator_id: c.last_seen for c in ledger.coordinators(study)}
    assert seen == {"c1": 200.0, "c2": 150.0}
    ledger.forget(study, "c1")
    assert [c.coordinator_id for c in ledger.coordinators(study)] == ["c2"]
    ledger.close()


@pytest.mark.slow
@pytest.mark.parametrize("fast_path", [True, False])
def test_exact_budget_with_many_loops(storage_url, scheduler, tmp_path, fast_path):
    """16 loops sharing reserved claims end with exactly the budget (a race once left slots unused)."""
    job = make_job(tmp_path, max_trials=150, sampler="random")
    result = run_calibration(job, _settings(scheduler, storage_url, fast_path=fast_path), output_dir=tmp_path / "run",
                             concurrency=16)
    trials = _trials(storage_url, job.study)
    assert len(trials) == 150 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(150))
    assert result.stop_reason == "budget spent"
    assert open_ledger(parse_storage_url(storage_url), 1).budget(job.study) == (150, 150)


def test_resume_and_extend(storage_url, scheduler, tmp_path):
    job = make_job(tmp_path, max_trials=12)
    s = _settings(scheduler, storage_url)
    run_calibration(job, s, output_dir=tmp_path / "run", max_trials=5)
    assert len(_trials(storage_url, job.study)) == 5
    result = run_calibration(job, s, output_dir=tmp_path / "run")  # resumes up to the job's 12
    assert len(_trials(storage_url, job.study)) == 12 and result.this_run["told"] == 7
    result = run_calibration(job, s, output_dir=tmp_path / "run")  # nothing left to do
    assert len(_trials(storage_url, job.study)) == 12 and result.this_run["told"] == 0
    result = run_calibration(job, s, output_dir=tmp_path / "run", extend=4)
    trials = _trials(storage_url, job.study)
    assert len(trials) == 16 and result.this_run["told"] == 4
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_stale_trials_of_a_dead_coordinator_fail_with_reason(storage_url, tmp_path):
    target = parse_storage_url(storage_url)
    storage = open_optuna_storage(target, 1)
    ledger = open_ledger(target, 1)
    study = optuna.create_study(study_name=unique("stale"), storage=storage)
    dead, alive = study.ask(), study.ask()
    orphan = study.ask()  # asked, but its owner died before recording itself
    storage.set_trial_system_attr(dead._trial_id, COORDINATOR_ATTR, "dead-1")
    storage.set_trial_system_attr(alive._trial_id, COORDINATOR_ATTR, "alive-1")
    now = time.time()
    ledger.beat(study.study_name, Coordinator("dead-1", "h", 1, now - 100))
    ledger.beat(study.study_name, Coordinator("alive-1", "h", 2, now))
    assert recover_stale_trials(study, ledger, grace_s=30) == [dead.number]  # orphan is younger than grace
    assert recover_stale_trials(study, ledger, grace_s=30, at=now + 31 + 1) == [alive.number, orphan.number]
    states = {t.number: (t.state, t.user_attrs.get("fail_reason", "")) for t in study.get_trials()}
    assert states[dead.number][0] == TrialState.FAIL and LOST_REASON in states[dead.number][1]
    assert "dead-1" in states[dead.number][1]
    assert states[orphan.number][0] == TrialState.FAIL
    assert ledger.coordinators(study.study_name) == []  # the dead were forgotten
    ledger.close()


def test_status_reports_trials_best_and_budget(storage_url, scheduler, tmp_path):
    job = make_job(tmp_path, max_trials=6)
    result = run_calibration(job, _settings(scheduler, storage_url), output_dir=tmp_path / "run")
    info = study_status(job.study, storage_url)
    assert info["trials"]["COMPLETE"] == 6 and info["trials"]["total"] == 6
    assert info["budget"] == {"claimed": 6, "max_trials": 6}
    assert info["best_loss"] == pytest.approx(result.best_loss)
    assert info["best_params"] == result.best_params
    assert info["coordinators"] == []  # a clean exit removes its heartbeat
    assert info["trials_per_minute"] > 0


def test_worker_joins_with_the_stored_job(storage_url, scheduler, tmp_path):
    from modelops_calabaria.calibration.runner import load_joined_job

    job = make_job(tmp_path, max_trials=4)
    run_calibration(job, _settings(scheduler, storage_url), output_dir=tmp_path / "run")
    joined = load_joined_job(job.study, parse_storage_url(storage_url), wait_s=0)
    assert joined.parameters == job.parameters and joined.study == job.study
    # the observed data travelled inline, so the worker needs no file
    assert isinstance(joined.targets[0].data, dict)
    run_calibration(joined, _settings(scheduler, storage_url), output_dir=tmp_path / "w", joining=True, extend=None)
    ledger = open_ledger(parse_storage_url(storage_url), 1)
    ledger.set_max_trials(job.study, 9)
    ledger.close()
    result = run_calibration(joined, _settings(scheduler, storage_url), output_dir=tmp_path / "w", joining=True)
    assert result.this_run["told"] == 5 and len(_trials(storage_url, job.study)) == 9


def test_worker_waits_for_a_missing_study_then_says_so(storage_url):
    from modelops_calabaria.calibration.runner import load_joined_job
    from modelops_calabaria.errors import StudyNotFoundError

    started = time.monotonic()
    with pytest.raises(StudyNotFoundError, match="does not exist"):
        load_joined_job(unique("missing"), parse_storage_url(storage_url), wait_s=1.5, poll_s=0.5)
    assert 1.4 <= time.monotonic() - started < 10


def test_lost_trials_are_asked_again_when_enabled(storage_url):
    from optuna.distributions import FloatDistribution

    from modelops_calabaria.calibration.asktell import DirectAsker, MirroredAsker

    space = {"a": FloatDistribution(0, 2), "b": FloatDistribution(0, 2)}
    target = parse_storage_url(storage_url)
    storage = open_optuna_storage(target, 1)
    ledger = open_ledger(target, 4)
    study = optuna.create_study(study_name=unique("retry"), storage=storage)
    lost = DirectAsker(study, space, "dead-1").ask()
    ledger.beat(study.study_name, Coordinator("dead-1", "h", 1, time.time() - 100))
    assert recover_stale_trials(study, ledger, grace_s=30, retry=True) == [lost.number]
    asker = MirroredAsker(study, space, "me", optuna.samplers.RandomSampler(seed=1),
                          retries=lambda: ledger.pop_retry(study.study_name))
    again = asker.ask()
    assert again.params == lost.params and again.number != lost.number
    assert study._storage.get_trial(again.trial_id).system_attrs["calabaria:retry_of_lost"] is True
    assert asker.ask().params != lost.params  # the queue held it once
    asker.close()
    # concurrent pops take each queued point exactly once
    for i in range(12):
        ledger.push_retry(study.study_name, {"a": i / 10, "b": 0.5})
    taken: list = []
    lock = threading.Lock()

    def pop() -> None:
        while (p := ledger.pop_retry(study.study_name)) is not None:
            with lock:
                taken.append(p["a"])

    threads = [threading.Thread(target=pop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == [i / 10 for i in range(12)]
    ledger.close()


def test_relational_storages_index_trials_by_study_and_number(storage_url):
    """Trial numbering reads max(number) per study on every ask: it must be an index lookup."""
    import sqlalchemy as sa

    target = parse_storage_url(storage_url)
    storage = open_optuna_storage(target, 1)
    if target.kind == "journal":
        pytest.skip("journal storages have no tables")
    indexes = sa.inspect(storage.engine).get_indexes("trials")
    assert {"name": "calabaria_trials_study_number", "columns": ["study_id", "number"]} in [
        {"name": i["name"], "columns": i["column_names"]} for i in indexes
    ]


def test_concurrent_trial_creation_numbers_densely(storage_url):
    """8 threads x 25 creations on one study: numbers 0..199, each once, with parameters and owner
    (on PostgreSQL through the server-side function, elsewhere through the Core statements)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from modelops_calabaria.backend import relational as rdbfast

    target = parse_storage_url(storage_url)
    if target.kind == "journal":
        pytest.skip("journal storages go through Optuna's own create")
    storage = open_optuna_storage(target, 8)
    assert (storage in rdbfast._WITH_PG_FUNCTION) == (target.kind == "postgresql")
    study = optuna.create_study(study_name=unique("numbers"), storage=storage)
    dists = {"x": FloatDistribution(0, 1), "c": CategoricalDistribution(["a", "b"])}
    created: list = []
    lock = threading.Lock()

    def create(worker: int) -> None:
        for i in range(25):
            got = rdbfast.create_running_trial(storage, study._study_id, {"x": i / 25, "c": "ab"[worker % 2]}, dists,
                                               {COORDINATOR_ATTR: f"w{worker}"})
            with lock:
                created.append((worker, i, got))

    threads = [threading.Thread(target=create, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(number for _, _, (number, _) in created) == list(range(200))
    trials = {t._trial_id: t for t in study.get_trials(deepcopy=False)}
    for worker, i, (number, trial_id) in created:
        t = trials[trial_id]
        assert t.number == number and t.state == TrialState.RUNNING
        assert t.params == {"x": i / 25, "c": "ab"[worker % 2]} and t.system_attrs[COORDINATOR_ATTR] == f"w{worker}"


def test_reconcile_is_a_compare_and_set(storage_url):
    ledger = open_ledger(parse_storage_url(storage_url), 2)
    name = unique("reconcile")
    ledger.ensure_budget(name, 10)
    assert ledger.claim(name, 3) == 3
    assert not ledger.reconcile(name, 1, expected_claimed=2)  # someone claimed meanwhile: nothing changes
    assert ledger.budget(name) == (3, 10)
    assert ledger.reconcile(name, 1, expected_claimed=3)
    assert ledger.budget(name) == (1, 10)
    ledger.close()


def test_a_coordinator_that_beats_while_recovery_reads_the_ledger_keeps_its_trials(storage_url):
    """The interleaving CI caught: coordinator B's recovery reads the ledger, A beats and creates a trial,
    B reads RUNNING trials. Recovery now reads trials first, so A's new trial is not failed as lost."""
    from modelops_calabaria.calibration.asktell import DirectAsker
    from optuna.distributions import FloatDistribution

    target = parse_storage_url(storage_url)
    storage = open_optuna_storage(target, 2)
    ledger = open_ledger(target, 2)
    study = optuna.create_study(study_name=unique("interleave"), storage=storage)
    created = []
    real_coordinators = ledger.coordinators

    def coordinators_while_a_starts(name):
        seen = real_coordinators(name)
        if not created:  # A starts right after B read the ledger
            ledger.beat(name, Coordinator("A", "elsewhere", 1, time.time()))
            created.append(DirectAsker(study, {"x": FloatDistribution(0, 1)}, "A").ask())
        return seen

    ledger.coordinators = coordinators_while_a_starts
    assert recover_stale_trials(study, ledger, grace_s=30) == []
    assert [t.state for t in _trials(storage_url, study.study_name)] == [TrialState.RUNNING]
    ledger.coordinators = real_coordinators
    assert recover_stale_trials(study, ledger, grace_s=30) == []  # A is alive: still its trial
    ledger.close()


def test_trial_columns_equal_get_trials_field_by_field(storage_url):
    """The report's column read (relational: set-based SQL; generic: from get_trials) against Optuna's own reading."""
    import math

    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import create_trial

    from modelops_calabaria.backend.factory import open_store

    target = parse_storage_url(storage_url)
    storage = open_optuna_storage(target, 1)
    name = unique("columns")
    study = optuna.create_study(study_name=name, storage=storage)
    other = optuna.create_study(study_name=unique("columns-other"), storage=storage)
    other.add_trial(create_trial(value=1.0, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}))
    dists = {"beta": FloatDistribution(0.01, 10.0, log=True), "n": IntDistribution(1, 9),
             "rate": FloatDistribution(0.0, 1.0), "mode": CategoricalDistribution(["sir", None, 2.5, "seir"])}
    rows = [
        (TrialState.COMPLETE, 3.5, {"beta": 0.0123, "n": 4, "rate": 0.25, "mode": "seir"},
         {"targets": {"cases": 3.0, "deaths": 0.5}, "loss:cases": 3.0, "loss:deaths": 0.5, "busy_s": 1.5},
         {COORDINATOR_ATTR: "host-a-1"}),
        (TrialState.FAIL, None, {"beta": 7.0, "n": 9, "rate": 1.0, "mode": None},
         {"fail_reason": "replicate 0: ValueError: boom\nTraceback ..."}, {COORDINATOR_ATTR: "host-b-2"}),
        (TrialState.COMPLETE, float("inf"), {"beta": 1.0, "n": 1, "mode": 2.5}, {"targets": {"cases": 1e300}}, {}),
        (TrialState.RUNNING, None, {"rate": 0.5}, {}, {COORDINATOR_ATTR: "host-a-1", "other": 1}),
        (TrialState.COMPLETE, 0.25, {"beta": 2.0, "n": 2, "rate": 0.0, "mode": "sir"}, {"note": "not read"}, {}),
        (TrialState.COMPLETE, -1.5, {}, {}, {}),
    ]
    for state, value, params, user, system in rows:
        study.add_trial(create_trial(state=state, value=value, params=params,
                                     distributions={k: dists[k] for k in params}, user_attrs=user, system_attrs=system))
    expected = study.get_trials(deepcopy=False)
    backend = open_store(target, read_only=True)
    try:
        cols = backend.trial_columns(backend.study_id(name))
        with pytest.raises(KeyError):
            backend.trial_columns(987654)
    finally:
        backend.close()
    assert len(cols) == len(expected) == len(rows)
    assert set(cols.params) == set(dists) and set(cols.distributions) == set(dists)
    assert cols.distributions["mode"] == dists["mode"] and cols.distributions["beta"] == dists["beta"]
    assert cols.params["mode"].dtype == object and cols.params["beta"].dtype == float
    for i, t in enumerate(sorted(expected, key=lambda t: t.number)):
        assert int(cols.number[i]) == t.number
        assert cols.state[i] == t.state
        if t.value is None:
            assert math.isnan(cols.value[i])
        else:
            assert cols.value[i] == t.value
        assert cols.datetime_start[i] == t.datetime_start
        assert cols.datetime_complete[i] == t.datetime_complete
        params = cols.params_of(i)
        assert params == t.params
        assert {k: type(v) for k, v in params.items()} == {k: type(v) for k, v in t.params.items()}
        for pname in dists:
            assert bool(cols.present[pname][i]) == (pname in t.params)
            if pname not in t.params and pname != "mode":
                assert math.isnan(cols.params[pname][i])
        wanted = {k: v for k, v in t.user_attrs.items() if k in ("targets", "fail_reason", "busy_s") or k.startswith("loss:")}
        assert cols.user_attrs[i] == wanted
        assert cols.coordinator[i] == t.system_attrs.get(COORDINATOR_ATTR)
