"""The sampler's copy of the study: in memory, bounded, addressed by stable keys.

A :class:`Mirror` owns an in-memory Optuna study and the job's sampler. The
coordinator describes the shared study to it with events, and asks it for
points; it never touches a database, so it can live in the coordinator's
process or in a sampler process (``sampling.py``) unchanged. It uses Optuna's
public API only.

Events (small frozen dataclasses, cheap to pickle):

- :class:`AddTrial`: a trial sampled elsewhere (another coordinator's, an
  enqueued trial, or a lost trial asked again), RUNNING or finished. RUNNING
  trials stay in the mirror, so TPE's constant liar keeps concurrent points apart.
- :class:`FinishTrial`: a trial the mirror holds finished.

Keys: a point the mirror sampled is ``"<prefix><n>"`` (``s0``, ``s1``...); trials added by event keep the
key the coordinator gave them (the shared trial id). Past ``window`` finished
trials the mirror is rebuilt from the ``keep_best`` best and the most recent
others: the sampler's cost stays bounded, keys stay valid (a dropped trial's
key is forgotten; finishing it later is a no-op).

Not thread-safe: one owner calls it at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from modelops_calabaria.backend.generic import GenericBackend
from modelops_calabaria.backend.ledger import MemoryLedger
from modelops_calabaria.calibration.scales import LogitSearch, search_space, to_natural, to_search

Key = Any


@dataclass(frozen=True)
class AddTrial:
    """A trial the mirror did not sample: add it, RUNNING or finished."""

    key: Key
    params: dict[str, Any]
    distributions: dict[str, BaseDistribution]
    state: TrialState
    value: float | None


@dataclass(frozen=True)
class FinishTrial:
    """A trial the mirror holds finished (a no-op if it left the window meanwhile)."""

    key: Key
    state: TrialState
    value: float | None


Event = Union[AddTrial, FinishTrial]
_FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


class Mirror:
    """An in-memory study that samples points and follows the shared study through events."""

    def __init__(self, sampler: optuna.samplers.BaseSampler, directions: list[optuna.study.StudyDirection],
                 space: Mapping[str, BaseDistribution], *, window: int = 150, keep_best: int = 50,
                 prefix: str = "s", reseed: bool = False) -> None:
        if reseed:
            # A second mirror of the same study (the sampler process taking over from the
            # coordinator's) must not replay the first one's random stream point for point.
            sampler.reseed_rng()
        # transform: logit — the wrapped sampler works on the logit scale, the events and points
        # are natural values (scales.py)
        self._logit = sampler.specs if isinstance(sampler, LogitSearch) else {}
        self._sampler = sampler.inner if isinstance(sampler, LogitSearch) else sampler
        self._prefix = prefix
        self._directions = list(directions)
        self._space = search_space(space, self._logit)
        self._window, self._keep_best = window, keep_best
        self._number: dict[Key, int] = {}  # key -> trial number in the current in-memory study
        self._samples = 0
        self._study = self._new_study()

    def _new_study(self) -> optuna.Study:
        self._store = GenericBackend(optuna.storages.InMemoryStorage(), MemoryLedger())
        study = optuna.create_study(storage=self._store.optuna_storage, sampler=self._sampler, directions=self._directions)
        self._sid = self._store.study_id(study.study_name)
        self._tid: dict[int, int] = {}  # trial number -> trial id, for running trials
        return study

    def _add_running(self, params: Mapping[str, Any], dists: Mapping[str, BaseDistribution],
                     system_attrs: Mapping[str, Any] | None = None) -> int:
        number, tid = self._store.create_trial(self._sid, params, dists, system_attrs or {})
        self._tid[number] = tid
        return number

    # -- events ---------------------------------------------------------------------------

    def apply(self, events: Iterable[Event]) -> None:
        """Apply :class:`AddTrial` and :class:`FinishTrial` events in order."""
        for event in events:
            if isinstance(event, AddTrial):
                state = TrialState(event.state)
                number = self._add(event.params, event.distributions, state, _value(state, event.value))
                if state == TrialState.RUNNING:
                    self._number[event.key] = number  # only a running trial is ever finished
            elif isinstance(event, FinishTrial):
                state = TrialState(event.state)
                self._finish(event.key, state, _value(state, event.value))
            else:
                raise ValueError(f"unknown mirror event {event!r}")

    def _add(self, params: Mapping[str, Any], dists: Mapping[str, BaseDistribution], state: TrialState,
             value: float | None) -> int:
        if self._logit:
            params, dists = to_search(params, self._logit), search_space(dists, self._logit)
        if state == TrialState.RUNNING:
            return self._add_running(params, dists)
        self._study.add_trial(optuna.trial.create_trial(
            state=state, values=None if value is None else [value], params=dict(params), distributions=dict(dists)))
        return self._store.n_trials(self._sid) - 1

    def _finish(self, key: Key, state: TrialState, value: float | None) -> None:
        number = self._number.get(key)
        if number is None:
            return  # dropped from the window meanwhile
        trial_id = self._tid.get(number)
        if trial_id is None:
            return
        self._store.finish_trial(trial_id, state, value, {})  # False if already finished: nothing to do
        if state in _FINISHED:
            self._tid.pop(number, None)
            # A finished trial needs no key unless it stays in the window, where it is never finished again.
            del self._number[key]

    # -- sampling -------------------------------------------------------------------------

    def sample(self) -> tuple[Key, dict[str, Any]]:
        """A new point; it stays RUNNING in the mirror until its ``finish`` event."""
        self._maybe_shrink()
        trial = self._study.ask(self._space)
        key = f"{self._prefix}{self._samples}"
        self._samples += 1
        self._number[key] = trial.number
        self._tid[trial.number] = self._store.trial_id_of(self._sid, trial.number)
        return key, to_natural(trial.params, self._logit)

    def step(self, events: Iterable[Event], n: int) -> list[tuple[Key, dict[str, Any]]]:
        """Apply ``events``, then sample ``n`` points."""
        self.apply(events)
        return [self.sample() for _ in range(n)]

    def trials(self) -> list[FrozenTrial]:
        """The mirror's trials (for inspection)."""
        return self._study.get_trials(deepcopy=False)

    def _maybe_shrink(self) -> None:
        """Past the window, rebuild the study from the best and the most recent finished trials."""
        limit = self._window + self._window // 4
        if self._store.n_trials(self._sid) <= limit:
            return
        trials = self._study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in _FINISHED]
        if len(finished) <= limit:
            return
        complete = sorted((t for t in finished if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        if self._directions[0] == optuna.study.StudyDirection.MAXIMIZE:
            complete.reverse()
        keep = {t.number for t in complete[: self._keep_best]}
        for t in sorted(finished, key=lambda t: t.number, reverse=True):
            if len(keep) >= self._window:
                break
            keep.add(t.number)
        self._study = self._new_study()
        renumber: dict[int, int] = {}
        for t in trials:
            # Whole trials, system attributes included: samplers such as CMA-ES keep their
            # state there.
            if t.state == TrialState.RUNNING:
                renumber[t.number] = self._add_running(t.params, t.distributions, t.system_attrs)
            elif t.number in keep:
                self._study.add_trial(t)
                renumber[t.number] = self._store.n_trials(self._sid) - 1
        self._number = {key: renumber[n] for key, n in self._number.items() if n in renumber}


def _value(state: TrialState, value: float | None) -> float | None:
    """Only a COMPLETE trial has a value (Optuna refuses to copy a FAIL trial that has one)."""
    return value if TrialState(state) == TrialState.COMPLETE else None
