"""Run a calibration: validate everything, then connect, open the study and drive the wire.

Order matters for "nothing half-written": every check that needs no service
(job, model, data, sampler, storage URL) runs first, and so does the read-only
look at an existing study, which also tells whether anything is left to run
(:mod:`.startup`). With work to do, a remote scheduler must answer before the
study (and the run directory) is created; a local cluster is started in the
background and comes up while the study is opened and the sampler prepared
(the first trial is asked once it is up). With nothing to run, no cluster starts: the
results (and the end-of-run re-evaluation, in this process when it is cheap)
are made as a finished run makes them. A run directory this call created is
removed again if opening the study fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from modelops_calabaria import __version__
from modelops_calabaria.backend.base import BUSY_ATTR, StudyBackend
from modelops_calabaria.backend.factory import open_store, register
from modelops_calabaria.backend.ledger import Ledger
from modelops_calabaria.backend.relational import schema_lock
from modelops_calabaria.calibration.asktell import Asker, DirectAsker, MirroredAsker
from modelops_calabaria.calibration.reevaluate import apply_selection, reevaluate_at_end
from modelops_calabaria.calibration.recovery import Heartbeat, new_coordinator_id, recover_stale_trials, settle_orphans
from modelops_calabaria.calibration.run_state import RunState
from modelops_calabaria.calibration import preflight, provenance
from modelops_calabaria.calibration.startup import nothing_to_run, study_state_key
from modelops_calabaria.calibration.study import (
    TARGETS_ATTR,
    build_sampler,
    check_same_space,
    distributions,
    open_study,
    stored_job_of,
)
from modelops_calabaria.calibration.elastic import loop_cap, target_loops
from modelops_calabaria.calibration.ramp import ramp_of
from modelops_calabaria.calibration.wire import Wire
from modelops_calabaria.errors import ConfigurationError, JobSpecError, RunFailedError, StudyNotFoundError
from modelops_calabaria.job import MAX_TRIALS, CalibrationJob, check_run_flags, check_same_model, job_from_dict
from modelops_calabaria.logging import get_logger
from modelops_calabaria.models import canonical_ref, load_model
from modelops_calabaria.posterior import ImisSampler, posterior_stop, write_posterior
from modelops_calabaria.reporting.progress import Progress
from modelops_calabaria.outcome import RunResult
from modelops_calabaria.reporting.results import best_trial, current_result, state_counts, write_results
from modelops_calabaria.settings import Settings, resolve_settings
from modelops_calabaria.simulation import (INLINE, DeferredService, InlineSimulationService, SimulationService, connect_service,
                                           few_runs_inline, local_cluster_shape, local_processes, per_run_seconds)
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
    accept_changes: bool = False  # resume a study whose observed data or model changed


def prepare(job: CalibrationJob, settings: Settings, output_dir: Path | None = None) -> Prepared:
    """Check everything that needs no server. Raises JobSpecError / ConfigurationError."""
    model_ref = canonical_ref(job.model, job.base_dir)
    model = load_model(model_ref)
    targets = compile_targets(job, model.outputs)
    try:
        sampler = build_sampler(job)
    except (ValueError, TypeError) as e:  # an option value Optuna refuses (e.g. qmc_type: nope)
        raise JobSpecError(f"sampler {job.sampler.name!r} rejected its options: {e}",
                           problems=[("sampler.options", f"see Optuna's {job.sampler.name} sampler for valid options")]) from None
    out = Path(output_dir) if output_dir else Path("runs") / job.study
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"run directory {out} is a file", hint="pass --output with a directory path")
    check_creatable(out.resolve(), "run directory")
    storage = parse_storage_url(settings.storage, out / "study.db")
    return Prepared(job, model_ref, targets, storage, out, sampler)


@dataclass(frozen=True)
class ExistingStudy:
    """What the read-only look at the study found: whether it has nothing left to run for
    this run's options (:func:`.startup.nothing_to_run`), and then its state key
    (:func:`.startup.study_state_key`)."""

    idle: bool = False
    state_key: str | None = None


def check_existing_study(p: Prepared, accept_changes: bool = False, options: RunOptions | None = None) -> ExistingStudy:
    """If the study already exists, check that this job has its search space and that
    its observed data and model did not change (creates no study); if it does not, that
    ``--extend`` keeps its first budget within the limit. Say whether the study has
    nothing left to run for ``options`` (never without ``options`` or without a study).

    Raises:
        StudyMismatchError: another parameter space or direction, or changed inputs
            (unless ``accept_changes``).
        ConfigurationError: a fresh study's budget plus ``extend`` over MAX_TRIALS.
    """
    extend = options.extend if options else None
    fresh_budget = ((options.max_trials if options else None) or p.job.max_trials) + (extend or 0)  # _set_budget's
    if p.storage.kind == "memory":
        _check_extended(fresh_budget, extend)
        return ExistingStudy()
    try:
        backend = open_store(p.storage, 1, read_only=True)  # creates nothing
    except StudyNotFoundError:
        _check_extended(fresh_budget, extend)
        return ExistingStudy()
    try:
        stored = stored_job_of(p.job.study, backend)
        if not stored:
            _check_extended(fresh_budget, extend)
            return ExistingStudy()
        storable = storable_job(p)
        check_same_space(p.job, stored, storable)
        check_same_model(p.job.study, stored.get("model"), p.model_ref)
        provenance.check_unchanged(p.job.study, backend, storable, accept_changes)
        if options is None:
            return ExistingStudy()
        claimed, stored_max = backend.ledger.budget(p.job.study)
        cols = backend.trial_columns(backend.study_id(p.job.study))
        if not nothing_to_run(cols.state, claimed=claimed, stored_max=stored_max,
                              wanted=options.max_trials or p.job.max_trials, extend=options.extend,
                              joining=options.joining):
            return ExistingStudy()
        return ExistingStudy(True, study_state_key(storable, p.storage.display, __version__, cols.number,
                                                   cols.state, cols.value))
    finally:
        backend.close()


def storable_job(p: Prepared) -> dict[str, Any]:
    """The job as stored with the study: model path absolute, observed data inline."""
    data = p.job.to_storable()
    data["model"] = p.model_ref
    data["execution"] = {}  # settings belong to each coordinator, and a storage URL may hold a password
    for spec, compiled in zip(data["targets"], p.targets):
        spec.update(compiled.observed.inline(spec["score"]["trials_column"]))
    return data


def default_concurrency(slots: int, n_replicates: int, parallel: bool) -> int:
    """Trials at once at the start: enough to fill every slot (parallel: 2x, to hide ask/tell latency).
    With ``concurrency: auto`` the wire then follows the cluster's live size (elastic.py)."""
    return target_loops(slots, n_replicates, loop_cap(n_replicates), parallel)


