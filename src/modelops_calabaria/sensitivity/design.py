"""A sweep's design: rows of parameter values, the same for the same job (pure).

Rows are drawn on each parameter's search scale (``log: true`` / ``transform: log``: the
log of the value, ``transform: logit``: its logit, else the value) with the job's seed,
and returned in natural values: the indices are those of inputs uniform on the search
scale. Integer parameters are rounded. Row ``i`` is the design point ``i``: a sweep
enqueues row ``i`` as a trial carrying ``i`` (``POINT_ATTR``), so analysis can put
each result back in its place whatever order the trials ran in.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np

from modelops_calabaria.job import CalibrationJob, ParameterSpec
from modelops_calabaria.job.parameters import logit_to_natural, natural_to_logit
from modelops_calabaria.job.sweep import POINT_ATTR  # noqa: F401  (re-exported: what the enqueued rows carry)



def _scale_bounds(spec: ParameterSpec) -> tuple[float, float]:
    lo, hi = float(spec.lower), float(spec.upper)  # type: ignore[arg-type]
    if spec.logit:
        return natural_to_logit(spec, lo), natural_to_logit(spec, hi)
    if spec.log:
        return math.log(lo), math.log(hi)
    return lo, hi


def _natural(spec: ParameterSpec, z: np.ndarray) -> np.ndarray:
    if spec.logit:
        x = np.array([logit_to_natural(spec, float(v)) for v in z])
    elif spec.log:
        x = np.exp(z)
    else:
        x = np.asarray(z, dtype=float)
    x = np.clip(x, float(spec.lower), float(spec.upper))  # type: ignore[arg-type]
    return np.round(x) if spec.kind == "int" else x


def problem(job: CalibrationJob) -> dict[str, Any]:
    """SALib's problem: the searched parameters and their bounds on the search scale."""
    names = list(job.parameters)
    return {"num_vars": len(names), "names": names, "bounds": [list(_scale_bounds(job.parameters[n])) for n in names]}


def scaled_design(job: CalibrationJob) -> np.ndarray:
    """The design on the search scale, (rows, parameters): what SALib's analysers take."""
    sweep = job.sweep
    assert sweep is not None, "a sweep job"
    prob = problem(job)
    if sweep.design == "sobol":
        from SALib.sample import sobol

        with warnings.catch_warnings():  # SALib warns when N is not a power of 2; the spec already refuses that
            warnings.simplefilter("ignore")
            return sobol.sample(prob, sweep.points, calc_second_order=sweep.second_order, scramble=True, seed=job.seed)
    if sweep.design == "morris":
        from SALib.sample import morris

        return morris.sample(prob, sweep.points, num_levels=sweep.levels, seed=job.seed)
    if sweep.design == "lhs":
        from SALib.sample import latin

        return latin.sample(prob, sweep.points, seed=job.seed)
    axes = [np.linspace(lo, hi, sweep.points) for lo, hi in prob["bounds"]]
    return np.array(list(itertools.product(*axes)), dtype=float).reshape(-1, len(axes))


def natural_rows(job: CalibrationJob, scaled: np.ndarray) -> np.ndarray:
    """Search-scale rows to natural values (ints rounded)."""
    specs = list(job.parameters.values())
    return np.column_stack([_natural(spec, scaled[:, j]) for j, spec in enumerate(specs)]) if len(scaled) else scaled


def design_points(job: CalibrationJob) -> list[dict[str, Any]]:
    """Every design row as ``{parameter: natural value}``, row ``i`` at index ``i``."""
    rows = natural_rows(job, scaled_design(job))
    names = list(job.parameters)
    kinds = [job.parameters[n].kind for n in names]
    return [{n: (int(v) if k == "int" else float(v)) for n, k, v in zip(names, kinds, row)} for row in rows]
