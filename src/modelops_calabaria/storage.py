"""Study storage: URL handling and opening Optuna storages.

Accepted URLs (see docs/scaling.md):

- ``postgresql://user:pw@host:5432/db`` (also ``postgres://`` and
  ``postgresql+psycopg2://``): normalised to the psycopg2 driver, because
  SQLAlchemy 2 maps the plain scheme to psycopg 3, which is not installed;
- ``sqlite:///path/study.db`` or a path ending ``.db`` / ``.sqlite``;
- ``journal:///path/study.log`` or a path ending ``.log`` / ``.journal``;
- ``memory``: in-process only (tests and benchmarks).

The pool is sized to the number of loops, connections are pre-pinged and
recycled so that ones dropped while idle are replaced, and passwords are masked
in every form shown to a user (:attr:`StorageTarget.display`).
"""

from __future__ import annotations

import difflib
import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import optuna
import sqlalchemy as sa
import sqlalchemy.exc

from modelops_calabaria.calibration.rdbfast import install_pg_functions
from modelops_calabaria.errors import ConfigurationError, ServiceUnavailableError
from modelops_calabaria.redaction import redact, register_secrets_in

StorageKind = Literal["postgresql", "sqlite", "journal", "memory"]
_PG_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg2"}


@dataclass(frozen=True)
class StorageTarget:
    """A parsed storage location. ``url`` holds any password; show ``display``."""

    kind: StorageKind
    url: str
    path: Path | None = None

    @property
    def display(self) -> str:
        return redact(self.url)


def check_creatable(path: Path, what: str) -> None:
    """Raise ConfigurationError unless ``path`` can be created: its nearest existing
    ancestor must be a writable directory. Creates nothing."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigurationError(f"{what} {path} cannot be created: {ancestor} is a file, not a directory",
                                 hint="choose a path in a writable directory (check --storage / --output)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigurationError(f"{what} {path} cannot be created: {ancestor} is not writable",
                                 hint="choose a path in a writable directory (check --storage / --output)")


def _file_target(kind: StorageKind, path: Path) -> StorageTarget:
    """A SQLite or journal target, checked (without creating anything) to be a usable file path."""
    path = path.resolve()
    if path.is_dir():
        example = path / ("study.db" if kind == "sqlite" else "study.log")
        raise ConfigurationError(f"storage path {path} is a directory", hint=f"name a file in it, e.g. {kind}:///{example}")
    check_creatable(path, "storage path")
    scheme = "sqlite" if kind == "sqlite" else "journal"
    return StorageTarget(kind, f"{scheme}:///{path}", path)


def parse_storage_url(url: str | None, default_path: Path | None = None) -> StorageTarget:
    """Parse and normalise a storage URL; empty means a SQLite file at ``default_path``.

    Raises:
        ConfigurationError: unknown scheme or malformed URL (the message never
            contains the password), or a SQLite/journal path that is a
            directory or cannot be created.
    """
    register_secrets_in(url)  # its password is masked in every line printed from now on
    if not url:
        if default_path is None:
            raise ConfigurationError("no storage URL given", hint="pass --storage or set CALABARIA_STORAGE")
        return _file_target("sqlite", default_path)
    if url in ("memory", ":memory:", "inmemory"):
        return StorageTarget("memory", "memory")
    scheme, sep, rest = url.partition("://")
    if not sep:
        path = Path(url)
        if path.suffix in (".db", ".sqlite", ".sqlite3"):
            return _file_target("sqlite", path)
        if path.suffix in (".log", ".journal", ".jsonl"):
            return _file_target("journal", path)
        raise ConfigurationError(
            f"storage {redact(url)!r} is neither a URL nor a .db/.log file path",
            hint="set --storage, CALABARIA_STORAGE or the job's execution.storage to postgresql://USER:PASSWORD@HOST:5432/DB, "
                 "sqlite:///path/study.db or journal:///path/study.log",
        )
    scheme = scheme.lower()
    if scheme in _PG_SCHEMES:
        _check_pg_url(url, rest)
        return StorageTarget("postgresql", "postgresql+psycopg2://" + rest)
    if scheme.startswith("postgresql+"):
        raise ConfigurationError(
            f"storage driver {scheme!r} is not installed", hint="use postgresql:// (psycopg2 is the driver this service ships)"
        )
    if scheme == "sqlite":
        path_part = rest[1:] if rest.startswith("/") else rest
        if not path_part or path_part == ":memory:":
            raise ConfigurationError("sqlite storage needs a file path", hint="sqlite:///path/to/study.db")
        path = Path(path_part)
        return _file_target("sqlite", path)
    if scheme in ("journal", "file"):
        path_part = rest[1:] if rest.startswith("/") and not rest.startswith("//") else rest
        if not path_part:
            raise ConfigurationError("journal storage needs a file path", hint="journal:///path/to/study.log")
        path = Path(path_part)
        return _file_target("journal", path)
    raise ConfigurationError(
        f"unknown storage scheme {scheme!r} in {redact(url)!r}",
        hint="set --storage, CALABARIA_STORAGE or the job's execution.storage to postgresql://USER:PASSWORD@HOST:5432/DB, "
             "sqlite:///path/study.db or journal:///path/study.log (or a .db/.log path)",
    )


# libpq connection parameters (PostgreSQL 17), accepted in a URL's query string.
_LIBPQ_OPTIONS = frozenset("""
    host hostaddr port dbname user password passfile require_auth channel_binding connect_timeout client_encoding
    options application_name fallback_application_name keepalives keepalives_idle keepalives_interval
    keepalives_count tcp_user_timeout replication gssencmode sslmode requiressl sslnegotiation sslcompression
    sslcert sslkey sslcertmode sslpassword sslrootcert sslcrl sslcrldir sslsni requirepeer ssl_min_protocol_version
    ssl_max_protocol_version krbsrvname gsslib gssdelegation service target_session_attrs load_balance_hosts
