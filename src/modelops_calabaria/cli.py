"""The ``calabaria`` command line.

Exit codes: 0 success; 1 the run failed or a service is unreachable; 2 bad input.
A user mistake prints one clear message on stderr, never a traceback.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

try:  # typer >= 0.2x ships its own copy of click, with its own exception classes
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from modelops_calabaria import __version__
from modelops_calabaria.errors import CalabariaError, ConfigurationError, JobSpecError
from modelops_calabaria.job import MAX_CONCURRENCY, MAX_REPLICATES, MAX_SEED, check_run_flags, check_study_name
from modelops_calabaria.job.limits import MAX_FLAG_SECONDS, check_seconds
from modelops_calabaria.logging import configure_logging
from modelops_calabaria.redaction import redact, register_secrets_in
from modelops_calabaria.settings import GRACE_RANGE_S, resolve_settings

app = typer.Typer(
    name="calabaria",
    help="Calibrate stochastic epidemiological models against surveillance data (Optuna + Dask).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags without a misleading <bool> type column
)
F = TypeVar("F", bound=Callable[..., Any])


def _echo(text: str, *, err: bool = False) -> None:
    """Print one message: everything the CLI prints goes through here (and so through redact)."""
    typer.echo(redact(text), err=err)


def _fail(message: str, code: int) -> None:
    from modelops_calabaria.logging import MAX_LOGGED_CHARS, bound

    # Each line of an error bounded: a 1 MB value quoted by a message is cut, after redaction.
    typer.echo("\n".join(bound(line, MAX_LOGGED_CHARS) for line in redact(f"error: {message}").split("\n")), err=True)
    raise typer.Exit(code)


def _study_option(name: str) -> str:
    """``--study NAME`` checked like a job's study name (it names a directory under runs/)."""
    try:
        return check_study_name(name, "--study")
    except ValueError as e:
        raise ConfigurationError(str(e)) from None