EXIT_MARGIN_S = 10.0  # after a signal the process ends within grace + this (docs/reliability.md)
SIGNALLED = threading.Event()  # a signal stopped a run of this process: the CLI ends it without waiting for model threads


def _exit_watchdog(deadline_s: float, signal_name: str) -> None:
    """The last resort of a signal: if this process still runs ``deadline_s`` from now (a
    model thread or a service call that cannot be stopped holds it), end it there."""

    def watch() -> None:
        time.sleep(deadline_s)
        log.error("the run did not end within the grace period after the signal: ending the process now",
                  signal=signal_name, waited_s=round(deadline_s, 1),
                  hint="trials still RUNNING become FAIL 'coordinator lost' when a coordinator next opens the study")
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        os._exit(1)

    threading.Thread(target=watch, name="calabaria-exit-watchdog", daemon=True).start()


@contextmanager
def signals_stop(wire: Wire, grace_s: float, enabled: bool) -> Iterator[None]:
    """On SIGINT/SIGTERM: stop asking, let in-flight trials finish for ``grace_s``, then cancel them.
    A second signal cancels them at once. The process ends at most ``grace_s`` +
    :data:`EXIT_MARGIN_S` after the first signal, whatever still runs (:func:`_exit_watchdog`)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[str] = []

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        received.append(name)
        SIGNALLED.set()
        if len(received) > 1:
            log.warning("second signal received: cancelling in-flight trials now", signal=name)
            wire.shutdown(received[0], 0.0)
            return
        log.warning("signal received: finishing in-flight trials", signal=name, grace_s=grace_s)
        _exit_watchdog(grace_s + EXIT_MARGIN_S - 1.0, name)  # a second for the interpreter to exit
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
    accept_changes: bool = False,
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
        accept_changes: Resume a study whose observed data or model changed (else refused).

    Raises:
        JobSpecError, ConfigurationError: bad input (exit 2), nothing created.
        ServiceUnavailableError: the database or scheduler is unreachable.
        RunFailedError: no trial completed, or a failure storm stopped the run.
    """
    check_run_flags(max_trials=max_trials, extend=extend, workers=concurrency, n_replicates=job.n_replicates)
    settings = settings or resolve_settings(job.execution.model_dump())
    prepared = prepare(job, settings, Path(output_dir) if output_dir else None)
    options = RunOptions(max_trials, extend, concurrency, handle_signals, shutdown_grace_s, show_progress, joining,
                         accept_changes)
    existing = check_existing_study(prepared, accept_changes, options)  # before any cluster starts
    idle = existing.idle
    if idle and existing.state_key and (current := current_result(prepared.output_dir, existing.state_key)):
        # The outputs were written for the study as it stands: redoing them (re-evaluation
        # included) would give the same files.
        log.info("nothing left to run and the results are current", study=job.study, output=str(prepared.output_dir))
        # The files keep the run that made them; the returned result is this run's: it told nothing.
        return replace(current, this_run={"told": 0, "completed": 0, "failed": 0, "pruned": 0}, wall_time_s=0.0,
                       trials_per_minute=0.0, utilization=0.0,
                       latency_ms={"ask_p50": 0.0, "ask_p95": 0.0, "tell_p50": 0.0, "tell_p95": 0.0})
    if idle:
        log.info("nothing left to run: no simulation cluster is started", study=job.study)
    elif not joining and any(t.aligner is not None for t in prepared.targets):
        # Keyed targets: a missing key column or an unmatched key would fail every trial.
        preflight.dry_run(job, prepared.model_ref, prepared.targets, job.timeout_s or 300.0, strict=False)
    service = simulation_service(prepared, settings)
    try:
        if not idle:
            if settings.scheduler:
                service.get()  # a remote scheduler answers (or the run stops) before anything is created
            else:
                service.start()  # the local cluster comes up while the study is opened
        return _run_with_service(prepared, settings, service, options)
    finally:
        service.close()


