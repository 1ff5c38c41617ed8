"""Progress: one structlog line per told trial, a periodic progress line, a bar on a terminal."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from modelops_calabaria.outcome import TrialRecord
from modelops_calabaria.logging import get_logger

log = get_logger("modelops_calabaria.progress")


class Progress:
    """Thread-safe trial reporter (the wire's ``on_trial`` callback)."""

    def __init__(self, total: int, *, already: int = 0, every_s: float = 2.0, bar: bool | None = None) -> None:
        self.total = total
        self.done = already
        self.completed = 0
        self.failed = 0
        self.best: float | None = None
        self._every_s = every_s
        self._last = 0.0
        self._logged_at: int | None = None
        self._lock = threading.Lock()
        self._bar: Any = None
        if bar if bar is not None else sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self._bar = RichProgress(
                TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TextColumn("best {task.fields[best]}"),
                TimeElapsedColumn(), transient=True,
            )
            self._task = self._bar.add_task("trials", total=total, completed=already, best="-")
            self._bar.start()

    def __call__(self, record: TrialRecord) -> None:
        fields: dict[str, Any] = {
            "trial": record.number, "state": record.state, "params": record.params, "duration_s": round(record.duration_s, 3)
        }
        if record.state == "COMPLETE":
            fields["loss"] = record.loss
            fields["targets"] = record.per_target
            if record.new_best:
                fields["new_best"] = True
            log.info("trial finished", **fields)
        else:
            fields["reason"] = (record.reason or "").strip().splitlines()[0][:500]
            log.warning("trial failed", **fields)
        with self._lock:
            self.done += 1
            if record.state == "COMPLETE":
                self.completed += 1
                if record.new_best:
                    self.best = record.loss
            else:
                self.failed += 1
            now = time.monotonic()
            due = now - self._last >= self._every_s or self.done >= self.total
            if due:
                self._last = now
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done, best=f"{self.best:.6g}" if self.best is not None else "-")
        if due:
            self.line()

    def line(self) -> None:
        """Log ``N/M completed, best loss X`` (once per count: the final call may repeat the last)."""
        if self._logged_at == self.done:
            return
        self._logged_at = self.done
        best = f"{self.best:.6g}" if self.best is not None else "-"
        log.info(f"{self.done}/{self.total} trials told ({self.completed} completed, {self.failed} failed), best loss {best}",
                 done=self.done, total=self.total, best_loss=self.best)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
