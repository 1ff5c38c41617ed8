"""Dask implementation of the simulation service.

Per trial: one task per replicate, keyed ``calabaria-rep-<run>-<trial>-<r>``,
returning per-target scores. When a target scores the replicate mean, one
reduction task ``calabaria-trial-<run>-<trial>`` aggregates the replicates'
aligned series on a worker; otherwise the coordinator aggregates the scalar
scores itself (one task and one round trip fewer per trial). Keys are unique per (run, trial, replicate): two trials never share
a result, even when their parameters are equal. Futures are awaited with
``distributed.wait`` / ``Future.result``, never polled.
"""

from __future__ import annotations

import logging
import os
import math
import socket
import time
import threading
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import CancelledError
from typing import Any
from urllib.parse import urlsplit

import distributed
from distributed import Client, Future, LocalCluster

from modelops_calabaria.errors import ConfigurationError, ServiceUnavailableError
from modelops_calabaria.logging import get_logger
from modelops_calabaria.simulation.replicates_per_task import DurationStats, replicates_per_task
from modelops_calabaria.simulation.task import SimContext, TrialEvaluation, reduce_trial, run_replicate, run_replicates

log = get_logger(__name__)


def _probe(address: str) -> None:
    """Fail at once (not after the client's 10 s) when nothing listens at a tcp:// address."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "") or not parts.hostname or not parts.port:
        return  # tls://, inproc://, ...: let the client decide
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=5).close()
    except OSError as e:
        raise ServiceUnavailableError(
            f"cannot reach the Dask scheduler at {address}: {e.strerror or e}",
            hint="start the scheduler (`dask scheduler`), check the address and port, or leave the scheduler empty to run a local cluster",
        ) from e


class DaskTrialHandle:
    """The futures of one submitted trial: its replicates, and their reduction when it runs
    on a worker (``final``); without one the replicates' scores are reduced here."""

    def __init__(self, service: DaskSimulationService, replicates: list[Future], final: Future | None,
                 n_replicates: int) -> None:
        self._service = service
        self._replicates = replicates
        self.final = final
        self._n = n_replicates
        self._counted = True  # in the service's trials in flight until its result is read

    @property
    def awaited(self) -> list[Future]:
        """The futures whose completion completes the trial."""
        return [self.final] if self.final is not None else self._replicates

    def result(self) -> TrialEvaluation:
        try:
            if self.final is not None:
                evaluation = self.final.result()
            else:
                evaluation = reduce_trial(self._service.context, self._service.client.gather(self._replicates))
            if evaluation.error is None:
                self._service.durations.observe(evaluation.busy_s, self._n)
            return evaluation
        except CancelledError as e:
            # Cancelled by us (shutdown) is a trial failure; cancelled because the
            # scheduler went away is fatal for the whole run.
            if "connection-lost" in str(e) or self._service.client.status != "running":
                self._service.raise_if_lost(e, force=True)
            return TrialEvaluation({}, None, 0.0, error="simulation cancelled")
        except distributed.scheduler.KilledWorker as e:
            return TrialEvaluation({}, None, 0.0, error=f"Dask workers died while running this trial's simulations ({e}); read the workers' logs")
        except Exception as e:  # noqa: BLE001 - infrastructure errors: the cluster may be gone
            self._service.raise_if_lost(e)
            return TrialEvaluation({}, None, 0.0, error=f"simulation infrastructure error: {type(e).__name__}: {e}")
        finally:
            if self._counted:
                self._counted = False
                self._service.trial_done()

    def cancel(self) -> None:
        self._service.client.cancel([*self.awaited, *self._replicates], force=True)


