"""Run a calibration: validate everything, then connect, open the study and drive the wire.

The session of one coordinator: :func:`run_calibration` prepares (``prepare.py``), looks at
an existing study (``resume.py``), starts the simulation service, opens the study once,
drives the wire in rounds and collects the result (``collect.py``).

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
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from modelops_calabaria.backend.base import StudyBackend
from modelops_calabaria.backend.factory import open_store, register
from modelops_calabaria.backend.relational import schema_lock
from modelops_calabaria.calibration import preflight, provenance
from modelops_calabaria.calibration.asktell import Asker, DirectAsker, MirroredAsker
from modelops_calabaria.calibration.collect import collect
from modelops_calabaria.calibration.prepare import (Prepared, RunOptions, default_concurrency, make_sampler, prepare,
                                                    simulation_service, storable_job)
from modelops_calabaria.calibration.ramp import ramp_of
from modelops_calabaria.calibration.recovery import Heartbeat, new_coordinator_id, recover_stale_trials, settle_orphans
from modelops_calabaria.calibration.resume import check_existing_study, load_joined_job, set_budget
from modelops_calabaria.calibration.run_state import RunState
from modelops_calabaria.calibration.startup import nothing_to_run
from modelops_calabaria.calibration.study import distributions, open_study
from modelops_calabaria.calibration.wire import Wire
from modelops_calabaria.callables import is_session
from modelops_calabaria.errors import ConfigurationError
from modelops_calabaria.job import CalibrationJob, check_run_flags
from modelops_calabaria.logging import get_logger
from modelops_calabaria.outcome import RunResult
from modelops_calabaria.posterior import ImisSampler, posterior_stop
from modelops_calabaria.reporting.best import in_sample_best
from modelops_calabaria.reporting.progress import Progress
from modelops_calabaria.reporting.results import current_result
from modelops_calabaria.settings import Settings, resolve_settings
from modelops_calabaria.simulation import SimulationService, DeferredService
from modelops_calabaria.targets.scores import biased_aggregations

log = get_logger(__name__)
OVERSUBSCRIPTION_WARNING = 4
SAMPLER_PROCESS_MIN_LOOPS = 8  # below this, one core samples fast enough and a process costs its start-up


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
    if is_session(prepared.model_ref) and (settings.scheduler not in (None, "", "inline") or settings.local_processes):
        raise ConfigurationError(
            "the model is a function defined in this session (a notebook cell or the prompt): other processes cannot run it",
            hint="use the local cluster of threads (the default; not CALABARIA_LOCAL_PROCESSES=true) or --scheduler inline, "
                 "or define the function at the top level of a .py file")
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


def _run_with_service(p: Prepared, settings: Settings, service: SimulationService, options: RunOptions) -> RunResult:
    job = p.job
    parallel = settings.parallel_trials
    slots = service.slots
    # A number (--workers, job) is fixed; auto starts here and follows the cluster (Wire.live_slots).
    loops = options.concurrency or job.concurrency or default_concurrency(slots, job.n_replicates, parallel)
    # Built once, now that the trials at once are known: its start-up depends on them (study.py); auto uses the initial count.
    p = replace(p, sampler=make_sampler(job, loops))
    if slots and loops * job.n_replicates > OVERSUBSCRIPTION_WARNING * slots:  # 0: a cluster not connected (nothing to run)
        log.warning("concurrency over-subscribes the cluster", trials_at_once=loops, replicates=job.n_replicates,
                    slots=slots, ratio=round(loops * job.n_replicates / slots, 1),
                    hint="lower 'concurrency' or add Dask workers")
    created_dir = not p.output_dir.exists()
    backend: StudyBackend | None = None
    try:
        backend = register(open_store(p.storage, loops))  # one engine for trials and ledger
        with schema_lock(p.storage):  # one creator at a time: the job attr is written once
            study = open_study(job, backend, p.stored, p.sampler)
            if options.accept_changes:
                provenance.accept_changes(backend, job.study, p.stored)
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
    # The one read of the whole study at the start (after the claims: resume.set_budget)
    budget, claimed, existing = set_budget(study, ledger, job, settings, options.max_trials, options.extend, options.joining)
    already = len([t for t in existing if t.state != TrialState.WAITING])  # enqueued starts are not asked yet
    note = None if options.joining else provenance.budget_note(already, budget, sum(t.state == TrialState.FAIL for t in existing))
    if note:
        log.warning(note, study=study.study_name)
    log.info("calibration starting", study=study.study_name, storage=p.storage.display, mode="parallel" if parallel else "batched",
             trials_at_once=loops, slots=service.slots, replicates=job.n_replicates, budget=budget, existing_trials=already,
             scheduler=service.address, coordinator=coordinator_id)
    for problem, fix in biased_aggregations(job.targets, job.n_replicates):  # docs/quality.md
        log.warning(problem, hint=fix)
    best_value = _best_value(existing, job.direction)
    if not service.started and nothing_to_run([t.state for t in existing], claimed=claimed, stored_max=budget,
                                              wanted=budget, extend=None, joining=True):
        # Nothing to ask: no heartbeat, sampler or wire; the results as a finished run writes them.
        state = RunState(job.direction, job.stop, time.monotonic(), **posterior_stop(job, p.sampler))
        progress = Progress(budget, already=already, bar=options.show_progress, direction=job.direction,
                            best=best_value)
        progress.close()
        progress.line()
        return collect(p, study, backend, ([], []), "budget spent", None, state, parallel, loops, service.slots, 0.0,
                        service=None if options.joining else service, settings=settings)
    if service.started:
        # The study, budget and sampler were prepared while the cluster started; no trial is
        # asked before it is up: an asked trial would wait on it, and a Ctrl-C meanwhile would
        # reach worker processes that have not yet left the terminal's process group.
        service.get()
    heartbeat = Heartbeat(study, ledger, coordinator_id, settings.heartbeat_interval_s, settings.grace_period_s, retry,
                          backend=backend)
    if isinstance(p.sampler, ImisSampler):  # records into the shared study; draws apart from other coordinators'
        p.sampler.attach(backend, backend.study_id(study.study_name), coordinator_id if options.joining or already else None)
    state = RunState(job.direction, job.stop, time.monotonic(), **posterior_stop(job, p.sampler))
    asker = _choose_asker(p, settings, study, backend, parallel, loops, coordinator_id)
    # "best" on the progress line is the study's, not this process's
    progress = Progress(budget, already=already, bar=options.show_progress, direction=job.direction,
                        best=best_value)
    started = time.monotonic()
    with ExitStack() as stack:
        heartbeat.start()
        stack.callback(progress.close)
        stack.callback(heartbeat.stop)
        with ExitStack() as writing:
            writing.callback(asker.close)  # every tell written before anything reads the study
            wire = _run_rounds(p, settings, service, study, backend, asker, state, progress, parallel, loops, options,
                               known=_known(p, existing))
    progress.line()
    return collect(p, study, backend, asker.latencies(), wire.stop_reason, wire.shutdown_reason, state, parallel, loops,
                    service.slots, time.monotonic() - started, service=service,
                    settings=settings)


def _best_value(trials: Sequence[FrozenTrial], direction: str) -> float | None:
    """The study's best in-sample value among ``trials`` (the progress line's "best")."""
    best = in_sample_best(trials, maximize=direction == "maximize")
    return float(best.value) if best is not None and best.value is not None else None


def _known(p: Prepared, trials: Sequence[FrozenTrial]) -> int:
    """What the sampler already knows of a resumed study: the ramp starts from it."""
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) if ramp_of(p.job) else 0


MAX_ROUNDS = 10  # bounds the rounds for slots given back late (each needs a coordinator to die meanwhile)


def _run_rounds(p: Prepared, settings: Settings, service: SimulationService, study: optuna.Study, backend: StudyBackend,
                asker: Asker, state: RunState, progress: Progress, parallel: bool, loops: int, options: RunOptions,
                known: int) -> Wire:
    """Run the wire until the budget is spent for good; return the last wire.

    When this coordinator has spent the budget, trials of a dead coordinator may still
    be RUNNING: ``settle_orphans`` waits for their recovery, which also gives back the
    slots that coordinator claimed and never asked. If any came back, another round
    asks them, so the study ends with exactly ``max_trials`` trials.
    """
    ledger, retry = backend.ledger, p.job.retry_lost_trials
    for _ in range(MAX_ROUNDS):
        elastic = not (options.concurrency or p.job.concurrency)
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
        known += state.completed + state.pruned if ramp_of(p.job) else 0
    return wire


__all__ = ["Prepared", "RunOptions", "RunResult", "TrialState", "default_concurrency", "load_joined_job", "prepare", "run_calibration",
           "simulation_service", "storable_job"]
