"""Asking and telling trials on the shared study: the coordinator's hot path.

Two askers share one contract, :class:`Asker` (``ask`` / ``tell_complete`` /
``tell_fail`` / ``tell_pruned`` / ``close``; thread-safe). Both take an enqueued trial
(``study.enqueue_trial``) before sampling a new one, each enqueued trial once
across every coordinator. All storage I/O goes through the study backend
(``backend/``):

- :class:`DirectAsker` runs Optuna's sampler against the shared storage, as
  plain ``study.ask`` does. Every ask re-reads the study and its cost grows
  with the number of trials.
- :class:`MirroredAsker` (the default fast path) samples from an in-memory
  mirror of the study (``mirror.py``), in this process or in a sampler process
  (``sampling.py``), and writes each new trial, with its parameters and owner,
  to the shared storage in one insert. The mirror learns this coordinator's
  tells as they happen and other coordinators' trials from an incremental
  fetch; RUNNING trials stay in it, so TPE's constant liar keeps concurrent
  asks diverse, and its size is bounded. In parallel mode points are sampled
  ahead, so a loop's ask is mostly one insert.

Tells are written by a small pool of writer threads, off the loops' critical
path: state, value and user attributes (the per-target values as ``targets``
and ``loss:<target>``, ``busy_s``, or the failure reason) in one transaction on
a relational storage, in a few Optuna calls elsewhere. ``close`` waits for every write and raises the first write
error, so no trial is left untold.

The budget claim happens before ``ask`` (in the wire): a pre-sampled point
exists only in the mirror until a claimed slot turns it into a trial.
"""

from __future__ import annotations

import math
import pickle
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from modelops_calabaria.backend.base import (
    BUSY_ATTR,
    COORDINATOR_ATTR,
    ESTIMATED_LOSS_ATTR,
    FAIL_REASON,
    LOSS_ATTR_PREFIX,
    PARTIAL_LOSS_ATTR,
    PRUNED_AGAINST_ATTR,
    REPLICATE_LOSSES_ATTR,
    REPLICATES_ATTR,
    RETRY_ATTR,
    TARGETS_ATTR,
    StudyBackend,
)
from modelops_calabaria.backend.factory import backend_of
from modelops_calabaria.backend.plain_ask import ask_plain
from modelops_calabaria.calibration.mirror import AddTrial, Event, FinishTrial, Key, Mirror
from modelops_calabaria.calibration.sampling import HybridSampler, InlineSampler, SamplerFront
from modelops_calabaria.dbretry import retry_db
from modelops_calabaria.job.sweep import SUMMARIES_ATTR
from modelops_calabaria.logging import get_logger

_FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
log = get_logger(__name__)


def sampler_view(state: TrialState, value: float | None, estimate: Any = None) -> tuple[TrialState, float | None]:
    """The state and value a sampler's mirror gets for a trial: a PRUNED trial with a finite
    estimated loss (``estimated_loss``) counts as COMPLETE with that value, worse than the
    trial it lost to; one without stays PRUNED without a value (ranked below every COMPLETE one)."""
    if state == TrialState.PRUNED and isinstance(estimate, (int, float)) and math.isfinite(estimate):
        return TrialState.COMPLETE, float(estimate)
    return state, value


@dataclass
class AskedTrial:
    """A trial created in the shared study and not yet told."""

    number: int
    trial_id: int
    params: dict[str, Any]
    handle: Any = field(default=None, repr=False)  # DirectAsker: optuna Trial; MirroredAsker: mirror key


