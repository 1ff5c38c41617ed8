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

import asyncio
import contextlib
import logging
import math
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import CancelledError
from typing import Any
from urllib.parse import urlsplit

import dask
import distributed
from distributed import Client, Future, LocalCluster

from modelops_calabaria.addresses import host_port, scheduler_address
from modelops_calabaria.errors import ConfigurationError, ServiceUnavailableError
from modelops_calabaria.logging import get_logger, tame_library_loggers
from modelops_calabaria.simulation import containment, forkserver, keeper
from modelops_calabaria.simulation.local import PRELOAD_MODEL_ENV, local_cluster_shape
from modelops_calabaria.simulation.replicates_per_task import DurationStats, replicates_per_task
from modelops_calabaria.simulation.task import SimContext, TrialEvaluation, reduce_trial, run_replicate, run_replicates

log = get_logger(__name__)
tame_library_loggers()  # distributed was just imported (lazily, after the CLI configured logging)


PROBE_TIMEOUT_S = 10.0
LIVE_SLOTS_TIMEOUT_S = 2.0  # one identity call; a scheduler slower than this keeps the last count
RECYCLE_TIMEOUT_S = 60.0  # a worker restart: process exit, new process, imports, registration
WORKER_SETUP = "modelops_calabaria.simulation.worker_setup"  # preloaded by local worker processes
# Dask settings of the local cluster this service starts (its scheduler, nannies and workers read
# them when they are made; a nanny hands them to every worker process it starts). Each costs CPU
# while nothing runs, taken from the simulations' cores (docs/performance.md, "CPU per trial"):
LOCAL_CLUSTER_CONFIG = {
    # Dask's statistical profiler walks every thread's stack every 10 ms in each server (the
    # scheduler, every nanny and worker) for the dashboard's profile page.
    "distributed.worker.profile.enabled": False,
    # psutil readings of each process's memory (nanny and worker, default every 100 ms) and of
    # the host (default every 500 ms); a worker over its memory limit is still stopped.
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    # Dask starts worker processes with MALLOC_TRIM_THRESHOLD_=65536 so that they hand freed
    # memory back to the OS. Setting it also turns off glibc's adaptive mmap threshold: every
    # numpy array over 128 KiB is then a fresh mmap, page faults and munmap, which made a numpy
    # individual-based model 1.5x slower per replicate (0.165 -> 0.253 CPU-s). A simulation's
    # arrays are freed when it returns, so glibc's defaults suit replicates better.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    # A task that was only waiting on a worker when its process died is rerun elsewhere; the
    # replicate whose model ended the process is failed by its marker (.containment), not by
    # Dask's count of dead workers, which also counts every task that waited there (3 deaths,
    # Dask's default, failed healthy trials as "workers died" when models ended workers often).
    "distributed.scheduler.allowed-failures": 10,
}
_START_SCHEDULER = "start the scheduler (`dask scheduler`), check the address and port, or leave the scheduler empty to run a local cluster"


def _worker_start(processes: bool, model_ref: str) -> Any:
    """Within the block, local worker processes are forked from the fork server (:mod:`.forkserver`)
    when it is available; else Dask's own way (spawned), or no process at all (threads)."""
    if processes and forkserver.available():
        return forkserver.forked_workers(model_ref)
    return contextlib.nullcontext()