def handle_errors(fn: F) -> F:
    """Turn CalabariaError into a message on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        register_secrets_in(os.environ.get("CALABARIA_STORAGE"))
        register_secrets_in(kwargs.get("storage"))
        try:
            from modelops_calabaria.models import contain_imports
            from modelops_calabaria.simulation.containment import become_subreaper

            # A model that exits or hangs while importing is named, not silently obeyed (models/__init__.py).
            contain_imports(resolve_settings().model_import_timeout_s)
            become_subreaper()  # what a model run in this process (inline, threads) orphans stays ours, ended at exit
            return fn(*args, **kwargs)
        except CalabariaError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper  # type: ignore[return-value]


JobFile = Annotated[Path, typer.Argument(help="Job file (YAML or JSON).", show_default=False)]
Storage = Annotated[str | None, typer.Option("--storage", help="Study storage URL (postgresql://, sqlite:///, journal:///). Env CALABARIA_STORAGE.")]
Scheduler = Annotated[str | None, typer.Option("--scheduler", help="Dask scheduler address; empty starts a local cluster; 'inline' runs replicates in this process, without Dask. Env CALABARIA_SCHEDULER.")]
Workers = Annotated[int | None, typer.Option("--workers", help=f"Trials at once: loops (parallel) or batch size (batched); 1 to {MAX_CONCURRENCY}, fixed for the run; default: the job's concurrency, else auto (follows the cluster's live size).")]
Mode = Annotated[bool | None, typer.Option("--parallel/--batched", help="Execution mode. Env PARALLEL_TRIALS.", show_default=False)]
LogFormat = Annotated[str | None, typer.Option("--log-format", help="json, console or auto.")]
LocalWorkers = Annotated[int | None, typer.Option("--local-workers", min=1, max=MAX_CONCURRENCY, help="Processes of the local Dask cluster.")]
Output = Annotated[Path | None, typer.Option("--output", "-o", help="Run directory (default runs/<study>).")]
Grace = Annotated[float, typer.Option("--grace", min=0, max=GRACE_RANGE_S[1], help="After SIGTERM/SIGINT, seconds in-flight trials may finish; the command ends at most 10 s later.")]


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"modelops-calabaria {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    _version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                           help="Print the version and exit (`calabaria version` also checks the dependencies).")] = False,
) -> None:
    """Calibrate stochastic epidemiological models against surveillance data (Optuna + Dask)."""


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="On a terminal, also print one line per trial.")]


def _setup(job_execution: dict | None, verbose: bool = False, **cli: Any) -> Any:
    import logging

    settings = resolve_settings(job_execution, **cli)
    # Per-trial lines are DEBUG when a live progress line shows them in summary (terminal);
    # -v shows them too. The log stream lets the live line step aside for each log line.
    from modelops_calabaria.reporting.progress import LOG_STREAM

    configure_logging(settings.log_format, level=logging.DEBUG if verbose else logging.INFO, stream=LOG_STREAM)
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
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=MAX_SEED, help="Seed of the sampler and replicates (overrides the job's 'seed').")] = None,
    accept_changes: Annotated[bool, typer.Option("--accept-changes", help="Resume a study whose observed data or model changed.")] = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Do not write report.html at the end.")] = False,
    verbose: Verbose = False,
) -> None:
    """Run (or resume) a calibration; write best.yaml, results.json, trials.csv and report.html."""
    from modelops_calabaria.calibration.runner import run_calibration
    from modelops_calabaria.job import load_job

    check_run_flags(max_trials=max_trials, extend=extend, workers=workers)
    check_seconds("--grace", grace)
    job = load_job(job_file)
    register_secrets_in(job.execution.storage)
    if max_trials is not None and (points := len(job.starting_points())) > max_trials:
        raise ConfigurationError(f"--max-trials {max_trials:,} is below the job's {points:,} starting points ('start' and guesses)",
                                 hint="every starting point is a trial of the budget: raise --max-trials")
    if seed is not None:
        job = job.model_copy(update={"seed": seed}).with_base_dir(job.base_dir)
    settings = _setup(job.execution.model_dump(), verbose=verbose, parallel_trials=parallel, storage=storage, scheduler=scheduler,
                      log_format=log_format, local_workers=local_workers)
    result = run_calibration(job, settings, output_dir=output, max_trials=max_trials, extend=extend,
                             concurrency=workers, handle_signals=True, shutdown_grace_s=grace,
                             accept_changes=accept_changes)
    if not no_report and result.stop_reason not in ("SIGTERM", "SIGINT") and not _report_current(result):
        _report_after_run(result, settings)  # not after a signal: the process must end within the grace period
    _print_summary(result)  # the command's last line: scripts read it


@app.command()
@handle_errors
def sweep(
    job_file: JobFile,
    output: Output = None,
    storage: Storage = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
    parallel: Mode = None,
    local_workers: LocalWorkers = None,
    log_format: LogFormat = None,
    grace: Grace = 30.0,
    verbose: Verbose = False,
) -> None:
    """Run (or resume) the job's sweep: every design point, its summaries kept; write sweep.parquet,
    sensitivity.json, sensitivity.csv and sensitivity.html (docs/sensitivity.md). Other coordinators
    join with `calabaria worker --study NAME --storage URL`."""
    from modelops_calabaria.calibration.sweep import run_sweep
    from modelops_calabaria.job import load_job

    check_run_flags(workers=workers)
    job = load_job(job_file)
    if job.sweep is None:
        raise JobSpecError(f"{job_file} has no 'sweep' block",
                           problems=[("sweep", "add sweep: {design: sobol, points: 64, replicates: 2, summaries: [...]}")])
    register_secrets_in(job.execution.storage)
    check_run_flags(workers=workers, n_replicates=job.sweep.replicates)
    settings = _setup(job.execution.model_dump(), verbose=verbose, parallel_trials=parallel, storage=storage, scheduler=scheduler,
                      log_format=log_format, local_workers=local_workers)
    result = run_sweep(job, settings, output_dir=output, concurrency=workers, handle_signals=True, shutdown_grace_s=grace)
    _echo(json.dumps({"points": result["points"], "complete": result["complete_points"], "failed": result["failed_points"],
                      "outputs": list(result["outputs"]), "output": str(output or Path("runs") / job.study)}))


def _report_current(result: Any) -> bool:
    """Whether the run directory's report.html was made from this very result (nothing ran)."""
    from modelops_calabaria.reporting.results import report_is_current

    if not report_is_current(Path(result.output_dir) / "report.html", result.study_state):
        return False
    from modelops_calabaria.logging import get_logger

    get_logger("modelops_calabaria.cli").info("report is current", report=str(Path(result.output_dir) / "report.html"))
    return True