def simulation_service(p: Prepared, settings: Settings) -> DeferredService:
    """The run's simulation service, not yet started: a local cluster (threads or worker
    processes: ``simulation/local.py``) knows its slots before it exists."""
    job = p.job
    context = SimContext(p.model_ref, dict(job.fixed), p.targets, job.timeout_s, job.replicate_retries)
    processes = local_processes(p.model_ref, settings.local_processes)
    slots = None  # a remote cluster's size is asked of it once connected
    if not settings.scheduler:
        workers, threads = local_cluster_shape(settings.local_workers, processes)
        slots = workers * threads
    elif settings.scheduler.strip().lower() == INLINE:
        slots = settings.local_workers or max(1, os.cpu_count() or 1)

    def connect() -> SimulationService:
        return connect_service(settings.scheduler, context, local_workers=settings.local_workers,
                               replicates_per_task=settings.replicates_per_task, listen_host=settings.listen_host,
                               processes=processes)

    return DeferredService(connect, slots=slots, description="local cluster" if not settings.scheduler else settings.scheduler)


def _run_with_service(p: Prepared, settings: Settings, service: SimulationService, options: RunOptions) -> RunResult:
    job = p.job
    parallel = settings.parallel_trials
    slots = service.slots
    # A number (--workers, job) is fixed; auto starts here and follows the cluster (Wire.live_slots).
    loops = options.concurrency or job.concurrency or default_concurrency(slots, job.n_replicates, parallel)
    if loops != (job.concurrency or 1):  # the sampler's start-up depends on the trials at once (study.py): auto uses the initial count
        p = replace(p, sampler=build_sampler(job, loops))
    if slots and loops * job.n_replicates > OVERSUBSCRIPTION_WARNING * slots:  # 0: a cluster not connected (nothing to run)
        log.warning("concurrency over-subscribes the cluster", trials_at_once=loops, replicates=job.n_replicates,
                    slots=slots, ratio=round(loops * job.n_replicates / slots, 1),
                    hint="lower 'concurrency' or add Dask workers")
    created_dir = not p.output_dir.exists()
    backend: StudyBackend | None = None
    try:
        backend = register(open_store(p.storage, loops))  # one engine for trials and ledger
        with schema_lock(p.storage):  # one creator at a time: the job attr is written once
            study = open_study(job, backend, storable_job(p), p.sampler)
            if options.accept_changes:
                provenance.accept_changes(backend, job.study, storable_job(p))
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
    n_trials = len([t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING])  # enqueued starts are not asked yet
    new_max = max(stored_max, n_trials) + extend if extend else wanted
    _check_extended(new_max, extend)
    if new_max != stored_max:
        ledger.set_max_trials(name, new_max)
    # Claims that never became trials (a coordinator killed between claim and ask) are
    # given back when nobody else is working on the study.
    live = [c for c in ledger.coordinators(name) if time.time() - c.last_seen <= settings.grace_period_s]
    if not live and claimed != n_trials:
        ledger.reconcile(name, n_trials, expected_claimed=claimed)
    return new_max