class Asker(Protocol):
    """Creates trials on the shared study and finishes them (thread-safe)."""

    study: optuna.Study
    coordinator_id: str

    def ask(self) -> AskedTrial:
        """Create a RUNNING trial owned by this coordinator (after a budget slot was claimed)."""

    def tell_complete(self, trial: AskedTrial, loss: float, per_target: Mapping[str, float], busy_s: float,
                      replicate_losses: Sequence[float] | None = None,
                      summaries: Mapping[str, Sequence[float]] | None = None) -> None:
        """Finish ``trial`` COMPLETE (with a sweep's ``summaries`` per replicate)."""

    def tell_fail(self, trial: AskedTrial, reason: str, busy_s: float = 0.0) -> None:
        """Finish ``trial`` FAIL with ``reason``."""

    def tell_pruned(self, trial: AskedTrial, partial_loss: float, replicate_losses: Sequence[float], busy_s: float,
                    against: int | None, estimate: float = math.nan) -> None:
        """Finish ``trial`` PRUNED after ``len(replicate_losses)`` replicates (no objective value)."""

    def completed_elsewhere(self) -> list[tuple[int, float, list[float]]]:
        """Other coordinators' COMPLETE trials with per-replicate losses seen since the last call:
        ``(number, loss, replicate_losses)``."""

    def close(self) -> None:
        """Wait until every tell is written; raise the first write error."""

    def latencies(self) -> tuple[list[float], list[float]]:
        """Ask and tell latencies in milliseconds."""


class _TellWriter:
    """Writes tells to the shared storage on a few threads (``threads=0``: in the
    caller's thread, before ``submit`` returns); ``close`` drains them."""

    def __init__(self, backend: StudyBackend, threads: int) -> None:
        self._store = backend
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="calabaria-tell") if threads else None
        self._pending: set[Future] = set()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self.tell_ms: list[float] = []

    def submit(self, trial_id: int, state: TrialState, value: float | None, attrs: Mapping[str, Any]) -> None:
        self.raise_error()
        if self._pool is None:
            self._write(trial_id, state, value, attrs)
            return
        future = self._pool.submit(self._write, trial_id, state, value, attrs)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _write(self, trial_id: int, state: TrialState, value: float | None, attrs: Mapping[str, Any]) -> None:
        t0 = time.perf_counter()
        # False: finished elsewhere meanwhile (recovered as stale): the first word stands.
        retry_db("tell", lambda: self._store.finish_trial(trial_id, state, value, attrs))
        self.tell_ms.append((time.perf_counter() - t0) * 1000)

    def _done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)
            if future.exception() is not None and self._error is None:
                self._error = future.exception()

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.raise_error()


