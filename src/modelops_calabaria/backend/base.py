"""The study backend's interface: what the service asks of a study's storage.

Everything the service writes to or reads from Optuna's storage beyond the
public ``optuna.Study`` API goes through :class:`StudyBackend`. Two
implementations: :class:`~modelops_calabaria.backend.relational.RelationalBackend`
(PostgreSQL, SQLite: hand-written SQL on Optuna's tables, the fast path) and
:class:`~modelops_calabaria.backend.generic.GenericBackend` (journal file,
in-memory: Optuna's public storage API only). Open one with
:func:`~modelops_calabaria.backend.factory.open_store`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from modelops_calabaria.backend.ledger import Ledger

# Attribute names the service writes on trials and studies (docs/architecture.md).
JOB_ATTR = "calabaria:job"  # study system attr: the job spec as JSON
COORDINATOR_ATTR = "calabaria:coordinator"  # trial system attr: who asked it
RETRY_ATTR = "calabaria:retry_of_lost"  # trial system attr: re-asks a lost trial's parameters
FAIL_REASON = "fail_reason"  # user attr of a FAIL trial
TARGETS_ATTR = "targets"  # user attr of a COMPLETE trial: {target: aggregated loss}
BUSY_ATTR = "busy_s"  # user attr: the trial's simulation-seconds
LOSS_ATTR_PREFIX = "loss:"  # user attr per target: its aggregated loss, as a number
REPLICATES_ATTR = "replicates"  # user attr (pruning on): replicates the trial ran (fewer than n_replicates when PRUNED)
REPLICATE_LOSSES_ATTR = "replicate_losses"  # user attr (pruning on): per-replicate losses, in replicate order
PARTIAL_LOSS_ATTR = "partial_loss"  # user attr of a PRUNED trial: the mean loss of the replicates it ran
PRUNED_AGAINST_ATTR = "pruned_against"  # user attr of a PRUNED trial: the completed trial it was compared with
ESTIMATED_LOSS_ATTR = "estimated_loss"  # user attr of a PRUNED trial: its full loss as estimated (what samplers learn)
OBJECTIVE_NAME = "loss"  # the study's metric name (optuna-dashboard shows it)


@dataclass(frozen=True)
class StoredTrial:
    """A trial read from the storage, with its storage-wide id."""

    trial_id: int
    trial: FrozenTrial


@dataclass(frozen=True)
class PoppedTrial:
    """An enqueued (WAITING) trial this coordinator took and set RUNNING."""

    trial_id: int
    number: int
    fixed_params: dict[str, Any]


def is_report_user_attr(key: str) -> bool:
    """Whether :meth:`StudyBackend.trial_columns` reads the user attribute ``key``."""
    return key in (TARGETS_ATTR, FAIL_REASON, BUSY_ATTR) or key.startswith(LOSS_ATTR_PREFIX)


@dataclass(frozen=True)
class TrialColumns:
    """Every trial of a study as columns: what a report draws, without building FrozenTrials.

    One entry per trial, ordered by trial number; entry ``i`` of every column
    is the same trial, and each equals what ``study.get_trials()`` holds:

    - ``number`` (int64), ``state`` (``TrialState``), ``value``: the objective
      (float64; NaN where the trial has no value), ``datetime_start`` /
      ``datetime_complete`` (as Optuna returns them; None where unset);
    - ``params[name]``: the trial's value of parameter ``name`` in Optuna's
      external form; a float64 array (int parameters as floats; NaN where the
      trial lacks it) unless some trial holds it as a categorical, then an
      object array of the choices (None where it lacks it); ``present[name]``
      says where the trial has it (a choice may itself be None);
      ``distributions[name]`` is the distribution of its first trial holding it;
    - ``user_attrs``: per trial, the user attributes ``targets``,
      ``fail_reason``, ``busy_s`` and every ``loss:<target>`` it has (decoded JSON);
    - ``coordinator``: per trial, the ``calabaria:coordinator`` system
      attribute (None where unset).
    """

    number: np.ndarray
    state: tuple[TrialState, ...]
    value: np.ndarray
    datetime_start: tuple[dt.datetime | None, ...]
    datetime_complete: tuple[dt.datetime | None, ...]
    params: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    distributions: dict[str, BaseDistribution]
    user_attrs: tuple[dict[str, Any], ...]
    coordinator: tuple[Any, ...]

    def __len__(self) -> int:
        return len(self.number)

    def params_of(self, i: int) -> dict[str, Any]:
        """Trial ``i``'s parameters as ``FrozenTrial.params`` holds them (int parameters as int)."""
        out: dict[str, Any] = {}
        for name, values in self.params.items():
            if self.present[name][i]:
                v = values[i]
                if isinstance(v, np.floating):
                    v = int(v) if isinstance(self.distributions[name], optuna.distributions.IntDistribution) else float(v)
                out[name] = v
        return out


