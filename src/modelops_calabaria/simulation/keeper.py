"""Keeping the local cluster's worker processes: their exit statuses, and the cluster at its size.

- :class:`RecordingNanny`: the nanny of each local worker process (nannies live in the
  coordinator's process) records how its worker ended, by pid, in :data:`EXITS`: the
  fail_reason of a replicate whose model ended its worker names the exit code or signal
  (:func:`.containment.explain_exits`).
- :class:`ClusterKeeper`: a nanny restarts its worker process when it ends (a model that
  exits, a signal, the OOM killer); when that restart fails, or outlasts the cluster's
  lost-worker timeout on a loaded machine, the cluster drops the worker and never starts
  another: the run would wait for workers forever (seen with models that ended their
  workers again and again at load ~20: no worker or nanny left, trials RUNNING until a
  signal). The keeper starts missing workers again, a bounded number of times, and
  reports the cluster broken when it has had no worker for long with none left to start.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from distributed import LocalCluster, Nanny

from modelops_calabaria.logging import get_logger

log = get_logger(__name__)

WATCH_INTERVAL_S = 1.0  # how often the keeper compares the cluster with its size (local state, no round trip)
LOST_WORKERS_S = 60.0  # no worker at all for this long, with no replacement left: the run cannot go on
# A worker the cluster starts counts as there only once it is up (seconds on a loaded machine): the
# same shortage is not answered again before this long, so one lost worker costs one replacement.
RESCALE_AFTER_S = 60.0

EXITS: dict[int, int] = {}  # exit code (negative: signal) of local worker processes, by pid


class RecordingNanny(Nanny):
    """A nanny that records how its worker process ended in :data:`EXITS`."""

    _calabaria_pid: int | None = None

    async def instantiate(self) -> Any:
        status = await super().instantiate()
        with contextlib.suppress(AttributeError):
            self._calabaria_pid = self.process.process.pid  # type: ignore[union-attr]
        return status

    def _on_worker_exit_sync(self, exitcode: int) -> None:
        if self._calabaria_pid is not None:
            EXITS[self._calabaria_pid] = exitcode
        super()._on_worker_exit_sync(exitcode)


class ClusterKeeper:
    """Keeps ``cluster`` at its size on a daemon thread until :meth:`close`.

    ``starting``: the context within which the cluster starts a worker process (the fork
    server); ``on_broken``: called once, with a one-line reason, when the cluster had no
    worker for :data:`LOST_WORKERS_S` and ``replacements`` were all spent.
    """

    def __init__(self, cluster: LocalCluster, starting: Callable[[], Any], on_broken: Callable[[str], None],
                 replacements: int | None = None) -> None:
        self._cluster = cluster
        self._starting = starting
        self._on_broken = on_broken
        self.replacements_left = replacements if replacements is not None else 4 * len(cluster.worker_spec) + 8
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="calabaria-cluster-keeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cluster = self._cluster
        empty_since: float | None = None
        scaled_at, scaled_with = -RESCALE_AFTER_S, 0  # when the last replacements were asked for, and the count then
        while not self._closing.wait(WATCH_INTERVAL_S):
            try:
                if cluster.status.name != "running":
                    return
                have = len(cluster.workers)
                missing = len(cluster.worker_spec) - have
                starting = have <= scaled_with and time.monotonic() - scaled_at < RESCALE_AFTER_S
                if missing > 0 and self.replacements_left > 0 and not starting:
                    scaled_at, scaled_with = time.monotonic(), have
                    self.replacements_left -= missing
                    log.warning("replacing lost local workers", missing=missing, replacements_left=max(0, self.replacements_left))
                    with self._starting():
                        cluster.scale(len(cluster.worker_spec))
                live = cluster.scheduler.total_nthreads if cluster.scheduler is not None else 1
            except Exception as e:  # noqa: BLE001 - the cluster is closing with the run
                log.debug("watching the local cluster failed", error=f"{type(e).__name__}: {e}")
                continue
            if live:
                empty_since = None
                continue
            empty_since = empty_since or time.monotonic()
            if self.replacements_left <= 0 and time.monotonic() - empty_since > LOST_WORKERS_S:
                reason = (f"the local cluster's worker processes keep ending: no worker for {LOST_WORKERS_S:g} s "
                          "and no replacement left")
                log.error(reason)
                self._on_broken(reason)
                return

    def close(self) -> None:
        """Stop keeping (the cluster closes next)."""
        self._closing.set()
        self._thread.join(WATCH_INTERVAL_S + 5)