class _AskerBase:
    def __init__(self, study: optuna.Study, space: dict[str, BaseDistribution], coordinator_id: str, writers: int,
                 retries: Callable[[], dict | None] | None = None, backend: StudyBackend | None = None) -> None:
        self.study = study
        self.space = space
        self.coordinator_id = coordinator_id
        self.backend = backend or backend_of(study)
        self.study_id = retry_db("study lookup", lambda: self.backend.study_id(study.study_name))
        self._writer = _TellWriter(self.backend, writers)
        self._retries = retries
        self.ask_ms: list[float] = []

    def _ask_retry(self) -> AskedTrial | None:
        """A trial with the parameters of a lost trial, if any is queued (``retry_lost_trials``)."""
        if self._retries is None:
            return None
        params = self._retries()  # the ledger retries its own database calls
        if params is None:
            return None
        dists = {k: self.space[k] for k in params}
        owner = {COORDINATOR_ATTR: self.coordinator_id, RETRY_ATTR: True}
        number, trial_id = retry_db("ask", lambda: self.backend.create_trial(self.study_id, params, dists, owner))
        return AskedTrial(number, trial_id, dict(params), self._mirror_retry(dict(params), dists, trial_id))

    def _mirror_retry(self, params: dict[str, Any], dists: dict[str, BaseDistribution], trial_id: int) -> Any:
        return None

    def tell_complete(self, trial: AskedTrial, loss: float, per_target: Mapping[str, float], busy_s: float,
                      replicate_losses: Sequence[float] | None = None,
                      summaries: Mapping[str, Sequence[float]] | None = None) -> None:
        """Finish ``trial`` COMPLETE with its per-target values (written asynchronously);
        ``replicate_losses`` (pruning on) are stored too, for other coordinators' pruning;
        a sweep's ``summaries`` as ``SUMMARIES_ATTR`` (job/sweep.py)."""
        self._on_tell(trial, TrialState.COMPLETE, loss)
        targets = {k: float(v) for k, v in per_target.items()}
        attrs: dict[str, Any] = {TARGETS_ATTR: targets, BUSY_ATTR: round(float(busy_s), 6)}
        attrs.update({LOSS_ATTR_PREFIX + k: v for k, v in targets.items()})  # numeric, for tools that sort on it
        if replicate_losses is not None:
            attrs[REPLICATES_ATTR] = len(replicate_losses)
            attrs[REPLICATE_LOSSES_ATTR] = [float(v) for v in replicate_losses]
        if summaries is not None:
            attrs[SUMMARIES_ATTR] = {k: [float(v) for v in vs] for k, vs in summaries.items()}
        self._writer.submit(trial.trial_id, TrialState.COMPLETE, float(loss), attrs)

    def tell_pruned(self, trial: AskedTrial, partial_loss: float, replicate_losses: Sequence[float], busy_s: float,
                    against: int | None, estimate: float = math.nan) -> None:
        """Finish ``trial`` PRUNED (written asynchronously) with the replicates it ran, their mean loss,
        the trial it lost to and its ``estimate``d full loss as user attributes, and no objective
        value: nothing that ranks COMPLETE trials ranks it.

        The sampler's mirror learns it as a trial of value ``estimate`` (see :func:`sampler_view`),
        which is worse than the trial it lost to: a region that is good but not the best is not
        learnt as bad, and a partial loss never passes for a better completed one.
        """
        self._on_tell(trial, *sampler_view(TrialState.PRUNED, None, estimate))
        attrs: dict[str, Any] = {
            PARTIAL_LOSS_ATTR: float(partial_loss), REPLICATES_ATTR: len(replicate_losses),
            REPLICATE_LOSSES_ATTR: [float(v) for v in replicate_losses], BUSY_ATTR: round(float(busy_s), 6),
        }
        if against is not None:
            attrs[PRUNED_AGAINST_ATTR] = int(against)
        if math.isfinite(estimate):
            attrs[ESTIMATED_LOSS_ATTR] = float(estimate)
        self._writer.submit(trial.trial_id, TrialState.PRUNED, None, attrs)

    def completed_elsewhere(self) -> list[tuple[int, float, list[float]]]:
        """Other coordinators' COMPLETE trials with per-replicate losses, since the last call
        (only the mirrored asker follows other coordinators)."""
        return []

    def tell_fail(self, trial: AskedTrial, reason: str, busy_s: float = 0.0) -> None:
        """Finish ``trial`` FAIL with ``reason`` (written asynchronously)."""
        self._on_tell(trial, TrialState.FAIL, None)
        self._writer.submit(trial.trial_id, TrialState.FAIL, None,
                            {FAIL_REASON: reason[:8000], BUSY_ATTR: round(float(busy_s), 6)})

    def _on_tell(self, trial: AskedTrial, state: TrialState, value: float | None) -> None:
        pass

    def close(self) -> None:
        """Wait until every tell is written; raise the first write error."""
        self._writer.close()

    def latencies(self) -> tuple[list[float], list[float]]:
        """Ask and tell latencies in milliseconds (the loop's ask; the writer's tell)."""
        return list(self.ask_ms), list(self._writer.tell_ms)


class DirectAsker(_AskerBase):
    """Optuna's sampler run against the shared storage (plain ask, retried step by step).

    Tells are written before ``tell_*`` returns, as with plain Optuna: the next
    ask's sampler reads them from the storage.
    """

    def __init__(self, study: optuna.Study, space: dict[str, BaseDistribution], coordinator_id: str,
                 retries: Callable[[], dict | None] | None = None, backend: StudyBackend | None = None) -> None:
        super().__init__(study, space, coordinator_id, writers=0, retries=retries, backend=backend)

    def ask(self) -> AskedTrial:
        """Create a RUNNING trial with sampled parameters, owned by this coordinator.

        ``study.ask`` in retried steps rather than one, so that a database
        restart between creating the trial and sampling its parameters resumes
        on the same trial instead of leaving an orphan RUNNING trial behind.
        """
        self._writer.raise_error()
        t0 = time.perf_counter()
        retried = self._ask_retry()
        if retried is not None:
            return retried
        trial, trial_id = ask_plain(self.study, self.backend, self.study_id, self.space, {COORDINATOR_ATTR: self.coordinator_id})
        self.ask_ms.append((time.perf_counter() - t0) * 1000)
        return AskedTrial(trial.number, trial_id, dict(trial.params), trial)


