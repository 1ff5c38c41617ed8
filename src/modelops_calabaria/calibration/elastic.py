"""Trials at once on a cluster whose size changes (``concurrency: auto``): pure sizing, no I/O.

The wire asks the simulation service for its live thread count about every
:data:`RESIZE_INTERVAL_S`, and its scheduler core resizes its loops (parallel) or
its next round (batched) to :func:`target_loops` of it. The same function gives the start-up
count, so a fixed cluster runs exactly as many loops as before.
"""

from __future__ import annotations

import math

from modelops_calabaria.job import MAX_CONCURRENCY, MAX_REPLICATES_IN_FLIGHT

RESIZE_INTERVAL_S = 1.0  # how often the wire reads the live thread count: one cheap scheduler round trip


def loop_cap(n_replicates: int) -> int:
    """The most trials at once ``auto`` ever runs: :data:`MAX_CONCURRENCY` loops, and no more
    than :data:`MAX_REPLICATES_IN_FLIGHT` simulations submitted at once."""
    return max(1, min(MAX_CONCURRENCY, MAX_REPLICATES_IN_FLIGHT // max(1, n_replicates)))


def target_loops(live_threads: int, n_replicates: int, cap: int, parallel: bool = True) -> int:
    """Trials at once for ``live_threads`` worker threads: enough trials to fill every thread
    (``ceil(threads / n_replicates)``), twice that in parallel mode to hide each loop's ask and
    tell; never below 1, never above ``cap``. No thread at all (every worker gone) counts as one:
    the loops wait for workers rather than stop.
    """
    per_round = max(1, math.ceil(max(0, live_threads) / max(1, n_replicates)))
    wanted = max(2, 2 * per_round) if parallel else per_round
    return max(1, min(cap, wanted))
