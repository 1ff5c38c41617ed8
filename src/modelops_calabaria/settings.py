"""Run-time settings: one typed object, resolved once at the entry point.

Precedence, highest first (pinned by ``tests/test_state.py::test_settings_precedence_cli_over_env_over_job_over_default``):

1. CLI flags (passed as keyword arguments to :func:`resolve_settings`);
2. environment variables (``PARALLEL_TRIALS``, ``CALABARIA_STORAGE``, ...);
3. the job file's ``execution`` block;
4. the defaults below.

Nothing reads the environment anywhere else: each command resolves it once
(``calibrate``/``worker`` through the job, ``status`` with no job) and passes
the resolved object, or the values it needs, into constructors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from modelops_calabaria import addresses
from modelops_calabaria.errors import ConfigurationError
from modelops_calabaria.job import MAX_CONCURRENCY, MAX_REPLICATES
from modelops_calabaria.redaction import register_secrets_in


# Accepted ranges of the numeric settings (docs/reliability.md, "Settings out of range"): a value
# beyond them would overflow a timer (1e300 s kills the heartbeat thread) or make recovery absurd.
HEARTBEAT_RANGE_S = (0.05, 3600.0)  # CALABARIA_HEARTBEAT_INTERVAL_S
GRACE_RANGE_S = (0.5, 86400.0)  # CALABARIA_GRACE_PERIOD_S: at most a day
IMPORT_TIMEOUT_RANGE_S = (1.0, 3600.0)  # CALABARIA_MODEL_IMPORT_TIMEOUT_S


class Settings(BaseSettings):
    """How and where a calibration runs.

    Attributes:
        parallel_trials: True: N independent ask→simulate→tell loops; False:
            batched rounds. Env ``PARALLEL_TRIALS``.
        storage: Optuna storage URL (``postgresql://``, ``sqlite:///``,
            ``journal:///path``); empty = a SQLite file in the run directory.
        scheduler: Dask scheduler address (``tcp://host:8786``); empty = start
            a local cluster; ``inline`` = no Dask, replicates run on threads of
            the coordinator's process (debugging, measuring coordination).
            Checked when the settings are resolved (scheme, host, port 1-65535).
        listen_host: Interface every server the service starts listens on (the
            local cluster's scheduler, workers, nannies and dashboard). Default
            ``127.0.0.1``: this machine only; exactly ``0.0.0.0`` (or ``::``) exposes
            them, without authentication, to the network; any other value that is
            not loopback is refused (:func:`.addresses.listen_host`). Env
            ``CALABARIA_LISTEN_HOST``.
        local_workers: Slots of the local cluster (worker processes, or threads
            of its in-process worker), or threads with ``inline`` (default: cores).
        local_processes: The local cluster runs single-threaded worker processes
            (True) or one worker's threads in the coordinator's process (False).
            Empty = automatic: threads for the built-in models, processes for any
            other model (docs/performance.md, "Start-up"). Env
            ``CALABARIA_LOCAL_PROCESSES``.
        log_format: ``json``, ``console``, or ``auto`` (console on a terminal).
        heartbeat_interval_s: How often a coordinator says it is alive
            (seconds, :data:`HEARTBEAT_RANGE_S`).
        grace_period_s: A coordinator silent this long is lost; its RUNNING
            trials become FAIL ("coordinator lost") (seconds, :data:`GRACE_RANGE_S`).
        fast_path: Sample in an in-memory mirror of the study and write each
            trial with one insert (False: plain Optuna ask on the shared storage).
        replicates_per_task: Replicates one Dask task runs one after the other.
            Empty = automatic: one until durations are measured, then as many
            as fit in about 0.2 s while every slot still has a task.
        sampler_process: With the fast path, sample in a child process, off the
            coordinator's GIL. Empty = automatic (parallel mode with many loops
            on a machine with more than one core).
        model_import_timeout_s: How long the first import of a user model (tried in
            a child process by the CLI) may take (seconds,
            :data:`IMPORT_TIMEOUT_RANGE_S`). Env ``CALABARIA_MODEL_IMPORT_TIMEOUT_S``.
    """

    model_config = SettingsConfigDict(env_prefix="CALABARIA_", extra="ignore", populate_by_name=True, allow_inf_nan=False)

    parallel_trials: bool = Field(
        default=True, validation_alias=AliasChoices("parallel_trials", "PARALLEL_TRIALS", "CALABARIA_PARALLEL_TRIALS")
    )
    storage: str | None = None
    scheduler: str | None = None
    local_workers: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY)
    local_processes: bool | None = None
    log_format: Literal["auto", "json", "console"] = "auto"
    heartbeat_interval_s: float = Field(default=10.0, ge=HEARTBEAT_RANGE_S[0], le=HEARTBEAT_RANGE_S[1])
    fast_path: bool = True
    sampler_process: bool | None = None
    replicates_per_task: int | None = Field(default=None, ge=1, le=MAX_REPLICATES)
    grace_period_s: float = Field(default=60.0, ge=GRACE_RANGE_S[0], le=GRACE_RANGE_S[1])
    listen_host: str = "127.0.0.1"
    model_import_timeout_s: float = Field(default=120.0, ge=IMPORT_TIMEOUT_RANGE_S[0], le=IMPORT_TIMEOUT_RANGE_S[1])

    # These raise ConfigurationError (not ValueError), which pydantic lets through as is:
    # one line naming the address and what is wrong with it.
    @field_validator("scheduler")
    @classmethod
    def _check_scheduler(cls, value: str | None) -> str | None:
        return addresses.scheduler_address(value)

    @field_validator("listen_host")
    @classmethod
    def _check_listen_host(cls, value: str) -> str:
        return addresses.listen_host(value)


def resolve_settings(job_execution: Mapping[str, Any] | None = None, **cli: Any) -> Settings:
    """Build Settings from CLI flags > environment > job ``execution`` block > defaults.

    ``None`` values (flags not given, job fields left empty) do not override.

    Raises:
        ConfigurationError: a value has the wrong type (names the setting).
    """
    job_values = {k: v for k, v in (job_execution or {}).items() if v is not None}
    register_secrets_in(job_values.get("storage"))
    register_secrets_in(cli.get("storage"))
    cli_values = {k: v for k, v in cli.items() if v is not None}

    class _Resolved(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, InitSettingsSource(settings_cls, job_values))

    try:
        resolved = _Resolved(**cli_values)
    except ValidationError as e:
        bad = "; ".join(f"{_setting_name(err['loc'])}: {err['msg']}" for err in e.errors(include_url=False))
        raise ConfigurationError(f"invalid setting: {bad}",
                                 hint="check the CLI flags, CALABARIA_* / PARALLEL_TRIALS variables and the job's 'execution' block") from e
    register_secrets_in(resolved.storage)  # whichever source it came from: masked in every line printed
    return Settings.model_construct(**resolved.model_dump())


def _setting_name(loc: tuple[Any, ...]) -> str:
    """A setting as the user wrote it: ``heartbeat_interval_s (CALABARIA_HEARTBEAT_INTERVAL_S)``."""
    name = ".".join(map(str, loc))
    if name in Settings.model_fields and name != "parallel_trials":
        return f"{name} (CALABARIA_{name.upper()})"
    return name
