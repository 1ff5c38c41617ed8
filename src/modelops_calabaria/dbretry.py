"""Retry database calls through connection failures (a PostgreSQL restart, a dropped connection).

Optuna wraps SQLAlchemy errors in ``StorageInternalError``; both forms are
recognised. Anything else (integrity errors, bugs) is not retried.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import optuna
import sqlalchemy.exc

from modelops_calabaria.errors import ServiceUnavailableError
from modelops_calabaria.logging import get_logger
from modelops_calabaria.redaction import redact

log = get_logger(__name__)
T = TypeVar("T")
_TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.DisconnectionError)


def transient_reason(error: BaseException) -> str | None:
    """A one-line, password-free reason if ``error`` is a transient connection failure, else None."""
    cause: BaseException | None = error
    if isinstance(error, optuna.exceptions.StorageInternalError):
        cause = error.__cause__ or error.__context__
    if not isinstance(cause, _TRANSIENT):
        return None
    text = str(getattr(cause, "orig", None) or cause).strip()
    return redact(text.splitlines()[0] if text else type(cause).__name__)


def retry_db(what: str, fn: Callable[[], T], *, attempts: int = 10, first_delay: float = 0.2, max_delay: float = 5.0) -> T:
    """Call ``fn``, retrying transient database failures with jittered exponential back-off.

    With the defaults the calls are retried for about 30 s, long enough for a
    PostgreSQL restart.

    Raises:
        ServiceUnavailableError: still failing after ``attempts`` (no password in the message).
    """
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (optuna.exceptions.StorageInternalError, *_TRANSIENT) as e:
            reason = transient_reason(e)
            if reason is None:
                raise
            if attempt == attempts:
                raise ServiceUnavailableError(
                    f"the study database kept failing during {what} ({attempts} attempts): {reason}",
                    hint="check the database server; finished trials are kept, re-run to resume",
                ) from None  # not "from e": the driver's message may carry the URL's password
            log.warning("database error, retrying", operation=what, attempt=attempt, delay_s=round(delay, 2), error=reason)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")
