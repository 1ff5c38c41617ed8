"""A simulation service that connects in the background, or not at all.

Starting a local Dask cluster takes seconds (worker processes, their imports):
``DeferredService`` lets the coordinator start it while it opens the study and
builds its sampler, and never start it when the run turns out to have nothing
to simulate (a resumed study whose budget is spent).

- ``start()`` begins connecting on a thread of its own (idempotent); nothing
  starts before it, or before a method that needs the service calls it.
- ``submit``/``gather`` wait for the connection and raise its error, if it
  failed, in the caller (``ServiceUnavailableError`` / ``ConfigurationError``,
  as ``connect`` would have); so does ``slots`` once started, unless known in
  advance (a local cluster's size).
- ``close()`` waits for a connection under way and closes what it made.

Also: :func:`few_runs_inline`, whether a few extra simulations (the end-of-run
re-evaluation, the report's re-simulation) should run in this process instead
of starting a local cluster for them.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from modelops_calabaria.simulation.base import SimulationService, TrialHandle
from modelops_calabaria.simulation.task import TrialEvaluation

# A few extra simulations run in this process when they would take at most this long one
# after the other (a Python model holds the GIL): less than starting a local cluster here
# (2-4 s on 2 cores: worker processes and their imports; docs/performance.md, "Start-up").
INLINE_LIMIT_S = 2.0


def per_run_seconds(busy_s: Iterable[float | None], n_replicates: int) -> float | None:
    """The median simulation-seconds of one replicate, from trials' ``busy_s`` (None: no data)."""
    values = [float(b) / max(1, n_replicates) for b in busy_s if isinstance(b, (int, float)) and b >= 0]
    return statistics.median(values) if values else None


def few_runs_inline(scheduler: str | None, n_runs: int, per_run_s: float | None, limit_s: float = INLINE_LIMIT_S) -> bool:
    """Whether ``n_runs`` simulations of ``per_run_s`` each should run in this process.

    Only instead of a local cluster (``scheduler`` empty): a remote scheduler is
    already up, and ``inline`` is inline anyway. Unknown durations start the cluster.
    """
    return not scheduler and per_run_s is not None and n_runs * per_run_s <= limit_s


class DeferredService:
    """A :class:`SimulationService` made by ``connect`` on a background thread, once, on demand.

    ``slots``: the service's slots when known before it exists (a local cluster's
    size), else None (asked of the service once connected).
    """

    def __init__(self, connect: Callable[[], SimulationService], *, slots: int | None = None,
                 description: str = "local cluster") -> None:
        self._connect = connect
        self._known_slots = slots
        self._description = description
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._service: SimulationService | None = None
        self._error: BaseException | None = None

    @property
    def started(self) -> bool:
        """Whether a connection was ever started (a local cluster was asked for)."""
        return self._thread is not None

    def start(self) -> None:
        """Begin connecting in the background (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="calabaria-connect", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._service = self._connect()
        except BaseException as e:  # noqa: BLE001 - raised again in whoever needs the service
            self._error = e
        finally:
            self._ready.set()

    def get(self) -> SimulationService:
        """The connected service (starting and waiting for it). Raises the connection's error."""
        self.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._service is not None
        return self._service

    @property
    def slots(self) -> int:
        """Known in advance, else the connected service's; 0 for a service never started
        whose size is unknown (reading it does not connect)."""
        if self._known_slots is not None:
            return self._known_slots
        return self.get().slots if self.started else 0

    @property
    def address(self) -> str:
        if self._ready.is_set() and self._service is not None:
            return self._service.address
        return f"{self._description} (starting)" if self.started else f"{self._description} (not started)"

    def live_slots(self) -> int:
        """The connected service's live count; until it is up, the size known in advance
        (else 0). Never waits for the connection."""
        if self._ready.is_set() and self._service is not None:
            return self._service.live_slots()
        return self._known_slots or 0

    def submit(self, trial_number: int, params: Mapping[str, Any], seeds: Sequence[int], first: int = 0) -> TrialHandle:
        return self.get().submit(trial_number, params, seeds, first)

    def gather(self, handles: Sequence[TrialHandle]) -> list[TrialEvaluation]:
        return self.get().gather(handles)

    def close(self) -> None:
        """Close the service if one was made (waiting for a connection under way); never raises."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        self._ready.wait()
        if self._service is not None:
            self._service.close()
