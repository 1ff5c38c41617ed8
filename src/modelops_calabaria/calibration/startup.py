"""Whether a run has anything to simulate, decided before any cluster starts (pure).

A resumed study whose budget is spent (``calibrate`` run again, or a ``worker``
joining a finished study) has nothing to run: the coordinator then writes its
results and report without starting a Dask cluster. The decision is
conservative: anything that could make the run ask or recover a trial counts
as work, and a wrong "work" only costs a cluster start. A wrong "nothing" costs
nothing either: the service is then started on first use (``DeferredService``).
"""

from __future__ import annotations

from collections.abc import Iterable

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
