"""Progress while a calibration runs.

- **Log** (JSON lines when piped or in a container, console lines on a
  terminal): one line per told trial, and a summary line every few seconds.
- **Terminal** (stderr is a tty): one live line, rewritten in place after every
  told trial: done/total, the study's best loss, trials per minute, failures,
  ETA. Per-trial log lines then go out at DEBUG level, shown with ``-v``.

The live line never lags the log: it is redrawn in the thread that tells the
trial, after the counts it shows were updated, and the log stream
(:data:`LOG_STREAM`, which the CLI hands to the logger) clears it before each
log line and redraws it after, so log lines and the live line never mix.

"Best" is the study's best: seeded with the best loss already in the study
(resume, ``--extend``, ``worker``), then improved by this process's trials.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from modelops_calabaria.outcome import TrialRecord
from modelops_calabaria.logging import get_logger

log = get_logger("modelops_calabaria.progress")


class LiveLine:
    """One status line at the bottom of a terminal, rewritten in place (thread-safe)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.text = ""
        self.lock = threading.RLock()

    def _width(self) -> int:
        import shutil

        return max(20, shutil.get_terminal_size((100, 20)).columns - 1)

    def show(self, text: str) -> None:
        with self.lock:
            self.text = text
            self.draw()

    def draw(self) -> None:
        if self.text:
            self.stream.write("\r" + self.text[: self._width()] + "\x1b[K")
            self.stream.flush()

    def clear(self) -> None:
        self.stream.write("\r\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        with self.lock:
            if self.text:
                self.draw()
                self.stream.write("\n")  # leave the final state on screen
                self.stream.flush()
            self.text = ""


class _LogStream:
    """A file object for the logger: stdout, with the live line (if any) moved out of the way."""

    def __init__(self) -> None:
        self.live: LiveLine | None = None

    @property
    def _out(self) -> TextIO:
        return sys.stdout  # looked up at each write: tests and redirections replace sys.stdout

    def write(self, text: str) -> int:
        live = self.live
        if live is None or not live.text:
            return self._out.write(text)
        with live.lock:
            live.clear()
            n = self._out.write(text)
            self._out.flush()
            live.draw()
            return n

    def flush(self) -> None:
        self._out.flush()

    def isatty(self) -> bool:
        return getattr(self._out, "isatty", lambda: False)()

    def fileno(self) -> int:
        return self._out.fileno()


LOG_STREAM = _LogStream()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Thread-safe trial reporter (the wire's ``on_trial`` callback).

    Args:
        total: The study's budget.
        already: Trials the study held before this process started.
        every_s: Seconds between summary log lines.
        bar: Show the live line (default: when stderr is a terminal).
        best: The study's best loss at start (None: no trial completed yet).
        direction: ``minimize`` or ``maximize`` (what "better" means for ``best``).
    """

    def __init__(self, total: int, *, already: int = 0, every_s: float = 2.0, bar: bool | None = None,
                 best: float | None = None, direction: str = "minimize") -> None:
        self.total = total
        self.done = already
        self.completed = 0
        self.failed = 0
        self.pruned = 0
        self.best = best
        self._minimize = direction != "maximize"
        self._every_s = every_s
        self._started = time.monotonic()
        self._last = 0.0
        self._logged_at: int | None = None
        self._lock = threading.Lock()
        live = bar if bar is not None else sys.stderr.isatty()
        self._live = LiveLine(sys.stderr) if live else None
        if self._live is not None:
            LOG_STREAM.live = self._live
            self._live.show(self.status())

    def _better(self, loss: float) -> bool:
        return self.best is None or (loss < self.best if self._minimize else loss > self.best)

    def rate_per_minute(self, now: float | None = None) -> float:
        """Trials told per minute by this process since it started."""
        elapsed = max((now or time.monotonic()) - self._started, 1e-9)
        return 60.0 * (self.completed + self.failed + self.pruned) / elapsed

    def status(self) -> str:
        """The live line's text."""
        rate = self.rate_per_minute()
        remaining = max(self.total - self.done, 0)
        eta = _clock(60 * remaining / rate) if rate > 0 and remaining else ("done" if not remaining else "-")
        best = f"{self.best:.6g}" if self.best is not None else "-"
        pruned = f"{self.pruned} pruned | " if self.pruned else ""
        return (f"calibrating {self.done}/{self.total} trials | best loss {best} | {rate:.1f}/min | "
                f"{pruned}{self.failed} failed | ETA {eta}")

    def __call__(self, record: TrialRecord) -> None:
        with self._lock:
            self.done += 1
            if record.state == "COMPLETE":
                self.completed += 1
                if record.loss is not None and self._better(record.loss):
                    self.best = record.loss
            elif record.state == "PRUNED":
                self.pruned += 1
            else:
                self.failed += 1
            now = time.monotonic()
            due = now - self._last >= self._every_s or self.done >= self.total
            if due:
                self._last = now
            if self._live is not None:
                self._live.show(self.status())
        fields: dict[str, Any] = {
            "trial": record.number, "state": record.state, "params": record.params, "duration_s": round(record.duration_s, 3)
        }
        emit = log.debug if self._live is not None else log.info
        if record.state == "COMPLETE":
            fields["loss"] = record.loss
            fields["targets"] = record.per_target
            if record.new_best:
                fields["new_best"] = True
            emit("trial finished", **fields)
        elif record.state == "PRUNED":
            fields["reason"] = record.reason
            emit("trial pruned", **fields)
        else:
            fields["reason"] = (record.reason or "").strip().splitlines()[0][:500]
            (log.debug if self._live is not None else log.warning)("trial failed", **fields)
        if due:
            self.line()

    def line(self) -> None:
        """Log ``N/M trials told, best loss X`` (once per count: the final call may repeat the last)."""
        if self._logged_at == self.done:
            return
        self._logged_at = self.done
        best = f"{self.best:.6g}" if self.best is not None else "-"
        emit = log.debug if self._live is not None else log.info
        pruned = f", {self.pruned} pruned" if self.pruned else ""
        emit(f"{self.done}/{self.total} trials told ({self.completed} completed{pruned}, {self.failed} failed), best loss {best}",
             done=self.done, total=self.total, best_loss=self.best, trials_per_minute=round(self.rate_per_minute(), 2))

    def close(self) -> None:
        if self._live is not None:
            self._live.close()
            if LOG_STREAM.live is self._live:
                LOG_STREAM.live = None
