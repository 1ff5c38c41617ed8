"""Keeping a model's process-level misdeeds inside its own replicate (local worker processes).

A model runs in a Dask worker process of the local cluster, and may do what a Python
function cannot undo: end the process (``os._exit``, a signal, a crash) or start
processes of its own and leave them running. Three things keep that to its trial:

- **Markers.** Before a replicate runs its model, the worker adds its pid to a marker
  file named after the task and replicate in the run's marker directory (environment
  variable :data:`MARKERS_ENV`, set by the service for its own worker processes only),
  and removes the file when the model returns or raises. Pids found there when a
  replicate starts are earlier attempts of that very replicate that were running when
  their worker process ended (a pid still alive is a concurrent attempt, and ignored):
  Dask reruns the tasks of a dead worker, and a model that ends its process would end
  another worker, and another. After :data:`ATTEMPTS` such deaths the replicate fails
  at once instead, naming the dead processes; the coordinator adds their exit status
  (:func:`explain_exits`). One death is forgiven: a worker can also be lost for other
  reasons (the OOM killer, a nanny closed by the cluster on a loaded machine). Tasks that
  merely waited on a dead worker have no marker and run again elsewhere, as Dask intends.
- **Sub-reaper.** Worker processes (and the fork server they come from) mark
  themselves child sub-reapers (Linux ``PR_SET_CHILD_SUBREAPER``): a process the model
  started and orphaned (a double fork) is re-parented to the worker, not to init, so
  it stays findable.
- **Leftover children.** After each replicate, children of the worker process that
  did not exist before the model ran are killed (SIGKILL) and reaped, with whatever
  they left behind. A model must wait for the processes it starts.

Pure standard library: imported by the fork server and every worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from modelops_calabaria.errors import exit_status

MARKERS_ENV = "CALABARIA_REPLICATE_MARKERS"
ATTEMPTS = 2  # deaths of a worker while it ran the same replicate before that replicate fails
PR_SET_CHILD_SUBREAPER = 36
DIED_PATTERN = re.compile(r"its worker process \(pid (\d+)\) ended")


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux); False elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int) -> set[int]:
    """The direct children of ``pid`` (from /proc; empty where /proc is missing)."""
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(c) for c in f.read().split())
        except OSError:
            continue
    return found


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` in the process tree."""
    seen: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()) - seen:
            seen.add(child)
            todo.append(child)
    return seen


def kill_all(pids: set[int], *, reap: bool) -> None:
    """SIGKILL ``pids`` (gone already: ignored); with ``reap``, collect those that are our children."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if reap:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)


def kill_leftovers(before: set[int], rounds: int = 50) -> int:
    """Kill and reap this process's children that are not in ``before``, and the orphans they
    leave (re-parented here, a sub-reaper); returns how many were killed. Bounded by ``rounds``."""
    me, killed = os.getpid(), 0
    for _ in range(rounds):
        new = children(me) - before
        if not new:
            break
        # Their own descendants first: killed with the parent, they would re-parent here one by one.
        below = set().union(*(descendants(c) for c in new))
        kill_all(below, reap=False)
        kill_all(new, reap=True)
        killed += len(new)
        time.sleep(0.001)  # orphans re-parent asynchronously
    return killed


def _marker(directory: str, key: str, index: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:180]
    return Path(directory) / f"{safe}.{index}"


def _current_task() -> str | None:
    import sys

    worker = sys.modules.get("distributed.worker")
    if worker is None:
        return None
    try:
        key = worker.get_worker().get_current_task()
    except ValueError:  # not in a Dask task
        return None
    return str(key) if key is not None else None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class EarlierAttemptDied(Exception):
    """This replicate's earlier attempt was running when its worker process ended."""


@contextlib.contextmanager
def guarded(index: int) -> Iterator[None]:
    """Around one replicate's model call in a local worker process (else a no-op).

    Raises:
        EarlierAttemptDied: before the model runs, when an earlier attempt of this replicate
            ended its worker process (the message names that process).
    """
    directory = os.environ.get(MARKERS_ENV)
    key = _current_task() if directory else None
    if not directory or key is None:
        yield
        return
    marker = _marker(directory, key, index)
    try:
        attempts = [int(p) for p in marker.read_text().split()]
    except (OSError, ValueError):
        attempts = []
    dead = [p for p in attempts if p != os.getpid() and not _alive(p)]
    if len(dead) >= ATTEMPTS:
        ended = " and ".join(f"its worker process (pid {p}) ended" for p in dead)
        raise EarlierAttemptDied(f"the model was running when {ended}; it is not run again (it would end another worker)")
    before = children(os.getpid())
    with contextlib.suppress(OSError), open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            marker.unlink()
        kill_leftovers(before)


def explain_exits(error: str | None, exits: Mapping[int, int]) -> str | None:
    """``error`` with the exit status of each worker process it names, where recorded."""
    if not error:
        return error

    def add(m: re.Match[str]) -> str:
        pid = int(m.group(1))
        return f"its worker process (pid {pid}, {exit_status(exits.get(pid))}) ended"

    return DIED_PATTERN.sub(add, error)
