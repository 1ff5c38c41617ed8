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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from modelops_calabaria.errors import ConfigurationError
from modelops_calabaria.redaction import redact

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
        parts = urlsplit(url)
        if not parts.hostname and "host=" not in (parts.query or ""):
            raise ConfigurationError(f"storage URL {redact(url)!r} has no host", hint="postgresql://USER:PASSWORD@HOST:5432/DB")
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