def columns_from_rows(number: list[int], state: list[TrialState], value: list[float | None],
                      start: list[dt.datetime | None], end: list[dt.datetime | None],
                      params: list[dict[str, tuple[Any, BaseDistribution]]], user_attrs: list[dict[str, Any]],
                      coordinator: list[Any]) -> TrialColumns:
    """Assemble :class:`TrialColumns` from per-trial rows (any order; sorted here by number).

    ``params[i]`` maps a parameter name to (external value, distribution).
    """
    order = sorted(range(len(number)), key=number.__getitem__)
    names: dict[str, BaseDistribution] = {}
    categorical: set[str] = set()
    for i in order:
        for name, (_, dist) in params[i].items():
            names.setdefault(name, dist)
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                categorical.add(name)
    n = len(order)
    cols = {name: np.full(n, None, dtype=object) if name in categorical else np.full(n, np.nan) for name in names}
    present = {name: np.zeros(n, dtype=bool) for name in names}
    for row, i in enumerate(order):
        for name, (v, _) in params[i].items():
            cols[name][row] = v if name in categorical else float(v)
            present[name][row] = True
    return TrialColumns(
        number=np.array([number[i] for i in order], dtype=np.int64),
        state=tuple(state[i] for i in order),
        value=np.array([np.nan if value[i] is None else value[i] for i in order], dtype=float),
        datetime_start=tuple(start[i] for i in order),
        datetime_complete=tuple(end[i] for i in order),
        params=cols, present=present, distributions=names,
        user_attrs=tuple(user_attrs[i] for i in order),
        coordinator=tuple(coordinator[i] for i in order),
    )


