"""The sampler's copy of the study: in memory, bounded, addressed by stable keys.

A :class:`Mirror` owns an in-memory Optuna study and the job's sampler. The
coordinator describes the shared study to it with events, and asks it for
points; it never touches a database, so it can live in the coordinator's
process or in a sampler process (``sampler_process.py``) unchanged.

Events (plain tuples, cheap to pickle):

- ``("add", key, params, distributions, state, value)``: a trial sampled
  elsewhere (another coordinator's, or a lost trial asked again), RUNNING or
  finished. RUNNING trials stay in the mirror, so TPE's constant liar keeps
  concurrent points apart.
- ``("finish", key, state, value)``: a trial the mirror holds finished.

Keys: a point the mirror sampled is ``"<prefix><n>"`` (``s0``, ``s1``...); trials added by event keep the
key the coordinator gave them (the shared trial id). Past ``window`` finished
trials the mirror is rebuilt from the ``keep_best`` best and the most recent
others: the sampler's cost stays bounded, keys stay valid (a dropped trial's
key is forgotten; finishing it later is a no-op).

Not thread-safe: one owner calls it at a time.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

Event = tuple
Key = Any
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
        self._sampler = sampler
        self._prefix = prefix
        self._directions = list(directions)
        self._space = dict(space)
        self._window, self._keep_best = window, keep_best
        self._number: dict[Key, int] = {}  # key -> trial number in the current in-memory study
        self._samples = 0
        self._study = self._new_study()

    def _new_study(self) -> optuna.Study:
        return optuna.create_study(storage=optuna.storages.InMemoryStorage(), sampler=self._sampler,
                                   directions=self._directions)

    # -- events ---------------------------------------------------------------------------

    def apply(self, events: Iterable[Event]) -> None:
        """Apply ``add`` and ``finish`` events in order."""
        for event in events:
            if event[0] == "add":
                _, key, params, dists, state, value = event
                number = self._add(params, dists, TrialState(state), _value(state, value))
                if TrialState(state) == TrialState.RUNNING:
                    self._number[key] = number  # only a running trial is ever finished
            elif event[0] == "finish":
                _, key, state, value = event
                self._finish(key, TrialState(state), _value(state, value))
            else:
                raise ValueError(f"unknown mirror event {event[0]!r}")

    def _add(self, params: Mapping[str, Any], dists: Mapping[str, BaseDistribution], state: TrialState,
             value: float | None) -> int:
        storage, sid = self._study._storage, self._study._study_id
        if state == TrialState.RUNNING:
            return storage.get_trial_number_from_id(storage.create_new_trial(sid, template_trial=_running(params, dists)))
        self._study.add_trial(optuna.trial.create_trial(
            state=state, values=None if value is None else [value], params=dict(params), distributions=dict(dists)))
        return storage.get_n_trials(sid) - 1

    def _finish(self, key: Key, state: TrialState, value: float | None) -> None:
        number = self._number.get(key)
        if number is None:
            return  # dropped from the window meanwhile
        storage, sid = self._study._storage, self._study._study_id
        trial_id = storage.get_trial_id_from_study_id_trial_number(sid, number)
        try:
            storage.set_trial_state_values(trial_id, state, None if value is None else [value])
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        if state in _FINISHED:
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
        return key, dict(trial.params)

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
        if self._study._storage.get_n_trials(self._study._study_id) <= limit:
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
        storage, sid = self._study._storage, self._study._study_id
        renumber: dict[int, int] = {}
        for t in trials:
            # Whole trials, system attributes included: samplers such as CMA-ES keep their
            # state there.
            if t.state == TrialState.RUNNING:
                running = _running(t.params, t.distributions, t.system_attrs)
                renumber[t.number] = storage.get_trial_number_from_id(storage.create_new_trial(sid, template_trial=running))
            elif t.number in keep:
                self._study.add_trial(t)
                renumber[t.number] = storage.get_n_trials(sid) - 1
        self._number = {key: renumber[n] for key, n in self._number.items() if n in renumber}


def _value(state: TrialState, value: float | None) -> float | None:
    """Only a COMPLETE trial has a value (Optuna refuses to copy a FAIL trial that has one)."""
    return value if TrialState(state) == TrialState.COMPLETE else None


def _running(params: Mapping[str, Any], dists: Mapping[str, BaseDistribution],
             system_attrs: Mapping[str, Any] | None = None) -> FrozenTrial:
    # A start time, as a sampled trial has: Optuna refuses to copy a finished trial without one.
    return FrozenTrial(
        number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.datetime.now(), datetime_complete=None,
        params=dict(params), distributions=dict(dists), user_attrs={}, system_attrs=dict(system_attrs or {}),
        intermediate_values={}, trial_id=-1,
    )
