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
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from modelops_calabaria import callables
from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.models.compartmental import BUILTINS

__all__ = ["BUILTINS", "SIGNATURE", "LoadedModel", "Model", "canonical_ref", "load_model", "model_file"]

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


@functools.lru_cache(maxsize=32)
def load_model(ref: str) -> LoadedModel:
    """Resolve a model reference (cached per process, so workers import once).

    Raises:
        JobSpecError: unknown built-in, missing file or module, missing object,
            or an object that is not callable.
    """
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
