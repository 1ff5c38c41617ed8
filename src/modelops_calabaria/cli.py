"""The ``calabaria`` command line.

Exit codes: 0 success; 1 the run failed or a service is unreachable; 2 bad input.
A user mistake prints one clear message on stderr, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from modelops_calabaria import __version__
from modelops_calabaria.errors import CalabariaError, ConfigurationError, JobSpecError
from modelops_calabaria.logging import configure_logging
from modelops_calabaria.settings import resolve_settings

app = typer.Typer(
    name="calabaria",
    help="Calibrate stochastic epidemiological models against surveillance data (Optuna + Dask).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn CalabariaError into a message on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CalabariaError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper  # type: ignore[return-value]


JobFile = Annotated[Path, typer.Argument(help="Job file (YAML or JSON).", show_default=False)]
Storage = Annotated[str | None, typer.Option("--storage", help="Study storage URL (postgresql://, sqlite:///, journal:///). Env CALABARIA_STORAGE.")]
Scheduler = Annotated[str | None, typer.Option("--scheduler", help="Dask scheduler address; empty starts a local cluster; 'inline' runs replicates in this process, without Dask. Env CALABARIA_SCHEDULER.")]
Workers = Annotated[int | None, typer.Option("--workers", min=1, help="Trials at once: loops (parallel) or batch size (batched).")]
Mode = Annotated[bool | None, typer.Option("--parallel/--batched", help="Execution mode. Env PARALLEL_TRIALS.", show_default=False)]
LogFormat = Annotated[str | None, typer.Option("--log-format", help="json, console or auto.")]
LocalWorkers = Annotated[int | None, typer.Option("--local-workers", min=1, help="Processes of the local Dask cluster.")]
Output = Annotated[Path | None, typer.Option("--output", "-o", help="Run directory (default runs/<study>).")]
Grace = Annotated[float, typer.Option("--grace", min=0, help="After SIGTERM/SIGINT, seconds in-flight trials may finish.")]


def _setup(job_execution: dict | None, **cli: Any) -> Any:
    settings = resolve_settings(job_execution, **cli)
    configure_logging(settings.log_format)
    return settings


@app.command()
@handle_errors
def calibrate(
    job_file: JobFile,
    output: Output = None,
    storage: Storage = None,
    scheduler: Scheduler = None,
    max_trials: Annotated[int | None, typer.Option("--max-trials", help="Trial budget (overrides the job file).")] = None,
    extend: Annotated[int | None, typer.Option("--extend", help="Add this many trials to an existing study's budget.")] = None,
    workers: Workers = None,
    parallel: Mode = None,
    local_workers: LocalWorkers = None,
    log_format: LogFormat = None,
    grace: Grace = 30.0,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Seed of the sampler and replicates (overrides the job's 'seed').")] = None,
    accept_changes: Annotated[bool, typer.Option("--accept-changes", help="Resume a study whose observed data or model changed.")] = False,
) -> None:
    """Run (or resume) a calibration and write best.yaml, results.json and trials.csv."""
    from modelops_calabaria.calibration.runner import run_calibration
    from modelops_calabaria.job import load_job

    job = load_job(job_file)
    if seed is not None:
        job = job.model_copy(update={"seed": seed}).with_base_dir(job.base_dir)
    settings = _setup(job.execution.model_dump(), parallel_trials=parallel, storage=storage, scheduler=scheduler,
                      log_format=log_format, local_workers=local_workers)
    result = run_calibration(job, settings, output_dir=output, max_trials=max_trials, extend=extend,
                             concurrency=workers, handle_signals=True, shutdown_grace_s=grace,
                             accept_changes=accept_changes)
    _print_summary(result)


@app.command()
@handle_errors
def worker(
    study: Annotated[str, typer.Option("--study", help="Name of the study to join.")],
    storage: Annotated[str, typer.Option("--storage", envvar="CALABARIA_STORAGE", help="Storage URL of the study.")],
    scheduler: Scheduler = None,
    workers: Workers = None,
    parallel: Mode = None,
    output: Output = None,
    wait: Annotated[float, typer.Option("--wait", min=0, help="Seconds to wait for the study to be created.")] = 120.0,
    local_workers: LocalWorkers = None,
    log_format: LogFormat = None,
    grace: Grace = 30.0,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Refuse to join unless the study's seed is this one.")] = None,
) -> None:
    """Join an existing study and work until its budget is spent (the job is read from the study)."""
    from modelops_calabaria.calibration.runner import load_joined_job, run_calibration
    from modelops_calabaria.storage import parse_storage_url

    settings = _setup(None, parallel_trials=parallel, storage=storage, scheduler=scheduler, log_format=log_format,
                      local_workers=local_workers)
    target = parse_storage_url(settings.storage)
    job = load_joined_job(study, target, wait)
    if seed is not None and seed != job.seed:
        raise ConfigurationError(f"study '{study}' runs with seed {job.seed}, not --seed {seed}",
                                 hint=f"drop --seed, pass --seed {job.seed}, or join the study that uses seed {seed}")
    # Host, pid and time: workers of one array job starting in the same second must not share a directory.
    out = output or Path("runs") / study / f"worker-{socket.gethostname()}-{os.getpid()}-{int(time.time())}"
    result = run_calibration(job, settings, output_dir=out, concurrency=workers, handle_signals=True,
                             shutdown_grace_s=grace, joining=True)
    _print_summary(result)


@app.command()
@handle_errors
def status(
    study: Annotated[str, typer.Option("--study", help="Study name.")],
    storage: Annotated[str, typer.Option("--storage", envvar="CALABARIA_STORAGE", help="Storage URL of the study.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Trials by state, best loss and parameters, throughput and live coordinators of a study."""
    from modelops_calabaria.reporting.status import study_status

    configure_logging("console", stream=sys.stderr)
    info = study_status(study, storage)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    typer.echo(f"study {info['study']} ({info['storage']})")
    typer.echo("trials: " + ", ".join(f"{k} {v}" for k, v in info["trials"].items() if v))
    typer.echo(f"budget: {info['budget']['claimed']}/{info['budget']['max_trials']} claimed")
    typer.echo(f"best loss: {info['best_loss']}  params: {info['best_params']}")
    typer.echo(f"trials per minute (last 10 min): {info['trials_per_minute']}")
    typer.echo(f"live coordinators: {len(info['coordinators'])}")
    for c in info["coordinators"]:
        typer.echo(f"  {c['id']} on {c['host']} (pid {c['pid']}), last heartbeat {c['seconds_ago']:.0f} s ago")


