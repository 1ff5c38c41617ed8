"""Whether a run has anything to simulate, decided before any cluster starts (pure).

A resumed study whose budget is spent (``calibrate`` run again, or a ``worker``
joining a finished study) has nothing to run: the coordinator then writes its
results and report without starting a Dask cluster. The decision is
conservative: anything that could make the run ask or recover a trial counts
as work, and a wrong "work" only costs a cluster start. A wrong "nothing" costs
nothing either: the service is then started on first use (``DeferredService``).

When there is nothing to run, the outputs a finished run wrote may already say
everything: :func:`study_state_key` is a digest of what they are made of, stored
in ``results.json`` (``study_state``) and in ``report.html``; a run that finds the
same key leaves them as they are instead of re-evaluating and redrawing.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from optuna.trial import TrialState


def nothing_to_run(states: Iterable[TrialState], *, claimed: int, stored_max: int, wanted: int,
                   extend: int | None, joining: bool) -> bool:
    """True when the study holds every trial its budget allows and none is unfinished.

    Args:
        states: The study's trials' states.
        claimed, stored_max: The budget ledger (``Ledger.budget``); ``stored_max`` 0: no budget yet.
        wanted: The budget this run asks for (``--max-trials`` or the job's ``max_trials``).
        extend: ``--extend``: always more work.
        joining: A ``worker``: it keeps the stored budget instead of ``wanted``.
    """
    if extend or stored_max <= 0:
        return False
    states = list(states)
    if any(s in (TrialState.RUNNING, TrialState.WAITING) for s in states):
        return False  # a trial to recover, or an enqueued starting point to ask
    budget = stored_max if joining else wanted
    asked = len(states)
    return asked >= budget and claimed >= budget


def study_state_key(job: Mapping[str, Any], storage: str, version: str, numbers: Iterable[int],
                    states: Iterable[TrialState], values: Iterable[float | None]) -> str:
    """A digest of everything a run's outputs (best.yaml, results.json, trials.csv, the
    report) are computed from: the job as stored with the study (observed data inline,
    re-evaluation and seed included), where the study lives, the package version, and
    every trial's number, state and objective value (None or NaN: no value), in any order.

    Equal keys mean equal outputs, so outputs written under a key need not be written
    again while the study has that key. Trials only ever gain states and values, so a
    study never returns to a key it has left.
    """
    trials = sorted([int(n), s.name, None if v is None or math.isnan(v) else float(v)]
                    for n, s, v in zip(numbers, states, values, strict=True))  # in any order: by number
    text = json.dumps({"job": job, "storage": storage, "version": version, "trials": trials},
                      sort_keys=True, default=str, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
