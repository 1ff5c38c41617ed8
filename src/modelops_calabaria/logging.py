"""structlog set-up, done once by the entry point (never at import).

JSON lines on stdout in containers and pipes; a human console renderer on a
terminal. Every event passes through :func:`redact_secrets`, and every record of
the standard-library loggers the service's libraries use (Optuna, distributed,
SQLAlchemy, warnings) through a :class:`_Redact` filter: both call
:func:`modelops_calabaria.redaction.redact`, the one redaction point, so a
storage URL with a password logged by any module is masked. Every logged value is
bounded to MAX_LOGGED_CHARS characters after redaction.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from modelops_calabaria.redaction import redact


MAX_LOGGED_CHARS = 4000  # characters of one logged value (an event field, a library record, an error line)


def bound(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was (call after :func:`redact`,
    so that a cut never splits a secret away from the context that masks it)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit:,} more characters]"


def _bounded(value: Any) -> Any:
    if isinstance(value, str):
        return bound(redact(value))
    if isinstance(value, dict):
        return {k: _bounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_bounded(v) for v in value)
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor masking passwords in every string of the event, each string
    bounded to MAX_LOGGED_CHARS (a 1 MB model error or categorical value is cut, not printed)."""
    return {k: _bounded(v) for k, v in event_dict.items()}


def configure_logging(fmt: str = "auto", *, level: int = logging.INFO, stream: Any = None) -> None:
    """Configure structlog for this process.

    Args:
        fmt: ``json``, ``console`` or ``auto`` (console when ``stream`` is a tty).
        level: Minimum level emitted.
        stream: Where lines go (default: stdout).
    """
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    global _configured
    _configured = True
    tame_library_loggers()


_configured = False


def tame_library_loggers() -> None:
    """Quiet and redact the standard-library loggers of Optuna, distributed, SQLAlchemy and
    warnings. Part of :func:`configure_logging`; called again (only once logging was
    configured) right after ``distributed`` is imported, which Dask services do lazily and
    whose import installs its own stderr handler and levels."""
    if not _configured:
        return
    # Optuna logs every trial at INFO through stdlib logging; our own lines replace it.
    logging.getLogger("optuna").setLevel(logging.WARNING)
    distributed_logger = logging.getLogger("distributed")
    distributed_logger.setLevel(logging.WARNING)
    # distributed installs its own stderr handler and logs connection failures with full
    # tracebacks; the service reports those failures itself, so keep its lines to one line each.
    for handler in distributed_logger.handlers:
        if not any(isinstance(f, _OneLine) for f in handler.filters):
            handler.addFilter(_OneLine())
    logging.captureWarnings(True)
    handlers = [logging.lastResort] if logging.lastResort else []
    for name in ("", "optuna", "distributed", "sqlalchemy", "py.warnings"):
        handlers += logging.getLogger(name).handlers
    for handler in handlers:
        if not any(isinstance(f, _Redact) for f in handler.filters):
            handler.addFilter(_Redact())


class _Redact(logging.Filter):
    """Mask passwords in a standard-library record (message and traceback text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = bound(redact(record.getMessage()))
        record.args = None
        if record.exc_info:
            record.exc_text = bound(redact(logging.Formatter().formatException(record.exc_info)))
            record.exc_info = None
        return True


class _OneLine(logging.Filter):
    """Drop a record's traceback and keep only the first line of its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = bound(redact(str(record.getMessage()).strip().splitlines()[0] if record.getMessage().strip() else ""))
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


def get_logger(name: str) -> Any:
    """A structlog logger for a module."""
    return structlog.get_logger(name)
