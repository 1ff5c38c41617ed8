"""The study backend on any Optuna storage, through Optuna's public storage API only.

Used for journal files and in-memory studies; the relational backend
(``relational.py``) extends it with hand-written SQL for PostgreSQL and SQLite.
Writes that Optuna makes in several calls (attributes, then state) are not one
transaction here: a trial finished elsewhere between them keeps its first
state (Optuna refuses the second write), which is the contract's "first word
stands".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from modelops_calabaria.backend.base import (COORDINATOR_ATTR, FAIL_REASON, JOB_ATTR, PoppedTrial, StoredTrial, TrialColumns,
                                             columns_from_rows, is_report_user_attr)
from modelops_calabaria.backend.ledger import Ledger


class GenericBackend:
    """A :class:`~modelops_calabaria.backend.base.StudyBackend` on Optuna's public ``BaseStorage`` API."""

    def __init__(self, storage: optuna.storages.BaseStorage, ledger: Ledger, *, spend_claims: bool = False) -> None:
        self._storage = storage
        self.ledger = ledger
        self._spend_claims = spend_claims  # open_store's backends: a trial asked by a coordinator spends its claim
        self._names: dict[int, str] = {}

    def _claim_of(self, study_id: int, owner_attrs: Mapping[str, Any]) -> tuple[str, str] | None:
        """``(study name, owner)`` whose claim a trial with ``owner_attrs`` spends; None: no claim is spent."""
        owner = owner_attrs.get(COORDINATOR_ATTR)
        if not self._spend_claims or not isinstance(owner, str):
            return None
        name = self._names.get(study_id)
        if name is None:
            name = self._names[study_id] = self._storage.get_study_name_from_id(study_id)
        return name, owner

    def spend_claim(self, study_id: int, owner_attrs: Mapping[str, Any]) -> None:
        """Spend the claim a trial created with ``owner_attrs`` outside this backend uses (plain asks)."""
        claim = self._claim_of(study_id, owner_attrs)
        if claim is not None:
            self.ledger.spend(*claim)

    @property
    def optuna_storage(self) -> optuna.storages.BaseStorage:
        return self._storage

    def study_id(self, study_name: str) -> int:
        return self._storage.get_study_id_from_name(study_name)

    def create_trial(self, study_id: int, params: Mapping[str, Any], distributions: Mapping[str, BaseDistribution],
                     system_attrs: Mapping[str, Any]) -> tuple[int, int]:
        # Spent first, in the ledger's own transaction: a kill before the trial is created
        # leaves the budget one slot short, never over (``reconcile`` repairs it on a re-run).
        self.spend_claim(study_id, system_attrs)
        template = FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=dt.datetime.now(), datetime_complete=None,
            params=dict(params), distributions=dict(distributions), user_attrs={}, system_attrs=dict(system_attrs),
            intermediate_values={}, trial_id=-1,
        )
        trial_id = self._storage.create_new_trial(study_id, template_trial=template)
        return self._storage.get_trial_number_from_id(trial_id), trial_id

    def enqueue(self, study_id: int, points: Sequence[Mapping[str, Any]]) -> None:
        for point in points:
            template = FrozenTrial(
                number=-1, state=TrialState.WAITING, value=None, datetime_start=None, datetime_complete=None, params={},
                distributions={}, user_attrs={}, system_attrs={"fixed_params": dict(point)}, intermediate_values={}, trial_id=-1,
            )
            self._storage.create_new_trial(study_id, template_trial=template)

    def finish_trial(self, trial_id: int, state: TrialState, value: float | None, user_attrs: Mapping[str, Any]) -> bool:
        try:
            if self._storage.get_trial(trial_id).state != TrialState.RUNNING:
                return False
            for key, attr in user_attrs.items():
                self._storage.set_trial_user_attr(trial_id, key, attr)
            return self._storage.set_trial_state_values(trial_id, state, None if value is None else [value])
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # finished elsewhere meanwhile (recovered as stale): the first word stands

    def fail_if_running(self, trial_id: int, reason: str) -> bool:
        return self.finish_trial(trial_id, TrialState.FAIL, None, {FAIL_REASON: reason})

    def pop_waiting(self, study_id: int, owner_attrs: Mapping[str, Any]) -> PoppedTrial | None:
        for t in self._storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = self._storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            try:
                # Optuna's own compare-and-set: False when another caller took it first.
                if not self._storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            try:
                self.spend_claim(study_id, owner_attrs)
            except BaseException:
                # Taken (Optuna cannot put it back), and it may not run on a slot given back.
                self._storage.set_trial_user_attr(trial_id, FAIL_REASON, "taken by a coordinator declared lost")
                self._storage.set_trial_state_values(trial_id, TrialState.FAIL)
                raise
            for key, attr in owner_attrs.items():
                self._storage.set_trial_system_attr(trial_id, key, attr)
            return PoppedTrial(trial_id, t.number, dict(t.system_attrs.get("fixed_params") or {}))
        return None

    def trials_owned(self, study_id: int, owner: str) -> int:
        return sum(1 for t in self._storage.get_all_trials(study_id, deepcopy=False)
                   if t.system_attrs.get(COORDINATOR_ATTR) == owner)

    def set_params(self, trial_id: int, params: Mapping[str, Any], distributions: Mapping[str, BaseDistribution]) -> None:
        for name, value in params.items():
            dist = distributions[name]
            self._storage.set_trial_param(trial_id, name, dist.to_internal_repr(value), dist)

    def trial_id_of(self, study_id: int, number: int) -> int:
        """The storage-wide id of the study's trial ``number``."""
        return self._storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def _with_ids(self, study_id: int, trials: list[FrozenTrial]) -> list[StoredTrial]:
        return [StoredTrial(self._storage.get_trial_id_from_study_id_trial_number(study_id, t.number), t) for t in trials]

    def running_trials(self, study_id: int) -> list[StoredTrial]:
        return self._with_ids(study_id, self._storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)))

    def trials_since(self, study_id: int, cursor: int, skip: set[int], recheck: set[int]) -> tuple[list[StoredTrial], int]:
        every = self._with_ids(study_id, self._storage.get_all_trials(study_id, deepcopy=False))
        top = max((s.trial_id for s in every), default=cursor)
        wanted = [s for s in every if (s.trial_id > cursor and s.trial_id not in skip) or s.trial_id in recheck]
        return wanted, max(top, cursor)

    def trial_columns(self, study_id: int) -> TrialColumns:
        # The fallback: every FrozenTrial built, then columns taken from them.
        trials = self._storage.get_all_trials(study_id, deepcopy=False)
        return columns_from_rows(
            [t.number for t in trials], [t.state for t in trials], [t.value if t.values else None for t in trials],
            [t.datetime_start for t in trials], [t.datetime_complete for t in trials],
            [{n: (v, t.distributions[n]) for n, v in t.params.items()} for t in trials],
            [{k: v for k, v in t.user_attrs.items() if is_report_user_attr(k)} for t in trials],
            [t.system_attrs.get(COORDINATOR_ATTR) for t in trials],
        )

    def stored_job(self, study_name: str) -> str | None:
        try:
            study_id = self._storage.get_study_id_from_name(study_name)
        except KeyError:
            return None
        return self._storage.get_study_system_attrs(study_id).get(JOB_ATTR) or ""

    def store_job(self, study_id: int, job_json: str) -> None:
        self._storage.set_study_system_attr(study_id, JOB_ATTR, job_json)

    def study_attr(self, study_id: int, key: str) -> Any:
        return self._storage.get_study_system_attrs(study_id).get(key)

    def study_attrs(self, study_id: int) -> dict[str, Any]:
        return dict(self._storage.get_study_system_attrs(study_id))

    def trials(self, study_id: int, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self._storage.get_all_trials(study_id, deepcopy=False, states=states)

    def n_trials(self, study_id: int) -> int:
        return self._storage.get_n_trials(study_id)

    def minimizes(self, study_id: int) -> bool:
        return self._storage.get_study_directions(study_id)[0] == optuna.study.StudyDirection.MINIMIZE

    def set_study_attr(self, study_id: int, key: str, value: Any) -> None:
        self._storage.set_study_system_attr(study_id, key, value)

    def close(self) -> None:
        self.ledger.close()