def _report_after_run(result: Any, settings: Any) -> None:
    """Write the run's report; a failure here warns and never fails the calibration."""
    from modelops_calabaria.logging import get_logger

    log = get_logger("modelops_calabaria.cli")
    try:
        from modelops_calabaria.reporting.report import make_report
        from modelops_calabaria.storage import parse_storage_url

        run_dir = Path(result.output_dir)
        url = parse_storage_url(settings.storage, run_dir / "study.db").url
        path = make_report(run_dir, study=result.study, storage=url, scheduler=settings.scheduler,
                           local_workers=settings.local_workers)
        log.info("report written", report=str(path))
    except Exception as e:  # noqa: BLE001 - the calibration succeeded; the report is a bonus
        log.warning("report not written", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                    hint=f"run `calabaria report {result.output_dir}` to retry")


@app.command()
@handle_errors
def worker(
    study: Annotated[str, typer.Option("--study", help="Name of the study to join.")],
    storage: Annotated[str, typer.Option("--storage", envvar="CALABARIA_STORAGE", help="Storage URL of the study.")],
    scheduler: Scheduler = None,
    workers: Workers = None,
    parallel: Mode = None,
    output: Output = None,
    wait: Annotated[float, typer.Option("--wait", min=0, max=MAX_FLAG_SECONDS, help="Seconds to wait for the study to be created (at most a week).")] = 120.0,
    local_workers: LocalWorkers = None,
    log_format: LogFormat = None,
    grace: Grace = 30.0,
    job_file: Annotated[Path | None, typer.Option("--job", help="The study's job file: refuse to run if the study's stored model is not this file's model.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=MAX_SEED, help="Refuse to join unless the study's seed is this one.")] = None,
    verbose: Verbose = False,
) -> None:
    """Join an existing study and work until its budget is spent (the job is read from the study).

    The study's stored job decides which model code runs here: whoever can write to the
    study database can make workers run code. ``--job FILE`` pins the model to the job file's.
    """
    from modelops_calabaria.calibration.runner import load_joined_job, run_calibration
    from modelops_calabaria.job import check_same_model, load_job
    from modelops_calabaria.models import canonical_ref
    from modelops_calabaria.storage import parse_storage_url

    study = _study_option(study)
    check_run_flags(workers=workers)
    check_seconds("--wait", wait)
    check_seconds("--grace", grace)
    expected_model = None
    if job_file is not None:
        file_job = load_job(job_file)
        if file_job.study != study:
            raise ConfigurationError(f"--job {job_file} is for study '{file_job.study}', not '{study}'",
                                     hint="pass the job file of the study you join")
        expected_model = canonical_ref(file_job.model, file_job.base_dir)
    settings = _setup(None, verbose=verbose, parallel_trials=parallel, storage=storage, scheduler=scheduler, log_format=log_format,
                      local_workers=local_workers)
    target = parse_storage_url(settings.storage)
    job = load_joined_job(study, target, wait)
    if expected_model is not None:
        check_same_model(study, job.model, expected_model)
    if seed is not None and seed != job.seed:
        raise ConfigurationError(f"study '{study}' runs with seed {job.seed}, not --seed {seed}",
                                 hint=f"drop --seed, pass --seed {job.seed}, or join the study that uses seed {seed}")
    # The run directory the job implies (as `calibrate` uses): every coordinator reports the study's one best
    # (reporting/best.py), and results files are replaced whole, so the last coordinator to end leaves them current.
    out = output or Path("runs") / study
    result = run_calibration(job, settings, output_dir=out, concurrency=workers, handle_signals=True,
                             shutdown_grace_s=grace, joining=True)
    _print_summary(result)


@app.command()
@handle_errors
def status(
    run_dir: Annotated[Path | None, typer.Argument(help="A run directory (runs/STUDY): its study and storage.", show_default=False)] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name.")] = None,
    storage: Annotated[str | None, typer.Option("--storage", envvar="CALABARIA_STORAGE", help="Storage URL of the study.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Trials by state, best loss and parameters, throughput and live coordinators of a study (reads only)."""
    from modelops_calabaria.reporting.status import locate_run, study_status

    study = _study_option(study) if study is not None else None
    configure_logging("console", stream=sys.stderr)
    if run_dir is not None:
        found_study, storage = locate_run(run_dir, storage)
        study = study or found_study
    if not study or not storage:
        raise ConfigurationError("status needs a run directory, or --study NAME and --storage URL",
                                 hint="e.g. `calabaria status runs/STUDY`")
    info = study_status(study, storage, grace_s=resolve_settings({}).grace_period_s)
    if as_json:
        _echo(json.dumps(info, indent=2, default=str))
        return
    _echo(f"study {info['study']} ({info['storage']})")
    _echo("trials: " + ", ".join(f"{k} {v}" for k, v in info["trials"].items() if v))
    _echo(f"budget: {info['budget']['claimed']}/{info['budget']['max_trials']} claimed")
    _echo(f"best loss: {info['best_loss']}  params: {info['best_params']}")
    _echo(f"trials per minute (last {info['rate_window_s'] / 60:.1f} min): {info['trials_per_minute']}")
    _echo(f"live coordinators: {len(info['coordinators'])}")
    for c in info["coordinators"]:
        _echo(f"  {c['id']} on {c['host']} (pid {c['pid']}), last heartbeat {c['seconds_ago']:.0f} s ago")


@app.command()
@handle_errors
def simulate(
    job_file: JobFile,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="NAME=VALUE (repeatable); overrides --params/--best; others take the middle of their range.")] = None,
    params: Annotated[Path | None, typer.Option("--params", help="YAML of parameters: a run's best.yaml, or NAME: VALUE lines.")] = None,
    best: Annotated[Path | None, typer.Option("--best", help="Run directory: simulate its best parameters (its best.yaml).")] = None,
    replicates: Annotated[int, typer.Option("--replicates", "-r", min=1, max=MAX_REPLICATES, help="Runs with distinct seeds (1 to 10,000).")] = 1,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=MAX_SEED, help="Seed of the first run (then seed+1, ...); default: derived from the job seed, distinct from every trial's.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for one CSV per output (tables long: replicate, seed, output, keys, value), or FILE.parquet for one long Parquet file.")] = Path("simulation"),
    plot: Annotated[bool, typer.Option("--plot", help="Also draw the fit figure of each target (fit-<target>.png).")] = False,
) -> None:
    """Run the job's model with chosen parameters; write each output as CSV (its index and columns)."""
    from modelops_calabaria.reporting.simulate import run_simulate

    configure_logging("console", stream=sys.stderr)
    for path in run_simulate(job_file, param or [], params, best, replicates, seed, output, plot):
        _echo(str(path))


@app.command()
@handle_errors
def report(
    run_dir: Annotated[Path | None, typer.Argument(help="Run directory of a calibration (e.g. runs/seir-demo).", show_default=False)] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name (default: the run directory's).")] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="Storage URL of the study (default: the run directory's study.db, else env CALABARIA_STORAGE).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Report directory (report.html in it) or a .html file name; never over a device or another file (default RUN_DIR/report.html or runs/<study>/report.html).")] = None,
    scheduler: Scheduler = None,
    local_workers: LocalWorkers = None,
    replicates: Annotated[int | None, typer.Option("--replicates", min=0, max=MAX_REPLICATES, help="Fresh replicates of the best trial, 0 to 10,000 (default: the job's report.replicates, 20; 0: none).")] = None,
) -> None:
    """Write report.html (one self-contained file) and its figures as PNG, for a run directory or a study."""
    from modelops_calabaria.reporting.report import build_input, resolve_source, write_report

    study = _study_option(study) if study is not None else None
    settings = resolve_settings(None, scheduler=scheduler, local_workers=local_workers)
    configure_logging("console", stream=sys.stderr)
    src = resolve_source(run_dir, study, storage, output)
    path = write_report(src, build_input(src, scheduler=settings.scheduler, local_workers=settings.local_workers,
                                         replicates=replicates))
    _echo(str(path))
    _echo(f"study '{src.study}' in {src.target.display}")
    _echo(f"dashboard: optuna-dashboard '{src.target.display}'")


def _date_option(value: str | None, flag: str) -> Any:
    """A YYYY-MM-DD flag value as a date (ConfigurationError otherwise)."""
    import datetime as dt

    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigurationError(f"{flag} {value!r}: expected a date YYYY-MM-DD") from None


@app.command()
@handle_errors
def project(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of a calibration (e.g. runs/seir-demo).", show_default=False)],
    scenarios: Annotated[Path, typer.Option("--scenarios", help="Scenarios file (YAML: start_date, baseline, scenarios; docs/projections.md).")],
    until: Annotated[str | None, typer.Option("--until", help="Project up to this date (YYYY-MM-DD).")] = None,
    horizon: Annotated[int | None, typer.Option("--horizon", help="Periods (weeks for weekly data) past the last observation; default 8.")] = None,
    draws: Annotated[int, typer.Option("--draws", help="Parameter sets drawn (posterior, else re-evaluated top trials, else the best).")] = 200,
    replicates: Annotated[int, typer.Option("--replicates", "-r", help="Replicates per parameter set and scenario (the same seeds in every scenario).")] = 2,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output directory (default RUN_DIR/projection); a run interrupted into it resumes.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=MAX_SEED, help="Seed of the draws and simulations (default: the job's).")] = None,
    scheduler: Scheduler = None,
    local_workers: LocalWorkers = None,
    holdout_after: Annotated[str | None, typer.Option("--holdout-after", help="Forecast check: score against the observations after this date (the run must be calibrated on data up to it).")] = None,
    truth: Annotated[Path | None, typer.Option("--truth", help="With --holdout-after: the job file whose data hold the observations after the date.")] = None,
    storage: Annotated[str | None, typer.Option("--storage", envvar="CALABARIA_STORAGE", help="Storage URL of the run's study when RUN_DIR holds no study.db.")] = None,
) -> None:
    """Project the calibrated model under each scenario: projections.parquet, quantiles.csv, hubverse.csv, projection.html."""
    from modelops_calabaria.projection import project as run_projection

    settings = resolve_settings(None, scheduler=scheduler, local_workers=local_workers)
    configure_logging("console", stream=sys.stderr)
    result = run_projection(run_dir, scenarios, until=_date_option(until, "--until"), horizon=horizon, draws=draws,
                            replicates=replicates, output=output, seed=seed, scheduler=settings.scheduler,
                            local_workers=settings.local_workers, holdout_after=_date_option(holdout_after, "--holdout-after"),
                            truth=truth, storage=storage)
    for path in result.files:
        _echo(str(path))
    if result.forecast_check:
        c = result.forecast_check
        _echo(f"forecast check after {c['after']}: {c['points']} observations, WIS {c.get('wis', float('nan')):.4g}, "
              f"coverage 50 % {c.get('coverage_50', float('nan')):.0%}, 95 % {c.get('coverage_95', float('nan')):.0%}")


