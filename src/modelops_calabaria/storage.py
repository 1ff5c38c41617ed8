"""Study storage locations: parsing and normalising storage URLs.

Accepted URLs (see docs/scaling.md):

- ``postgresql://user:pw@host:5432/db`` (also ``postgres://`` and
  ``postgresql+psycopg2://``): normalised to the psycopg2 driver, because
  SQLAlchemy 2 maps the plain scheme to psycopg 3, which is not installed;
- ``sqlite:///path/study.db`` or a path ending ``.db`` / ``.sqlite``;
- ``journal:///path/study.log`` or a path ending ``.log`` / ``.journal``;
- ``memory``: in-process only (tests and benchmarks).

Passwords are masked in every form shown to a user
(:attr:`StorageTarget.display`). Opening a storage is the study backend's job
(:mod:`modelops_calabaria.backend`).
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlalchemy.exc

from modelops_calabaria.errors import ConfigurationError
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


_SQLITE_MAGIC = b"SQLite format 3\x00"


def check_study_file(kind: StorageKind, path: Path) -> None:
    """An existing study file must be a regular file of its kind: SQLite files start with
    SQLite's 16-byte header, journal files with a JSON object. Reads at most 4 KiB;
    opens nothing that could block (a FIFO) or never end (a device).

    Raises:
        ConfigurationError: a FIFO, device, socket, or a file of another kind (exit 2).
    """
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # a new file (check_creatable looks at its directory)
        return
    except OSError as e:
        raise ConfigurationError(f"storage path {path} cannot be read: {e.strerror or e}") from None
    if stat.S_ISDIR(info.st_mode):
        example = path / ("study.db" if kind == "sqlite" else "study.log")
        raise ConfigurationError(f"storage path {path} is a directory", hint=f"name a file in it, e.g. {kind}:///{example}")
    if not stat.S_ISREG(info.st_mode):
        what = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise ConfigurationError(f"storage path {path} is {what}, not a study file",
                                 hint="name a new or existing study file (e.g. runs/STUDY/study.db)")
    if info.st_size == 0:
        return  # an empty file: SQLite and the journal both start one
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError as e:
        raise ConfigurationError(f"storage path {path} cannot be read: {e.strerror or e}") from None
    if kind == "sqlite" and not head.startswith(_SQLITE_MAGIC):
        raise ConfigurationError(f"storage path {path} is not an SQLite database (it lacks SQLite's header)",
                                 hint="name the run's study.db, or a new file; a journal file takes journal:///PATH")
    if kind == "journal" and not head.lstrip()[:1] == b"{":
        raise ConfigurationError(f"storage path {path} is not an Optuna journal file (it does not start with a JSON record)",
                                 hint="name the run's journal file, or a new file; an SQLite file takes sqlite:///PATH")


def _file_target(kind: StorageKind, path: Path) -> StorageTarget:
    """A SQLite or journal target, checked (without creating anything) to be a usable file path."""
    path = path.resolve()
    check_study_file(kind, path)
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
# libpq options with a fixed set of values, and those that take a whole number.
_PG_ENUMS = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
    "sslnegotiation": ("postgres", "direct"),
    "sslcertmode": ("disable", "allow", "require"),
    "replication": ("true", "false", "database", "on", "off", "yes", "no", "1", "0"),
}
_PG_INTS = frozenset({"connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
                      "tcp_user_timeout"})
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
    for key, value in query.items():
        allowed = _PG_ENUMS.get(key)
        if allowed is not None and value not in allowed:
            raise ConfigurationError(f"storage URL {shown!r}: {key}={value[:40]!r} is not one of {', '.join(allowed)}",
                                     hint=f"use one of libpq's values for {key}")
        if key in _PG_INTS and not re.fullmatch(r"-?[0-9]{1,9}", value):
            raise ConfigurationError(f"storage URL {shown!r}: {key}={value[:40]!r} is not a whole number",
                                     hint=f"{key} takes whole seconds (or a count), e.g. {key}=10")
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