def _probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Check, within ``timeout_s``, that a Dask scheduler answers at ``address`` (normalised).

    Two steps, so that the message says which one failed: a TCP connection (fails at
    once when nothing listens), then Dask's handshake and an ``identity`` request,
    whose reply must come from a scheduler. Another service on the port (an HTTP
    server, a database, a Dask worker) either never answers or answers something
    that is not a scheduler's identity; either way this returns within the bound,
    where ``distributed.Client`` alone can wait forever or misread the reply as a
    frame of exabytes.

    Raises:
        ServiceUnavailableError: nothing listens, or what listens is not a Dask scheduler.
    """
    parts = urlsplit(address)
    if parts.scheme in ("tcp", "tls", "ws", "wss") and parts.hostname and parts.port:
        try:
            socket.create_connection((parts.hostname, parts.port), timeout=min(5.0, timeout_s)).close()
        except OSError as e:
            raise ServiceUnavailableError(f"cannot reach the Dask scheduler at {address}: {e.strerror or e}",
                                          hint=_START_SCHEDULER) from e
    outcome: dict[str, Any] = {}

    def identify() -> None:
        try:
            outcome["reply"] = asyncio.run(asyncio.wait_for(_identity(address), timeout_s))
        except BaseException as e:  # noqa: BLE001 - whatever the peer made the client do, it is not a scheduler
            outcome["error"] = e

    # A thread of its own: its own event loop (the caller may run one), and a bound
    # on the wait even if something in the client blocks outside the event loop.
    thread = threading.Thread(target=identify, name="calabaria-scheduler-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 2.0)
    reply = outcome.get("reply")
    if isinstance(reply, Mapping) and reply.get("type") == "Scheduler":
        return
    error = outcome.get("error")
    if thread.is_alive() or isinstance(error, (TimeoutError, asyncio.TimeoutError)):
        why = f"no answer within {timeout_s:g} s"
    elif isinstance(error, OSError):  # CommClosedError is one: the peer hung up on Dask's handshake
        why = "it closed the connection"
    elif error is not None:  # e.g. an HTTP reply read as a frame length of exabytes
        why = f"it does not speak Dask's protocol ({type(error).__name__})"
    elif isinstance(reply, Mapping) and reply.get("type"):
        why = f"it is a Dask {reply['type']}, not a scheduler"
    else:
        why = "its reply is not a scheduler's"
    raise ServiceUnavailableError(
        f"no Dask scheduler answered at {address} ({why})",
        hint="something else listens on that port: check the address and port (a Dask scheduler listens on 8786 by default), "
             "or leave the scheduler empty to run a local cluster",
    )


async def _identity(address: str) -> Any:
    from distributed.comm import connect
    from distributed.security import Security

    comm = await connect(address, deserialize=True, **Security().get_connection_args("client"))
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        comm.abort()


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
            else:
                evaluation.error = containment.explain_exits(evaluation.error, keeper.EXITS)
            if evaluation.abandoned_on:
                # Release the results first: futures still held when their worker goes are
                # recomputed, and the recomputation would run the runaway model again.
                self._release()
                self._service.recycle(evaluation.abandoned_on)
            return evaluation
        except CancelledError as e:
            # Cancelled by us (shutdown) is a trial failure; cancelled because the
            # scheduler went away is fatal for the whole run.
            self._service.raise_if_broken()
            if "connection-lost" in str(e) or self._service.client.status != "running":
                self._service.raise_if_lost(e, force=True)
            return TrialEvaluation({}, None, 0.0, error="simulation cancelled")
        except distributed.scheduler.KilledWorker as e:
            return TrialEvaluation({}, None, 0.0, error=f"Dask workers died while running this trial's simulations ({e}); read the workers' logs")
        except Exception as e:  # noqa: BLE001 - infrastructure errors: the cluster may be gone
            self._service.raise_if_broken()
            self._service.raise_if_lost(e)
            return TrialEvaluation({}, None, 0.0, error=f"simulation infrastructure error: {type(e).__name__}: {e}")
        finally:
            if self._counted:
                self._counted = False
                self._service.trial_done(self)

    @property
    def tasks(self) -> int:
        return len(self._replicates)

    def wait_left(self, left: int) -> None:
        pending = [f for f in self._replicates if not f.done()]
        if len(pending) <= left:
            return
        # On this service's client's loop (not a process-wide default client); the futures still
        # tracked after the break complete on their own.
        for done, _ in enumerate(distributed.as_completed(pending, loop=self._service.client.loop), 1):
            if len(pending) - done <= left:
                return

    def cancel(self) -> None:
        self._service.client.cancel([*self.awaited, *self._replicates], force=True)

    def _release(self) -> None:
        for future in [*self._replicates, *([self.final] if self.final is not None else [])]:
            future.release()
        self._replicates, self.final = [], None


class DaskSimulationService:
    """Runs replicates on a Dask cluster (thread-safe)."""

    def __init__(self, client: Client, context: SimContext, *, owned_cluster: LocalCluster | None = None,
                 replicates_per_task: int | None = None, worker_processes: bool = False,
                 markers: str | None = None) -> None:
        self.client = client
        self.context = context
        self._cluster = owned_cluster
        self._worker_processes = owned_cluster is not None and worker_processes  # restarts start them as at first
        self._run = uuid.uuid4().hex[:12]
        # Replicates return scalars only unless a target scores the replicate mean, whose
        # aligned series then meet on a worker: simulated values never reach the coordinator.
        self._reduce_on_worker = any(t.aggregation == "score_of_mean" for t in context.targets)
        self.replicates_per_task = replicates_per_task  # None: chosen per trial from measured durations
        self.durations = DurationStats()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._slots, self._slots_at = 1, -math.inf
        self._live = 1  # the last live thread count read (live_slots)
        self.address = client.scheduler.address if client.scheduler else "?"
        self._recycled: set[str] = set()
        self._recyclers: list[threading.Thread] = []
        self._markers = markers  # the replicate marker directory of this service's worker processes
        self._handles: set[DaskTrialHandle] = set()  # trials in flight, cancelled if the cluster breaks
        self._broken: str | None = None
        # Worker processes that end are replaced (bounded); a cluster that cannot keep any stops the run.
        self._keeper = keeper.ClusterKeeper(owned_cluster, self._starting_workers, self._break) if self._worker_processes else None

    @classmethod
    def connect(cls, scheduler: str | None, context: SimContext, *, local_workers: int | None = None,
                replicates_per_task: int | None = None, listen_host: str = "127.0.0.1",
                processes: bool = True) -> DaskSimulationService:
        """Connect to ``scheduler`` or, when empty, start a local cluster.

        The local cluster (:func:`local_cluster_shape`): ``processes``: one
        single-threaded worker process per slot, each with its nanny; else one
        worker of that many threads in this process (no process to start or to
        import the model in; a timed-out model thread cannot be stopped there).
        Its scheduler, nannies, workers and dashboard listen on ``listen_host``
        only (default loopback). Its worker processes leave the coordinator's
        process group and ignore SIGINT (:mod:`.worker_setup`): a Ctrl-C on the
        terminal reaches the coordinator alone, which lets in-flight replicates
        finish. Each worker process loads the model when it starts (the preload),
        not when its first replicate arrives, so that this cost is paid while the
        coordinator prepares the study; worker processes are forked from one fork
        server that imported Dask, the task and the model once (:mod:`.forkserver`),
        and run with :data:`LOCAL_CLUSTER_CONFIG`. A replicate whose model ends its worker
        process fails its trial alone, naming the exit status (:mod:`.containment`); the
        cluster is kept at its size (:mod:`.keeper`).

        Raises:
            ServiceUnavailableError: nothing answers at the address, or not a Dask
                scheduler (bounded: :data:`PROBE_TIMEOUT_S`; names the address).
            ConfigurationError: the address is malformed.
        """
        if not scheduler:
            n_workers, threads = local_cluster_shape(local_workers, processes)
            # Threads talk to the in-process scheduler without a network (inproc://): no host to bind.
            # Its worker's HTTP server would bind every interface (it has no TCP address to follow).
            extra: dict[str, Any] = {"processes": False, "worker_dashboard_address": host_port(listen_host, 0)}
            markers = None
            if processes:
                markers = tempfile.mkdtemp(prefix="calabaria-markers-")
                forkserver.acquire()
                extra = {"processes": True, "host": listen_host, "preload": [WORKER_SETUP], "worker_class": keeper.RecordingNanny,
                         "env": {PRELOAD_MODEL_ENV: context.model_ref, containment.MARKERS_ENV: markers}}
            try:
                with dask.config.set(LOCAL_CLUSTER_CONFIG), _worker_start(processes, context.model_ref):
                    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads,
                                           dashboard_address=host_port(listen_host, 0), silence_logs=logging.ERROR, **extra)
            except (OSError, RuntimeError, TimeoutError) as e:  # e.g. no port on listen_host, a worker that died at start
                if markers:
                    shutil.rmtree(markers, ignore_errors=True)
                    forkserver.end_workers()
                raise ServiceUnavailableError(f"the local Dask cluster did not start: {e}",
                                              hint="check CALABARIA_LISTEN_HOST and free memory, or pass --scheduler") from e
            return cls(Client(cluster, set_as_default=False), context, owned_cluster=cluster,
                       replicates_per_task=replicates_per_task, worker_processes=processes, markers=markers)
        address = scheduler_address(scheduler)  # Settings checked it already; API callers may not have
        assert address is not None
        _probe(address)
        try:
            client = Client(address, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ServiceUnavailableError(f"cannot reach the Dask scheduler at {address}: {e}", hint=_START_SCHEDULER) from e
        except ValueError as e:
            raise ConfigurationError(f"scheduler address {address!r} is invalid: {e}", hint="use tcp://HOST:8786") from e
        return cls(client, context, replicates_per_task=replicates_per_task)

    def _starting_workers(self) -> Any:
        """How this service's local cluster starts (or restarts) a worker process."""
        return _worker_start(self._worker_processes, self.context.model_ref)

    @property
    def slots(self) -> int:
        """Worker threads in the cluster, asked of the scheduler at most every few seconds."""
        now = time.monotonic()
        if now - self._slots_at > 5.0:
            self._slots = max(1, sum(self.client.nthreads().values()))
            self._slots_at = now
        return self._slots

    def live_slots(self) -> int:
        """Worker threads the scheduler counts now: one ``identity`` call without the per-worker
        listing (the scheduler keeps the total), bounded by :data:`LIVE_SLOTS_TIMEOUT_S`."""
        try:
            info = self.client.sync(self.client.scheduler.identity, n_workers=0, callback_timeout=LIVE_SLOTS_TIMEOUT_S)
            live = int(info["total_threads"])
        except Exception as e:  # noqa: BLE001 - a missed reading keeps the loops as they are
            log.debug("reading the live thread count failed", error=f"{type(e).__name__}: {e}")
            with self._lock:
                return self._live
        with self._lock:
            self._live = live
        return live

    def submit(self, trial_number: int, params: Mapping[str, Any], seeds: Sequence[int], first: int = 0) -> DaskTrialHandle:
        self.raise_if_broken()
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
                run_replicate, [self.context] * n, [params] * n, list(seeds), list(range(first, first + n)),
                key=[f"calabaria-rep-{self._run}-{trial_number}-{first + r}" for r in range(n)], pure=False,
            )
        else:
            firsts = list(range(0, n, per_task))
            reps = self.client.map(
                run_replicates, [self.context] * len(firsts), [params] * len(firsts),
                [list(seeds[f:f + per_task]) for f in firsts], [first + f for f in firsts],
                key=[f"calabaria-rep-{self._run}-{trial_number}-{first + f}" for f in firsts], pure=False,
            )
        final = None
        if self._reduce_on_worker:
            stage = f"-{first}" if first else ""  # a later stage of the trial's replicates reduces under its own key
            final = self.client.submit(reduce_trial, self.context, reps, key=f"calabaria-trial-{self._run}-{trial_number}{stage}",
                                       pure=False)
        handle = DaskTrialHandle(self, reps, final, n)
        with self._lock:
            self._handles.add(handle)
        if self._broken:  # broke meanwhile: _break did not see this one
            handle.cancel()
        return handle

    def _per_task(self, n: int, in_flight: int) -> int:
        if self.replicates_per_task is not None:
            return max(1, min(self.replicates_per_task, n))
        return replicates_per_task(n, self.durations.mean, in_flight, self.slots)

    def trial_done(self, handle: DaskTrialHandle | None = None) -> None:
        """A submitted trial's result was read: it no longer counts as in flight."""
        with self._lock:
            self._in_flight -= 1
            self._handles.discard(handle)  # type: ignore[arg-type]

    def _break(self, reason: str) -> None:
        """The local cluster lost its workers for good: stop the run, cancelling its trials in flight."""
        self._broken = reason
        with self._lock:
            handles = list(self._handles)
        for h in handles:
            with contextlib.suppress(Exception):
                h.cancel()

    def raise_if_broken(self) -> None:
        """Raise ServiceUnavailableError when the local cluster lost its workers for good."""
        if self._broken:
            raise ServiceUnavailableError(self._broken, hint="read the model's output: does it end its process (os._exit, "
                                                             "a signal, a crash)? Finished trials are kept; re-run to resume")

    def gather(self, handles: Sequence[DaskTrialHandle]) -> list[TrialEvaluation]:  # type: ignore[override]
        # One wait for the whole batch, on this service's client (not a process-wide default one).
        for _ in distributed.as_completed([f for h in handles for f in h.awaited], loop=self.client.loop):
            pass
        return [h.result() for h in handles]

    def recycle(self, workers: Sequence[str]) -> None:
        """Restart ``workers`` through their nannies, in the background, once per worker.

        Called when a replicate timed out on them: its model thread cannot be stopped
        from Python and would keep a core busy for the rest of the run. The nanny
        replaces the worker process (new address); Dask reruns the tasks that were on
        it and recomputes results it held, under the same unique keys. A worker
        without a nanny is left alone (restarting it would remove it) and a warning
        says so.
        """
        with self._lock:
            new = [w for w in workers if w not in self._recycled]
            self._recycled.update(new)
        if not new:
            return
        thread = threading.Thread(target=self._restart, args=(new,), name="calabaria-recycle", daemon=True)
        with self._lock:
            self._recyclers.append(thread)
        thread.start()

    def _restart(self, workers: list[str]) -> None:
        try:
            known = self.client.scheduler_info(n_workers=-1)["workers"]
            nannied = [w for w in workers if known.get(w, {}).get("nanny")]
            orphans = [w for w in workers if w in known and w not in nannied]
            if orphans:
                log.warning("a timed-out model keeps running on workers without a nanny; they cannot be restarted",
                            workers=orphans, hint="start Dask workers with their nanny (the default of `dask worker`)")
            if nannied:
                log.info("restarting workers left running a timed-out model", workers=nannied)
                with self._starting_workers():
                    outcome = self.client.restart_workers(nannied, timeout=RECYCLE_TIMEOUT_S, raise_for_error=False)
                failed = {w: s for w, s in outcome.items() if s != "OK"}
                if failed:
                    log.warning("restarting workers failed", outcome=failed)
        except Exception as e:  # noqa: BLE001 - a failed restart costs speed, not results
            log.warning("restarting workers left running a timed-out model failed", workers=workers,
                        error=f"{type(e).__name__}: {e}")
        if self._cluster is not None and self._cluster.status.name == "running":
            # A local cluster drops a worker whose restart outlasts its lost-worker timeout
            # (15 s: a slow start on a loaded machine) and would never replace it: the run
            # would wait for workers forever. Scaling to its own size starts any missing one.
            try:
                with self._starting_workers():
                    self._cluster.scale(len(self._cluster.worker_spec))
            except Exception as e:  # noqa: BLE001 - the cluster is closing with the run
                log.debug("scaling the local cluster back failed", error=str(e))

    def raise_if_lost(self, error: BaseException, *, force: bool = False) -> None:
        """Raise ServiceUnavailableError when the client has lost its scheduler."""
        if force or self.client.status not in ("running", "connecting") or isinstance(error, (OSError, distributed.comm.CommClosedError)):
            raise ServiceUnavailableError(
                f"lost the Dask scheduler at {self.address}: {type(error).__name__}: {error}",
                hint="check that the scheduler is running and reachable, then re-run: finished trials are kept",
            ) from error

    def close(self) -> None:
        """Close the client (and the local cluster); never raises, even with the scheduler gone.

        On a cluster this service did not start, first wait (at most ``RECYCLE_TIMEOUT_S``)
        for worker restarts under way, so that the run leaves the cluster whole.
        """
        if self._keeper is not None:
            self._keeper.close()
        if self._cluster is None:
            deadline = time.monotonic() + RECYCLE_TIMEOUT_S
            for thread in list(self._recyclers):
                thread.join(max(0.0, deadline - time.monotonic()))
        try:
            self.client.close(timeout=5)
        except Exception as e:  # noqa: BLE001 - closing a client whose scheduler died fails; nothing to save
            log.debug("closing the Dask client failed", error=str(e))
        if self._cluster is not None and not self._worker_processes:
            # The in-process worker would wait for its threads, and a model thread that cannot be
            # stopped (cancelled after a signal, or timed out) never ends: it is abandoned (a daemon
            # thread, gone with the process), not waited for.
            for w in list(self._cluster.workers.values()):
                try:
                    self._cluster.sync(w.close, executor_wait=False, timeout=5, reason="calabaria-close")
                except (Exception, asyncio.CancelledError) as e:  # noqa: BLE001 - closed already
                    log.debug("closing the in-process worker failed", error=f"{type(e).__name__}: {e}")
        if self._cluster is not None:
            try:
                self._cluster.close(timeout=10)
            except (Exception, asyncio.CancelledError) as e:  # noqa: BLE001 - e.g. a worker mid-restart: it ends with us
                log.debug("closing the local cluster failed", error=f"{type(e).__name__}: {e}")
        if self._worker_processes:
            forkserver.end_workers()  # whatever of the workers (and what their models started) outlived the close
        if self._markers:
            shutil.rmtree(self._markers, ignore_errors=True)
