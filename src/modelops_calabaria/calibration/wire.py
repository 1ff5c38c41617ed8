"""The calibration wire: turn budget slots into told trials, in parallel or batched mode.

Two parts. The scheduler core (``scheduler/core.py``) decides everything:
which loop claims, asks, submits, waits, prunes or tells what, and when a loop
holds, looks ahead, retires or ends; it has no I/O, no threads and no clock,
and asserts its invariants after every event. This module is its executor,
the only code with threads, locks and I/O: each loop carries out the core's
instructions against the ``Ledger``, the ``Asker`` and the
``SimulationService``, and feeds what happened back to the core as events,
under one Lock.

Parallel (``PARALLEL_TRIALS=true``): N loops on a ThreadPoolExecutor; each
claims one budget slot, asks one trial, submits its replicates, waits for its
own result only, tells, and repeats. With ``concurrency: auto`` and no pruning,
a loop claims, asks and submits its next trial as soon as only the last of its
current trial's tasks is unfinished, then tells the current one: the slots the
trial's other tasks freed get work while the slowest one ends (a loop holds at
most two trials, and two only during that tail). Batched (``false``): rounds
of k claims → k asks → submit all → gather all → tell all.

Invariants, in both modes (the core's, ``scheduler/core.py``):

- a trial is asked only on a budget slot claimed, so a fresh study never
  holds more than ``max_trials`` trials; claimed slots never asked (a batched
  round cut short, the local reserve left at the end) are released; the slot of
  an ask that raised is kept, since that ask may have created the trial;
- every asked trial is told once, COMPLETE, PRUNED or FAIL with a reason,
  whatever happens in between (exceptions, NaN, timeouts, shutdown); only a
  trial whose tell itself raised is left RUNNING, for recovery;
- a shared Event stops every loop (budget spent, stop rule, signal, fatal error);
  the in-process Lock guards the core and the run state.

Parallel loops take slots from a small local reserve, refilled from the ledger
``claim_block`` at a time: one database round trip serves several trials.

With ``pruning`` in the job, a trial's replicates run in stages (``pruning.after``);
between stages each trial is compared with the k-th best completed trial
(``pruning.py``) and told PRUNED, with the replicates it ran, when the bound
says it will not beat it. In batched mode every stage of a round is submitted
together. A pruned trial is one asked trial: the budget counts it once.

With ``live_slots`` (``concurrency: auto``), the thread that waits on the loops
reads the cluster's live thread count every ``RESIZE_INTERVAL_S`` and feeds it
to the core, which sets the target (``elastic.target_loops``) and starts loops
up to it; a loop whose id is at or above it exits at the top of its loop, after
telling its last trial and before claiming another slot (slots it reserved stay
in the shared reserve, released at the end as always). A batched round takes
``target`` claims.

With a ramp (``ramp.py``: the job's ``ramp``, on by default for TPE), a trial is admitted only while fewer than
``min(target, ramp limit)`` are in flight; the limit grows as trials are told,
and a loop above it waits (woken at every tell), it does not exit; a loop's
look-ahead trial counts as in flight, is held back only while the ramp is below
the full target, and never waits (the loop tells its current trial instead). A batched round takes
``min(target, ramp limit)`` claims.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

from modelops_calabaria.backend.ledger import Ledger
from modelops_calabaria.calibration import pruning
from modelops_calabaria.calibration.asktell import AskedTrial, Asker
from modelops_calabaria.calibration.elastic import RESIZE_INTERVAL_S, loop_cap
from modelops_calabaria.calibration.ramp import ramp_of
from modelops_calabaria.calibration.run_state import RunState
from modelops_calabaria.calibration.scheduler import events as ev
from modelops_calabaria.calibration.scheduler import instructions as ins
from modelops_calabaria.calibration.scheduler.core import Scheduler, SchedulerInvariantError
from modelops_calabaria.calibration.scheduler.rules import Rules
from modelops_calabaria.calibration.seeds import replicate_seeds, shares_seeds
from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.logging import get_logger
from modelops_calabaria.outcome import TrialRecord
from modelops_calabaria.simulation.base import SimulationService, TrialHandle
from modelops_calabaria.simulation.task import TrialEvaluation

log = get_logger(__name__)

RAMP_WAIT_S = 0.25  # a loop the ramp holds re-checks stop and retiring this often (a tell wakes it at once)


@dataclass
class _Flight:
    """A trial this coordinator asked and has not told: what the executor needs to carry it."""

    trial: AskedTrial
    started: float
    seeds: list[int]
    handle: TrialHandle | None = None
    end: int = 0  # replicates submitted so far
    busy: float = 0.0
    scores: list[dict[str, float]] = field(default_factory=list)
    final: TrialEvaluation | None = None
    decision: pruning.Decision | None = None


@dataclass
class Wire:
    """Runs one coordinator's share of a calibration. Use once: ``run()``."""

    job: CalibrationJob
    asker: Asker
    service: SimulationService
    ledger: Ledger
    state: RunState
    parallel: bool
    concurrency: int
    on_trial: Callable[[TrialRecord], None] = lambda record: None
    stop: threading.Event = field(default_factory=threading.Event)
    live_slots: Callable[[], int] | None = None  # given: loops follow the cluster (concurrency: auto)
    known: int = 0  # trials the study had finished before this wire: the ramp counts them as known

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._told = threading.Condition(self._lock)  # notified at every tell: the ramp limit may have grown
        n = self.job.n_replicates
        spec = self.job.pruning
        looks = pruning.looks(spec.after, n) if spec is not None else ()
        self.board = pruning.Board(spec.against, self.job.direction == "minimize") if spec is not None else None
        self._alpha = spec.error_rate / len(looks) if spec is not None else 0.0
        self._weights = {t.name: t.weight for t in self.job.targets}
        ramp = ramp_of(self.job)
        self._wakes = ramp is not None
        self._core = Scheduler(Rules(
            parallel=self.parallel, concurrency=self.concurrency,
            stages=tuple(pruning.stages(looks, n)) if spec is not None else ((0, n),),
            # Slots per ledger round trip: small, so that several coordinators share the end of a budget.
            claim_block=max(1, min(4, self.concurrency // 4)),
            look_ahead=self.parallel and self.live_slots is not None and spec is None,
            ramp=ramp, loop_cap=loop_cap(n) if self.live_slots is not None else None, known=self.known))
        self.resizes: list[tuple[float, int, int, int]] = []  # (monotonic time, from, to, live threads)
        self._flights: dict[int, _Flight] = {}  # one entry per trial, written by the loop that holds it
        self._errors: dict[int, BaseException] = {}  # loop -> the exception of its failed step
        self._fatal: BaseException | None = None
        self._shutdown_reason: str | None = None
        self._study = self.asker.study.study_name
        self._owner = self.asker.coordinator_id

    # -- control ---------------------------------------------------------------------------

    @property
    def stop_reason(self) -> str | None:
        """Why the run ended: a stop rule, a signal, or the budget."""
        return self.state.stop_reason or ("budget spent" if self.budget_spent else None)

    @property
    def shutdown_reason(self) -> str | None:
        """The signal that shut this wire down, if any."""
        return self._shutdown_reason

    @property
    def budget_spent(self) -> bool:
        """Whether the ledger answered a claim with no slot."""
        return self._core.budget_spent

    @property
    def claimed(self) -> int:
        """Slots this wire holds from the ledger: granted less released."""
        with self._lock:
            return self._core.granted - self._core.released

    def request_stop(self, reason: str) -> None:
        """Stop asking; in-flight trials finish and are told."""
        with self._lock:
            if self.state.stop_reason is None:
                self.state.stop_reason = reason
        self.stop.set()

    def shutdown(self, reason: str, grace_s: float) -> None:
        """Stop asking now; cancel what is still running after ``grace_s`` (told FAIL)."""
        self._shutdown_reason = reason
        self.request_stop(reason)
        timer = threading.Timer(grace_s, self.cancel_in_flight)
        timer.daemon = True
        timer.start()

    def cancel_in_flight(self) -> None:
        """Cancel every trial still running; their loops tell them FAIL (and start no further stage)."""
        with self._lock:
            if not self._core.done:
                self._core.handle(ev.Cancelled())
            flights = self._flights.copy()  # one C-level copy: loops add and remove entries meanwhile
        for f in flights.values():
            if f.handle is not None:
                f.handle.cancel()

    @property
    def loops(self) -> int:
        """Loops running now (batched: 1)."""
        with self._lock:
            return len(self._core.loops)

    @property
    def target(self) -> int:
        """Trials at once wanted now: loops (parallel) or claims per round (batched)."""
        return self._core.target

    # -- running -------------------------------------------------------------------------

    def run(self) -> None:
        """Run until the budget is spent or a stop is requested.

        Raises:
            The first fatal error of any loop (after every asked trial was told).
        """
        if not self.parallel:
            most = 1
        else:
            most = self.concurrency if self.live_slots is None else loop_cap(self.job.n_replicates)
        try:
            with ThreadPoolExecutor(max_workers=most, thread_name_prefix="calabaria-loop") as pool:
                pending = self._start_loops(pool, self._step(ev.Start()))
                while pending:
                    if self.live_slots is None:
                        wait_futures(pending)
                    else:  # the sizing step: this thread only waits, so it reads the cluster's size
                        wait_futures(pending, timeout=RESIZE_INTERVAL_S)
                        if not (self.stop.is_set() or self.budget_spent):
                            pending |= self._start_loops(pool, self._resize())
                    pending = {f for f in pending if not f.done()}
        finally:
            self._finish()
        if self._fatal is not None:
            raise self._fatal

    def _finish(self) -> None:
        """Every loop has ended: give the reserve back."""
        try:
            out = self._step(ev.Finished())
        except SchedulerInvariantError as e:  # a loop died of a bug: its error is the one to raise
            self._fatal = self._fatal or e
            with self._lock:
                out = [ins.Release(self._core.reserve)] if self._core.reserve else []
        for i in out:
            if isinstance(i, ins.Release):
                self._release(i.n)
        with self._lock:
            kept = self._core.ask_failed
        if kept:
            # The slots of asks that raised were kept while loops ran (the ask may have created its
            # trial). The ledger spends a claim only in the transaction that inserts the trial, and
            # gives back at most the claims still open: so the claims of asks that created no trial
            # go back now, and those that did are not released twice.
            self.ledger.release(self._study, kept, owner=self._owner)

    def _start_loops(self, pool: ThreadPoolExecutor, out: list[ins.Instruction]) -> set[Future[None]]:
        return {pool.submit(self._loop, i.loop) for i in out if isinstance(i, ins.StartLoop)}

    def _resize(self) -> list[ins.Instruction]:
        assert self.live_slots is not None
        live = self.live_slots()
        with self._lock:
            old = self._core.target
            out = self._core.handle(ev.Resized(live))
            new = self._core.target
        if new != old:
            self.resizes.append((time.monotonic(), old, new, live))
            log.info("trials at once resized", **{"from": old, "to": new, "live_threads": live,
                                                  "mode": "parallel" if self.parallel else "batched"})
        return out

    def _step(self, event: ev.Event) -> list[ins.Instruction]:
        """Feed ``event`` to the core and return its instructions. A loop the ramp holds waits
        here, on the lock's condition (a tell wakes it, so no wake-up falls between the two)."""
        with self._lock:
            if self.stop.is_set() and not self._core.stopping:
                self._core.handle(ev.StopRequested())
            out = self._core.handle(event)
            if self._wakes and isinstance(event, ev.Told):
                self._told.notify_all()
            if out and isinstance(out[-1], ins.Hold):
                self._told.wait(RAMP_WAIT_S)
            return out

    def _loop(self, loop_id: int) -> None:
        """One loop: carry out the core's instructions, one event each, until it says Exit."""
        try:
            out = self._step(ev.Idle(loop_id))
            while True:
                answer: ev.Event | None = None
                for i in out:
                    if isinstance(i, ins.Release):
                        self._release(i.n)
                    elif isinstance(i, ins.Exit):
                        if i.fatal:
                            self._record_fatal(self._errors.pop(loop_id, RuntimeError(f"loop {loop_id} failed")))
                        return
                    else:
                        answer = self._execute(i)
                if answer is None:
                    raise SchedulerInvariantError(f"no step for loop {loop_id} in {out}")
                out = self._step(answer)
        except BaseException as e:  # noqa: BLE001 - a bug: recorded, re-raised by run() in the caller
            self._record_fatal(e)
            try:
                with self._lock:
                    out = self._core.handle(ev.Crashed(loop_id)) if loop_id in self._core.loops else []
            except SchedulerInvariantError:
                out = []  # the core itself is broken: run() raises the first error
            for i in out:
                if isinstance(i, ins.Release):
                    self._release(i.n)

    def _record_fatal(self, e: BaseException) -> None:
        with self._lock:
            if self._fatal is None:
                self._fatal = e
        self.stop.set()

    def _execute(self, i: ins.Instruction) -> ev.Event:
        """Carry out one loop instruction; its answer, or Failed (the exception kept for the loop)."""
        loop = i.loop
        try:
            if isinstance(i, ins.Claim):
                return ev.SlotsGranted(loop, self.ledger.claim(self._study, i.n, owner=self._owner))
            if isinstance(i, ins.Ask):
                return self._ask(loop)
            if isinstance(i, ins.Submit):
                return self._submit(i)
            if isinstance(i, ins.AwaitTail):
                handle = self._flights[i.trial].handle
                assert handle is not None
                handle.wait_left(1)
                return ev.TailReached(loop)
            if isinstance(i, ins.Await):
                return self._await(i)
            if isinstance(i, ins.Decide):
                return self._decide(i)
            if isinstance(i, ins.Tell):
                self._tell(i)
                return ev.Told(loop, i.trial)
            if isinstance(i, ins.Hold):
                return ev.Idle(loop)  # the wait happened in _step, under the lock
            raise SchedulerInvariantError(f"loop {loop} cannot carry out {i}")
        except SchedulerInvariantError:
            raise
        except BaseException as e:  # noqa: BLE001 - handed to the core, re-raised by run()
            self._errors.setdefault(loop, e)
            self.stop.set()
            return ev.Failed(loop)

    def _release(self, n: int) -> None:
        try:
            self.ledger.release(self._study, n, owner=self._owner)
        except Exception as e:  # noqa: BLE001 - the slots stay claimed; the next start's reconcile frees them
            log.warning("could not give budget slots back", slots=n, error=f"{type(e).__name__}: {e}")
            self._record_fatal(e)

    # -- steps -----------------------------------------------------------------------------

    def _ask(self, loop: int) -> ev.Event:
        trial = self.asker.ask()
        seeds = replicate_seeds(self.job.seed, self.job.n_replicates, trial.number, self.job.replicate_seeds)
        self._flights[trial.number] = _Flight(trial, time.perf_counter(), seeds)
        return ev.Asked(loop, trial.number)

    def _submit(self, i: ins.Submit) -> ev.Event:
        tasks = 1
        for k, number in enumerate(i.trials):
            f = self._flights[number]
            f.handle = self.service.submit(number, f.trial.params, f.seeds[i.start:i.end], first=i.start)
            f.end = i.end
            with self._lock:
                cancelled = self._core.cancelled
            if cancelled:  # asked before the grace ran out, submitted after cancel_in_flight looked: cancel it now
                f.handle.cancel()
            if k == 0 and self._core.rules.look_ahead:
                tasks = f.handle.tasks
        return ev.Submitted(i.loop, tasks)

    def _await(self, i: ins.Await) -> ev.Event:
        flights = [self._flights[t] for t in i.trials]
        handles: list[TrialHandle] = [f.handle for f in flights if f.handle is not None]
        results = [handles[0].result()] if len(handles) == 1 else self.service.gather(handles)
        failed = set()
        for f, result in zip(flights, results):
            if not self._evaluated(f, self._cancelled(result)):
                failed.add(f.trial.number)
        return ev.StageDone(i.loop, frozenset(failed))

    def _evaluated(self, f: _Flight, result: TrialEvaluation) -> bool:
        """Take a stage's evaluation into ``f``; False when the trial has no usable loss."""
        if self.board is None:
            f.final = result
            return result.error is None and result.loss is not None
        f.busy += result.busy_s
        if result.error is not None or result.loss is None:
            f.final = TrialEvaluation({}, None, f.busy, error=result.error or "no loss")
            return False
        f.scores.extend(result.replicate_scores)
        if f.end < self.job.n_replicates:
            return True
        per_target, loss = pruning.combine(f.scores, self._weights)
        if not math.isfinite(loss):
            f.final = TrialEvaluation(per_target, None, f.busy, error=f"non-finite loss {loss}")
            return False
        f.final = TrialEvaluation(per_target, loss, f.busy, replicate_scores=f.scores)
        return True

    def _cancelled(self, result: TrialEvaluation) -> TrialEvaluation:
        if result.error == "simulation cancelled" and self._shutdown_reason:
            return _failed(f"cancelled: {self._shutdown_reason} before the trial finished")
        return result

    def _decide(self, i: ins.Decide) -> ev.Event:
        assert self.board is not None and self.job.pruning is not None
        for number, loss, losses in self.asker.completed_elsewhere():
            self.board.add(number, loss, losses)
        reference = self.board.kth()
        pruned = set()
        for t in i.trials:
            f = self._flights[t]
            paired = reference is not None and shares_seeds(self.job.replicate_seeds, t, reference.number)
            f.decision = pruning.decide(pruning.replicate_losses(f.scores, self._weights), reference,
                                        self.job.n_replicates, self._alpha, paired=paired,
                                        minimize=self.job.direction == "minimize")
            if f.decision.prune:
                pruned.add(t)
        return ev.Decided(i.loop, frozenset(pruned))

    def _tell(self, i: ins.Tell) -> None:
        """Tell the trial as the core says, then record it in the run state and report it. Only
        the asker's tell can make the step fail: once it returned, the trial is told, and an
        error in what follows stops the run (raised at its end) without untelling it."""
        f = self._flights.pop(i.trial)
        duration_s = time.perf_counter() - f.started
        trial = f.trial
        if i.outcome == "COMPLETE":
            final = f.final
            assert final is not None and final.loss is not None
            losses = pruning.replicate_losses(final.replicate_scores, self._weights) if self.board is not None else None
            self.asker.tell_complete(trial, final.loss, final.per_target, final.busy_s, losses, summaries=final.summaries)
        elif i.outcome == "PRUNED":
            assert f.decision is not None
            d, losses = f.decision, pruning.replicate_losses(f.scores, self._weights)
            self.asker.tell_pruned(trial, d.partial_loss, losses, f.busy, d.reference, d.estimate)
        else:
            text, busy = self._fail_reason(i, f)
            self.asker.tell_fail(trial, text, busy)
        try:
            self._report(i, f, duration_s)
        except BaseException as e:  # noqa: BLE001 - told; the run stops and raises it
            self._record_fatal(e)

    def _report(self, i: ins.Tell, f: _Flight, duration_s: float) -> None:
        trial, params = f.trial, dict(f.trial.params)
        if i.outcome == "COMPLETE":
            final = f.final
            assert final is not None and final.loss is not None
            if self.board is not None:
                self.board.add(trial.number, final.loss, pruning.replicate_losses(final.replicate_scores, self._weights))
            with self._lock:
                new_best = self.state.record_complete(trial.number, final.loss, params, final.busy_s)
                reason = self.state.check_stop(time.monotonic())
            record = TrialRecord(trial.number, "COMPLETE", final.loss, params, final.per_target, duration_s,
                                 new_best=new_best)
        elif i.outcome == "PRUNED":
            d = f.decision
            assert d is not None
            with self._lock:
                self.state.record_pruned(trial.number, f.busy)
                reason = self.state.check_stop(time.monotonic())
            why = (f"pruned after {d.replicates} of {self.job.n_replicates} replicates: partial loss {d.partial_loss:.6g}, "
                   f"worse than trial {d.reference} by at least {d.bound:.4g}")
            record = TrialRecord(trial.number, "PRUNED", None, params, {}, duration_s, reason=why)
        else:
            text, busy = self._fail_reason(i, f)
            with self._lock:
                self.state.record_fail(trial.number, text, busy)
                reason = self.state.check_stop(time.monotonic())
            record = TrialRecord(trial.number, "FAIL", None, params, {}, duration_s, reason=text)
        self.on_trial(record)
        if reason:
            self.stop.set()

    def _fail_reason(self, i: ins.Tell, f: _Flight) -> tuple[str, float]:
        if i.why == "cancelled":
            return f"cancelled: {self._shutdown_reason} before the trial finished", f.busy
        if i.why == "coordinator error":
            e: Any = self._errors.get(i.loop)
            where = "coordinator error" if f.handle is not None else "coordinator error before submission"
            return f"{where}: {type(e).__name__}: {e}", 0.0
        final = f.final or _failed("no loss")
        return final.error or "no loss", final.busy_s


def _failed(reason: str) -> TrialEvaluation:
    return TrialEvaluation({}, None, 0.0, error=reason)
