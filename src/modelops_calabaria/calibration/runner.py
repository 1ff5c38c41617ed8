"""Run a calibration: validate everything, then connect, open the study and drive the wire.

Order matters for "nothing half-written": every check that needs no service
(job, model, data, sampler, storage URL) runs first; then the Dask cluster is
reached; only then is the study (and the run directory) created. A run
directory this call created is removed again if opening the study fails.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from modelops_calabaria.backend.base import StudyBackend
from modelops_calabaria.backend.factory import open_store, register
from modelops_calabaria.backend.ledger import Ledger
from modelops_calabaria.backend.relational import schema_lock
from modelops_calabaria.calibration.asktell import Asker, DirectAsker, MirroredAsker
from modelops_calabaria.calibration.reevaluate import apply_selection, reevaluate_at_end
from modelops_calabaria.calibration.recovery import Heartbeat, new_coordinator_id, recover_stale_trials, settle_orphans
from modelops_calabaria.calibration.run_state import RunState
from modelops_calabaria.calibration.study import (
    TARGETS_ATTR,
    build_sampler,
    check_same_space,
    distributions,
    open_study,
    stored_job_of,
)
from modelops_calabaria.calibration.wire import Wire
from modelops_calabaria.errors import ConfigurationError, RunFailedError, StudyNotFoundError
from modelops_calabaria.job import CalibrationJob, job_from_dict
from modelops_calabaria.logging import get_logger
from modelops_calabaria.models import canonical_ref, load_model
from modelops_calabaria.reporting.progress import Progress
from modelops_calabaria.outcome import RunResult
from modelops_calabaria.reporting.results import best_trial, state_counts, write_results
from modelops_calabaria.settings import Settings, resolve_settings
from modelops_calabaria.simulation import SimulationService, connect_service
from modelops_calabaria.simulation.task import SimContext
from modelops_calabaria.storage import StorageTarget, check_creatable, parse_storage_url
from modelops_calabaria.targets.evaluate import CompiledTarget, compile_targets
from modelops_calabaria.targets.scores import biased_aggregations

log = get_logger(__name__)
OVERSUBSCRIPTION_WARNING = 4
SAMPLER_PROCESS_MIN_LOOPS = 8  # below this, one core samples fast enough and a process costs its start-up


@dataclass(frozen=True)
class Prepared:
    """A job checked without any service: resolved model, loaded data, storage target."""

    job: CalibrationJob
    model_ref: str
    targets: tuple[CompiledTarget, ...]
    storage: StorageTarget
    output_dir: Path
    sampler: optuna.samplers.BaseSampler  # built once: the study's and the mirror's


@dataclass(frozen=True)
class RunOptions:
    """How this coordinator runs the job (``run_calibration``'s keyword arguments)."""

    max_trials: int | None = None
    extend: int | None = None
    concurrency: int | None = None
    handle_signals: bool = False
    shutdown_grace_s: float = 30.0
    show_progress: bool | None = None
    joining: bool = False


def prepare(job: CalibrationJob, settings: Settings, output_dir: Path | None = None) -> Prepared:
    """Check everything that needs no server. Raises JobSpecError / ConfigurationError."""
    model_ref = canonical_ref(job.model, job.base_dir)
    model = load_model(model_ref)
    targets = compile_targets(job, model.outputs)
    sampler = build_sampler(job)
    out = Path(output_dir) if output_dir else Path("runs") / job.study
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"run directory {out} is a file", hint="pass --output with a directory path")
    check_creatable(out.resolve(), "run directory")
    storage = parse_storage_url(settings.storage, out / "study.db")
    return Prepared(job, model_ref, targets, storage, out, sampler)


def check_existing_study(p: Prepared) -> None:
    """If the study already exists, check that this job has its search space (creates no study).

    Raises:
        StudyMismatchError: another parameter space or direction.
    """
    if p.storage.kind == "memory":
        return
    try:
        backend = open_store(p.storage, 1, read_only=True)  # creates nothing
    except StudyNotFoundError:
        return
    try:
        stored = stored_job_of(p.job.study, backend)
    finally:
        backend.close()
    if stored:
        check_same_space(p.job, stored, storable_job(p))


