"""The run's pure state: counts, best result, stop rules. No I/O, no threads.

The wire feeds it each told trial (under its lock) and asks whether to stop.
Tested without a cluster in ``tests/test_state.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from modelops_calabaria.job import StopSpec


@dataclass
class RunState:
    """What this coordinator has seen so far.

    Attributes:
        direction: ``minimize`` or ``maximize``.
        stop: The job's stop rules.
        started: Monotonic start time (seconds).
        target_ess: Stop when ``ess_probe()`` (a posterior run's effective sample size) reaches it.
    """

    direction: str
    stop: StopSpec
    started: float
    completed: int = 0
    failed: int = 0
    pruned: int = 0
    best_loss: float | None = None
    best_number: int | None = None
    best_params: dict = field(default_factory=dict)
    since_improvement: int = 0
    consecutive_failures: int = 0
    first_failure: str | None = None
    busy_s: float = 0.0
    stop_reason: str | None = None
    target_ess: float | None = None
    ess_probe: Callable[[], float | None] | None = None
    storm_count: int | None = None  # consecutive failures when the storm stopped the run (trials in flight may add more)

    def _better(self, loss: float) -> bool:
        if self.best_loss is None:
            return True
        return loss < self.best_loss if self.direction == "minimize" else loss > self.best_loss

    def record_complete(self, number: int, loss: float, params: dict, busy_s: float = 0.0) -> bool:
        """Count a COMPLETE trial; return True when it is the new best."""
        self.completed += 1
        self.busy_s += busy_s
        self.consecutive_failures = 0
        if self._better(loss):
            self.best_loss, self.best_number, self.best_params = loss, number, dict(params)
            self.since_improvement = 0
            return True
        self.since_improvement += 1
        return False

    def record_pruned(self, number: int, busy_s: float = 0.0) -> None:
        """Count a PRUNED trial: not a failure (it breaks a failure storm), not an improvement."""
        self.pruned += 1
        self.busy_s += busy_s
        self.consecutive_failures = 0
        self.since_improvement += 1

    def record_fail(self, number: int, reason: str, busy_s: float = 0.0) -> None:
        """Count a FAIL trial."""
        self.failed += 1
        self.busy_s += busy_s
        self.consecutive_failures += 1
        if self.first_failure is None:
            self.first_failure = f"trial {number}: {reason}"

    @property
    def failure_storm(self) -> bool:
        """True when the last ``max_consecutive_failures`` trials all failed."""
        return self.consecutive_failures >= self.stop.max_consecutive_failures

    def check_stop(self, now: float) -> str | None:
        """The first stop rule that holds now (and remember it), or None."""
        if self.stop_reason:
            return self.stop_reason
        s = self.stop
        reason = None
        if self.failure_storm:
            self.storm_count = self.consecutive_failures
            reason = f"failure storm: {self.consecutive_failures} consecutive trials failed"
        elif s.target_loss is not None and self.best_loss is not None and (
            self.best_loss <= s.target_loss if self.direction == "minimize" else self.best_loss >= s.target_loss
        ):
            reason = f"target loss {s.target_loss:g} reached (best {self.best_loss:.6g})"
        elif s.patience is not None and self.since_improvement >= s.patience:
            reason = f"no improvement in {self.since_improvement} trials (patience {s.patience})"
        elif s.max_wall_time_s is not None and now - self.started >= s.max_wall_time_s:
            reason = f"wall-clock limit {s.max_wall_time_s:g} s reached"
        elif self.target_ess is not None and self.ess_probe is not None and (self.ess_probe() or 0) >= self.target_ess:
            reason = f"target ESS {self.target_ess:g} reached (ESS {self.ess_probe():.1f})"
        self.stop_reason = reason
        return reason

    def elapsed(self, now: float) -> float:
        return max(now - self.started, 1e-9)

    def utilization(self, now: float, slots: int) -> float:
        """Busy simulation-seconds / (slots × wall time)."""
        return self.busy_s / (max(slots, 1) * self.elapsed(now))

