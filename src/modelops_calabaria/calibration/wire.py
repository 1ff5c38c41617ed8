"""The calibration wire: turn budget slots into told trials, in parallel or batched mode.

Parallel (``PARALLEL_TRIALS=true``): N loops on a ThreadPoolExecutor; each
claims one budget slot, asks one trial, submits its replicates, waits for its
own result only, tells, and repeats. With ``concurrency: auto`` and no pruning,
a loop claims, asks and submits its next trial as soon as only the last of its
current trial's tasks is unfinished, then tells the current one: the slots the
trial's other tasks freed get work while the slowest one ends (a loop holds at
most two trials, and two only during that tail). Batched (``false``): rounds
of k claims → k asks → submit all → gather all → tell all.

Invariants, in both modes:

- a trial is asked only after a budget slot was claimed, so a fresh study never
  holds more than ``max_trials`` trials; a claim whose ask fails, and the local
  reserve of claimed slots left at the end, are released;
- every asked trial is told, COMPLETE or FAIL with a reason, whatever happens
  in between (exceptions, NaN, timeouts, shutdown);
- a shared Event stops every loop (budget spent, stop rule, signal, fatal error);
  the in-process Lock guards the run state.

With ``pruning`` in the job, a trial's replicates run in stages (``pruning.after``);
between stages each trial is compared with the k-th best completed trial
(``pruning.py``) and told PRUNED, with the replicates it ran, when the bound
says it will not beat it. In batched mode every stage of a round is submitted
together. A pruned trial is one asked trial: the budget counts it once.

With ``live_slots`` (``concurrency: auto``), the thread that waits on the loops
reads the cluster's live thread count every ``RESIZE_INTERVAL_S`` and sets the
target (``elastic.target_loops``): it starts loops up to the target, and a loop
whose id is at or above it exits at the top of its loop, after telling its last
trial and before claiming another slot (slots it reserved stay in the shared
reserve, released at the end as always). A batched round takes ``target`` claims.

With a ramp (``ramp.py``: the job's ``ramp``, on by default for TPE), a trial is admitted only while fewer than
``min(target, ramp limit)`` are in flight; the limit grows as trials are told,
and a loop above it waits (re-checked at every tell), it does not exit; a loop's
look-ahead trial counts as in flight, is held back only while the ramp is below
the full target, and never waits (the loop tells its current trial instead). A batched round takes
``min(target, ramp limit)`` claims.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field


from modelops_calabaria.backend.ledger import Ledger
from modelops_calabaria.calibration import pruning
from modelops_calabaria.calibration.elastic import RESIZE_INTERVAL_S, loop_cap, target_loops
from modelops_calabaria.calibration.ramp import ramp_of
from modelops_calabaria.calibration.seeds import replicate_seeds, shares_seeds
from modelops_calabaria.calibration.run_state import RunState
from modelops_calabaria.calibration.asktell import AskedTrial, Asker
from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.outcome import TrialRecord
from modelops_calabaria.logging import get_logger
from modelops_calabaria.simulation.base import SimulationService, TrialHandle
from modelops_calabaria.simulation.task import TrialEvaluation

log = get_logger(__name__)

RAMP_WAIT_S = 0.25  # a loop the ramp holds re-checks stop and retiring this often (a tell wakes it at once)


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
        self._target = self.concurrency  # loops (parallel) or claims per round (batched)
        self._alive: dict[int, object] = {}  # loop id -> token of the loop running under it
        self.resizes: list[tuple[float, int, int, int]] = []  # (monotonic time, from, to, live threads)
        self._in_flight: dict[int, TrialHandle] = {}
        self._fatal: BaseException | None = None
        self._shutdown_reason: str | None = None
        self._cancelled_all = False
        self.claimed = 0
        self.budget_spent = False
        self._reserve = 0
        # Slots per ledger round trip: small, so that several coordinators share the end of a budget.
        self.claim_block = max(1, min(4, self.concurrency // 4))
        spec = self.job.pruning
        self._looks = pruning.looks(spec.after, self.job.n_replicates) if spec is not None else ()
        self.board = pruning.Board(spec.against, self.job.direction == "minimize") if spec is not None else None
        self._weights = {t.name: t.weight for t in self.job.targets}
        self._ramp = ramp_of(self.job)
        self._admitted = threading.Condition(self._lock)  # notified at every tell: the ramp limit may have grown
        self._asked = self._finished = self.known  # ramp counts (admitted, told)
        self._flying = 0  # admitted and not yet told (parallel)

    # -- control ---------------------------------------------------------------------------

    @property
    def stop_reason(self) -> str | None:
        """Why the run ended: a stop rule, a signal, or the budget."""
        return self.state.stop_reason or ("budget spent" if self.budget_spent else None)

    @property
    def shutdown_reason(self) -> str | None:
        """The signal that shut this wire down, if any."""
        return self._shutdown_reason

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
            self._cancelled_all = True
            handles = list(self._in_flight.values())
        for h in handles:
            h.cancel()

    @property
    def loops(self) -> int:
        """Loops running now (batched: 1)."""
        with self._lock:
            return len(self._alive)

    @property
    def target(self) -> int:
        """Trials at once wanted now: loops (parallel) or claims per round (batched)."""
        return self._target

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
                pending = self._start_loops(pool)
                while pending:
                    if self.live_slots is None:
                        wait_futures(pending)
                    else:  # the sizing step: this thread only waits, so it reads the cluster's size
                        wait_futures(pending, timeout=RESIZE_INTERVAL_S)
                        if not (self.stop.is_set() or self.budget_spent):
                            self._resize()
                            pending |= self._start_loops(pool)
                    pending = {f for f in pending if not f.done()}
        finally:
            self._release_reserve()
        if self._fatal is not None:
            raise self._fatal

    def _start_loops(self, pool: ThreadPoolExecutor) -> set[Future[None]]:
        """Start a loop under every id below the target that has none (batched: the one loop)."""
        body = self._parallel_loop if self.parallel else self._batched_loop
        with self._lock:
            ids = [i for i in range(self._target if self.parallel else 1) if i not in self._alive]
            tokens = {i: object() for i in ids}
            self._alive.update(tokens)
        return {pool.submit(self._guarded, body, i, tokens[i]) for i in ids}

    def _resize(self) -> None:
        assert self.live_slots is not None
        live = self.live_slots()
        new = target_loops(live, self.job.n_replicates, loop_cap(self.job.n_replicates), self.parallel)
        with self._lock:
            old, self._target = self._target, new
        if new != old:
            self.resizes.append((time.monotonic(), old, new, live))
            log.info("trials at once resized", **{"from": old, "to": new, "live_threads": live,
                                                  "mode": "parallel" if self.parallel else "batched"})

    def _retiring(self, loop_id: int) -> bool:
        """Whether this loop is above the target: it leaves now, holding no slot (checked before a claim)."""
        with self._lock:
            if loop_id < self._target:
                return False
            self._alive.pop(loop_id, None)  # under the lock: the sizing step may start this id again at once
            return True

    def _guarded(self, body: Callable[[int], None], loop_id: int, token: object) -> None:
        try:
            body(loop_id)
        except BaseException as e:  # noqa: BLE001 - recorded, re-raised by run() in the caller
            with self._lock:
                if self._fatal is None:
                    self._fatal = e
            self.stop.set()
        finally:
            with self._lock:
                if self._alive.get(loop_id) is token:
                    del self._alive[loop_id]

    def _claim(self, n: int) -> int:
        """Take ``n`` budget slots (fewer when the budget is nearly spent).

        Parallel loops take slots from a small local reserve, refilled from the
        ledger ``claim_block`` at a time: one database round trip serves several
        trials. Unused reserve is released when the run ends.
        """
        with self._lock:
            local = min(n, self._reserve)
            self._reserve -= local
        if local == n:
            return n
        want = max(n - local, self.claim_block if self.parallel else 0)
        granted = self.ledger.claim(self.asker.study.study_name, want, owner=self.asker.coordinator_id)
        with self._lock:
            self.claimed += granted
            # Take from the reserve, not only from this grant: another loop may have
            # refilled it while the ledger told this one the budget was spent.
            self._reserve += granted
            used = min(self._reserve, n - local)
            self._reserve -= used
        return local + used

    def _release(self, n: int) -> None:
        if n > 0:
            self.ledger.release(self.asker.study.study_name, n, owner=self.asker.coordinator_id)
            with self._lock:
                self.claimed -= n

    def _release_reserve(self) -> None:
        with self._lock:
            unused, self._reserve = self._reserve, 0
        self._release(unused)

    def _budget_spent(self) -> None:
        """Record why the run ends, without stopping loops that still hold reserved slots."""
        self.budget_spent = True

    # -- the ramp (ramp.py) ---------------------------------------------------------------

    def _admit(self, look_ahead: bool = False) -> bool:
        """Wait until one more trial may fly under the ramp and count it; False when the loop
        should re-check stop and retiring first (it waits in slices, so it sees both).
        A ``look_ahead`` never waits, and is held back only while the ramp is below the
        full target (the tail it fills is short, and at full width the ramp is done).
        Every admission is given back by one ``_landed``."""
        with self._admitted:
            if self._ramp is not None:
                limit = self._ramp.limit(self._asked, self._finished, self._target)
                if self._flying >= limit and not (look_ahead and limit >= self._target):
                    if not look_ahead:
                        self._admitted.wait(RAMP_WAIT_S)
                    return False
            self._asked += 1
            self._flying += 1
            return True

    def _landed(self, admitted: int, told: int) -> None:
        """``admitted`` trials left flight, ``told`` of them told: wake the loops the ramp holds."""
        with self._admitted:
            self._flying -= admitted
            self._finished += told
            self._admitted.notify_all()

    def _round_size(self) -> int:
        """Claims of the next batched round: the target, lowered by the ramp."""
        with self._lock:
            if self._ramp is None:
                return self._target
            return self._ramp.limit(self._asked, self._finished, self._target)

    def _parallel_loop(self, loop_id: int) -> None:
        if self.board is None and self.live_slots is not None:
            self._overlapping_loop(loop_id)
            return
        # One trial at a time: staged trials (pruning) decide between stages, and a fixed
        # count is the trials at once the job asked for.
        while not self.stop.is_set():
            if self._retiring(loop_id):
                return
            if not self._admit():
                continue
            trial = self._claim_and_ask()
            if trial is None:
                return
            try:
                self._run_trials([trial])  # tells it, whatever happens
            finally:
                self._landed(1, 1)

    def _claim_and_ask(self) -> AskedTrial | None:
        """Claim one budget slot and ask a trial on it; None when the budget is spent.
        The caller was admitted (``_admit``): without a trial the admission is given back."""
        try:
            if self._claim(1) == 0:
                # Not the stop event: each loop ends on its own when it finds no slot, so the
                # last reserved slots are still used by the loops that reserved them.
                self._budget_spent()
                self._landed(1, 0)
                return None
            try:
                return self.asker.ask()
            except BaseException:
                self._release(1)
                raise
        except BaseException:
            self._landed(1, 0)
            raise

    def _overlapping_loop(self, loop_id: int) -> None:
        """One loop of the parallel mode: ask, submit, tell, with the next trial submitted early.

        A trial's replicates run as several tasks that end at different times; waiting for
        the slowest before asking again would leave the slots its other tasks freed idle
        unless other loops' tasks are queued. So once only the last of the current trial's
        tasks is unfinished, the loop claims, asks and submits its next trial, then waits
        for and tells the current one. A loop thus holds two trials only during that tail
        (a trial of one task is waited for whole). It looks ahead only while it stays
        (below the target, no stop); every asked trial is told whatever happens.
        """
        current: _Running | None = None
        following: _Running | None = None
        try:
            while True:
                if current is None:
                    if self.stop.is_set() or self._retiring(loop_id):
                        return
                    if not self._admit():
                        continue
                    current = self._start(self._claim_and_ask())
                    if current is None:
                        return
                if current.handle.tasks > 1:
                    current.handle.wait_left(1)
                    if not self.stop.is_set() and self._staying(loop_id) and self._admit(look_ahead=True):
                        following = self._start(self._claim_and_ask())
                self._finish(current)
                current, following = following, None
        except BaseException as e:
            for r in (current, following):
                if r is not None and not r.told:
                    self._tell(r.trial, _failed(f"coordinator error: {type(e).__name__}: {e}"), time.perf_counter() - r.started)
                    self._forget(r)
                    self._landed(1, 1)
            raise

    def _staying(self, loop_id: int) -> bool:
        with self._lock:
            return loop_id < self._target

    def _start(self, trial: AskedTrial | None) -> _Running | None:
        """Submit ``trial``'s replicates (None: nothing to start); a failed submission is told FAIL."""
        if trial is None:
            return None
        started = time.perf_counter()
        try:
            seeds = replicate_seeds(self.job.seed, self.job.n_replicates, trial.number, self.job.replicate_seeds)
            handle = self.service.submit(trial.number, trial.params, seeds, first=0)
        except BaseException as e:
            self._tell(trial, _failed(f"coordinator error: {type(e).__name__}: {e}"), time.perf_counter() - started)
            self._landed(1, 1)
            raise
        self._track(trial.number, handle)
        return _Running(trial, handle, started)

    def _finish(self, r: _Running) -> None:
        """Wait for ``r``'s evaluation and tell it."""
        ev = self._cancelled(r.handle.result())
        self._tell(r.trial, ev, time.perf_counter() - r.started)
        r.told = True
        self._forget(r)
        self._landed(1, 1)

    def _track(self, number: int, handle: TrialHandle) -> None:
        """Record a submitted trial as in flight; cancel it at once if the grace already ran out
        (a loop that asked before the stop and submitted after ``cancel_in_flight`` ran)."""
        with self._lock:
            self._in_flight[number] = handle
            cancelled = self._cancelled_all
        if cancelled:
            handle.cancel()

    def _forget(self, r: _Running) -> None:
        with self._lock:
            self._in_flight.pop(r.trial.number, None)

    def _batched_loop(self, loop_id: int) -> None:
        while not self.stop.is_set():
            granted = self._claim(self._round_size())
            if granted == 0:
                self._budget_spent()
                return
            trials: list[AskedTrial] = []
            try:
                for _ in range(granted):
                    trials.append(self.asker.ask())
            except BaseException as e:
                self._release(granted - len(trials))
                for t in trials:
                    self._tell(t, _failed(f"coordinator error before submission: {type(e).__name__}: {e}"), 0.0)
                raise
            with self._lock:
                self._asked += granted
            try:
                self._run_trials(trials)
            finally:
                with self._lock:
                    self._finished += granted

    def _run_trials(self, trials: Sequence[AskedTrial]) -> None:
        """Submit, wait and tell ``trials``; every one of them is told, whatever happens."""
        started = time.perf_counter()
        told: set[int] = set()
        try:
            n = self.job.n_replicates
            seeds = {t.number: replicate_seeds(self.job.seed, n, t.number, self.job.replicate_seeds) for t in trials}
            if self.board is None:
                for t, ev in zip(trials, self._simulate(trials, seeds, 0, n)):
                    self._tell(t, self._cancelled(ev), time.perf_counter() - started)
                    told.add(t.number)
            else:
                self._run_staged(trials, seeds, started, told)
        except BaseException as e:
            for t in trials:
                if t.number not in told:
                    self._tell(t, _failed(f"coordinator error: {type(e).__name__}: {e}"), time.perf_counter() - started)
            raise
        finally:
            with self._lock:
                for t in trials:
                    self._in_flight.pop(t.number, None)

    def _simulate(self, trials: Sequence[AskedTrial], seeds: dict[int, list[int]], start: int, end: int) -> list[TrialEvaluation]:
        """Run replicates ``start`` to ``end - 1`` of every trial; their evaluations, in order."""
        handles: list[TrialHandle] = []
        for t in trials:
            stage = seeds[t.number][start:end]
            handle = self.service.submit(t.number, t.params, stage, first=start)
            handles.append(handle)
            self._track(t.number, handle)
        return [handles[0].result()] if len(handles) == 1 else self.service.gather(handles)

    def _cancelled(self, ev: TrialEvaluation) -> TrialEvaluation:
        if ev.error == "simulation cancelled" and self._shutdown_reason:
            return _failed(f"cancelled: {self._shutdown_reason} before the trial finished")
        return ev

    def _run_staged(self, trials: Sequence[AskedTrial], seeds: dict[int, list[int]], started: float, told: set[int]) -> None:
        """Run the trials' replicates stage by stage; prune between stages, tell each trial once."""
        n = self.job.n_replicates
        scores: dict[int, list[dict[str, float]]] = {t.number: [] for t in trials}
        busy: dict[int, float] = {t.number: 0.0 for t in trials}
        alive = list(trials)
        for start, end in pruning.stages(self._looks, n):
            going_on: list[AskedTrial] = []
            for t, ev in zip(alive, self._simulate(alive, seeds, start, end)):
                ev = self._cancelled(ev)
                busy[t.number] += ev.busy_s
                if ev.error is not None or ev.loss is None:
                    self._tell(t, TrialEvaluation({}, None, busy[t.number], error=ev.error or "no loss"), time.perf_counter() - started)
                    told.add(t.number)
                    continue
                scores[t.number].extend(ev.replicate_scores)
                if end < n:
                    decision = self._decide(t, scores[t.number])
                    if decision.prune:
                        self._tell_pruned(t, scores[t.number], decision, busy[t.number], time.perf_counter() - started)
                        told.add(t.number)
                    else:
                        going_on.append(t)
                    continue
                per_target, loss = pruning.combine(scores[t.number], self._weights)
                if not math.isfinite(loss):
                    final = TrialEvaluation(per_target, None, busy[t.number], error=f"non-finite loss {loss}")
                else:
                    final = TrialEvaluation(per_target, loss, busy[t.number], replicate_scores=scores[t.number])
                self._tell(t, final, time.perf_counter() - started)
                told.add(t.number)
            alive = going_on
            if alive and self._cancelled_all:
                for t in alive:
                    self._tell(t, TrialEvaluation({}, None, busy[t.number], error=f"cancelled: {self._shutdown_reason} before the trial finished"),
                               time.perf_counter() - started)
                    told.add(t.number)
                return
            if not alive:
                return

    def _decide(self, trial: AskedTrial, scores: list[dict[str, float]]) -> pruning.Decision:
        assert self.board is not None and self.job.pruning is not None
        for number, loss, losses in self.asker.completed_elsewhere():
            self.board.add(number, loss, losses)
        reference = self.board.kth()
        n = self.job.n_replicates
        paired = reference is not None and shares_seeds(self.job.replicate_seeds, trial.number, reference.number)
        alpha = self.job.pruning.error_rate / len(self._looks)
        return pruning.decide(pruning.replicate_losses(scores, self._weights), reference, n, alpha, paired=paired,
                              minimize=self.job.direction == "minimize")

    def _tell_pruned(self, trial: AskedTrial, scores: list[dict[str, float]], decision: pruning.Decision, busy_s: float,
                     duration_s: float) -> None:
        losses = pruning.replicate_losses(scores, self._weights)
        self.asker.tell_pruned(trial, decision.partial_loss, losses, busy_s, decision.reference, decision.estimate)
        with self._lock:
            self.state.record_pruned(trial.number, busy_s)
            reason = self.state.check_stop(time.monotonic())
        why = (f"pruned after {decision.replicates} of {self.job.n_replicates} replicates: partial loss {decision.partial_loss:.6g}, "
               f"worse than trial {decision.reference} by at least {decision.bound:.4g}")
        self.on_trial(TrialRecord(trial.number, "PRUNED", None, dict(trial.params), {}, duration_s, reason=why))
        if reason:
            self.stop.set()

    def _tell(self, trial: AskedTrial, ev: TrialEvaluation, duration_s: float) -> None:
        params = dict(trial.params)
        if ev.error is None and ev.loss is not None:
            if self.board is None:
                self.asker.tell_complete(trial, ev.loss, ev.per_target, ev.busy_s)
            else:
                losses = pruning.replicate_losses(ev.replicate_scores, self._weights)
                self.asker.tell_complete(trial, ev.loss, ev.per_target, ev.busy_s, losses)
                self.board.add(trial.number, ev.loss, losses)
            with self._lock:
                new_best = self.state.record_complete(trial.number, ev.loss, params, ev.busy_s)
                reason = self.state.check_stop(time.monotonic())
            record = TrialRecord(trial.number, "COMPLETE", ev.loss, params, ev.per_target, duration_s, new_best=new_best)
        else:
            reason_text = ev.error or "no loss"
            self.asker.tell_fail(trial, reason_text, ev.busy_s)
            with self._lock:
                self.state.record_fail(trial.number, reason_text, ev.busy_s)
                reason = self.state.check_stop(time.monotonic())
            record = TrialRecord(trial.number, "FAIL", None, params, {}, duration_s, reason=reason_text)
        self.on_trial(record)
        if reason:
            self.stop.set()


@dataclass
class _Running:
    """A submitted trial of a parallel loop, not yet told."""

    trial: AskedTrial
    handle: TrialHandle
    started: float
    told: bool = False


def _failed(reason: str) -> TrialEvaluation:
    return TrialEvaluation({}, None, 0.0, error=reason)
