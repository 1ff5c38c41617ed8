"""Trial timing of a study: wall time, speedup, concurrency. Pure numpy, no I/O.

Times are seconds (any origin); a trial's duration is ``end - start``.
"""

from __future__ import annotations

import numpy as np


def busy_wall(start: np.ndarray, end: np.ndarray) -> float:
    """Length of the union of the intervals: the study's wall time, idle gaps between runs excluded."""
    if len(start) == 0:
        return 0.0
    order = np.argsort(start, kind="stable")
    s, e = np.asarray(start, dtype=float)[order], np.asarray(end, dtype=float)[order]
    reach = np.maximum.accumulate(e)
    gaps = s[1:] > reach[:-1]  # a new block starts where a trial begins after every earlier one ended
    block_start = np.concatenate([[s[0]], s[1:][gaps]])
    block_end = np.concatenate([reach[:-1][gaps], [reach[-1]]])
    return float(np.sum(block_end - block_start))


def speedup(start: np.ndarray, end: np.ndarray) -> float | None:
    """Effective parallel speedup: sum of trial durations ÷ wall time (None without timed trials)."""
    start, end = np.asarray(start, dtype=float), np.asarray(end, dtype=float)
    ok = np.isfinite(start) & np.isfinite(end)
    wall = busy_wall(start[ok], end[ok])
    return float(np.sum(end[ok] - start[ok]) / wall) if wall > 0 else None


def lanes(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Assign intervals to the fewest rows without overlap (greedy by start): one row ≈ one loop."""
    import heapq

    order = np.argsort(start, kind="stable")
    lane = np.zeros(len(start), dtype=int)
    free: list[tuple[float, int]] = []  # (free at, row) of rows in use
    idle: list[int] = []  # rows free now, smallest first
    rows = 0
    for i in order:
        while free and free[0][0] <= start[i]:
            heapq.heappush(idle, heapq.heappop(free)[1])
        if idle:
            r = heapq.heappop(idle)
        else:
            r, rows = rows, rows + 1
        lane[i] = r
        heapq.heappush(free, (float(end[i]), r))
    return lane


def in_flight(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step function of trials running at once: (times, count from each time on)."""
    times = np.concatenate([start, end])
    delta = np.concatenate([np.ones(len(start)), -np.ones(len(end))])
    order = np.lexsort((delta, times))  # at equal times ends come before starts
    return times[order], np.cumsum(delta[order])


def trial_intervals(trials: list) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) in epoch seconds of Optuna FrozenTrials; NaN where unknown."""
    start = np.array([t.datetime_start.timestamp() if t.datetime_start else np.nan for t in trials], dtype=float)
    end = np.array([t.datetime_complete.timestamp() if t.datetime_complete else np.nan for t in trials], dtype=float)
    return start, end
