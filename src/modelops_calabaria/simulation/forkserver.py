"""Local worker processes forked from one server that has already imported what they run.

A spawned worker process imports Dask, numpy, this package and the model cold: about
2 CPU-s apiece, paid again by every worker and every restart (docs/performance.md, "CPU
per trial against a plain study.optimize loop"). With multiprocessing's ``forkserver``,
one server process imports all of it once, the model included, and each worker is a
fork of it that inherits those imports. The coordinator itself is not forked: it runs
threads (Dask's event loop, the cluster's start-up), and forking a threaded process
can copy a lock held by another thread. The server ignores SIGINT (multiprocessing's
own doing), so a Ctrl-C on the terminal does not reach it; its workers leave the
terminal's process group at start-up (:mod:`.worker_setup`), as spawned ones did.

Used only for the local cluster's worker processes, and only when Dask's
``distributed.worker.multiprocessing-method`` is ``spawn`` (its default); a user who set
``fork`` or ``forkserver`` there keeps it (with Dask's own fork-server preload). The server is started once per coordinator
process and serves every later local cluster of that process (the first run's model
stays imported in it; a worker still loads its own run's model at start-up).

Nothing of it outlives the command: when the last local cluster of worker processes
closes, :func:`end_workers` kills whatever is left below the server (a worker its nanny
did not stop in time, processes a model left behind: the server is their sub-reaper,
see :mod:`.containment`), and :func:`stop` (the CLI's exit, else ``atexit``) ends the
server and multiprocessing's resource tracker, which otherwise linger for seconds after
the command returns.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from contextlib import contextmanager
from collections.abc import Iterator

import dask

from modelops_calabaria.simulation import containment
from modelops_calabaria.simulation.local import PRELOAD_MODEL_ENV

METHOD_KEY = "distributed.worker.multiprocessing-method"
# What every local worker runs: Dask's worker and nanny, numpy, the replicate task, the
# start-up hook, and (preload_model) the model named in PRELOAD_MODEL_ENV.
PRELOAD = ("distributed", "distributed.nanny", "numpy", "modelops_calabaria.simulation.task",
           "modelops_calabaria.simulation.worker_setup", "modelops_calabaria.simulation.preload_model")

_lock = threading.Lock()
_users = 0  # local clusters of this process whose workers come from the server now
_atexit_registered = False


def available() -> bool:
    """Whether workers can be forked from a server here: Dask's method is ``spawn`` (its
    default) and the platform has ``forkserver`` (POSIX)."""
    return (dask.config.get(METHOD_KEY, default="spawn") == "spawn"
            and "forkserver" in multiprocessing.get_all_start_methods())


def ensure_server(model_ref: str) -> None:
    """Start the fork server (once per process) with the workers' imports and ``model_ref``.

    The server inherits this process's environment when it starts: Dask's
    ``pre-spawn-environ`` (e.g. ``OMP_NUM_THREADS=1``, which numpy reads at import, and
    which Dask sets in this process before spawning a worker anyway) and the model to
    preload are set here first. Later calls (another run in this process) do nothing.
    """
    from distributed import utils as dask_utils
    from distributed.nanny import _get_env_variables

    with _lock:
        ctx = multiprocessing.get_context("forkserver")
        os.environ.update(_get_env_variables("distributed.nanny.pre-spawn-environ"))
        ctx.set_forkserver_preload(list(PRELOAD))
        # Dask would otherwise set its own preload list on first use, importing pandas and
        # its other optional packages into this process to do so.
        dask_utils._forkserver_preload_set = True  # noqa: SLF001 - no public switch for it
        from multiprocessing import forkserver

        global _atexit_registered
        if not _atexit_registered:
            atexit.register(stop)
            _atexit_registered = True
        before = os.environ.get(PRELOAD_MODEL_ENV)
        os.environ[PRELOAD_MODEL_ENV] = model_ref
        try:
            forkserver.ensure_running()  # the server process starts now, with this environment
        finally:  # this process's later children (other runs, other commands) must not inherit it
            if before is None:
                os.environ.pop(PRELOAD_MODEL_ENV, None)
            else:
                os.environ[PRELOAD_MODEL_ENV] = before


@contextmanager
def forked_workers(model_ref: str) -> Iterator[None]:
    """Within the block, Dask starts worker processes by forking them from the server."""
    ensure_server(model_ref)
    with dask.config.set({METHOD_KEY: "forkserver"}):
        yield


def acquire() -> None:
    """A local cluster of worker processes opens (its workers may come from the server)."""
    global _users
    with _lock:
        _users += 1


def _server_pid() -> int | None:
    from multiprocessing import forkserver

    return forkserver._forkserver._forkserver_pid  # noqa: SLF001 - no public accessor


def end_workers() -> None:
    """A local cluster closed: when it was the last one, kill every process still below the server."""
    global _users
    with _lock:
        _users = max(0, _users - 1)
        if _users:
            return
        pid = _server_pid()
    if pid is not None:
        containment.kill_all(containment.descendants(pid), reap=False)


def stop() -> None:
    """End the fork server (and whatever is below it) and multiprocessing's resource tracker now;
    never raises. The next local cluster of this process starts a new server."""
    from multiprocessing import forkserver, resource_tracker

    with _lock:
        pid = _server_pid()
        if pid is not None:
            containment.kill_all(containment.descendants(pid), reap=False)
            try:
                forkserver._forkserver._stop()  # noqa: SLF001 - closes its pipe and reaps it
            except OSError:
                pass
    try:
        resource_tracker._resource_tracker._stop()  # noqa: SLF001 - it would linger until every inheritor exits
    except Exception:  # noqa: BLE001, S110 - not running, or already gone
        pass
