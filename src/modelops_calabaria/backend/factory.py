"""Opening a study backend from a parsed storage URL: the one place that connects.

``open_store(target, loops)`` creates what is missing (Optuna's tables, the
ledger's tables, the trial-number index, the PostgreSQL functions) under the
schema lock and returns a backend whose trial store and ledger share one
engine, and on which a trial asked by a coordinator spends one of its budget
claims (``ledger.py``). ``open_store(target, read_only=True)`` creates nothing, not even a
SQLite file, and raises :class:`StudyNotFoundError` when there is no study
storage there. Errors are converted here, as one line naming cause and fix.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable

import optuna
import sqlalchemy as sa
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage

from modelops_calabaria.backend.base import StudyBackend
from modelops_calabaria.backend.generic import GenericBackend
from modelops_calabaria.backend.ledger import FileLedger, Ledger, MemoryLedger
from modelops_calabaria.backend.sql_ledger import SqlLedger
from modelops_calabaria.backend.relational import RelationalBackend, engine_kwargs, install_pg_functions, schema_lock
from modelops_calabaria.dbretry import transient_reason
from modelops_calabaria.errors import ConfigurationError, ServiceUnavailableError, StudyNotFoundError
from modelops_calabaria.logging import get_logger
from modelops_calabaria.redaction import redact
from modelops_calabaria.storage import StorageTarget

log = get_logger(__name__)
_BUSY_MARKERS = ("too many clients", "too many connections", "remaining connection slots", "starting up")
START_RETRY_S = 30.0  # how long a coordinator waits at start for a connection slot on a full server


def open_store(target: StorageTarget, loops: int = 1, *, read_only: bool = False) -> StudyBackend:
    """The study backend at ``target``, its pool sized for ``loops`` loops (at most loops + 4 connections).

    Raises:
        ServiceUnavailableError: the database cannot be reached (password masked).
        ConfigurationError: a file's directory cannot be created, or the database role may not
            create the schema.
        StudyNotFoundError: ``read_only`` and there is no study storage at ``target``.
    """
    if target.kind == "memory":
        if read_only:
            raise StudyNotFoundError("an in-memory storage holds no study outside the process that made it",
                                     hint="pass the storage URL the run used (--storage)")
        return GenericBackend(optuna.storages.InMemoryStorage(), MemoryLedger(), spend_claims=True)
    if target.path is not None:
        if read_only and not target.path.exists():
            raise StudyNotFoundError(f"no study storage at {target.display}",
                                     hint="check --storage, or the run directory's study.db")
        if not read_only:
            try:
                target.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigurationError(f"cannot create the directory of the study file {target.path}: {e.strerror or e}",
                                         hint="choose a path in a writable directory (check --storage / --output)") from e
    if target.kind == "journal":
        assert target.path is not None
        backend = optuna.storages.journal.JournalFileBackend(
            str(target.path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(target.path)))
        ledger_path = target.path.with_name(target.path.name + ".calabaria.json")
        ledger: Ledger = MemoryLedger() if read_only and not ledger_path.exists() else FileLedger(ledger_path)
        return GenericBackend(optuna.storages.JournalStorage(backend), ledger, spend_claims=True)
    return _with_start_retry(target, lambda: _open_relational(target, loops, read_only))


def _open_relational(target: StorageTarget, loops: int, read_only: bool) -> RelationalBackend:
    kwargs = engine_kwargs(target, loops)
    if read_only:
        # Under the schema lock: a schema another process is creating right now is seen whole
        # or not at all. Opening Optuna's storage writes too, even here: it stamps the schema
        # version when it finds the tables without it, and a reader that did so while a
        # creator was half-way made one of the two fail (UNIQUE constraint failed:
        # alembic_version.version_num). PostgreSQL: an advisory lock, nothing written. SQLite:
        # the creator's lock file, if there is one (every calabaria creator makes it first).
        with _reader_lock(target):
            probe = sa.create_engine(target.url, poolclass=sa.pool.NullPool, connect_args=kwargs["connect_args"])
            try:
                with probe.connect() as conn:
                    inspector = sa.inspect(conn)
                    has_study_tables = all(inspector.has_table(t) for t in ("studies", "version_info", "alembic_version"))
                    has_ledger = inspector.has_table("calabaria_budget")
            finally:
                probe.dispose()
            if not has_study_tables:
                raise StudyNotFoundError(f"no study storage at {target.display} (the database holds no Optuna tables)",
                                         hint="check --storage: the run's database, not an empty one")
            storage = RDBStorage(target.url, engine_kwargs=kwargs, skip_table_creation=True)
        ledger: Ledger = SqlLedger(storage.engine, create=False) if has_ledger else MemoryLedger()
        return RelationalBackend(storage, ledger)  # type: ignore[arg-type]
    with schema_lock(target):
        storage = RDBStorage(target.url, engine_kwargs=kwargs)
        # Trial creation numbers a trial max(number) + 1 within its study: without this
        # index that is a scan of the study's trials, and asks slow down as a study grows.
        with storage.engine.begin() as conn:
            conn.execute(sa.text("CREATE INDEX IF NOT EXISTS calabaria_trials_study_number ON trials (study_id, number)"))
        install_pg_functions(storage)  # one round trip per trial creation and completion on PostgreSQL
        return RelationalBackend(storage, SqlLedger(storage.engine, create=True), spend_claims=True)


def _reader_lock(target: StorageTarget) -> contextlib.AbstractContextManager[None]:
    """The schema lock for a read-only open, taken without creating anything."""
    if target.kind == "postgresql":
        return schema_lock(target)
    if target.kind == "sqlite" and target.path is not None and target.path.with_name(target.path.name + ".lock").exists():
        return schema_lock(target)
    return contextlib.nullcontext()


def _with_start_retry(target: StorageTarget, open_: Callable[[], RelationalBackend]) -> RelationalBackend:
    """Open, retrying (bounded) while the server is full or starting; convert errors to one line."""
    deadline = time.monotonic() + START_RETRY_S
    delay = 0.5
    while True:
        try:
            return open_()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, optuna.exceptions.StorageInternalError) as e:
            reason = transient_reason(e) or _first_line(e)
            if any(m in reason.lower() for m in _BUSY_MARKERS) and time.monotonic() + delay < deadline:
                log.warning("database busy at start, retrying", storage=target.display, error=reason, delay_s=delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            raise ServiceUnavailableError(
                f"cannot open the study database {target.display}: {reason}",
                hint="check that the database server is running and the URL's host, port, user and database are right"
                if target.kind == "postgresql" else f"check that {target.path} is a SQLite file in a writable directory",
            ) from None  # not "from e": the driver's message and URL may carry the password
        except sqlalchemy.exc.ProgrammingError as e:
            reason = _first_line(e)
            if "permission denied" in reason.lower():
                raise ConfigurationError(
                    f"the database role in {target.display} may not create the study tables: {reason}",
                    hint="grant it CREATE on the schema (GRANT CREATE ON SCHEMA public TO <role>), "
                         "or create the tables once with a role that may",
                ) from None
            raise ServiceUnavailableError(f"cannot open the study database {target.display}: {reason}",
                                          hint="check the database and the URL") from None


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return redact(text.splitlines()[0] if text else type(error).__name__)


# Weak values, not weak keys: a backend holds its storage, so a weak-keyed entry's value
# would keep its own key alive and no storage (nor its connection pool) would ever be freed.
# An entry now lives exactly as long as someone holds its backend.
_BY_STORAGE: "weakref.WeakValueDictionary[optuna.storages.BaseStorage, StudyBackend]" = weakref.WeakValueDictionary()


def backend_of(study: optuna.Study) -> StudyBackend:
    """The backend for a study opened elsewhere (tests, tools): past Optuna's cache wrapper.

    Writing and reading past the cache is what another process does anyway; the
    cache picks such trials up by id. The registry does not keep a backend alive:
    hold the one returned for as long as it is used.
    """
    storage = study._storage
    storage = storage._backend if isinstance(storage, _CachedStorage) else storage
    found = _BY_STORAGE.get(storage)
    if found is None:
        found = RelationalBackend(storage) if isinstance(storage, RDBStorage) else GenericBackend(storage, MemoryLedger())
        _BY_STORAGE[storage] = found
    return found


def register(backend: StudyBackend) -> StudyBackend:
    """Make ``backend_of`` return ``backend`` for studies on its storage."""
    _BY_STORAGE[backend.optuna_storage] = backend
    return backend


def open_optuna_storage(target: StorageTarget, loops: int = 1) -> optuna.storages.BaseStorage:
    """The Optuna storage at ``target`` (created if missing), for tools and tests."""
    return register(open_store(target, loops)).optuna_storage


def open_ledger(target: StorageTarget, loops: int = 1) -> Ledger:
    """The ledger that lives beside ``target``'s study (its own backend's connections)."""
    backend = open_store(target, loops)
    if isinstance(backend.ledger, SqlLedger):
        backend.ledger._owns_engine = True  # closing this ledger closes the backend it came from
    return backend.ledger
