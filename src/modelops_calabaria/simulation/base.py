"""The simulation boundary: submit a trial's replicates, get its evaluation back.

One small interface so that the calibration wire does not know about Dask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from modelops_calabaria.simulation.task import TrialEvaluation


class TrialHandle(Protocol):
    """A submitted trial. ``result`` blocks until its evaluation is ready."""

    def result(self) -> TrialEvaluation:
        """The trial's evaluation.

        Model failures, timeouts and lost workers come back as a
        ``TrialEvaluation`` with ``error`` set; never raised.

        Raises:
            ServiceUnavailableError: the simulation cluster itself is gone.
        """

    def cancel(self) -> None:
        """Cancel whatever of the trial still runs (idempotent)."""

    @property
    def tasks(self) -> int:
        """How many tasks run the trial's replicates (several replicates may share one)."""

    def wait_left(self, left: int) -> None:
        """Block until at most ``left`` of the trial's tasks are unfinished (done, failed or cancelled)."""


class SimulationService(Protocol):
    """Runs replicates somewhere. Thread-safe: many loops submit at once.

    Attributes:
        slots: Simulations that can run at once (total worker threads).
        address: Where simulations run, for logs (scheduler address or ``inline``).
    """

    slots: int
    address: str

    def live_slots(self) -> int:
        """Worker threads in the cluster now (0 when no worker is connected), for loops that
        follow the cluster. Cheap (at most one bounded scheduler round trip), never raises:
        when the count cannot be read, the last one read. May lag a change by a second or two.
        """

    def submit(self, trial_number: int, params: Mapping[str, Any], seeds: Sequence[int], first: int = 0) -> TrialHandle:
        """Start one replicate per seed, plus their reduction, for one trial.

        ``first``: the index of the first replicate (a later stage of a trial's
        replicates, for pruning): replicate indices and task keys start there.
        """

    def gather(self, handles: Sequence[TrialHandle]) -> list[TrialEvaluation]:
        """Wait for every handle (in one wait, not one by one) and return their evaluations in order."""

    def close(self) -> None:
        """Release the cluster connection (and the local cluster if this service started it)."""
