"""Models: anything that maps (parameters, seed) to named outputs.

A model is a callable ``model(params: dict, seed: int) -> Mapping[str, array]``
or an object with such a ``simulate`` method (a class is instantiated with no
arguments). It may declare ``outputs`` (names it returns) so that a job naming
an unknown output is rejected before anything runs.

Models are referred to by a string, resolved again on each Dask worker:

- a built-in name: ``sir``, ``seir``, ``age_seir``;
- ``package.module:object`` (importable on the workers);
- ``path/to/file.py:object`` (relative to the job file; the file must exist at
  the same path on the workers). The file's folder is put on ``sys.path``
  wherever it is loaded (coordinator, Dask workers, inline threads), so it may
  import modules beside it.

The callable's packages must be importable by the service's Python and by
every Dask worker's. ``docs/models.md`` is the protocol for model authors;
:mod:`.catalog` documents the built-ins (``calabaria models``).

A model that misbehaves while it is imported (``sys.exit``, ``os._exit``,
``KeyboardInterrupt``, an import that never ends) must not end or hang the command
silently: after :func:`contain_imports` (the CLI calls it), the first load of a model
in the process imports it first in a short-lived child process, within a time
bound, and such behaviour becomes a :class:`JobSpecError` naming the model and
what it did. A ``sys.exit`` at import is caught in-process too.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from modelops_calabaria import callables
from modelops_calabaria.errors import JobSpecError, exit_status
from modelops_calabaria.models.compartmental import BUILTINS

__all__ = ["BUILTINS", "SIGNATURE", "LoadedModel", "Model", "canonical_ref", "contain_imports", "load_model", "model_file"]

SIGNATURE = "model(params: dict, seed: int) -> {output name: array | {column: array} | DataFrame}"


class Model(Protocol):
    """What a model must be: a function of (params, seed) returning named outputs."""

    def __call__(self, params: Mapping[str, Any], seed: int) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class LoadedModel:
    """A resolved model: the callable and the outputs it declares (None = undeclared)."""

    ref: str
    run: Callable[[Mapping[str, Any], int], Mapping[str, Any]]
    outputs: tuple[str, ...] | None


def canonical_ref(ref: str, base_dir: Path) -> str:
    """Make a file entrypoint absolute (so that workers find it); leave others as given."""
    path, sep, obj = ref.rpartition(":")
    if sep and path.endswith(".py"):
        p = Path(path)
        return f"{(p if p.is_absolute() else base_dir / p).resolve()}:{obj}"
    return ref


# Dask worker threads resolve models concurrently; a module registered in sys.modules
# before it finished executing would look empty to a second thread.
_IMPORT_LOCK = threading.RLock()


def model_file(ref: str) -> Path | None:
    """The file of a ``path/file.py:object`` reference, else None."""
    path, sep, _ = ref.rpartition(":")
    return Path(path) if sep and path.endswith(".py") else None


def _import_file(path: Path) -> Any:
    with _IMPORT_LOCK:
        folder = str(path.resolve().parent)
        if folder not in sys.path:  # sibling modules of the model file import as they do with `python file.py`
            sys.path.insert(0, folder)
        return _import_file_locked(path)


def missing_package_hint(e: ModuleNotFoundError) -> str:
    """Where a package the model needs must be installed."""
    name = (e.name or "").split(".")[0] or "the missing package"
    return (f"install '{name}' in this Python ({sys.executable}) and in the Python of every Dask worker "
            f"(`pip install {name}` in each environment or image)")


def _import_file_locked(path: Path) -> Any:
    # A name stable across processes, so that objects defined in the file unpickle anywhere.
    name = f"calabaria_user_model_{hashlib.sha1(str(path).encode()).hexdigest()[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise JobSpecError(f"model file cannot be loaded: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as e:
        del sys.modules[name]
        raise JobSpecError(f"model file {path} called sys.exit({e.code!r}) while importing",
                           hint="a model module must only define the model when imported") from None
    except ModuleNotFoundError as e:
        del sys.modules[name]
        raise JobSpecError(f"model file {path} imports '{e.name}', which is not installed here",
                           hint=missing_package_hint(e)) from e
    except Exception as e:
        del sys.modules[name]
        frame = traceback.extract_tb(e.__traceback__)[-1]
        raise JobSpecError(
            f"model file {path} raised while importing: {type(e).__name__}: {e} ({frame.filename}, line {frame.lineno})",
            hint=f"run `cd {path.parent} && python -c 'import {path.stem}'` to see the full error",
        ) from e
    return module


_contained: dict[str, float] = {}  # "timeout": seconds a contained first import may take (contain_imports)
_tried: set[str] = set()  # models whose import was tried in a child process already


def contain_imports(timeout_s: float) -> None:
    """From now on, the first load of each user model in this process imports it first in a
    child process that may take at most ``timeout_s`` (the CLI's choice; workers never do it)."""
    _contained["timeout"] = timeout_s


def _import_outcome(ref: str) -> str:
    """In the child: import ``ref``; what went wrong beyond an ordinary error ("" if nothing)."""
    _contained.clear()
    try:
        load_model.__wrapped__(ref)  # type: ignore[attr-defined]
    except JobSpecError:
        return ""  # an ordinary error: the parent's own import reports it in full
    except SystemExit as e:
        return f"called sys.exit({e.code!r})"
    except KeyboardInterrupt:
        return "raised KeyboardInterrupt"
    except BaseException as e:  # noqa: BLE001 - whatever it is, the parent names it
        return f"raised {type(e).__name__}: {e}"
    return ""


def _try_import_in_child(ref: str, timeout_s: float) -> None:
    """Import ``ref`` in a short-lived child first; raise JobSpecError if it ended the process,
    hung, or raised what an import must not (SystemExit, KeyboardInterrupt).

    Forks when this process has one thread (the child inherits every import but the model's);
    else a fresh interpreter (forking a threaded process can copy a held lock)."""
    what = ""
    if threading.active_count() == 1 and hasattr(os, "fork"):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: import, report, end without running the parent's exit handlers
            code = 0
            try:
                os.close(r)
                os.write(w, _import_outcome(ref).encode()[:4000] or b"ok")
            except BaseException:  # noqa: BLE001 - nothing may escape a forked child
                code = 70
            finally:
                os._exit(code)
        os.close(w)
        data, deadline, done = b"", time.monotonic() + timeout_s, False
        try:
            while not done:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([r], [], [], left)[0]:
                    break
                chunk = os.read(r, 4096)
                data += chunk
                done = not chunk
        finally:
            os.close(r)
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            what = f"did not finish importing within {timeout_s:g} s"
        else:
            _, status = os.waitpid(pid, 0)
            text = data.decode(errors="replace")
            what = "" if text == "ok" else text or f"ended the process while importing ({exit_status(os.waitstatus_to_exitcode(status))})"
    else:
        code = "import sys; from modelops_calabaria.models import _import_outcome; print(_import_outcome(sys.argv[1]) or 'ok')"
        try:
            out = subprocess.run([sys.executable, "-c", code, ref], capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            what = f"did not finish importing within {timeout_s:g} s"
        else:
            lines = out.stdout.strip().splitlines()
            last = lines[-1] if lines else ""
            if out.returncode != 0 or not last:
                what = f"ended the process while importing ({exit_status(out.returncode)})"
            elif last != "ok":
                what = last
    if what:
        if not what.startswith(("did not", "ended")):
            what = f"{what} while importing"
        raise JobSpecError(f"model {ref!r} {what}",
                           hint="a model module must only define the model when imported: move other work into the model function")


@functools.lru_cache(maxsize=32)
def load_model(ref: str) -> LoadedModel:
    """Resolve a model reference (cached per process, so workers import once).

    After :func:`contain_imports`, a model's first import is tried in a child process first.

    Raises:
        JobSpecError: unknown built-in, missing file or module, missing object,
            or an object that is not callable; a model that ends the process, hangs or
            raises SystemExit/KeyboardInterrupt while importing.
    """
    if ref not in BUILTINS and _contained and ref not in _tried:
        _try_import_in_child(ref, _contained["timeout"])
        _tried.add(ref)
    if ref in BUILTINS:
        fn = BUILTINS[ref]
        return LoadedModel(ref, fn, tuple(fn.outputs))  # type: ignore[attr-defined]
    if callables.is_session(ref):
        return _from_object(ref, _session_callable(ref))
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise JobSpecError(
            f"unknown model {ref!r}",
            problems=[("model", f"expected a built-in ({', '.join(sorted(BUILTINS))}), "
                                "'package.module:object' or 'path/to/file.py:object'")],
        )
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise JobSpecError(f"model file not found: {path}", problems=[("model", "the file does not exist")])
        module = _import_file(path)
    else:
        try:
            module = importlib.import_module(target)
        except SystemExit as e:
            raise JobSpecError(f"model module {target!r} called sys.exit({e.code!r}) while importing",
                               hint="a model module must only define the model when imported") from None
        except ModuleNotFoundError as e:
            raise JobSpecError(
                f"model module {target!r} cannot be imported: {e}",
                problems=[("model", "install the package that provides it, or use 'path/to/file.py:object'")],
                hint=missing_package_hint(e),
            ) from e
        except ImportError as e:
            raise JobSpecError(
                f"model module {target!r} cannot be imported: {e}",
                problems=[("model", "install the package that provides it, or use 'path/to/file.py:object'")],
            ) from e
        except Exception as e:
            frame = traceback.extract_tb(e.__traceback__)[-1]
            raise JobSpecError(
                f"model module {target!r} raised while importing: {type(e).__name__}: {e} ({frame.filename}, line {frame.lineno})",
                problems=[("model", "fix the module so that it imports cleanly")],
                hint=f"run `python -c 'import {target}'` to see the full error",
            ) from e
    try:
        obj = getattr(module, attr)
    except AttributeError as e:
        raise JobSpecError(f"model {ref!r}: {target} has no object named {attr!r}", problems=[("model", "check the name after ':'")]) from e
    return _from_object(ref, obj)


def _session_callable(ref: str) -> Any:
    obj = callables.registered(ref)
    if obj is None:
        raise JobSpecError(
            f"model {ref.removeprefix(callables.SESSION_PREFIX)} was defined in an interactive session "
            "(a notebook cell, the prompt, a lambda) and exists only in the process that defined it",
            problems=[("model", "run it on --scheduler inline or a local cluster of threads, or define it at the top "
                                "level of a .py file so that other processes can import it")],
        )
    return obj


def _from_object(ref: str, obj: Any) -> LoadedModel:
    """The model behind ``obj``: a class is instantiated, ``simulate`` preferred, the signature checked."""
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as e:
            raise JobSpecError(
                f"model {ref!r}: the class {obj.__name__} cannot be created with no arguments: {type(e).__name__}: {e}",
                problems=[("model", "give the class defaults for every __init__ argument, or point at a function")],
            ) from e
    run = getattr(obj, "simulate", obj)
    if not callable(run):
        raise JobSpecError(f"model {ref!r} is not callable and has no simulate() method", problems=[("model", "point at a function or a class")])
    _check_signature(ref, run)
    outputs = getattr(obj, "outputs", None)
    if isinstance(outputs, str):  # outputs = "cases" means one output, not five letters
        outputs = (outputs,)
    return LoadedModel(ref, _explaining_type_errors(ref, run), tuple(outputs) if outputs is not None else None)


def _check_signature(ref: str, run: Callable[..., Any]) -> None:
    """Reject a callable that cannot take ``(params, seed)`` before anything runs."""
    try:
        sig = inspect.signature(run)
    except (TypeError, ValueError):
        return  # builtins and some C callables hide their signature: the call will tell
    try:
        sig.bind({}, 0)
    except TypeError as e:
        raise JobSpecError(
            f"model {ref!r} cannot be called as model(params, seed): its signature is {sig} ({e})",
            problems=[("model", f"expected {SIGNATURE}")],
            hint="wrap the simulator in a function of (params, seed); see docs/models.md",
        ) from None


def _explaining_type_errors(ref: str, run: Callable[..., Any]) -> Callable[[Mapping[str, Any], int], Any]:
    """``run`` whose TypeError at the call itself (wrong arguments) states the expected signature."""

    @functools.wraps(run)
    def call(params: Mapping[str, Any], seed: int) -> Any:
        try:
            return run(params, seed)
        except TypeError as e:
            if e.__traceback__ is not None and e.__traceback__.tb_next is None:  # raised binding the arguments
                raise TypeError(f"model {ref!r} must be callable as {SIGNATURE}: {e}") from e
            raise

    return call
