"""Keeping a model's process-level misdeeds inside its own replicate (local worker processes).

A model runs in a Dask worker process of the local cluster, and may do what a Python
function cannot undo: end the process (``os._exit``, a signal, a crash) or start
processes of its own and leave them running. Three things keep that to its trial:

- **Markers.** Before a replicate runs its model, the worker writes a marker file named
  after the task and replicate (content: its pid) in the run's marker directory
  (environment variable :data:`MARKERS_ENV`, set by the service for its own worker
  processes only), and removes it when the model returns or raises. A marker found
  when a replicate starts means an earlier attempt of that very replicate was running
  when its worker process ended: Dask reruns the tasks of a dead worker, and running
  that model again would end another worker, and another. The replicate fails at once
  instead, naming the dead process; the coordinator adds its exit status
  (:func:`explain_exits`). Tasks that merely waited on the dead worker have no marker
  and run again elsewhere, as Dask intends.
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

MARKERS_ENV = "CALABARIA_REPLICATE_MARKERS"
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
        died = int(marker.read_text() or 0)
    except (OSError, ValueError):
        died = None
    if died is not None and died != os.getpid():
        raise EarlierAttemptDied(f"the model was running when its worker process (pid {died}) ended; "
                                 "it is not run again (it would end another worker)")
    before = children(os.getpid())
    with contextlib.suppress(OSError):
        marker.write_text(str(os.getpid()))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            marker.unlink()
        kill_leftovers(before)


def exit_status(code: int | None) -> str:
    """An exit code as words: ``exit code 7``, ``killed by signal 9 (SIGKILL)``."""
    if code is None:
        return "exit status not recorded"
    if code < 0:
        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def explain_exits(error: str | None, exits: Mapping[int, int]) -> str | None:
    """``error`` with the exit status of each worker process it names, where recorded."""
    if not error:
        return error

    def add(m: re.Match[str]) -> str:
        pid = int(m.group(1))
        return f"its worker process (pid {pid}, {exit_status(exits.get(pid))}) ended"

    return DIED_PATTERN.sub(add, error)
