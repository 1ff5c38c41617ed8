"""Asking and telling trials on the shared study: the coordinator's hot path.

Two askers share one contract (``ask`` / ``tell_complete`` / ``tell_fail`` /
``close``; thread-safe):

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
path: on a relational storage in one transaction (state, value, and the
per-target values or the failure reason), elsewhere in two Optuna calls. ``close`` waits for every write and raises the first write
error, so no trial is left untold.

The budget claim happens before ``ask`` (in the wire): a pre-sampled point
exists only in the mirror until a claimed slot turns it into a trial.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from modelops_calabaria.calibration.mirror import Event, Key, Mirror
from modelops_calabaria.calibration.provenance import pop_start
from modelops_calabaria.calibration.rdbfast import create_running_trial, finish_trial, trial_ids_after, unwrap
from modelops_calabaria.calibration.sampling import HybridSampler, InlineSampler
from modelops_calabaria.calibration.study import COORDINATOR_ATTR, FAIL_REASON, RETRY_ATTR, TARGETS_ATTR
from modelops_calabaria.dbretry import retry_db
from modelops_calabaria.logging import get_logger

_FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
log = get_logger(__name__)


@dataclass
class AskedTrial:
    """A trial created in the shared study and not yet told."""

    number: int
    trial_id: int
    params: dict[str, Any]
    handle: Any = field(default=None, repr=False)  # DirectAsker: optuna Trial; MirroredAsker: mirror key


class _TellWriter:
    """Writes tells to the shared storage on a few threads (``threads=0``: in the
    caller's thread, before ``submit`` returns); ``close`` drains them."""

    def __init__(self, storage: optuna.storages.BaseStorage, threads: int) -> None:
        self._storage = storage
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="calabaria-tell") if threads else None
        self._pending: set[Future] = set()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self.tell_ms: list[float] = []

    def submit(self, trial_id: int, state: TrialState, value: float | None, attr: tuple[str, Any]) -> None:
        self.raise_error()
        if self._pool is None:
            self._write(trial_id, state, value, attr)
            return
        future = self._pool.submit(self._write, trial_id, state, value, attr)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _write(self, trial_id: int, state: TrialState, value: float | None, attr: tuple[str, Any]) -> None:
        t0 = time.perf_counter()
        backend = unwrap(self._storage)
        if isinstance(backend, optuna.storages.RDBStorage):
            retry_db("tell", lambda: finish_trial(backend, trial_id, state, value, attr))
            self.tell_ms.append((time.perf_counter() - t0) * 1000)
            return
        try:
            retry_db("tell", lambda: self._storage.set_trial_user_attr(trial_id, *attr))
            retry_db("tell", lambda: self._storage.set_trial_state_values(
                trial_id, state, None if value is None else [value]))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished elsewhere meanwhile (recovered as stale): the first word stands
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
                 retries: Callable[[], dict | None] | None = None) -> None:
        self.study = study
        self.space = space
        self.coordinator_id = coordinator_id
        self._storage = study._storage
        self._writer = _TellWriter(self._storage, writers)
        self._retries = retries
        self.ask_ms: list[float] = []

    def _ask_retry(self) -> AskedTrial | None:
        """A trial with the parameters of a lost trial, if any is queued (``retry_lost_trials``)."""
        if self._retries is None:
            return None
        params = self._retries()  # the ledger retries its own database calls
        if params is None:
            return None
        template = _template(dict(params), {k: self.space[k] for k in params}, self.coordinator_id)
        template.system_attrs[RETRY_ATTR] = True
        number, trial_id = retry_db("ask", lambda: _create(self._storage, self.study._study_id, template))
        return AskedTrial(number, trial_id, dict(params), self._mirror_retry(template, trial_id))

    def _mirror_retry(self, template: FrozenTrial, trial_id: int) -> Any:
        return None

    def tell_complete(self, trial: AskedTrial, loss: float, per_target: Mapping[str, float], busy_s: float) -> None:
        """Finish ``trial`` COMPLETE with its per-target values (written asynchronously)."""
        self._on_tell(trial, TrialState.COMPLETE, loss)
        self._writer.submit(trial.trial_id, TrialState.COMPLETE, float(loss),
                            (TARGETS_ATTR, {k: float(v) for k, v in per_target.items()}))

    def tell_fail(self, trial: AskedTrial, reason: str, busy_s: float = 0.0) -> None:
        """Finish ``trial`` FAIL with ``reason`` (written asynchronously)."""
        self._on_tell(trial, TrialState.FAIL, None)
        self._writer.submit(trial.trial_id, TrialState.FAIL, None, (FAIL_REASON, reason[:8000]))

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
                 retries: Callable[[], dict | None] | None = None) -> None:
        super().__init__(study, space, coordinator_id, writers=0, retries=retries)

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
        study = self.study
        trial_id = retry_db("ask", lambda: pop_start(study, COORDINATOR_ATTR, self.coordinator_id))  # `start:` points first
        if trial_id is None:
            template = _template({}, {}, self.coordinator_id)
            trial_id = retry_db("ask", lambda: self._storage.create_new_trial(study._study_id, template_trial=template))
        study._thread_local.cached_all_trials = None  # as study.ask does: see other processes' trials
        trial = retry_db("ask", lambda: Trial(study, trial_id))  # runs the sampler's relative sampling
        for name, dist in self.space.items():
            retry_db("ask", lambda name=name, dist=dist: trial._suggest(name, dist))
        self.ask_ms.append((time.perf_counter() - t0) * 1000)
        return AskedTrial(trial.number, trial_id, dict(trial.params), trial)


