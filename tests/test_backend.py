"""The study backend: Optuna's schema as the relational backend expects it, enqueued trials taken once,
connections per coordinator, read-only opens that create nothing, trial attributes for tools.
Real SQLite files and a real PostgreSQL server (a database of its own where the test counts what exists)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import optuna
import pytest
import sqlalchemy as sa
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.backend import relational
from modelops_calabaria.backend.factory import open_optuna_storage, open_store
from modelops_calabaria.calibration.asktell import DirectAsker, MirroredAsker
from modelops_calabaria.errors import StudyNotFoundError
from modelops_calabaria.reporting.status import study_status
from modelops_calabaria.storage import parse_storage_url

from conftest import make_job, unique


@contextlib.contextmanager
def fresh_pg_database(pg_url: str) -> Iterator[str]:
    """A PostgreSQL database of its own (created and dropped here): a URL to it."""
    name = f"calabaria_t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://", 1), isolation_level="AUTOCOMMIT",
                             poolclass=sa.pool.NullPool)
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield pg_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def _count_schema(url: str) -> tuple[int, int]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1), poolclass=sa.pool.NullPool)
    with engine.connect() as c:
        tables = c.execute(sa.text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")).scalar()
        functions = c.execute(sa.text(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'")).scalar()
    engine.dispose()
    return int(tables), int(functions)


# -- the guard on Optuna's schema ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_optuna_schema_is_what_the_relational_backend_writes(kind, tmp_path, request):
    """If this fails, Optuna changed the tables the relational backend writes with its own SQL:
    read the message, check backend/relational.py's statements and PL/pgSQL functions, then update
    WRITTEN_FOR_OPTUNA and the expectations next to it."""
    from optuna.storages._rdb import models

    written_for = relational.WRITTEN_FOR_OPTUNA
    assert int(models.SCHEMA_VERSION) == relational.OPTUNA_SCHEMA_VERSION, (
        f"Optuna {optuna.__version__} has schema version {models.SCHEMA_VERSION}; backend/relational.py was written "
        f"for Optuna {written_for}, schema version {relational.OPTUNA_SCHEMA_VERSION}")
    url = f"sqlite:///{tmp_path}/guard.db" if kind == "sqlite" else request.getfixturevalue("pg_url")
    storage = open_optuna_storage(parse_storage_url(url), 1)
    inspector = sa.inspect(storage.engine)
    problems = []
    for table, columns in relational.COLUMNS_USED.items():
        present = {c["name"] for c in inspector.get_columns(table)} if inspector.has_table(table) else set()
        if not present:
            problems.append(f"table {table!r} is gone")
        elif columns - present:
            problems.append(f"table {table!r} lost columns {sorted(columns - present)} (has {sorted(present)})")
    with storage.engine.connect() as c:
        revision = c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        if kind == "postgresql":
            for enum, labels in relational.ENUMS_USED.items():
                have = {r[0] for r in c.execute(sa.text(
                    "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid WHERE t.typname = :n"),
                    {"n": enum})}
                if labels - have:
                    problems.append(f"enum {enum!r} lacks {sorted(labels - have)} (has {sorted(have)})")
    if revision != relational.OPTUNA_ALEMBIC_REVISION:
        problems.append(f"alembic revision is {revision!r}, expected {relational.OPTUNA_ALEMBIC_REVISION!r}")
    for enum, labels in relational.ENUMS_USED.items():  # the Python side, which the SQLite schema stores by name
        python = {m.name for m in (TrialState if enum == "trialstate" else models.TrialValueModel.TrialValueType)}
        if labels - python:
            problems.append(f"Optuna's {enum} no longer has {sorted(labels - python)}")
    assert not problems, (f"Optuna {optuna.__version__} differs from Optuna {written_for}, which backend/relational.py "
                          "was written for: " + "; ".join(problems))


# -- enqueued trials --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["mirrored", "direct"])
def test_enqueued_trials_are_taken_exactly_once_across_coordinators(storage_url, path):
    """Six enqueued starting points, three coordinators asking at once: each point becomes exactly
    one trial with its values, and later asks sample new points."""
    target = parse_storage_url(storage_url)
    study = optuna.create_study(study_name=unique("enqueue"), storage=open_optuna_storage(target, 4))
    space = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}
    starts = [{"x": i / 10, "y": 0.5} for i in range(6)]
    for p in starts:
        study.enqueue_trial(p)
    asked: list = []
    lock = threading.Lock()

    def coordinator(name: str) -> None:
        if path == "mirrored":
            asker = MirroredAsker(study, space, name, optuna.samplers.RandomSampler(seed=hash(name) % 1000),
                                  sync_every_s=0.0)
        else:
            asker = DirectAsker(study, space, name)
        for _ in range(4):
            trial = asker.ask()
            with lock:
                asked.append(trial)
            asker.tell_complete(trial, trial.params["x"], {"y": trial.params["x"]}, 0.0)
        asker.close()

    threads = [threading.Thread(target=coordinator, args=(f"c{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 12 and all(t.state == TrialState.COMPLETE for t in trials)
    from_queue = [t for t in trials if "fixed_params" in t.system_attrs]
    assert sorted(t.params["x"] for t in from_queue) == [p["x"] for p in starts]  # each start once, with its values
    assert all(t.params == t.system_attrs["fixed_params"] for t in from_queue)
    assert len({a.trial_id for a in asked}) == 12


# -- connections ------------------------------------------------------------------------------


def test_a_coordinator_with_l_loops_opens_at_most_l_plus_4_connections(pg_url, tmp_path):
    loops = 8
    with fresh_pg_database(pg_url) as url:
        db = url.rsplit("/", 1)[1]
        # Autocommit: pg_stat_activity is a snapshot per transaction.
        watcher = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://", 1), poolclass=sa.pool.NullPool,
                                   isolation_level="AUTOCOMMIT")
        peak = [0]
        stop = threading.Event()

        def watch() -> None:
            with watcher.connect() as c:  # connected to the other database: not counted
                while not stop.is_set():
                    n = c.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"), {"d": db}).scalar()
                    peak[0] = max(peak[0], int(n))
                    time.sleep(0.01)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        try:
            job = make_job(tmp_path, max_trials=80, concurrency=loops, n_replicates=1)
            result = run_calibration(job, Settings(storage=url, scheduler="inline", local_workers=loops,
                                                   heartbeat_interval_s=0.2, log_format="json"), output_dir=tmp_path / "run")
        finally:
            stop.set()
            thread.join()
            watcher.dispose()
        print(f"peak connections: {peak[0]} for {loops} loops")
        assert result.trials.get("COMPLETE", 0) == 80
        assert 1 <= peak[0] <= loops + 4, f"peak {peak[0]} connections for {loops} loops"


# -- read-only opens --------------------------------------------------------------------------


def test_status_on_an_empty_postgresql_database_creates_nothing(pg_url):
    with fresh_pg_database(pg_url) as url:
        before = _count_schema(url)
        with pytest.raises(StudyNotFoundError, match="does not exist"):
            study_status("anything", url)
        with pytest.raises(StudyNotFoundError):
            open_store(parse_storage_url(url), 1, read_only=True)
        assert _count_schema(url) == before == (0, 0)


def test_status_on_a_missing_sqlite_file_creates_no_file(tmp_path):
    path = tmp_path / "sub" / "none.db"
    with pytest.raises(StudyNotFoundError, match="does not exist"):
        study_status("anything", f"sqlite:///{path}")
    assert not path.exists() and not path.parent.exists()


def test_status_rate_divides_by_the_real_window(tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    job = make_job(tmp_path, max_trials=12)
    run_calibration(job, Settings(storage=storage, scheduler="inline", local_workers=2, log_format="json"),
                    output_dir=tmp_path / "run")
    from modelops_calabaria.reporting.status import locate_run

    study, found = locate_run(tmp_path / "run", None)  # `calabaria status runs/STUDY`: no --study, no --storage
    assert study == job.study and parse_storage_url(found) == parse_storage_url(storage)
    info = study_status(study, found)
    # The study is seconds old: 12 trials over that age, not over 10 minutes (1.2 per minute).
    assert info["rate_window_s"] < 600
    assert info["trials_per_minute"] == pytest.approx(12 / (max(info["rate_window_s"], 1.0) / 60), rel=0.05)
    assert info["trials_per_minute"] > 12 / 10


# -- attributes for tools -------------------------------------------------------------------


def test_trials_carry_numeric_loss_per_target_and_busy_seconds(tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    job = make_job(tmp_path, max_trials=6)
    run_calibration(job, Settings(storage=storage, scheduler="inline", local_workers=2, log_format="json"),
                    output_dir=tmp_path / "run")
    study = optuna.load_study(study_name=job.study, storage=open_optuna_storage(parse_storage_url(storage), 1))
    assert study.metric_names == ["loss"]
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        assert t.user_attrs["loss:y"] == t.user_attrs["targets"]["y"]
        assert isinstance(t.user_attrs["busy_s"], float) and t.user_attrs["busy_s"] >= 0


# -- errors where they enter ------------------------------------------------------------------


def test_a_role_without_create_privilege_gets_one_line_naming_the_fix(pg_url):
    from modelops_calabaria.errors import ConfigurationError

    role = f"calabaria_nocreate_{uuid.uuid4().hex[:8]}"
    with fresh_pg_database(pg_url) as url:
        admin = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1), isolation_level="AUTOCOMMIT",
                                 poolclass=sa.pool.NullPool)
        with admin.connect() as c:
            c.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
            c.execute(sa.text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
        try:
            limited = url.replace("postgresql://postgres@", f"postgresql://{role}@", 1)
            with pytest.raises(ConfigurationError) as err:
                open_store(parse_storage_url(limited), 1)
            message = err.value.args[0]  # the one line; str() adds the hint on a second
            assert "may not create the study tables" in message and "\n" not in message
            assert "GRANT CREATE" in (err.value.hint or "")
            assert err.value.exit_code == 2
            assert _count_schema(url) == (0, 0)  # nothing half-created
        finally:
            with admin.connect() as c:
                c.execute(sa.text(f"DROP OWNED BY {role}"))
            admin.dispose()
    with sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://", 1), isolation_level="AUTOCOMMIT",
                          poolclass=sa.pool.NullPool).connect() as c:
        c.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))


def test_a_storage_nobody_holds_is_freed_with_its_backend(tmp_path):
    """The registry behind backend_of must not keep storages (and their connection pools) alive."""
    import gc
    import weakref

    import optuna

    from modelops_calabaria.backend.factory import backend_of, open_optuna_storage
    from modelops_calabaria.storage import parse_storage_url

    storage = open_optuna_storage(parse_storage_url(f"sqlite:///{tmp_path}/freed.db", tmp_path / "unused.db"))
    study = optuna.create_study(study_name="freed", storage=storage)
    backend = backend_of(study)
    assert backend_of(study) is backend  # registered while held
    engine_pool = weakref.ref(backend.optuna_storage.engine.pool)
    held = weakref.ref(backend.optuna_storage)
    del storage, study, backend
    gc.collect()
    assert held() is None and engine_pool() is None
