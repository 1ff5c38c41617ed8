"""What each sampler accepts in ``sampler.options``: names, types and ranges.

Checked with the job, before anything is created, so that Optuna never sees an
option it would refuse (a traceback after the study exists) or one that makes it
allocate without bound (``n_ei_candidates: 1e9``, ``popsize: 10**9``). Options that
Optuna takes as Python functions or objects (``gamma``, ``weights``, ``mutation``,
``independent_sampler``, ...) cannot be written in a job file and are refused by
name. How the samplers are built from these options: ``calibration/study.py``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any

from modelops_calabaria.job.limits import MAX_ABS_BOUND, MAX_GRID_POINTS, MAX_TRIALS

MAX_CANDIDATES = 10_000  # tpe n_ei_candidates: points drawn per ask
MAX_POPULATION = 10_000  # cmaes popsize, nsga2 population_size

Check = Callable[[Any], str | None]  # None when the value is accepted, else what is expected


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _int(lo: int, hi: int) -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
        return None if ok else f"a whole number from {lo:,} to {hi:,}"
    return check


def _float(lo: float, hi: float, *, lo_open: bool = False) -> Check:
    def check(value: Any) -> str | None:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (lo < value if lo_open else lo <= value) and value <= hi)
        return None if ok else f"a number {'>' if lo_open else '>='} {lo:g} and <= {hi:g}"
    return check


def _choice(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices and isinstance(value, str) else f"one of {', '.join(choices)}"
    return check


def _mapping_of_numbers(value: Any) -> str | None:
    ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                                         and math.isfinite(v) and abs(v) <= MAX_ABS_BOUND for k, v in value.items())
    return None if ok else f"a mapping of parameter names to finite numbers within ±{MAX_ABS_BOUND:g}"


_STARTUP = _int(0, MAX_TRIALS)
OPTIONS: dict[str, dict[str, Check]] = {
    "tpe": {
        "n_startup_trials": _STARTUP, "n_ei_candidates": _int(1, MAX_CANDIDATES), "prior_weight": _float(0, 1e6, lo_open=True),
        "consider_magic_clip": _bool, "consider_endpoints": _bool, "multivariate": _bool, "group": _bool,
        "warn_independent_sampling": _bool, "constant_liar": _bool,
    },
    "gp": {"n_startup_trials": _STARTUP, "deterministic_objective": _bool, "warn_independent_sampling": _bool},
    "cmaes": {
        "x0": _mapping_of_numbers, "sigma0": _float(0, MAX_ABS_BOUND, lo_open=True), "n_startup_trials": _STARTUP,
        "warn_independent_sampling": _bool, "consider_pruned_trials": _bool, "popsize": _int(2, MAX_POPULATION),
        "use_separable_cma": _bool, "with_margin": _bool, "lr_adapt": _bool,
    },
    "random": {},
    "qmc": {"qmc_type": _choice("sobol", "halton"), "scramble": _bool, "warn_asynchronous_seeding": _bool,
            "warn_independent_sampling": _bool},
    "grid": {"points": _int(1, MAX_GRID_POINTS), "grid": lambda v: None if v is None or isinstance(v, dict)
             else "a mapping of parameter names to lists of values"},
    "nsga2": {"population_size": _int(2, MAX_POPULATION), "mutation_prob": _float(0, 1), "crossover_prob": _float(0, 1),
              "swapping_prob": _float(0, 1)},
}
# Options Optuna takes as Python objects: not expressible in a job file.
_OBJECTS = frozenset({"gamma", "weights", "constraints_func", "independent_sampler", "mutation", "crossover", "source_trials",
                      "elite_population_selection_strategy", "child_generation_strategy", "after_trial_strategy",
                      "search_space", "seed"})


def option_problems(name: str, options: dict[str, Any]) -> list[str]:
    """What is wrong with ``options`` for sampler ``name``: one message per bad option
    (unknown, with a did-you-mean; not settable from a job file; wrong type or range)."""
    allowed = OPTIONS.get(name, {})
    problems = []
    for key, value in options.items():
        if key == "seed":
            problems.append("option 'seed': set the job's 'seed' field instead (it seeds the sampler)")
        elif key in _OBJECTS:
            problems.append(f"option {key!r} of the {name} sampler takes a Python object and cannot be set from a job file")
        elif key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(sorted(allowed)) or "none"
            problems.append(f"unknown option {str(key)[:60]!r} of the {name} sampler{guess}; it takes: {known}")
        elif (expected := allowed[key](value)) is not None:
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:40] + "..."
            problems.append(f"option {key!r} of the {name} sampler must be {expected} (got {shown})")
    return problems