@app.command()
@handle_errors
def simulate(
    job_file: JobFile,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="NAME=VALUE (repeatable); others take the middle of their range.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Simulation seed.")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for one CSV per output.")] = Path("simulation"),
) -> None:
    """Run the job's model once and write each output as CSV."""
    from modelops_calabaria.reporting.simulate import simulate_once

    configure_logging("console", stream=sys.stderr)
    written = simulate_once(job_file, param or [], seed, output)
    for path in written:
        typer.echo(str(path))


@app.command()
@handle_errors
def validate(
    job_file: JobFile,
    no_run: Annotated[bool, typer.Option("--no-run", help="Skip the dry run of the model.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds the dry run may take.")] = 120.0,
) -> None:
    """Check a job file, its model and observed data, and run the model once (midpoint parameters, the job's seed)."""
    from modelops_calabaria.calibration.preflight import dry_run
    from modelops_calabaria.calibration.runner import prepare
    from modelops_calabaria.job import load_job

    configure_logging("console", stream=sys.stderr)
    job = load_job(job_file)
    settings = resolve_settings(job.execution.model_dump())
    prepared = prepare(job, settings)
    ran = ""
    if not no_run:
        scores = dry_run(job, prepared.model_ref, prepared.targets, timeout, strict=True)
        ran = "; dry run at the midpoint: " + ", ".join(f"{k} {v:.6g}" for k, v in scores.items())
    typer.echo(f"{job_file}: valid. study '{job.study}', model {job.model}, {len(job.parameters)} parameters, "
               f"{len(prepared.targets)} targets, {job.n_replicates} replicates x {job.max_trials} trials{ran}")


@app.command()
def models() -> None:
    """List the built-in models: each parameter (meaning, unit, default) and output (shape, keys)."""
    from modelops_calabaria.models.catalog import CATALOG, describe

    typer.echo("\n\n".join(describe(name) for name in CATALOG))
    typer.echo("\nYour own model: a function (params: dict, seed: int) -> {output: array | {column: array} | DataFrame}, "
               "named as package.module:function or path/file.py:function (see docs/models.md).")


@app.command()
def schema() -> None:
    """Print the JSON schema of a job file."""
    from modelops_calabaria.job import job_schema

    typer.echo(json.dumps(job_schema(), indent=2))


@app.command()
def version() -> None:
    """Print the version and check that the service's dependencies import (health check)."""
    import dask
    import distributed
    import optuna
    import psycopg2

    typer.echo(f"modelops-calabaria {__version__} (optuna {optuna.__version__}, dask {dask.__version__}, "
               f"distributed {distributed.__version__}, psycopg2 {psycopg2.__version__.split()[0]})")


def _print_summary(result: Any) -> None:
    typer.echo(json.dumps({"best_loss": result.best_loss, "best_params": result.best_params,
                           "trials": {k: v for k, v in result.trials.items() if v}, "output": result.output_dir}, default=str))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except (JobSpecError, ConfigurationError) as e:  # raised outside a command (never expected)
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)


