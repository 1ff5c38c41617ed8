"""The study's best: one definition for every command that names it.

``calibrate``, ``worker``, ``status`` and ``report`` all report the same trial:

- the trial chosen by the end-of-run re-evaluation (``calibration/reevaluate.py``),
  when one was made *for the study as it now stands* — the selection is stored with
  the study (``calabaria:best``) together with a digest of every finished trial it
  was chosen from, so a selection made before more trials finished is not used;
- otherwise the COMPLETE trial with the best in-sample loss (ties: the lower number).

Pure except :func:`read_stored` / :func:`store`, which go through the study backend.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

from optuna.trial import TrialState

from modelops_calabaria.backend.base import StudyBackend
from modelops_calabaria.dbretry import retry_db

BEST_ATTR = "calabaria:best"  # study system attr: {"digest": ..., "selection": Selection.to_json() + reevaluated_loss}
_FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


class Trial(Protocol):
    """What a best is chosen from: an Optuna ``FrozenTrial`` or a :class:`Row`."""

    @property
    def number(self) -> int: ...
    @property
    def state(self) -> TrialState: ...
    @property
    def value(self) -> float | None: ...


class Row(NamedTuple):
    """One trial as a report's columns hold it (``TrialColumns``)."""

    number: int
    state: TrialState
    value: float | None


T = TypeVar("T", bound=Trial)


def finished_digest(trials: Sequence[Trial]) -> str:
    """A digest of every finished trial (number, state, value), in any order.

    Two coordinators that read the same finished trials compute the same digest; one more
    trial finished, or a value changed, gives another.
    """
    rows = sorted(
        (t.number, t.state.name, None if t.value is None or not math.isfinite(t.value) else repr(float(t.value)))
        for t in trials if t.state in _FINISHED
    )
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:32]


def in_sample_best(trials: Sequence[T], maximize: bool = False) -> T | None:
    """The COMPLETE trial with the best finite value (ties: the lower number), or None."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    if not complete:
        return None
    return min(complete, key=lambda t: ((-t.value if maximize else t.value), t.number))  # type: ignore[operator]


def current_selection(stored: Any, trials: Sequence[Trial]) -> dict[str, Any] | None:
    """The stored selection if it was made from exactly these finished trials and its trial is COMPLETE."""
    if not isinstance(stored, dict) or stored.get("digest") != finished_digest(trials):
        return None
    selection = stored.get("selection")
    if not isinstance(selection, dict):
        return None
    chosen = selection.get("best_trial")
    if not any(t.number == chosen and t.state == TrialState.COMPLETE for t in trials):
        return None
    return selection


def study_best(trials: Sequence[T], stored: Any, maximize: bool = False) -> tuple[T | None, dict[str, Any] | None]:
    """The study's best trial and the selection that chose it (None: the in-sample best)."""
    selection = current_selection(stored, trials)
    if selection is not None:
        chosen = next(t for t in trials if t.number == selection["best_trial"])
        return chosen, selection
    return in_sample_best(trials, maximize), None


def read_stored(backend: StudyBackend, study_id: int) -> Any:
    """The selection stored with the study (its raw form; :func:`current_selection` checks it)."""
    return retry_db("read the reported best", lambda: backend.study_attr(study_id, BEST_ATTR))


def store(backend: StudyBackend, study_id: int, trials: Sequence[Trial], selection: dict[str, Any]) -> None:
    """Store ``selection`` as the study's best for its current finished trials."""
    value = {"digest": finished_digest(trials), "selection": selection}
    retry_db("store the reported best", lambda: backend.set_study_attr(study_id, BEST_ATTR, value))


def study_finished(trials: Sequence[Trial], claimed: int, max_trials: int) -> bool:
    """Whether nothing more will happen in the study: the budget is claimed and every trial is finished."""
    return claimed >= max_trials and all(t.state in _FINISHED for t in trials)


def rows_of(number: Sequence[Any], state: Sequence[TrialState], value: Sequence[Any]) -> list[Row]:
    """Rows from trial columns (``value`` NaN where a trial has none)."""
    return [Row(int(n), st, None if v is None or not math.isfinite(float(v)) else float(v)) for n, st, v in zip(number, state, value)]
