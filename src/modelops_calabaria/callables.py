"""Models given as Python callables (``CalibrationJob(model=my_function)``).

A job names its model by a reference string everywhere else (the study stores it,
workers resolve it). :func:`reference` gives a callable one:

- a top-level function or class of a ``.py`` file (a module, or the script being run):
  ``/abs/path/file.py:name``, which any process can import (the script's own
  ``if __name__ == "__main__":`` guard keeps its run from starting again there);
- anything else (a function defined in a notebook cell or at the interactive prompt, a
  lambda, a closure): a session reference ``python:<module>.<name>``, resolved from
  this process's registry only. It runs on the inline service or a local cluster of
  threads; a cluster of other processes cannot reach it (``models.load_model`` says so
  in one line), and neither can a ``worker`` joining the study.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

SESSION_PREFIX = "python:"
_REGISTRY: dict[str, Callable[..., Any]] = {}
_LOCK = threading.Lock()


def reference(obj: Callable[..., Any]) -> str:
    """The model reference of ``obj`` (a file reference when one reaches it, else a session one)."""
    module_name = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None) if module is not None else None
    if file and str(file).endswith(".py") and "." not in name and "<" not in name and getattr(module, name, None) is obj:
        return f"{Path(file).resolve()}:{name}"
    # By name, so that a study resumes from a new session; redefining the cell replaces it, as in the notebook.
    key = f"{SESSION_PREFIX}{module_name or '?'}.{name}"
    with _LOCK:
        _REGISTRY[key] = obj
    return key


def is_session(ref: str) -> bool:
    """Whether ``ref`` names a callable that exists only in the process that registered it."""
    return ref.startswith(SESSION_PREFIX)


def registered(ref: str) -> Callable[..., Any] | None:
    """The callable behind a session reference, if this process registered it."""
    with _LOCK:
        return _REGISTRY.get(ref)


def source_digest(ref: str) -> str:
    """A digest of a session callable's code (its source when Python has it, else its bytecode)."""
    import hashlib
    import inspect

    obj = registered(ref)
    if obj is None:
        return "unavailable"
    try:
        text = inspect.getsource(obj).encode()
    except (OSError, TypeError):
        call = vars(type(obj)).get("__call__")  # a callable object: its class's method
        code = getattr(obj, "__code__", None) or getattr(call, "__code__", None)
        text = code.co_code if code is not None else repr(obj).encode()
    return hashlib.sha256(text).hexdigest()