def _check_extended(new_max: int, extend: int | None) -> None:
    if extend and new_max > MAX_TRIALS:
        raise ConfigurationError(f"--extend {extend} would raise the study's budget to {new_max:,}, more than {MAX_TRIALS:,}",
                                 hint="start a new study, or extend by less")


def _choose_asker(p: Prepared, settings: Settings, study: optuna.Study, backend: StudyBackend, parallel: bool,
                  loops: int, coordinator_id: str) -> Asker:
    """The fast path (a mirror of the study, in a sampler process when loops are many) or plain asks."""
    retries = (lambda: backend.ledger.pop_retry(study.study_name)) if p.job.retry_lost_trials else None
    space = distributions(p.job)
    if not settings.fast_path:
        return DirectAsker(study, space, coordinator_id, retries, backend=backend)
    prefetch = max(1, loops // 4) if parallel and loops > 1 else 0  # sequential runs stay reproducible
    # A posterior sampler writes its draws' sources to the shared study: it samples here.
    in_process = use_sampler_process(settings, parallel, loops) and p.job.posterior is None
    if in_process:
        prefetch = loops  # steps in flight: enough to cover the round trip to the sampler process
    writers = max(1, min(4, loops // 4))
    if p.job.posterior is not None and loops == 1:
        # A posterior stage reads the COMPLETE trials from the shared study: a lone loop's
        # tell must be written before its next ask, or the stage depends on thread timing.
        writers = 0
    return MirroredAsker(study, space, coordinator_id, p.sampler, writers=writers,
                         prefetch=prefetch, retries=retries, sampler_process=in_process, backend=backend)


def _drive(p: Prepared, settings: Settings, service: DeferredService, study: optuna.Study, backend: StudyBackend,
           parallel: bool, loops: int, options: RunOptions) -> RunResult:
    job, ledger = p.job, backend.ledger
    coordinator_id = new_coordinator_id()
    retry = job.retry_lost_trials
    recover_stale_trials(study, ledger, settings.grace_period_s, retry=retry, backend=backend)
    budget = _set_budget(study, ledger, job, settings, options.max_trials, options.extend, options.joining)
    existing = study.get_trials(deepcopy=False)
    already = len([t for t in existing if t.state != TrialState.WAITING])  # enqueued starts are not asked yet
    note = None if options.joining else provenance.budget_note(already, budget, sum(t.state == TrialState.FAIL for t in existing))
    if note:
        log.warning(note, study=study.study_name)
    log.info("calibration starting", study=study.study_name, storage=p.storage.display, mode="parallel" if parallel else "batched",
             trials_at_once=loops, slots=service.slots, replicates=job.n_replicates, budget=budget, existing_trials=already,
             scheduler=service.address, coordinator=coordinator_id)
    for problem, fix in biased_aggregations(job.targets, job.n_replicates):  # docs/quality.md
        log.warning(problem, hint=fix)
    claimed, _ = ledger.budget(study.study_name)
    if not service.started and nothing_to_run([t.state for t in existing], claimed=claimed, stored_max=budget,
                                              wanted=budget, extend=None, joining=True):
        # Nothing to ask: no heartbeat, sampler or wire; the results as a finished run writes them.
        state = RunState(job.direction, job.stop, time.monotonic(), **posterior_stop(job, p.sampler))
        progress = Progress(budget, already=already, bar=options.show_progress, direction=job.direction,
                            best=_best_value(study))
        progress.close()
        progress.line()
        return _collect(p, study, backend, ([], []), "budget spent", None, state, parallel, loops, service.slots, 0.0,
                        service=None if options.joining else service, settings=settings)
    if service.started:
        # The study, budget and sampler were prepared while the cluster started; no trial is
        # asked before it is up: an asked trial would wait on it, and a Ctrl-C meanwhile would
        # reach worker processes that have not yet left the terminal's process group.
        service.get()
    heartbeat = Heartbeat(study, ledger, coordinator_id, settings.heartbeat_interval_s, settings.grace_period_s, retry,
                          backend=backend)
    if isinstance(p.sampler, ImisSampler):  # records into the shared study; draws apart from other coordinators'
        p.sampler.attach(backend.optuna_storage, backend.study_id(study.study_name),
                         coordinator_id if options.joining or already else None)
    state = RunState(job.direction, job.stop, time.monotonic(), **posterior_stop(job, p.sampler))
    asker = _choose_asker(p, settings, study, backend, parallel, loops, coordinator_id)
    # "best" on the progress line is the study's, not this process's
    progress = Progress(budget, already=already, bar=options.show_progress, direction=job.direction,
                        best=_best_value(study))
    started = time.monotonic()
    with ExitStack() as stack:
        heartbeat.start()
        stack.callback(progress.close)
        stack.callback(heartbeat.stop)
        with ExitStack() as writing:
            writing.callback(asker.close)  # every tell written before anything reads the study
            wire = _run_rounds(p, settings, service, study, backend, asker, state, progress, parallel, loops, options)
    progress.line()
    return _collect(p, study, backend, asker.latencies(), wire.stop_reason, wire.shutdown_reason, state, parallel, loops,
                    service.slots, time.monotonic() - started, service=None if options.joining else service,
                    settings=settings)


def _best_value(study: optuna.Study) -> float | None:
    best = best_trial(study)
    return float(best.value) if best is not None and best.value is not None else None


MAX_ROUNDS = 10  # bounds the rounds for slots given back late (each needs a coordinator to die meanwhile)


def _run_rounds(p: Prepared, settings: Settings, service: SimulationService, study: optuna.Study, backend: StudyBackend,
                asker: Asker, state: RunState, progress: Progress, parallel: bool, loops: int, options: RunOptions) -> Wire:
    """Run the wire until the budget is spent for good; return the last wire.

    When this coordinator has spent the budget, trials of a dead coordinator may still
    be RUNNING: ``settle_orphans`` waits for their recovery, which also gives back the
    slots that coordinator claimed and never asked. If any came back, another round
    asks them, so the study ends with exactly ``max_trials`` trials.
    """
    ledger, retry = backend.ledger, p.job.retry_lost_trials
    for _ in range(MAX_ROUNDS):
        elastic = not (options.concurrency or p.job.concurrency)
        # What the sampler already knows (a resumed study, an earlier round): the ramp starts from it.
        known = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))) if ramp_of(p.job) else 0
        wire = Wire(p.job, asker, service, ledger, state, parallel, loops, on_trial=progress,
                    live_slots=service.live_slots if elastic else None, known=known)
        with signals_stop(wire, options.shutdown_grace_s, options.handle_signals):
            wire.run()
        if wire.shutdown_reason is not None:
            return wire
        settle_orphans(study, ledger, settings.grace_period_s, settings.heartbeat_interval_s, retry=retry,
                       backend=backend)
        claimed, max_trials = ledger.budget(study.study_name)
        if wire.stop_reason != "budget spent" or claimed >= max_trials:
            return wire
        log.info("budget slots came back from a lost coordinator: asking them", free=max_trials - claimed)
    return wire