class DaskSimulationService:
    """Runs replicates on a Dask cluster (thread-safe)."""

    def __init__(self, client: Client, context: SimContext, *, owned_cluster: LocalCluster | None = None,
                 replicates_per_task: int | None = None) -> None:
        self.client = client
        self.context = context
        self._cluster = owned_cluster
        self._run = uuid.uuid4().hex[:12]
        # Replicates return scalars only unless a target scores the replicate mean, whose
        # aligned series then meet on a worker: simulated values never reach the coordinator.
        self._reduce_on_worker = any(t.aggregation == "score_of_mean" for t in context.targets)
        self.replicates_per_task = replicates_per_task  # None: chosen per trial from measured durations
        self.durations = DurationStats()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._slots, self._slots_at = 1, -math.inf
        self.address = client.scheduler.address if client.scheduler else "?"

    @classmethod
    def connect(cls, scheduler: str | None, context: SimContext, *, local_workers: int | None = None,
                replicates_per_task: int | None = None) -> DaskSimulationService:
        """Connect to ``scheduler`` or, when empty, start a local process cluster.

        Raises:
            ServiceUnavailableError: the scheduler does not answer (names the address).
            ConfigurationError: the address is malformed.
        """
        if not scheduler:
            n = local_workers or max(1, os.cpu_count() or 1)
            cluster = LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
            )
            return cls(Client(cluster, set_as_default=False), context, owned_cluster=cluster,
                       replicates_per_task=replicates_per_task)
        if "://" not in scheduler and ":" not in scheduler:
            raise ConfigurationError(f"scheduler address {scheduler!r} is not an address", hint="use tcp://HOST:8786, or leave it empty to start a local cluster")
        _probe(scheduler)
        try:
            client = Client(scheduler, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ServiceUnavailableError(
                f"cannot reach the Dask scheduler at {scheduler}: {e}",
                hint="start the scheduler (`dask scheduler`), check the address and port, or leave the scheduler empty to run a local cluster",
            ) from e
        except ValueError as e:
            raise ConfigurationError(f"scheduler address {scheduler!r} is invalid: {e}", hint="use tcp://HOST:8786") from e
        return cls(client, context, replicates_per_task=replicates_per_task)

    @property
    def slots(self) -> int:
        """Worker threads in the cluster, asked of the scheduler at most every few seconds."""
        now = time.monotonic()
        if now - self._slots_at > 5.0:
            self._slots = max(1, sum(self.client.nthreads().values()))
            self._slots_at = now
        return self._slots

    def submit(self, trial_number: int, params: Mapping[str, Any], seeds: Sequence[int]) -> DaskTrialHandle:
        if self.client.status not in ("running", "connecting"):
            raise ServiceUnavailableError(f"lost the Dask scheduler at {self.address}",
                                          hint="check that the scheduler is running and reachable, then re-run: finished trials are kept")
        params = dict(params)
        n = len(seeds)
        with self._lock:
            self._in_flight += 1
            in_flight = self._in_flight
        per_task = self._per_task(n, in_flight)
        if per_task == 1:
            # One map call: the trial's replicates reach the scheduler in one graph update, not n.
            reps = self.client.map(
                run_replicate, [self.context] * n, [params] * n, list(seeds), list(range(n)),
                key=[f"calabaria-rep-{self._run}-{trial_number}-{r}" for r in range(n)], pure=False,
            )
        else:
            firsts = list(range(0, n, per_task))
            reps = self.client.map(
                run_replicates, [self.context] * len(firsts), [params] * len(firsts),
                [list(seeds[f:f + per_task]) for f in firsts], firsts,
                key=[f"calabaria-rep-{self._run}-{trial_number}-{f}" for f in firsts], pure=False,
            )
        if not self._reduce_on_worker:
            return DaskTrialHandle(self, reps, None, n)
        final = self.client.submit(reduce_trial, self.context, reps, key=f"calabaria-trial-{self._run}-{trial_number}", pure=False)
        return DaskTrialHandle(self, reps, final, n)

    def _per_task(self, n: int, in_flight: int) -> int:
        if self.replicates_per_task is not None:
            return max(1, min(self.replicates_per_task, n))
        return replicates_per_task(n, self.durations.mean, in_flight, self.slots)

    def trial_done(self) -> None:
        """A submitted trial's result was read: it no longer counts as in flight."""
        with self._lock:
            self._in_flight -= 1

    def gather(self, handles: Sequence[DaskTrialHandle]) -> list[TrialEvaluation]:  # type: ignore[override]
        # One wait for the whole batch, on this service's client (not a process-wide default one).
        for _ in distributed.as_completed([f for h in handles for f in h.awaited], loop=self.client.loop):
            pass
        return [h.result() for h in handles]

    def raise_if_lost(self, error: BaseException, *, force: bool = False) -> None:
        """Raise ServiceUnavailableError when the client has lost its scheduler."""
        if force or self.client.status not in ("running", "connecting") or isinstance(error, (OSError, distributed.comm.CommClosedError)):
            raise ServiceUnavailableError(
                f"lost the Dask scheduler at {self.address}: {type(error).__name__}: {error}",
                hint="check that the scheduler is running and reachable, then re-run: finished trials are kept",
            ) from error

    def close(self) -> None:
        """Close the client (and the local cluster); never raises, even with the scheduler gone."""
        try:
            self.client.close(timeout=5)
        except Exception as e:  # noqa: BLE001 - closing a client whose scheduler died fails; nothing to save
            log.debug("closing the Dask client failed", error=str(e))
        if self._cluster is not None:
            self._cluster.close(timeout=10)
