"""In-process implementation of the simulation service: no Dask at all.

Selected with ``scheduler: inline`` (``--scheduler inline``). Replicates run on
a thread pool of the coordinator's own process, through the same
:func:`run_replicate` / :func:`reduce_trial` a Dask worker runs, so failures,
timeouts and scores behave exactly as on a cluster. It is meant for two
things: stepping through a model in a debugger (everything runs in one
process), and measuring the coordination path alone (no task round trips).
A CPU-bound Python model gains nothing from more than one thread here: the
threads share the coordinator's GIL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

from modelops_calabaria.simulation.task import SimContext, TrialEvaluation, reduce_trial, run_replicate

INLINE = "inline"


class InlineTrialHandle:
    """The replicate futures of one trial, reduced in the caller's thread."""

    def __init__(self, context: SimContext, replicates: list[Future]) -> None:
        self._context = context
        self.replicates = replicates

    def result(self) -> TrialEvaluation:
        try:
            return reduce_trial(self._context, [f.result() for f in self.replicates])
        except CancelledError:
            return TrialEvaluation({}, None, 0.0, error="simulation cancelled")

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

    def submit(self, trial_number: int, params: Mapping[str, Any], seeds: Sequence[int]) -> InlineTrialHandle:
        params = dict(params)
        futures = [self._pool.submit(run_replicate, self.context, params, seed, r) for r, seed in enumerate(seeds)]
        return InlineTrialHandle(self.context, futures)

    def gather(self, handles: Sequence[InlineTrialHandle]) -> list[TrialEvaluation]:  # type: ignore[override]
        wait_futures([f for h in handles for f in h.replicates])
        return [h.result() for h in handles]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
