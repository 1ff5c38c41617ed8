"""The one exception root of modelops-calabaria.

Every error the service raises on purpose derives from :class:`CalabariaError`.
Third-party errors (pydantic, SQLAlchemy/psycopg2, distributed, Optuna) are
converted where they enter and chained with ``from e``, so a user never sees a
raw library traceback for a mistake of theirs. ``exit_code`` is what the CLI
returns: 2 for bad input, 1 for a failed run or an unreachable service.
"""

from __future__ import annotations

import signal


class CalabariaError(Exception):
    """Root of every error raised by modelops-calabaria.

    Attributes:
        exit_code: Process exit status the CLI uses for this error.
        hint: One sentence saying what the user can do next (may be empty).
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class JobSpecError(CalabariaError):
    """A job file, observed data file or model entrypoint is invalid (exit 2).

    ``problems`` lists ``(field path, message)`` pairs, e.g.
    ``("parameters.beta.upper", "must be greater than lower (0.5)")``.
    """

    exit_code = 2

    def __init__(self, message: str, *, problems: list[tuple[str, str]] | None = None, hint: str = "") -> None:
        self.problems = list(problems or [])
        if self.problems:
            lines = "\n".join(f"  - {loc}: {msg}" for loc, msg in self.problems)
            message = f"{message}\n{lines}"
        super().__init__(message, hint=hint)


class ConfigurationError(CalabariaError):
    """A setting (storage URL, scheduler address, CLI flag) is invalid (exit 2)."""

    exit_code = 2


class StudyMismatchError(ConfigurationError):
    """An existing study was created by a different job (other parameter space)."""


class ServiceUnavailableError(CalabariaError):
    """A service the run needs (database, Dask scheduler) cannot be reached (exit 1)."""

    exit_code = 1


class StudyNotFoundError(CalabariaError):
    """A worker or status command names a study that does not exist (exit 1)."""

    exit_code = 1


class RunFailedError(CalabariaError):
    """The calibration ran but produced no usable result (exit 1).

    Raised when no trial completed, or when a failure storm stopped the run.
    """

    exit_code = 1


class SimulationError(CalabariaError):
    """A simulation replicate failed; carries the model's traceback text."""

    exit_code = 1


class SamplerProcessError(CalabariaError):
    """The sampler's process died (exit 1). Trials told so far are kept; re-run to resume."""

    exit_code = 1


class ResultsWriteError(CalabariaError):
    """The run finished but its results files could not be written (disk full, read-only) (exit 1).

    The study holds every trial: freeing space and re-running writes them. No results
    file of the run directory is left behind half-written or stale.
    """

    exit_code = 1


class ClaimLostError(CalabariaError):
    """A coordinator asked or claimed a trial after another coordinator declared it lost (exit 1).

    Its heartbeat was silent for longer than the grace period (a killed pod, or
    a host so loaded that the heartbeat thread starved): its open budget claims
    were given back and it was fenced, so that the budget stays exact. Its
    trials were failed "coordinator lost"; the other coordinators finish the
    budget, and re-running resumes.
    """

    exit_code = 1


def exit_status(code: int | None) -> str:
    """An exit code as words: ``exit code 7``, ``killed by signal 9 (SIGKILL)``."""
    if code is None:
        return "exit status not recorded"
    if code < 0:
        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