def _collect(p: Prepared, study: optuna.Study, backend: StudyBackend, latencies: tuple[list[float], list[float]],
             stop_reason: str | None, shutdown_reason: str | None, state: RunState, parallel: bool, loops: int,
             slots: int, wall: float, service: DeferredService | None = None,
             settings: Settings | None = None) -> RunResult:
    """The run's result from the study as it now stands; results files written.
    With ``service``, the best trials are re-evaluated on fresh seeds first (reevaluate.py):
    on its cluster if it was started, else in this process when that is cheap
    (:func:`_reevaluation_service`)."""
    trials = study.get_trials(deepcopy=False)
    best = best_trial(study)
    asks, tells = latencies
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
        this_run={"told": state.completed + state.failed + state.pruned, "completed": state.completed, "failed": state.failed,
                  "pruned": state.pruned},
        wall_time_s=round(wall, 3),
        trials_per_minute=round(60 * (state.completed + state.failed + state.pruned) / max(wall, 1e-9), 2),
        utilization=round(state.utilization(time.monotonic(), slots), 4),
        stop_reason=stop_reason,
        first_failure=state.first_failure,
        output_dir=str(p.output_dir),
        latency_ms={
            "ask_p50": _pct(asks, 50), "ask_p95": _pct(asks, 95), "tell_p50": _pct(tells, 50), "tell_p95": _pct(tells, 95)
        },
    )
    if p.job.posterior is not None:
        result.posterior = write_posterior(p.output_dir, p.job, backend.optuna_storage, backend.study_id(study.study_name))
    if service is not None and shutdown_reason is None and not state.failure_storm:
        reevaluation = _reevaluation_service(p, trials, service, settings)
        try:
            apply_selection(result, reevaluate_at_end(p.job, trials, reevaluation), trials)
        finally:
            if reevaluation is not service:
                reevaluation.close()
    result.study_state = study_state_key(storable_job(p), p.storage.display, __version__, [t.number for t in trials],
                                         [t.state for t in trials], [t.value for t in trials])
    write_results(p.output_dir, result, trials)
    log.info("calibration finished", study=result.study, best_loss=result.best_loss, best_params=result.best_params,
             trials=result.trials, wall_time_s=result.wall_time_s, utilization=result.utilization,
             stop_reason=result.stop_reason, output=str(p.output_dir))
    if state.failure_storm:
        raise RunFailedError(
            f"stopped after {state.storm_count or state.consecutive_failures} consecutive failed trials; the first failure was:\n{state.first_failure}",
            hint="run `calabaria simulate` with one parameter set to debug the model",
        )
    if result.trials.get("COMPLETE", 0) == 0 and state.completed + state.failed > 0 and shutdown_reason is None:
        raise RunFailedError(f"no trial completed; the first failure was:\n{state.first_failure}",
                             hint="run `calabaria simulate` with one parameter set to debug the model")
    return result


