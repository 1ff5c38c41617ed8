"""Custom scores: a user's function as a target's score (``score: {kind: custom, function: ...}``).

Contract of the function (docs/sensitivity.md, "Custom scores")::

    fn(observed: np.ndarray, simulated: np.ndarray, keys: dict[str, np.ndarray]) -> float

- ``observed``, ``simulated``: float arrays of the same shape (n, m), one row per
  observed row and one column per value column, aligned exactly as the built-in
  scores see them; a gap in the data is NaN in ``observed`` (the function decides
  what a gap means);
- ``keys``: the observed rows' keys, one array of n per key column (``on`` form:
  dates as ``datetime64[D]``, numbers, labels), or ``{"index": rows}`` without keys;
- returns a finite float, lower is better (a negative log-likelihood when the spec
  says ``log_likelihood: true``); it must not depend on anything but its inputs.

The function is resolved like a model entrypoint (``module:fn`` or
``path/file.py:fn``, the file relative to the job file) once per process, on the
workers where targets are scored. A function that raises or returns something
other than a finite number fails the replicate (SimulationError), like a model error.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelops_calabaria.errors import JobSpecError, SimulationError
from modelops_calabaria.job import ScoreSpec

SIGNATURE = "fn(observed, simulated, keys) -> float"


def resolved(spec: ScoreSpec, base_dir: Path) -> ScoreSpec:
    """``spec`` with a custom function's file made absolute (so that every worker finds it),
    after checking that it resolves here (JobSpecError otherwise)."""
    if spec.kind != "custom" or spec.function is None:
        return spec
    path, _, name = spec.function.rpartition(":")
    if path.endswith(".py") and not Path(path).is_absolute():
        spec = spec.model_copy(update={"function": f"{(base_dir / path).resolve()}:{name}"})
    load_function(spec.function)  # type: ignore[arg-type]
    return spec


@functools.lru_cache(maxsize=32)
def load_function(ref: str) -> Callable[..., Any]:
    """Resolve ``module:fn`` or ``/abs/file.py:fn`` (cached per process).

    Raises:
        JobSpecError: the file, module or object is missing or not callable.
    """
    from modelops_calabaria.models import _import_file  # the model entrypoints' loader: same rules, same lock

    target, _, attr = ref.rpartition(":")
    try:
        if target.endswith(".py"):
            if not Path(target).is_file():
                raise JobSpecError(f"custom score file not found: {target}", hint="give the path relative to the job file")
            module = _import_file(Path(target))
        else:
            module = importlib.import_module(target)
    except ImportError as e:
        raise JobSpecError(f"custom score module {target!r} cannot be imported: {e}",
                           hint="install it, or use 'path/to/file.py:function'") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise JobSpecError(f"custom score {ref!r}: {target} has no function named {attr!r}",
                           hint=f"define {attr} as {SIGNATURE}")
    return fn


def custom_keys(observed: Any) -> dict[str, np.ndarray]:
    """The ``keys`` argument: the observed key columns (dates as datetime64[D]), or the row index."""
    if observed.keys is None:
        return {"index": np.asarray(observed.index)}
    out = {}
    for k in observed.keys:
        values = np.asarray(k.values)
        out[k.name] = values.astype("int64").astype("datetime64[D]") if k.kind == "date" else values
    return out


def custom_score(spec: ScoreSpec, observed: Any, sim: np.ndarray, label: str) -> float:
    """Call the custom function on one aligned replicate (or replicate mean).

    Raises:
        SimulationError: it raised, or returned something other than a finite number.
    """
    fn = load_function(spec.function)  # type: ignore[arg-type]
    obs = np.array(observed.values, dtype=float)  # a copy: the function may write to it
    try:
        value = fn(obs, np.array(sim, dtype=float), custom_keys(observed))
    except Exception as e:  # noqa: BLE001 - the user's failure is the replicate's
        raise SimulationError(f"{label}: custom score {spec.function} raised {type(e).__name__}: {e}") from e
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise SimulationError(f"{label}: custom score {spec.function} returned {value!r}; it must return a finite number")
    return float(value)
