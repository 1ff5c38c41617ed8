"""The shape of the local cluster the service starts when no scheduler is given.

Without Dask imports, so that a run can size its loops (and decide it has
nothing to run) before any cluster exists.

Default shape (measured in docs/performance.md, "Start-up"): the built-in
models (``sir``, ``seir``, ``age_seir``: vectorised numpy, milliseconds per
replicate) run on threads of one in-process worker: no worker process to start,
no cold imports, and their numpy work releases the GIL often enough. Any other
model runs in one single-threaded worker process per core: a pure-Python model
would hold one GIL for all threads, and a process can be restarted after a
timeout. ``CALABARIA_LOCAL_PROCESSES`` (Settings.local_processes) overrides it.
"""

from __future__ import annotations

import os

from modelops_calabaria.callables import is_session
from modelops_calabaria.models import BUILTINS

# Environment variable a local worker process finds the model in (worker_setup loads it at start).
PRELOAD_MODEL_ENV = "CALABARIA_PRELOAD_MODEL"


def local_processes(model_ref: str, setting: bool | None) -> bool:
    """Whether the local cluster runs worker processes (else threads): ``setting`` if set,
    else threads for a built-in model and processes for any other."""
    if setting is not None:
        return setting
    # a session callable (callables.py) exists only in this process: threads here can run it
    return model_ref not in BUILTINS and not is_session(model_ref)


def local_cluster_shape(local_workers: int | None, processes: bool) -> tuple[int, int]:
    """``(workers, threads per worker)``: ``local_workers`` slots (default: cores), as that many
    single-threaded processes, or as one in-process worker with that many threads."""
    n = local_workers or max(1, os.cpu_count() or 1)
    return (n, 1) if processes else (1, n)