def _reevaluation_service(p: Prepared, trials: list[FrozenTrial], service: DeferredService,
                          settings: Settings | None) -> SimulationService:
    """Where the end-of-run re-evaluation runs: the run's cluster when it was started; else
    (nothing was simulated) threads of this process when its few simulations are cheap
    (:func:`few_runs_inline`, from the trials' measured durations), else the cluster."""
    if service.started or settings is None:
        return service
    job = p.job
    k = job.reevaluate.top_k
    n = k * (job.reevaluate.replicates or 2 * job.n_replicates)
    per_run = per_run_seconds((t.user_attrs.get(BUSY_ATTR) for t in trials if t.state == TrialState.COMPLETE),
                              job.n_replicates)
    if k <= 0 or not few_runs_inline(settings.scheduler, n, per_run):
        return service
    log.info("re-evaluating in this process: no cluster for a few short simulations", simulations=n,
             seconds_each=round(per_run or 0.0, 4))
    context = SimContext(p.model_ref, dict(job.fixed), p.targets, job.timeout_s, job.replicate_retries)
    return InlineSimulationService(context, settings.local_workers)


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
    backend: StudyBackend | None = None
    try:
        while True:
            stored = None
            if backend is None:
                try:
                    backend = open_store(target, 1, read_only=True)  # never create a study file by waiting for one
                except StudyNotFoundError:
                    backend = None
            if backend is not None:
                stored = stored_job_of(study_name, backend)
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
    finally:
        if backend is not None:
            backend.close()


__all__ = ["Prepared", "RunResult", "TrialState", "default_concurrency", "load_joined_job", "prepare", "run_calibration"]
