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
in the coordinator's process, and a warning says so once. A cancelled trial (the
grace period after SIGTERM ran out) returns at once, even while its model threads
still run: they are abandoned, and :meth:`InlineSimulationService.close` does not
wait for them (docs/reliability.md, "SIGTERM with a model that cannot be stopped").
A model that calls ``sys.exit`` fails its replicate (:func:`.task.run_replicate`);
``os._exit`` in a model here ends the coordinator itself.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

from modelops_calabaria.addresses import INLINE
from modelops_calabaria.logging import get_logger
from modelops_calabaria.simulation.task import SimContext, TrialEvaluation, reduce_trial, run_replicate

log = get_logger(__name__)
CLOSE_WAIT_S = 5.0  # at close, how long idle threads get to end; a busy one is abandoned after it


class InlineTrialHandle:
    """The replicate futures of one trial, reduced in the caller's thread."""

    def __init__(self, service: InlineSimulationService, replicates: list[Future]) -> None:
        self._service = service
        self.replicates = replicates
        self._cancelled: Future[None] = Future()  # done once cancel() is called: every wait ends

    def _wait(self, left: int) -> bool:
        """Block until at most ``left`` replicates are unfinished; False if cancelled meanwhile."""
        pending = [f for f in self.replicates if not f.done()]
        while len(pending) > left:
            wait_futures([*pending, self._cancelled], return_when=FIRST_COMPLETED)
            if self._cancelled.done():
                return False
            pending = [f for f in pending if not f.done()]
        return True

    def result(self) -> TrialEvaluation:
        try:
            if not self._wait(0):
                raise CancelledError
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
        self._wait(left)

    def cancel(self) -> None:
        # Replicates that have not started are cancelled; running ones cannot be stopped
        # from Python: the trial stops waiting for them (they finish, or are abandoned).
        for f in self.replicates:
            f.cancel()
        try:
            self._cancelled.set_result(None)
        except InvalidStateError:  # cancelled twice
            pass


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
        return [h.result() for h in handles]  # each ends early if its trial is cancelled

    def close(self) -> None:
        """Stop the threads; a thread still running a model after :data:`CLOSE_WAIT_S` is
        abandoned (it cannot be stopped): the CLI then ends the process without waiting for it."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + CLOSE_WAIT_S
        for thread in list(getattr(self._pool, "_threads", ())):
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("a model thread is still running and cannot be stopped: it is abandoned", thread=thread.name)