class StudyBackend(Protocol):
    """A study's storage and ledger, shared by every coordinator of the study.

    Contract (every implementation; ``tests/test_storage_contract.py``):

    - Trials may be created and finished by other coordinators, in other
      processes and on other hosts, at any moment: nothing read is assumed to
      stay true, and every state change that could race is a compare-and-set.
    - ``create_trial`` inserts a RUNNING trial with its parameters and system
      attributes, numbered densely within the study, and returns
      ``(number, trial_id)``. On a backend from ``open_store``, a trial whose
      ``calabaria:coordinator`` attribute names a coordinator spends one of that
      coordinator's open budget claims (``Ledger.spend``; relational: in the
      insert's transaction); ``ClaimLostError``, and no trial, if it was fenced.
      ``pop_waiting`` spends one the same way; ``spend_claim`` spends one for a
      trial created outside the backend (Optuna's own ask).
    - ``finish_trial`` sets a RUNNING trial COMPLETE (with its value), PRUNED or FAIL,
      with user attributes, all at once; it returns False and writes nothing if
      the trial was already finished (by another coordinator's recovery): the
      first word stands.
    - ``fail_if_running`` sets a trial FAIL with a ``fail_reason`` only if it
      is still RUNNING (stale-trial recovery): False if it finished meanwhile.
    - ``pop_waiting`` takes the oldest enqueued (``study.enqueue_trial``)
      WAITING trial and sets it RUNNING with the owner's attributes; each enqueued
      trial is taken by exactly one caller across every coordinator.
    - ``trials_owned`` counts the trials one coordinator asked.
    - ``running_trials`` lists RUNNING trials; ``trials_since`` lists trials
      with id above a cursor (plus the ids asked for again) and the new cursor.
    - ``trial_columns`` reads every trial of a study at once as :class:`TrialColumns`
      (read-only; equal, field by field, to what ``study.get_trials()`` holds).
    - ``stored_job`` / ``store_job`` read and write the job stored with a study;
      ``study_attr`` / ``set_study_attr`` / ``study_attrs`` any other JSON-able value stored with it
      (``calabaria:`` keys: the fingerprint, the reported best); a value set is
      read back whole by every coordinator, the last write standing.
    - ``ledger`` is the study's budget claims and coordinator heartbeats,
      on the same connections as the trials.
    - Methods are thread-safe; connection failures are retried by the caller
      (``dbretry.retry_db``) and surface as ``ServiceUnavailableError``.
    """

    ledger: Ledger

    @property
    def optuna_storage(self) -> optuna.storages.BaseStorage:
        """The storage to hand to ``optuna.create_study`` / ``load_study``."""

    def study_id(self, study_name: str) -> int:
        """The study's id; KeyError if there is no such study."""

    def create_trial(self, study_id: int, params: Mapping[str, Any], distributions: Mapping[str, BaseDistribution],
                     system_attrs: Mapping[str, Any]) -> tuple[int, int]:
        """Insert a RUNNING trial; return ``(number, trial_id)``."""

    def finish_trial(self, trial_id: int, state: TrialState, value: float | None,
                     user_attrs: Mapping[str, Any]) -> bool:
        """Finish a RUNNING trial COMPLETE, PRUNED or FAIL with ``user_attrs``; False if already finished."""

    def fail_if_running(self, trial_id: int, reason: str) -> bool:
        """Set the trial FAIL with ``reason`` if still RUNNING; False otherwise."""

    def pop_waiting(self, study_id: int, owner_attrs: Mapping[str, Any]) -> PoppedTrial | None:
        """Take the oldest WAITING trial (exactly once across coordinators), set RUNNING with
        the system attributes ``owner_attrs``; None if none is waiting."""

    def enqueue(self, study_id: int, points: Sequence[Mapping[str, Any]]) -> None:
        """Add one WAITING trial per point (Optuna's ``fixed_params``, as ``Study.enqueue_trial``
        writes them), all at once: one transaction on a relational storage."""

    def spend_claim(self, study_id: int, owner_attrs: Mapping[str, Any]) -> None:
        """Spend the budget claim of a trial created with ``owner_attrs`` outside the backend."""

    def trials_owned(self, study_id: int, owner: str) -> int:
        """How many of the study's trials ``owner`` asked (its ``calabaria:coordinator`` attr)."""

    def set_params(self, trial_id: int, params: Mapping[str, Any],
                   distributions: Mapping[str, BaseDistribution]) -> None:
        """Write parameters of a RUNNING trial (one that was popped from the queue)."""

    def running_trials(self, study_id: int) -> list[StoredTrial]:
        """The study's RUNNING trials, read from the storage itself."""

    def trials_since(self, study_id: int, cursor: int, skip: set[int], recheck: set[int]) -> tuple[list[StoredTrial], int]:
        """Trials with id > ``cursor`` not in ``skip``, plus those in ``recheck``; and the new cursor."""

    def trial_columns(self, study_id: int) -> TrialColumns:
        """Every trial of the study as :class:`TrialColumns` (reads only; KeyError if no such study)."""

    def stored_job(self, study_name: str) -> str | None:
        """The job JSON stored with the study ('' if none stored); None if no such study."""

    def store_job(self, study_id: int, job_json: str) -> None:
        """Store the job JSON with the study."""

    def study_attr(self, study_id: int, key: str) -> Any:
        """The value stored with the study under ``key`` (None if none)."""

    def set_study_attr(self, study_id: int, key: str, value: Any) -> None:
        """Store a JSON-able ``value`` with the study under ``key``."""

    def study_attrs(self, study_id: int) -> dict[str, Any]:
        """Every value stored with the study (a copy)."""

    def trials(self, study_id: int, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        """The study's trials (in ``states``, else all), read whole; not to be modified."""

    def n_trials(self, study_id: int) -> int:
        """How many trials the study holds, in any state."""

    def minimizes(self, study_id: int) -> bool:
        """Whether the study minimises its objective."""

    def close(self) -> None:
        """Release every connection."""
