"""In-process implementation of the simulation service: no Dask at all.

Selected with ``scheduler: inline`` (``--scheduler inline``). Replicates run on
a thread pool of the coordinator's own process, through the same
:func:`run_replicate` / :func:`reduce_trial` a Dask worker runs, so failures,
timeouts and scores behave exactly as on a cluster. It is meant for two
things: stepping through a model in a debugger (everything runs in one
process), and measuring the coordination path alone (no task round trips).
A CPU-bound Python model gains nothing from more than one thread here: the
threads share the coordinator's GIL. A model thread that outlives ``timeout_s``
cannot be stopped here (there is no worker process to replace): it keeps running
in the coordinator's process, and a warning says so once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

from modelops_calabaria.addresses import INLINE
from modelops_calabaria.logging import get_logger
from modelops_calabaria.simulation.task import SimContext, TrialEvaluation, reduce_trial, run_replicate

log = get_logger(__name__)


class InlineTrialHandle:
    """The replicate futures of one trial, reduced in the caller's thread."""

    def __init__(self, service: InlineSimulationService, replicates: list[Future]) -> None:
        self._service = service
        self.replicates = replicates

    def result(self) -> TrialEvaluation:
        try:
            evaluation = reduce_trial(self._service.context, [f.result() for f in self.replicates])
            if evaluation.abandoned_on:
                self._service.warn_abandoned()
            return evaluation
        except CancelledError:
            return TrialEvaluation({}, None, 0.0, error="simulation cancelled")

    @property
    def tasks(self) -> int:
        return len(self.replicates)

    def wait_left(self, left: int) -> None:
        pending = [f for f in self.replicates if not f.done()]
        while len(pending) > left:
            _, not_done = wait_futures(pending, return_when=FIRST_COMPLETED)
            pending = list(not_done)

    def cancel(self) -> None:
        # Only replicates that have not started can be cancelled; running ones finish.
        for f in self.replicates:
            f.cancel()


class InlineSimulationService:
    """Runs replicates on ``threads`` threads of this process (thread-safe)."""

    address = INLINE

    def __init__(self, context: SimContext, threads: int | None = None) -> None:
        self.context = context
        self.slots = max(1, threads or os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="calabaria-sim")
        self._warned = threading.Event()

    def warn_abandoned(self) -> None:
        """Say once that timed-out model threads keep running in this process."""
        if not self._warned.is_set():
            self._warned.set()
            log.warning("a timed-out model keeps running on a thread of this process (inline scheduler): it cannot be stopped",
                        hint="use a Dask scheduler (or none: a local cluster), whose workers are restarted after a timeout")

    def live_slots(self) -> int:
        """The thread pool's size: it never changes."""
        return self.slots

    def submit(self, trial_number: int, params: Mapping[str, Any], seeds: Sequence[int], first: int = 0) -> InlineTrialHandle:
        params = dict(params)
        futures = [self._pool.submit(run_replicate, self.context, params, seed, first + r) for r, seed in enumerate(seeds)]
        return InlineTrialHandle(self, futures)

    def gather(self, handles: Sequence[InlineTrialHandle]) -> list[TrialEvaluation]:  # type: ignore[override]
        wait_futures([f for h in handles for f in h.replicates])
        return [h.result() for h in handles]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
