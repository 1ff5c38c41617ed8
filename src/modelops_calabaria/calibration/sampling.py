"""Where the sampler runs: in the coordinator's process, or in a process of its own.

Every front satisfies :class:`SamplerFront` (thread-safe):

- ``post(event)``: tell the mirror about the shared study (applied, in order,
  before the next point is sampled);
- ``take()``: the next point, ``(key, params)``;
- ``close()``: stop sampling.

:class:`InlineSampler` keeps the :class:`~.mirror.Mirror` here. Without
prefetch, ``take`` samples in the caller's thread after applying every posted
event, so a sequential run samples exactly what plain Optuna would. With
prefetch, a thread keeps a few points ready.

:class:`ProcessSampler` keeps the mirror in a child process, so sampling (TPE
costs milliseconds of CPU per point) runs on another core instead of holding
the coordinator's GIL, which its loops, the Dask client and the database
writers need. ``depth`` requests are always in flight on a pipe; each carries
the events posted since the previous one, and is answered with one point. A point reflects
the tells posted up to ``depth`` points before it, the same lag a prefetch
queue of that size has (the constant liar covers what it has not seen yet).
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState

from modelops_calabaria.calibration.mirror import AddTrial, Event, Key, Mirror
from modelops_calabaria.errors import SamplerProcessError

__all__ = ["HybridSampler", "InlineSampler", "ProcessSampler", "SamplerFront", "SamplerProcessError"]


class SamplerFront(Protocol):
    """Where points come from: a mirror of the study, told about it with events (thread-safe)."""

    def post(self, event: Event) -> None:
        """Tell the mirror what happened in the shared study (applied in order, before the next point)."""

    def take(self) -> tuple[Key, dict[str, Any]]:
        """The next point: ``(key, params)``, RUNNING in the mirror until a finish event."""

    def close(self) -> None:
        """Stop sampling."""


class InlineSampler:
    """The mirror in this process; ``prefetch`` > 0 samples ahead on a thread."""

    def __init__(self, mirror: Mirror, prefetch: int = 0, events: list[Event] | None = None) -> None:
        self.mirror = mirror
        self._mirror_lock = threading.Lock()  # one sample or event batch at a time
        self._events_lock = threading.Lock()
        self._events: list[Event] = list(events or [])
        self._stop = threading.Event()
        self._ready: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
        self._thread: threading.Thread | None = None
        if prefetch > 0:
            self._thread = threading.Thread(target=self._prefetch, name="calabaria-sampler", daemon=True)
            self._thread.start()

    def post(self, event: Event) -> None:
        with self._events_lock:
            self._events.append(event)

    def _sample(self) -> tuple[Key, dict[str, Any]]:
        with self._mirror_lock:
            with self._events_lock:
                events, self._events = self._events, []
            return self.mirror.step(events, 1)[0]

    def _prefetch(self) -> None:
        while not self._stop.is_set():
            item: Any
            try:
                item = self._sample()
            except BaseException as e:  # noqa: BLE001 - handed to the next take
                item = e
            while not self._stop.is_set():
                try:
                    self._ready.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def take(self) -> tuple[Key, dict[str, Any]]:
        if self._thread is None:
            return self._sample()
        item = self._ready.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


# -- the sampler process ----------------------------------------------------------------------


def _serve(conn: Connection, args: tuple, kwargs: dict) -> None:
    """The sampler process: answer ``("step", events, n)`` requests until told to stop or the pipe closes."""
    # Signals are the coordinator's business: it shuts down gracefully and then closes the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the mirror's studies are not news
    mirror = Mirror(*args, **kwargs)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the coordinator is gone
        if request[0] == "stop":
            return
        try:
            reply: tuple = ("ok", mirror.step(request[1], request[2]))
        except Exception as e:  # noqa: BLE001 - handed to the coordinator's next take
            reply = ("error", e)
        try:
            conn.send(reply)
        except (TypeError, AttributeError, pickle.PicklingError):
            conn.send(("error", RuntimeError(f"sampler error: {reply[1]!r}")))


class ProcessSampler:
    """A :class:`Mirror` built from ``args``/``kwargs`` in a child process, ``depth`` requests in flight.

    Requests and replies travel over one pipe: the child always has the next
    requests waiting, and a thread here moves replies to a queue. The first
    request (sent at once, with the study so far) samples nothing: its reply
    says the child is up (:meth:`ready`); the first :meth:`take` sends the
    ``depth`` sampling requests.
    """

    def __init__(self, args: tuple, kwargs: dict, depth: int = 4, events: list[Event] | None = None) -> None:
        # spawn: the coordinator has threads (loops, Dask client, writers); forking it is unsafe.
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_serve, args=(child_conn, args, kwargs), name="calabaria-sampler",
                                        daemon=True)
        self._process.start()
        child_conn.close()
        self._depth = max(1, depth)
        self._lock = threading.Lock()  # sends, and the events waiting for the next one
        self._events: list[Event] = list(events or [])
        self._replies: queue.Queue[Any] = queue.Queue()
        self._up = False
        self._begun = False
        self._closed = False
        self._receiver = threading.Thread(target=self._receive, name="calabaria-sampler-replies", daemon=True)
        self._receiver.start()
        with self._lock:
            self._request(0)

    def _request(self, n: int) -> None:
        events, self._events = self._events, []
        try:
            self._conn.send(("step", events, n))
        except (OSError, ValueError) as e:
            raise self._died(e) from e

    def _receive(self) -> None:
        while True:
            try:
                self._replies.put(self._conn.recv())
            except (EOFError, OSError) as e:
                self._replies.put(("died", e))
                return

    def _reply(self, block: bool) -> tuple | None:
        try:
            kind, payload = self._replies.get(block=block)
        except queue.Empty:
            return None
        if kind == "died":
            self._replies.put((kind, payload))  # every later call fails the same way
            raise self._died(payload)
        if kind == "error":
            raise payload
        return payload

    def ready(self) -> bool:
        """Whether the child answered its first request (never blocks).

        Raises:
            SamplerProcessError: the child died on the way up.
        """
        with self._lock:
            if not self._up:
                self._up = self._reply(block=False) is not None
            return self._up

    def post(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    def take(self) -> tuple[Key, dict[str, Any]]:
        with self._lock:
            if self._closed:
                raise SamplerProcessError("the sampler process was closed")
            if not self._up:
                self._reply(block=True)  # the start-up reply: no point in it
                self._up = True
            if not self._begun:
                self._begun = True
                for _ in range(self._depth - 1):
                    self._request(1)
            self._request(1)  # keep depth requests in flight, carrying the events posted meanwhile
        while True:
            points = self._reply(block=True)
            if points:
                return points[0]

    def _died(self, e: BaseException) -> SamplerProcessError:
        # The pipe breaks a moment before the child is reaped: wait for it, so the exit
        # code is the real one and not None.
        self._process.join(timeout=5)
        code = self._process.exitcode
        return SamplerProcessError(f"the sampler process died (exit code {code}): {type(e).__name__}: {e}",
                                   hint="check memory limits (the OOM killer) and re-run: finished trials are kept")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.send(("stop",))
            except (OSError, ValueError):
                pass
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        self._conn.close()


class HybridSampler:
    """Samples in this process until the sampler process is up, then hands over to it.

    A sampler process takes a fraction of a second to start; a short run
    should not wait for it. Points sampled here are announced to the child as
    RUNNING trials, so both mirrors describe the same study when it takes over.
    """

    def __init__(self, args: tuple, kwargs: dict, depth: int, events: list[Event] | None = None) -> None:
        self._local = InlineSampler(Mirror(*args, **kwargs, prefix="local"), 0, events=events)
        self._child = ProcessSampler(args, {**kwargs, "reseed": True}, depth=depth, events=events)
        self._space = dict(args[2])
        self._lock = threading.Lock()
        self._handed_over = False

    @property
    def handed_over(self) -> bool:
        """Whether points now come from the sampler process."""
        return self._handed_over

    def post(self, event: Event) -> None:
        if not self._handed_over:
            self._local.post(event)
        self._child.post(event)

    def take(self) -> tuple[Key, dict[str, Any]]:
        if not self._handed_over:
            with self._lock:
                if not self._handed_over and not self._child.ready():
                    key, params = self._local.take()
                    self._child.post(AddTrial(key, params, {k: self._space[k] for k in params}, TrialState.RUNNING, None))
                    return key, params
                self._handed_over = True
        return self._child.take()

    def close(self) -> None:
        self._child.close()
        self._local.close()
