"""Opening a study's storage from its parsed URL."""

from __future__ import annotations

import optuna
import sqlalchemy as sa
import sqlalchemy.exc

from modelops_calabaria.backend.relational import engine_kwargs, install_pg_functions, schema_lock
from modelops_calabaria.errors import ConfigurationError, ServiceUnavailableError
from modelops_calabaria.redaction import redact
from modelops_calabaria.storage import StorageTarget


def open_optuna_storage(target: StorageTarget, loops: int) -> optuna.storages.BaseStorage:
    """Open (and create tables in) the Optuna storage.

    Raises:
        ServiceUnavailableError: the database cannot be reached (password masked).
        ConfigurationError: the directory of a SQLite or journal file cannot be created.
    """
    if target.kind == "memory":
        return optuna.storages.InMemoryStorage()
    if target.kind in ("journal", "sqlite"):
        assert target.path is not None
        try:
            target.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigurationError(f"cannot create the directory of the study file {target.path}: {e.strerror or e}",
                                     hint="choose a path in a writable directory (check --storage / --output)") from e
    if target.kind == "journal":
        backend = optuna.storages.journal.JournalFileBackend(
            str(target.path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(target.path))
        )
        return optuna.storages.JournalStorage(backend)
    try:
        with schema_lock(target):
            storage = optuna.storages.RDBStorage(target.url, engine_kwargs=engine_kwargs(target, loops))
            # Trial creation numbers a trial max(number) + 1 within its study: without this
            # index that is a scan of the study's trials, and asks slow down as a study grows.
            with storage.engine.begin() as conn:
                conn.execute(sa.text("CREATE INDEX IF NOT EXISTS calabaria_trials_study_number ON trials (study_id, number)"))
            install_pg_functions(storage)  # one round trip per trial creation on PostgreSQL
            return storage
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
        reason = redact(str(e.orig) if getattr(e, "orig", None) else str(e)).strip().splitlines()[0]
        raise ServiceUnavailableError(
            f"cannot open the study database {target.display}: {reason}",
            hint="check that the database server is running and the URL's host, port, user and database are right"
            if target.kind == "postgresql" else f"check that {target.path} is a SQLite file in a writable directory",
        ) from None  # not "from e": the driver's message and URL may carry the password