class MirroredAsker(_AskerBase):
    """The fast path: sample from a mirror of the study, create each trial with one insert.

    The mirror (``mirror.py``) runs in this process (``sampler_process=False``)
    or in a child process; either way this class does the storage I/O: it
    creates the trials, writes the tells, and tells the mirror what happened
    in the shared study (its own tells, other coordinators' trials fetched
    at most every ``sync_every_s``).
    """

    def __init__(self, study: optuna.Study, space: dict[str, BaseDistribution], coordinator_id: str,
                 sampler: optuna.samplers.BaseSampler, *, writers: int = 2, prefetch: int = 0,
                 window: int = 150, keep_best: int = 50, sync_every_s: float = 1.0,
                 retries: Callable[[], dict | None] | None = None, sampler_process: bool = False,
                 backend: StudyBackend | None = None) -> None:
        super().__init__(study, space, coordinator_id, writers, retries, backend)
        self._waiting = True  # enqueued trials may exist: look at the first ask
        self._sync_every_s = sync_every_s
        self._lock = threading.Lock()  # guards the maps below
        self._sync_lock = threading.Lock()  # one sync at a time
        self._key_of: dict[int, Key] = {}  # this coordinator's trials not yet told: shared id -> mirror key
        self._own_recent: set[int] = set()  # this coordinator's trials created since the last sync
        self._foreign_open: set[int] = set()  # other coordinators' trials seen RUNNING
        self._unsampled: set[int] = set()  # created elsewhere, parameters not yet written (plain asks)
        self._max_seen = -1
        self._last_sync = time.monotonic()
        self._elsewhere: list[tuple[int, float, list[float]]] = []  # for pruning's reference: completed_elsewhere
        events = self._fetch_events()  # the study so far, before the first point is sampled
        args, kwargs = (sampler, study.directions, space), {"window": window, "keep_best": keep_best}
        self._front: SamplerFront
        if sampler_process:
            try:
                self._front = HybridSampler(args, kwargs, max(1, prefetch), events)
            except (OSError, pickle.PicklingError, TypeError, AttributeError) as e:
                # A sampler that cannot travel to another process still samples here.
                log.warning("sampling in the coordinator: the sampler process could not start", error=str(e))
                self._front = InlineSampler(Mirror(*args, **kwargs), prefetch, events=events)
        else:
            self._front = InlineSampler(Mirror(*args, **kwargs), prefetch, events=events)

    # -- the shared study -> the mirror -----------------------------------------------------

    def _maybe_sync(self) -> None:
        if time.monotonic() - self._last_sync < self._sync_every_s or not self._sync_lock.acquire(blocking=False):
            return
        try:
            self._last_sync = time.monotonic()
            for event in self._fetch_events():
                self._front.post(event)
        finally:
            self._sync_lock.release()

    def _fetch_events(self) -> list[Event]:
        """Events for the trials other coordinators created or finished since the last fetch."""
        with self._lock:
            known = set(self._key_of) | self._own_recent
            recheck = self._foreign_open | self._unsampled
        fetched, top = retry_db("sync", lambda: self.backend.trials_since(self.study_id, self._max_seen, known, recheck))
        events: list[Event] = []
        with self._lock:
            for stored in fetched:
                tid, t = stored.trial_id, stored.trial
                top = max(top, tid)
                if tid in self._key_of or tid in self._own_recent:
                    continue
                if tid in self._foreign_open:
                    if t.state in _FINISHED:
                        events.append(FinishTrial(tid, *sampler_view(t.state, t.value, t.user_attrs.get(ESTIMATED_LOSS_ATTR))))
                        self._foreign_open.discard(tid)
                        self._note_complete(t)
                    continue
                if t.system_attrs.get(COORDINATOR_ATTR) == self.coordinator_id:
                    continue  # ours, created by an ask that has not mapped it yet: the mirror has its point
                if t.state == TrialState.WAITING:
                    self._unsampled.add(tid)  # enqueued: some coordinator's next ask takes it
                    self._waiting = True
                    continue
                if t.params.keys() != self.space.keys():
                    if t.state == TrialState.RUNNING:
                        self._unsampled.add(tid)  # asked by a plain ask elsewhere: look again next time
                    else:
                        self._unsampled.discard(tid)
                    continue
                self._unsampled.discard(tid)
                events.append(AddTrial(tid, dict(t.params), dict(t.distributions),
                                       *sampler_view(t.state, t.value, t.user_attrs.get(ESTIMATED_LOSS_ATTR))))
                self._note_complete(t)
                if t.state == TrialState.RUNNING:
                    self._foreign_open.add(tid)
            self._max_seen = max(self._max_seen, top)
            self._own_recent = {i for i in self._own_recent if i > self._max_seen}
        return events

    def _note_complete(self, t: optuna.trial.FrozenTrial) -> None:
        """Keep a foreign COMPLETE trial's per-replicate losses for :meth:`completed_elsewhere` (caller holds the lock)."""
        losses = t.user_attrs.get(REPLICATE_LOSSES_ATTR)
        if t.state == TrialState.COMPLETE and t.value is not None and isinstance(losses, list):
            self._elsewhere.append((t.number, float(t.value), [float(v) for v in losses]))

    def completed_elsewhere(self) -> list[tuple[int, float, list[float]]]:
        with self._lock:
            out, self._elsewhere = self._elsewhere, []
        return out

    # -- asking and telling -----------------------------------------------------------------

    def ask(self) -> AskedTrial:
        """Take a sampled point and create the shared trial for it in one insert."""
        self._writer.raise_error()
        t0 = time.perf_counter()
        retried = self._ask_retry()
        if retried is not None:
            with self._lock:
                self._key_of[retried.trial_id] = retried.handle
                self._own_recent.add(retried.trial_id)
            return retried
        self._maybe_sync()
        enqueued = self._ask_enqueued() if self._waiting else None
        if enqueued is not None:
            self.ask_ms.append((time.perf_counter() - t0) * 1000)
            return enqueued
        key, params = self._front.take()
        dists = {k: self.space[k] for k in params}
        owner = {COORDINATOR_ATTR: self.coordinator_id}
        try:
            number, trial_id = retry_db("ask", lambda: self.backend.create_trial(self.study_id, params, dists, owner))
        except BaseException:
            self._front.post(FinishTrial(key, TrialState.FAIL, None))  # the point never became a trial
            raise
        with self._lock:
            self._key_of[trial_id] = key
            self._own_recent.add(trial_id)
        self.ask_ms.append((time.perf_counter() - t0) * 1000)
        return AskedTrial(number, trial_id, params, key)

    def _ask_enqueued(self) -> AskedTrial | None:
        """Take an enqueued trial, if any: its fixed values, the rest from a sampled point."""
        popped = retry_db("ask", lambda: self.backend.pop_waiting(self.study_id, {COORDINATOR_ATTR: self.coordinator_id}))
        if popped is None:
            self._waiting = False  # until a fetch sees another one
            return None
        params = {k: popped.fixed_params[k] for k in self.space if k in popped.fixed_params}
        if params.keys() != self.space.keys():
            sampled_key, sampled = self._front.take()
            self._front.post(FinishTrial(sampled_key, TrialState.FAIL, None))  # only its missing values are used
            params = {k: params.get(k, sampled[k]) for k in self.space}
        retry_db("ask", lambda: self.backend.set_params(popped.trial_id, params, self.space))
        key = ("enqueued", popped.trial_id)
        self._front.post(AddTrial(key, dict(params), dict(self.space), TrialState.RUNNING, None))
        with self._lock:
            self._key_of[popped.trial_id] = key
            self._own_recent.add(popped.trial_id)
            self._unsampled.discard(popped.trial_id)
        return AskedTrial(popped.number, popped.trial_id, params, key)

    def _mirror_retry(self, params: dict[str, Any], dists: dict[str, BaseDistribution], trial_id: int) -> Key:
        key = ("retry", trial_id)
        self._front.post(AddTrial(key, params, dists, TrialState.RUNNING, None))
        return key

    def _on_tell(self, trial: AskedTrial, state: TrialState, value: float | None) -> None:
        with self._lock:
            key = self._key_of.pop(trial.trial_id, None)
        if key is not None:
            self._front.post(FinishTrial(key, state, value))

    def close(self) -> None:
        self._front.close()
        super().close()