@app.command()
@handle_errors
def validate(
    job_file: JobFile,
    no_run: Annotated[bool, typer.Option("--no-run", help="Skip the dry run of the model.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, max=MAX_FLAG_SECONDS, help="Seconds the dry run may take (at most a week).")] = 120.0,
) -> None:
    """Check a job file, its model and observed data, and run the model once (midpoint parameters, the job's seed)."""
    from modelops_calabaria.calibration.preflight import dry_run
    from modelops_calabaria.calibration.runner import prepare
    from modelops_calabaria.job import load_job

    check_seconds("--timeout", timeout)
    configure_logging("console", stream=sys.stderr)
    job = load_job(job_file)
    settings = resolve_settings(job.execution.model_dump())
    prepared = prepare(job, settings)
    ran = ""
    if not no_run:
        scores = dry_run(job, prepared.model_ref, prepared.targets, timeout, strict=True)
        ran = "; dry run at the midpoint: " + ", ".join(f"{k} {v:.6g}" for k, v in scores.items())
    _echo(f"{job_file}: valid. study '{job.study}', model {job.model}, {len(job.parameters)} parameters, "
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

    _echo(json.dumps(job_schema(), indent=2))


@app.command()
def version() -> None:
    """Print the version and check that the service's dependencies import (health check)."""
    import dask
    import distributed
    import optuna
    import psycopg2

    _echo(f"modelops-calabaria {__version__} (optuna {optuna.__version__}, dask {dask.__version__}, "
               f"distributed {distributed.__version__}, psycopg2 {psycopg2.__version__.split()[0]})")


def _print_summary(result: Any) -> None:
    _echo(json.dumps({"best_loss": result.best_loss, "best_params": result.best_params,
                           "trials": {k: v for k, v in result.trials.items() if v}, "output": result.output_dir}, default=str))


def main() -> None:
    """Console-script entry point: every message, usage errors included, is one redacted line."""
    try:
        code = app(standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as e:  # the help is already printed
        code = e.exit_code
    except click_exceptions.UsageError as e:  # a bad flag or argument: one line, exit 2
        command = f" {e.ctx.command_path}" if e.ctx else ""
        _echo(f"error: {e.format_message()}\n  hint: see `{(command.strip() or 'calabaria')} --help`", err=True)
        code = 2
    except click_exceptions.ClickException as e:
        _echo(f"error: {e.format_message()}", err=True)
        code = e.exit_code
    except typer.Abort:
        _echo("error: interrupted", err=True)
        code = 130
    except CalabariaError as e:  # raised outside a command (never expected)
        _echo(f"error: {e}", err=True)
        code = e.exit_code
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
            _echo("".join(traceback.format_exception(e)).rstrip(), err=True)
            _echo(f"error: internal error {type(e).__name__}: {e}", err=True)
            code = 1
        else:  # a full or read-only disk under a study or output file: the service's state, one line
            where = f" writing {e.filename}" if e.filename else ""
            _echo(f"error: {e.strerror or e}{where}\n  hint: free space (or fix the file system) and run the command again: "
                  "a study resumes where it stopped", err=True)
            code = 1
    except Exception as e:  # a bug: keep the traceback for the report, but redacted
        _echo("".join(traceback.format_exception(e)).rstrip(), err=True)
        _echo(f"error: internal error {type(e).__name__}: {e}", err=True)
        code = 1
    _exit(code or 0)


def _exit(code: int) -> None:
    """End the command: nothing it started outlives it. Local worker processes, the fork server,
    the resource tracker and any process left below this one (a model run here that forked:
    this process is their sub-reaper) are ended now (not seconds later); a model thread that cannot be
    stopped (no ``timeout_s``, cancelled after a signal) would keep the interpreter from
    exiting, so then the process ends without waiting for it (docs/reliability.md)."""
    import threading

    if "modelops_calabaria.simulation.forkserver" in sys.modules:
        sys.modules["modelops_calabaria.simulation.forkserver"].stop()
    containment = sys.modules.get("modelops_calabaria.simulation.containment")
    if containment is not None:  # a command that may have run a model here
        containment.kill_all(containment.descendants(os.getpid()), reap=False)  # e.g. what a model left running
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    runner = sys.modules.get("modelops_calabaria.calibration.runner")
    # After a signal, model threads may still spin (daemon or not): the interpreter's own exit
    # would wait for them, or crawl beside them for seconds.
    if stuck or (runner is not None and runner.SIGNALLED.is_set()):
        import logging

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - a closed pipe: nothing more to say
                pass
        os._exit(code)
    sys.exit(code)
