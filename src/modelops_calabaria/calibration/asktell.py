"""Asking and telling trials on the shared study: the coordinator's hot path.

Two askers share one contract (``ask`` / ``tell_complete`` / ``tell_fail`` /
``close``; thread-safe):

- :class:`DirectAsker` runs Optuna's sampler against the shared storage, as
  plain ``study.ask`` does. Every ask re-reads the study and its cost grows
  with the number of trials.
- :class:`MirroredAsker` (the default fast path) samples against an in-memory
  mirror of the study and writes each new trial, with its parameters and
  owner, to the shared storage in one insert. The mirror holds this
  coordinator's trials as they are told and other coordinators' trials
  fetched incrementally; RUNNING trials stay in it, so TPE's constant liar
  keeps concurrent asks diverse. Past ``window`` finished trials the mirror
  keeps the ``keep_best`` best and the most recent others, which bounds the
  sampler's cost. In parallel mode a sampling thread keeps a few samples
  ready, so a loop's ask is a queue pop plus one insert.

Tells are written by a small pool of writer threads, off the loops' critical
path: on a relational storage in one transaction (state, value, and the
per-target values or the failure reason), elsewhere in two Optuna calls. ``close`` waits for every write and raises the first write
error, so no trial is left untold.

The budget claim happens before ``ask`` (in the wire): a pre-sampled point
exists only in the mirror until a claimed slot turns it into a trial.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from modelops_calabaria.calibration.rdbfast import create_running_trial, finish_trial
from modelops_calabaria.calibration.study import COORDINATOR_ATTR, FAIL_REASON, RETRY_ATTR, TARGETS_ATTR
from modelops_calabaria.dbretry import retry_db

_FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


@dataclass
class AskedTrial:
    """A trial created in the shared study and not yet told."""

    number: int
    trial_id: int
    params: dict[str, Any]
    handle: Any = field(default=None, repr=False)  # DirectAsker: optuna Trial; MirroredAsker: mirror trial id


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
        backend = _backend(self._storage)
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
        return AskedTrial(number, trial_id, dict(params), self._mirror_retry(template))

    def _mirror_retry(self, template: FrozenTrial) -> Any:
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
    """The fast path: sample in an in-memory mirror, create each trial with one insert."""

    def __init__(self, study: optuna.Study, space: dict[str, BaseDistribution], coordinator_id: str,
                 sampler: optuna.samplers.BaseSampler, *, writers: int = 2, prefetch: int = 0,
                 window: int = 300, keep_best: int = 100, sync_every_s: float = 1.0,
                 retries: Callable[[], dict | None] | None = None) -> None:
        super().__init__(study, space, coordinator_id, writers, retries)
        self._sampler = sampler
        self._window, self._keep_best = window, keep_best
        self._sync_every_s = sync_every_s
        self._lock = threading.RLock()  # guards the maps and swapping the mirror
        self._sampling = threading.Lock()  # one sample at a time; rebuilds happen only here
        self._mirror_of: dict[int, int] = {}  # shared trial id -> mirror trial number
        self._open_shared: set[int] = set()  # other coordinators' trials seen RUNNING
        self._max_seen = -1
        self._last_sync = 0.0
        self._generation = 0
        self._last_renumber: dict[int, int] = {}
        self._mirror = self._new_mirror()
        self._sync(force=True)
        self._ready: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._prefetcher: threading.Thread | None = None
        if prefetch > 0:
            self._prefetcher = threading.Thread(target=self._prefetch, name="calabaria-sampler", daemon=True)
            self._prefetcher.start()

    # -- mirror ---------------------------------------------------------------------------

    def _new_mirror(self) -> optuna.Study:
        return optuna.create_study(storage=optuna.storages.InMemoryStorage(), sampler=self._sampler,
                                   directions=self.study.directions)

    def _add(self, t: FrozenTrial) -> int:
        """Copy a shared trial into the mirror; return its mirror number."""
        copy = optuna.trial.create_trial(
            state=t.state, values=t.values, params=t.params, distributions=t.distributions,
            system_attrs={k: v for k, v in t.system_attrs.items() if k.startswith("constant_liar")},
        ) if t.state != TrialState.RUNNING else None
        if copy is not None:
            self._mirror.add_trial(copy)
            return self._mirror._storage.get_n_trials(self._mirror._study_id) - 1
        # A RUNNING trial of another coordinator: as a running trial, so the liar sees it.
        mirror_id = self._mirror._storage.create_new_trial(self._mirror._study_id, template_trial=_mirror_running(t))
        return self._mirror._storage.get_trial_number_from_id(mirror_id)

    def _sync(self, *, force: bool = False) -> None:
        """Fetch trials other coordinators created or finished since the last sync."""
        now = time.monotonic()
        if not force and now - self._last_sync < self._sync_every_s:
            return
        self._last_sync = now
        storage, sid = _backend(self._storage), self.study._study_id
        if isinstance(storage, optuna.storages.RDBStorage):
            fetched = retry_db("sync", lambda: storage._get_trials(sid, None, set(self._open_shared), self._max_seen))
        else:
            fetched = [t for t in retry_db("sync", lambda: storage.get_all_trials(sid, deepcopy=False))
                       if t._trial_id > self._max_seen or t._trial_id in self._open_shared]
        with self._lock:
            for t in fetched:
                tid = t._trial_id
                self._max_seen = max(self._max_seen, tid)
                if tid in self._mirror_of:
                    if tid in self._open_shared and t.state in _FINISHED:
                        self._finish_mirror(self._mirror_of[tid], t.state, t.value)
                        self._open_shared.discard(tid)
                    continue
                if t.system_attrs.get(COORDINATOR_ATTR) == self.coordinator_id and t.state == TrialState.RUNNING:
                    continue  # ours, being asked right now: ask() maps it
                if t.params.keys() != self.space.keys():
                    continue  # asked but not yet sampled by a direct asker elsewhere
                self._mirror_of[tid] = self._add(t)
                if t.state == TrialState.RUNNING:
                    self._open_shared.add(tid)

    def _finish_mirror(self, number: int, state: TrialState, value: float | None) -> None:
        mirror_id = self._mirror._storage.get_trial_id_from_study_id_trial_number(self._mirror._study_id, number)
        try:
            self._mirror._storage.set_trial_state_values(mirror_id, state, None if value is None else [value])
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def _maybe_shrink(self) -> None:
        """Past the window, rebuild the mirror from the best and the most recent trials."""
        if self._mirror._storage.get_n_trials(self._mirror._study_id) <= self._window + self._window // 4:
            return
        trials = self._mirror.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in _FINISHED]
        if len(finished) <= self._window + self._window // 4:
            return
        complete = sorted((t for t in finished if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        if self.study.direction == optuna.study.StudyDirection.MAXIMIZE:
            complete.reverse()
        keep = {t.number for t in complete[: self._keep_best]}
        for t in sorted(finished, key=lambda t: t.number, reverse=True):
            if len(keep) >= self._window:
                break
            keep.add(t.number)
        old, renumber = trials, {}
        self._mirror = self._new_mirror()
        for t in old:
            if t.state == TrialState.RUNNING or t.number in keep:
                if t.state == TrialState.RUNNING:
                    mid = self._mirror._storage.create_new_trial(self._mirror._study_id, template_trial=_mirror_running(t))
                    renumber[t.number] = self._mirror._storage.get_trial_number_from_id(mid)
                else:
                    self._mirror.add_trial(t)
                    renumber[t.number] = len(renumber)
        self._generation += 1
        self._last_renumber = renumber
        for tid, number in list(self._mirror_of.items()):
            if number in renumber:
                self._mirror_of[tid] = renumber[number]
            else:
                del self._mirror_of[tid]  # dropped from the window; never needed again

    # -- asking ---------------------------------------------------------------------------

    def _sample(self) -> tuple[int, Trial]:
        """A new point from the mirror, tagged with the mirror generation it belongs to.

        The sampler runs outside the lock (the in-memory storage is thread-safe), so
        asks and tells do not wait for it; only one thread samples at a time.
        """
        with self._sampling:
            with self._lock:
                self._sync()
                self._maybe_shrink()
                mirror, generation = self._mirror, self._generation
            return generation, mirror.ask(self.space)

    def _current_number(self, generation: int, sample: Trial) -> int:
        """The sample's number in the current mirror (a shrink may have renumbered it)."""
        if generation == self._generation:
            return sample.number
        if generation == self._generation - 1 and sample.number in self._last_renumber:
            return self._last_renumber[sample.number]
        mirror_id = self._mirror._storage.create_new_trial(
            self._mirror._study_id, template_trial=_mirror_running(self._mirror_frozen(sample)))
        return self._mirror._storage.get_trial_number_from_id(mirror_id)

    @staticmethod
    def _mirror_frozen(sample: Trial) -> FrozenTrial:
        return sample.study._storage.get_trial(sample._trial_id)

    def _prefetch(self) -> None:
        while not self._stop.is_set():
            item: Any
            try:
                item = self._sample()
            except BaseException as e:  # noqa: BLE001 - handed to the next ask
                item = e
            while not self._stop.is_set():
                try:
                    self._ready.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def ask(self) -> AskedTrial:
        """Take a sampled point and create the shared trial for it in one insert."""
        self._writer.raise_error()
        t0 = time.perf_counter()
        retried = self._ask_retry()
        if retried is not None:
            with self._lock:
                self._mirror_of[retried.trial_id] = retried.handle
            return retried
        if self._prefetcher is not None:
            item = self._ready.get()
            if isinstance(item, BaseException):
                raise item
            generation, sample = item
        else:
            generation, sample = self._sample()
        template = _template(dict(sample.params), {k: self.space[k] for k in sample.params}, self.coordinator_id)
        number, trial_id = retry_db("ask", lambda: _create(self._storage, self.study._study_id, template))
        with self._lock:
            self._mirror_of[trial_id] = self._current_number(generation, sample)
        self.ask_ms.append((time.perf_counter() - t0) * 1000)
        return AskedTrial(number, trial_id, dict(sample.params), sample.number)

    def _mirror_retry(self, template: FrozenTrial) -> int:
        with self._lock:
            mirror_id = self._mirror._storage.create_new_trial(self._mirror._study_id, template_trial=_mirror_running(template))
            return self._mirror._storage.get_trial_number_from_id(mirror_id)

    def _on_tell(self, trial: AskedTrial, state: TrialState, value: float | None) -> None:
        with self._lock:
            number = self._mirror_of.get(trial.trial_id)
            if number is not None:
                self._finish_mirror(number, state, value)

    def close(self) -> None:
        self._stop.set()
        if self._prefetcher is not None:
            self._prefetcher.join(timeout=30)
        super().close()


def _mirror_running(t: FrozenTrial) -> FrozenTrial:
    return FrozenTrial(
        number=-1, state=TrialState.RUNNING, value=None, datetime_start=t.datetime_start, datetime_complete=None,
        params=dict(t.params), distributions=dict(t.distributions), user_attrs={}, system_attrs={},
        intermediate_values={}, trial_id=-1,
    )


def _backend(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage under Optuna's per-process cache wrapper (``study._storage`` is the wrapper).

    Writing and reading past the cache is what another process does anyway; the
    cache picks such trials up by id.
    """
    if isinstance(storage, _CachedStorage):
        return storage._backend
    return storage


def _create(storage: optuna.storages.BaseStorage, study_id: int, template: FrozenTrial) -> tuple[int, int]:
    """Insert a trial from ``template``; return (number, trial id) in one round trip where possible."""
    storage = _backend(storage)
    if isinstance(storage, optuna.storages.RDBStorage):
        return create_running_trial(storage, study_id, template.params, template.distributions, template.system_attrs)
    trial_id = storage.create_new_trial(study_id, template_trial=template)
    return storage.get_trial_number_from_id(trial_id), trial_id

