"""Read-only probes of a study storage, run by the preflight before any schema or study is created.

A PostgreSQL URL can parse and connect and still be unusable for a study: its
``options`` may make every session read-only (``-c default_transaction_read_only=on``),
or the server may be a standby. Finding that out when the schema is created would
leave a traceback after the run directory exists; :func:`check_writable` asks the
server first, in one read-only query. Nothing is written.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlalchemy.exc

from modelops_calabaria.backend.relational import engine_kwargs
from modelops_calabaria.errors import ConfigurationError
from modelops_calabaria.storage import StorageTarget


def check_writable(target: StorageTarget) -> None:
    """Refuse a PostgreSQL storage whose sessions cannot write (nothing is written to find out).

    A server that cannot be reached passes: opening the store reports that (exit 1).

    Raises:
        ConfigurationError: the session is read-only (exit 2), naming why.
    """
    if target.kind != "postgresql":
        return
    engine = sa.create_engine(target.url, poolclass=sa.pool.NullPool, connect_args=engine_kwargs(target, 1)["connect_args"])
    try:
        with engine.connect() as conn:
            read_only = conn.execute(sa.text("SELECT current_setting('transaction_read_only')")).scalar()
            standby = conn.execute(sa.text("SELECT pg_is_in_recovery()")).scalar()
    except sqlalchemy.exc.DBAPIError:
        return  # unreachable or refused: open_store retries and reports it in one line
    finally:
        engine.dispose()
    if standby:
        raise ConfigurationError(f"storage {target.display} is a standby server (read-only): a study needs the primary",
                                 hint="point --storage at the primary, or add target_session_attrs=read-write")
    if str(read_only).lower() == "on":
        raise ConfigurationError(f"storage {target.display} gives read-only sessions (default_transaction_read_only): "
                                 "a study needs to write", hint="remove the read-only setting from the URL's options")