""".split())
_HOST_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,62}))*\.?$")
_PG_URL_HINT = ("postgresql://USER:PASSWORD@HOST:5432/DB; percent-encode '@', ':', '/', '?', '#', '%' and spaces "
                "in the user or password (e.g. '@' as %40)")


def _check_pg_url(url: str, rest: str) -> None:
    """Check a PostgreSQL URL's host, port and query options as the driver would read them.

    Raises:
        ConfigurationError: a port that is not a number from 1 to 65535, a malformed
            host (a raw '@' in the password, a space, an unclosed '['), no host, or a
            query option libpq does not know. The message never holds the password.
    """
    from sqlalchemy.engine import make_url

    shown = redact(url)
    try:
        parsed = make_url("postgresql+psycopg2://" + rest)
    except (ValueError, sqlalchemy.exc.ArgumentError):
        raise ConfigurationError(f"storage URL {shown!r} has a malformed host or port: the port must be a number "
                                 "from 1 to 65535 and an IPv6 host needs [brackets]", hint=_PG_URL_HINT) from None
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ConfigurationError(f"storage URL {shown!r}: port {parsed.port} is out of range (1 to 65535)", hint=_PG_URL_HINT)
    query = {k: (v if isinstance(v, str) else ",".join(v)) for k, v in parsed.query.items()}
    for key in query:
        if key not in _LIBPQ_OPTIONS:
            close = difflib.get_close_matches(key, sorted(_LIBPQ_OPTIONS), n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigurationError(f"storage URL {shown!r}: unknown connection option {key!r}{guess}",
                                     hint="use libpq's connection parameters (sslmode, connect_timeout, application_name, ...)")
    if "port" in query and not all(p.isdigit() and 1 <= int(p) <= 65535 for p in query["port"].split(",")):
        raise ConfigurationError(f"storage URL {shown!r}: option port={query['port']!r} is not a port (1 to 65535)", hint=_PG_URL_HINT)
    host = parsed.host
    if not host:
        if "host" not in query and "hostaddr" not in query:
            raise ConfigurationError(f"storage URL {shown!r} has no host", hint=_PG_URL_HINT)
        return
    if "@" in host:
        raise ConfigurationError(f"storage URL {shown!r}: the user or password holds a raw '@'", hint=_PG_URL_HINT)
    for one in host.split(","):  # libpq takes a comma-separated list of hosts
        ipv6 = ":" in one and re.fullmatch(r"[0-9A-Fa-f:.]+(%[A-Za-z0-9_.\-]+)?", one)
        if ipv6 or _HOST_NAME.match(one):
            continue
        raise ConfigurationError(f"storage URL {shown!r}: malformed host {host!r}", hint=_PG_URL_HINT)


def engine_kwargs(target: StorageTarget, loops: int) -> dict:
    """SQLAlchemy engine options for a storage used by ``loops`` threads."""
    if target.kind == "postgresql":
        return {
            "pool_size": loops + 2,  # every loop plus the heartbeat thread and the main thread
            "max_overflow": 4,
            "pool_pre_ping": True,  # replace connections the server dropped while idle
            "pool_recycle": 300,
            "pool_timeout": 60,
            "connect_args": {"connect_timeout": 10, "application_name": "calabaria"},
        }
    # SQLite serialises writers; wait for the lock instead of failing at once.
    return {"connect_args": {"timeout": 60}}


_SCHEMA_LOCK_KEY = 727274  # pg_advisory_lock key shared by every calabaria process


@contextmanager
def schema_lock(target: StorageTarget) -> Iterator[None]:
    """Serialise schema and study creation across processes (and threads) starting at once.

    PostgreSQL: a session advisory lock. SQLite: ``flock`` on ``<file>.lock``
    (per open file, so it also separates threads of one process). An
    unreachable server is not reported here: the caller's own connection
    reports it with a clear message.
    """
    if target.kind == "sqlite" and target.path is not None and target.path.parent.is_dir():
        with open(target.path.with_name(target.path.name + ".lock"), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    if target.kind != "postgresql":
        yield
        return
    engine = sa.create_engine(target.url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 10})
    try:
        conn = engine.connect()
    except sqlalchemy.exc.DBAPIError:
        engine.dispose()
        yield
        return
    try:
        conn.execute(sa.text(f"SELECT pg_advisory_lock({_SCHEMA_LOCK_KEY})"))
        try:
            yield
        finally:
            conn.execute(sa.text(f"SELECT pg_advisory_unlock({_SCHEMA_LOCK_KEY})"))
    finally:
        conn.close()
        engine.dispose()


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
