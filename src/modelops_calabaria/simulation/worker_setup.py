"""Dask preload for the worker processes of the local cluster the service starts.

Run by each worker process (and again after a nanny restarts it) on its main
thread, before it takes tasks. It moves the process into a session of its own and
ignores SIGINT there: a Ctrl-C on the terminal is delivered to the terminal's
foreground process group, which then holds the coordinator alone. The
coordinator decides what a Ctrl-C means (finish in-flight trials within the
grace period; a second one cancels them) and closes the cluster itself. A worker
process whose coordinator dies exits too (its nanny lives in the coordinator, and
Dask's worker processes end when their parent does).

It also imports the worker task and loads the run's model (named in the
environment variable ``CALABARIA_PRELOAD_MODEL``): a spawned worker process
imports everything cold (seconds of CPU for a model package), and doing it here
pays that while the coordinator prepares the study, not when the first trial's
replicates arrive. A worker forked from the fork server (:mod:`.forkserver`) finds
both already imported there; it loads its run's model only if the server preloaded
another one. A model that fails to load is left to the first replicate,
which reports the error as a trial failure like any other.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from modelops_calabaria.simulation import containment
from modelops_calabaria.simulation.local import PRELOAD_MODEL_ENV


def dask_setup(worker: Any) -> None:  # noqa: ARG001 - Dask's preload hook signature
    """Leave the terminal's process group and ignore SIGINT (main thread of the worker process)."""
    try:
        os.setsid()
    except OSError:  # already a session leader (e.g. started by another launcher)
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    containment.become_subreaper()  # processes a model orphans stay below this worker (containment.py)
    load_run_model()


def load_run_model() -> None:
    """Import the worker task and load the model named in ``CALABARIA_PRELOAD_MODEL`` (cached
    per process: the replicates find it loaded); never raises."""
    model_ref = os.environ.get(PRELOAD_MODEL_ENV)
    if model_ref:
        try:
            from modelops_calabaria.models import load_model
            from modelops_calabaria.simulation import task  # noqa: F401 - what every replicate runs

            load_model(model_ref)
        except Exception:  # noqa: BLE001, S110 - the first replicate reports it, with its traceback
            pass
