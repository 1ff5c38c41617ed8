"""How many replicates one Dask task runs: pure policy, no I/O.

Each Dask task costs about a millisecond of CPU across client, scheduler and
worker, plus a round trip before its slot runs the next one. With simulations
of a few tens of milliseconds that overhead keeps slots idle (measured on the
throughput benchmark: 0.70 of slots busy at 60 ms, one replicate per task). Running
several replicates one after the other in one task amortises it, as long as
enough tasks stay queued to fill every slot.
"""

from __future__ import annotations

import math
import threading

TARGET_TASK_S = 0.2  # long enough to amortise a task's overhead, short enough to keep trials quick
MIN_OBSERVED = 8  # trials measured before batching starts


def replicates_per_task(n_replicates: int, mean_replicate_s: float | None, trials_in_flight: int, slots: int,
                        target_task_s: float = TARGET_TASK_S) -> int:
    """Replicates per task for one trial.

    As many as fit in ``target_task_s`` at the measured mean duration, but no
    more than leaves at least ``slots`` tasks for the ``trials_in_flight``
    trials (this one included), so that batching never starves a slot; the
    tasks of a trial get equal shares. Without a measurement yet: one per task.
    """
    if n_replicates <= 1 or mean_replicate_s is None:
        return 1
    k = n_replicates if mean_replicate_s <= 0 else max(1, min(n_replicates, int(target_task_s // mean_replicate_s)))
    while k > 1 and trials_in_flight * math.ceil(n_replicates / k) < slots:
        k -= 1
    return math.ceil(n_replicates / math.ceil(n_replicates / k))  # as even as that many tasks allow: 2+2, not 3+1


class DurationStats:
    """Running mean of replicate durations, as measured on the workers (thread-safe)."""

    def __init__(self, min_observed: int = MIN_OBSERVED) -> None:
        self._lock = threading.Lock()
        self._min = min_observed
        self._trials = 0
        self._busy = 0.0
        self._replicates = 0

    def observe(self, busy_s: float, replicates: int) -> None:
        """Record one trial: its replicates' summed duration and how many ran."""
        if replicates <= 0 or not math.isfinite(busy_s):
            return
        with self._lock:
            self._trials += 1
            self._busy += busy_s
            self._replicates += replicates

    @property
    def mean(self) -> float | None:
        """Mean replicate duration in seconds, once ``min_observed`` trials were recorded."""
        with self._lock:
            if self._trials < self._min:
                return None
            return self._busy / self._replicates