def _template(params: dict[str, Any], dists: dict[str, BaseDistribution], owner: str) -> FrozenTrial:
    return FrozenTrial(
        number=-1, state=TrialState.RUNNING, value=None, datetime_start=None, datetime_complete=None,
        params=params, distributions=dists, user_attrs={}, system_attrs={COORDINATOR_ATTR: owner},
        intermediate_values={}, trial_id=-1,
    )


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
                 retries: Callable[[], dict | None] | None = None, sampler_process: bool = False) -> None:
        super().__init__(study, space, coordinator_id, writers, retries)
        self._sync_every_s = sync_every_s
        self._lock = threading.Lock()  # guards the maps below
        self._sync_lock = threading.Lock()  # one sync at a time
        self._key_of: dict[int, Key] = {}  # this coordinator's trials not yet told: shared id -> mirror key
        self._own_recent: set[int] = set()  # this coordinator's trials created since the last sync
        self._foreign_open: set[int] = set()  # other coordinators' trials seen RUNNING
        self._unsampled: set[int] = set()  # created elsewhere, parameters not yet written (plain asks)
        self._max_seen = -1
        self._last_sync = time.monotonic()
        events = self._fetch_events()  # the study so far, before the first point is sampled
        args, kwargs = (sampler, study.directions, space), {"window": window, "keep_best": keep_best}
        self._front: InlineSampler | HybridSampler
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
        """Events for the trials other coordinators created or finished since the last fetch.

        On a relational storage, one light query lists the new trial ids; only
        other coordinators' trials are then loaded in full.
        """
        storage, sid = unwrap(self._storage), self.study._study_id
        with self._lock:
            known = set(self._key_of) | self._own_recent
            recheck = self._foreign_open | self._unsampled
        if isinstance(storage, optuna.storages.RDBStorage):
            new_ids = retry_db("sync", lambda: trial_ids_after(storage, sid, self._max_seen))
            top = max(new_ids, default=self._max_seen)
            wanted = {i for i in new_ids if i not in known} | recheck
            fetched = retry_db("sync", lambda: storage._get_trials(sid, None, wanted, top)) if wanted else []
        else:
            top = self._max_seen
            fetched = [t for t in retry_db("sync", lambda: storage.get_all_trials(sid, deepcopy=False))
                       if (t._trial_id > self._max_seen and t._trial_id not in known) or t._trial_id in recheck]
        events: list[Event] = []
        with self._lock:
            for t in fetched:
                tid = t._trial_id
                top = max(top, tid)
                if tid in self._key_of or tid in self._own_recent:
                    continue
                if tid in self._foreign_open:
                    if t.state in _FINISHED:
                        events.append(("finish", tid, t.state, t.value))
                        self._foreign_open.discard(tid)
                    continue
                if t.system_attrs.get(COORDINATOR_ATTR) == self.coordinator_id:
                    continue  # ours, created by an ask that has not mapped it yet: the mirror has its point
                if t.params.keys() != self.space.keys():
                    if t.state == TrialState.RUNNING:
                        self._unsampled.add(tid)  # asked by a plain ask elsewhere: look again next time
                    else:
                        self._unsampled.discard(tid)
                    continue
                self._unsampled.discard(tid)
                events.append(("add", tid, dict(t.params), dict(t.distributions), t.state, t.value))
                if t.state == TrialState.RUNNING:
                    self._foreign_open.add(tid)
            self._max_seen = max(self._max_seen, top)
            self._own_recent = {i for i in self._own_recent if i > self._max_seen}
        return events

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
        key, params = self._front.take()
        template = _template(params, {k: self.space[k] for k in params}, self.coordinator_id)
        try:
            number, trial_id = retry_db("ask", lambda: _create(self._storage, self.study._study_id, template))
        except BaseException:
            self._front.post(("finish", key, TrialState.FAIL, None))  # the point never became a trial
            raise
        with self._lock:
            self._key_of[trial_id] = key
            self._own_recent.add(trial_id)
        self.ask_ms.append((time.perf_counter() - t0) * 1000)
        return AskedTrial(number, trial_id, params, key)

    def _mirror_retry(self, template: FrozenTrial, trial_id: int) -> Key:
        key = ("retry", trial_id)
        self._front.post(("add", key, dict(template.params), dict(template.distributions), TrialState.RUNNING, None))
        return key

    def _on_tell(self, trial: AskedTrial, state: TrialState, value: float | None) -> None:
        with self._lock:
            key = self._key_of.pop(trial.trial_id, None)
        if key is not None:
            self._front.post(("finish", key, state, value))

    def close(self) -> None:
        self._front.close()
        super().close()


def _create(storage: optuna.storages.BaseStorage, study_id: int, template: FrozenTrial) -> tuple[int, int]:
    """Insert a trial from ``template``; return (number, trial id) in one round trip where possible."""
    storage = unwrap(storage)
    if isinstance(storage, optuna.storages.RDBStorage):
        return create_running_trial(storage, study_id, template.params, template.distributions, template.system_attrs)
    trial_id = storage.create_new_trial(study_id, template_trial=template)
    return storage.get_trial_number_from_id(trial_id), trial_id