def storable_job(p: Prepared) -> dict[str, Any]:
    """The job as stored with the study: model path absolute, observed data inline."""
    data = p.job.to_storable()
    data["model"] = p.model_ref
    data["execution"] = {}  # settings belong to each coordinator, and a storage URL may hold a password
    for spec, compiled in zip(data["targets"], p.targets):
        obs = compiled.observed
        index_col = "index"
        table: dict[str, list] = {index_col: obs.index.tolist()}
        for j, col in enumerate(obs.columns):
            table[col] = obs.values[:, j].tolist()
        if obs.trials is not None:
            table[spec["score"]["trials_column"]] = obs.trials[:, 0].tolist()
        spec.update(data=table, index_column=index_col, value_columns=list(obs.columns))
    return data


def default_concurrency(slots: int, n_replicates: int, parallel: bool) -> int:
    """Trials at once: enough to fill every slot (parallel: 2x, to hide ask/tell latency)."""
    per_round = max(1, math.ceil(slots / n_replicates))
    return max(2, 2 * per_round) if parallel else per_round


@contextmanager
def signals_stop(wire: Wire, grace_s: float, enabled: bool) -> Iterator[None]:
    """On SIGINT/SIGTERM: stop asking, let in-flight trials finish for ``grace_s``, then cancel them."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        log.warning("signal received: finishing in-flight trials", signal=name, grace_s=grace_s)
        wire.shutdown(name, grace_s)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_calibration(
    job: CalibrationJob,
    settings: Settings | None = None,
    *,
    output_dir: str | Path | None = None,
    max_trials: int | None = None,
    extend: int | None = None,
    concurrency: int | None = None,
    handle_signals: bool = False,
    shutdown_grace_s: float = 30.0,
    show_progress: bool | None = None,
    joining: bool = False,
) -> RunResult:
    """Run (or resume, or join) a calibration and write its results.

    Args:
        job: The calibration job.
        settings: Resolved settings (default: environment > job file > defaults).
        output_dir: Run directory (default ``runs/<study>``).
        max_trials: Override the budget (a resumed study takes this as its new maximum).
        extend: Add this many trials to the study's stored budget.
        concurrency: Loops (parallel) or batch size (batched).
        handle_signals: Install SIGINT/SIGTERM handlers (CLI).
        shutdown_grace_s: After a signal, how long in-flight trials may finish.
        joining: Join an existing study (``worker``): never change its budget.

    Raises:
        JobSpecError, ConfigurationError: bad input (exit 2), nothing created.
        ServiceUnavailableError: the database or scheduler is unreachable.
        RunFailedError: no trial completed, or a failure storm stopped the run.
    """
    settings = settings or resolve_settings(job.execution.model_dump())
    prepared = prepare(job, settings, Path(output_dir) if output_dir else None)
    if max_trials is not None and max_trials < 1:
        raise ConfigurationError(f"--max-trials must be >= 1, got {max_trials}")
    if extend is not None and extend < 1:
        raise ConfigurationError(f"--extend must be >= 1, got {extend}")
    options = RunOptions(max_trials, extend, concurrency, handle_signals, shutdown_grace_s, show_progress, joining)
    check_existing_study(prepared)  # before any cluster starts
    context = SimContext(prepared.model_ref, dict(job.fixed), prepared.targets, job.timeout_s, job.replicate_retries)
    service = connect_service(settings.scheduler, context, local_workers=settings.local_workers,
                              replicates_per_task=settings.replicates_per_task)
    try:
        return _run_with_service(prepared, settings, service, options)
    finally:
        service.close()


def _run_with_service(p: Prepared, settings: Settings, service: SimulationService, options: RunOptions) -> RunResult:
    job = p.job
    parallel = settings.parallel_trials
    slots = service.slots
    loops = options.concurrency or job.concurrency or default_concurrency(slots, job.n_replicates, parallel)
    if loops != (job.concurrency or 1):  # the sampler's start-up depends on the trials at once (study.py)
        p = replace(p, sampler=build_sampler(job, loops))
    if loops * job.n_replicates > OVERSUBSCRIPTION_WARNING * slots:
        log.warning("concurrency over-subscribes the cluster", trials_at_once=loops, replicates=job.n_replicates,
                    slots=slots, ratio=round(loops * job.n_replicates / slots, 1),
                    hint="lower 'concurrency' or add Dask workers")
    created_dir = not p.output_dir.exists()
    backend: StudyBackend | None = None
    try:
        backend = register(open_store(p.storage, loops))  # one engine for trials and ledger
        with schema_lock(p.storage):  # one creator at a time: the job attr is written once
            study = open_study(job, backend, storable_job(p), p.sampler)
    except BaseException:
        if backend is not None:
            backend.close()
        if created_dir and p.output_dir.exists():
            shutil.rmtree(p.output_dir, ignore_errors=True)
        raise
    try:
        return _drive(p, settings, service, study, backend, parallel, loops, options)
    finally:
        backend.close()


def use_sampler_process(settings: Settings, parallel: bool, loops: int) -> bool:
    """Whether the sampler gets a process of its own: as set, else (auto) when
    parallel loops are many enough to keep it busy and there is a core to spare."""
    if settings.sampler_process is not None:
        return settings.sampler_process
    return parallel and loops >= SAMPLER_PROCESS_MIN_LOOPS and (os.cpu_count() or 1) >= 2


def _set_budget(study: optuna.Study, ledger: Ledger, job: CalibrationJob, settings: Settings,
                max_trials: int | None, extend: int | None, joining: bool) -> int:
    """The study's budget: a joining worker keeps it; ``calibrate`` sets it to
    ``max_trials`` (flag, else job) or, with ``extend``, adds to the stored one."""
    name = study.study_name
    wanted = max_trials or job.max_trials
    stored_max = ledger.ensure_budget(name, wanted)
    if joining:
        return stored_max
    # Read in this order: claims, trials, coordinators. A coordinator beats before it
    # claims, so one that claimed before the first read shows up in the last; one that
    # claims later changes `claimed`, and the compare-and-set below then does nothing.
    claimed, _ = ledger.budget(name)
    n_trials = len(study.get_trials(deepcopy=False))
    new_max = max(stored_max, n_trials) + extend if extend else wanted
    if new_max != stored_max:
        ledger.set_max_trials(name, new_max)
    # Claims that never became trials (a coordinator killed between claim and ask) are
    # given back when nobody else is working on the study.
    live = [c for c in ledger.coordinators(name) if time.time() - c.last_seen <= settings.grace_period_s]
    if not live and claimed != n_trials:
        ledger.reconcile(name, n_trials, expected_claimed=claimed)
    return new_max


def _choose_asker(p: Prepared, settings: Settings, study: optuna.Study, backend: StudyBackend, parallel: bool,
                  loops: int, coordinator_id: str) -> Asker:
    """The fast path (a mirror of the study, in a sampler process when loops are many) or plain asks."""
    retries = (lambda: backend.ledger.pop_retry(study.study_name)) if p.job.retry_lost_trials else None
    space = distributions(p.job)
    if not settings.fast_path:
        return DirectAsker(study, space, coordinator_id, retries, backend=backend)
    prefetch = max(1, loops // 4) if parallel and loops > 1 else 0  # sequential runs stay reproducible
    in_process = use_sampler_process(settings, parallel, loops)
    if in_process:
        prefetch = loops  # steps in flight: enough to cover the round trip to the sampler process
    return MirroredAsker(study, space, coordinator_id, p.sampler, writers=max(1, min(4, loops // 4)),
                         prefetch=prefetch, retries=retries, sampler_process=in_process, backend=backend)


def _drive(p: Prepared, settings: Settings, service: SimulationService, study: optuna.Study, backend: StudyBackend,
           parallel: bool, loops: int, options: RunOptions) -> RunResult:
    job, ledger = p.job, backend.ledger
    coordinator_id = new_coordinator_id()
    retry = job.retry_lost_trials
    recover_stale_trials(study, ledger, settings.grace_period_s, retry=retry, backend=backend)
    budget = _set_budget(study, ledger, job, settings, options.max_trials, options.extend, options.joining)
    already = len(study.get_trials(deepcopy=False))
    log.info("calibration starting", study=study.study_name, storage=p.storage.display, mode="parallel" if parallel else "batched",
             trials_at_once=loops, slots=service.slots, replicates=job.n_replicates, budget=budget, existing_trials=already,
             scheduler=service.address, coordinator=coordinator_id)
    for problem, fix in biased_aggregations(job.targets, job.n_replicates):  # docs/quality.md
        log.warning(problem, hint=fix)
    heartbeat = Heartbeat(study, ledger, coordinator_id, settings.heartbeat_interval_s, settings.grace_period_s, retry,
                          backend=backend)
    state = RunState(job.direction, job.stop, time.monotonic())
    asker = _choose_asker(p, settings, study, backend, parallel, loops, coordinator_id)
    progress = Progress(budget, already=already, bar=options.show_progress)
    wire = Wire(job, asker, service, ledger, state, parallel, loops, on_trial=progress)
    started = time.monotonic()
    with ExitStack() as stack:
        heartbeat.start()
        stack.callback(progress.close)
        stack.callback(heartbeat.stop)
        with ExitStack() as writing:
            writing.callback(asker.close)  # every tell written before anything reads the study
            with signals_stop(wire, options.shutdown_grace_s, options.handle_signals):
                wire.run()
        if wire.shutdown_reason is None:
            settle_orphans(study, ledger, settings.grace_period_s, settings.heartbeat_interval_s, retry=retry,
                           backend=backend)
    progress.line()
    return _collect(p, study, asker, wire, state, parallel, loops, service.slots, time.monotonic() - started,
                    service=None if options.joining else service)


def _collect(p: Prepared, study: optuna.Study, asker: Asker, wire: Wire, state: RunState, parallel: bool, loops: int,
             slots: int, wall: float, service: SimulationService | None = None) -> RunResult:
    """The run's result from the study as it now stands; results files written.
    With ``service``, the best trials are re-evaluated on fresh seeds first (reevaluate.py)."""
    trials = study.get_trials(deepcopy=False)
    best = best_trial(study)
    asks, tells = asker.latencies()
    result = RunResult(
        study=study.study_name,
        storage=p.storage.display,
        mode="parallel" if parallel else "batched",
        concurrency=loops,
        slots=slots,
        best_params=dict(best.params) if best else None,
        best_loss=float(best.value) if best and best.value is not None else None,
        best_trial=best.number if best else None,
        best_targets=dict(best.user_attrs.get(TARGETS_ATTR, {})) if best else {},
        trials=state_counts(trials),
        this_run={"told": state.completed + state.failed, "completed": state.completed, "failed": state.failed},
        wall_time_s=round(wall, 3),
        trials_per_minute=round(60 * (state.completed + state.failed) / max(wall, 1e-9), 2),
        utilization=round(state.utilization(time.monotonic(), slots), 4),
        stop_reason=wire.stop_reason,
        first_failure=state.first_failure,
        output_dir=str(p.output_dir),
        latency_ms={
            "ask_p50": _pct(asks, 50), "ask_p95": _pct(asks, 95), "tell_p50": _pct(tells, 50), "tell_p95": _pct(tells, 95)
        },
    )
    if service is not None and wire.shutdown_reason is None and not state.failure_storm:
        apply_selection(result, reevaluate_at_end(p.job, trials, service), trials)
    write_results(p.output_dir, result, trials)
    log.info("calibration finished", study=result.study, best_loss=result.best_loss, best_params=result.best_params,
             trials=result.trials, wall_time_s=result.wall_time_s, utilization=result.utilization,
             stop_reason=result.stop_reason, output=str(p.output_dir))
    if state.failure_storm:
        raise RunFailedError(
            f"stopped after {state.consecutive_failures} consecutive failed trials; the first failure was:\n{state.first_failure}",
            hint="run `calabaria simulate` with one parameter set to debug the model",
        )
    if result.trials.get("COMPLETE", 0) == 0 and state.completed + state.failed > 0 and wire.shutdown_reason is None:
        raise RunFailedError(f"no trial completed; the first failure was:\n{state.first_failure}",
                             hint="run `calabaria simulate` with one parameter set to debug the model")
    return result


def _pct(values: list[float], q: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 3)


def load_joined_job(study_name: str, target: StorageTarget, wait_s: float, poll_s: float = 1.0) -> CalibrationJob:
    """The job stored with ``study_name``, waiting up to ``wait_s`` for the study to appear.

    Raises:
        StudyNotFoundError: the study still does not exist after ``wait_s``.
    """
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        stored = None
        try:
            backend = open_store(target, 1, read_only=True)  # never create a study file by waiting for one
        except StudyNotFoundError:
            pass
        else:
            try:
                stored = stored_job_of(study_name, backend)
            finally:
                backend.close()
        if stored:
            return job_from_dict(stored, source=f"job stored with study '{study_name}'")
        if time.monotonic() >= deadline:
            raise StudyNotFoundError(
                f"study '{study_name}' does not exist in {target.display} (waited {wait_s:g} s)",
                hint="start it with `calabaria calibrate JOB --storage URL`, or raise --wait",
            )
        if not announced:
            log.info("waiting for the study to be created", study=study_name, storage=target.display, wait_s=wait_s)
            announced = True
        time.sleep(poll_s)  # the study lives in another process's database: nothing to subscribe to


__all__ = ["Prepared", "RunResult", "TrialState", "default_concurrency", "load_joined_job", "prepare", "run_calibration"]
