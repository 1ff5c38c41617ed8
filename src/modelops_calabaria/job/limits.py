"""What a job (and the flags that override it) may make the service allocate or store.

Each limit is documented in docs/reliability.md ("Limits"); beyond one, loading or
validation fails with exit 2 before anything is created. Also the checks that apply
them outside a job spec: study names, run flags, values after YAML alias expansion.
"""

from __future__ import annotations

import re
from typing import Any

from modelops_calabaria.errors import ConfigurationError

MAX_JOB_FILE_BYTES = 10 * 1024 * 1024  # a job file, inline data included
MAX_JOB_VALUES = 1_000_000  # values in the job after YAML aliases are expanded
MAX_NESTING = 32  # levels of nested mappings/lists
MAX_FIXED_VALUES = 100_000  # values in 'fixed' (sent to every simulation), aliases expanded
MAX_PARAMETERS = 1_000
MAX_TARGETS = 1_000
MAX_CHOICES = 10_000
MAX_REPLICATES = 10_000  # n_replicates
MAX_TRIALS = 1_000_000_000  # max_trials, --max-trials, --extend (the budget ledger holds 32-bit integers)
MAX_CONCURRENCY = 256  # concurrency, --workers: loops (threads) or batch size; also the cap of `concurrency: auto`
MAX_REPLICATES_IN_FLIGHT = 100_000  # concurrency x n_replicates: simulations submitted at once
MAX_SEED = 2**32 - 1  # numpy's legacy generators (and so Optuna's samplers) take seeds < 2**32
MAX_ABS_BOUND = 1e15  # |lower|, |upper|: finite, and whole numbers exact in a float (< 2**53)
MAX_START_POINTS = 10_000  # 'start' points (each is a trial of the budget, enqueued when the study is created)
MAX_GRID_POINTS = 10_000  # grid sampler: values per parameter ('points' or an explicit list)
MAX_GRID_CELLS = 1_000_000  # grid sampler: product of the values per parameter
MAX_DATA_FILE_BYTES = 256 * 1024 * 1024  # an observed-data file (CSV or Parquet): regular files only
MAX_DATA_CELL = 131_072  # characters of one CSV cell (the csv module's field limit)
MAX_TIMEOUT_S = 604_800.0  # timeout_s: a week per simulation
MIN_TIMEOUT_S = 0.001
MAX_WALL_TIME_S = 31_536_000.0  # stop.max_wall_time_s, worker --wait, --grace, validate --timeout: a year at most
MAX_FLAG_SECONDS = 86_400.0 * 7  # worker --wait, --grace, validate --timeout
MAX_POSITIVE = 1e15  # dispersion, sigma, weight, priors' scales: finite and at most this
MAX_INDEX = 2**31 - 1  # an observed index (a row of the model output)
MAX_EXACT_COUNT = 2**53  # observed counts and denominators: whole numbers exact in a float
MAX_FIXED_INT = 2**63 - 1  # an integer in 'fixed' (numpy's int64)
STUDY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
MAX_STUDY_NAME = 200
MAX_NAME = 200  # a target, output, column or parameter name: stored as a key (PostgreSQL columns hold 512)


def check_study_name(name: Any, where: str = "study") -> str:
    """The one check of a study name (job field, ``worker --study``, ``status --study``).

    A study name becomes a directory under ``runs/`` and a key in the database:
    letters, digits, ``_ . -``, starting with a letter or digit, at most 200 characters.

    Raises:
        ValueError: otherwise (pydantic turns it into a field error; the CLI into exit 2).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: expected a non-empty name")
    if len(name) > MAX_STUDY_NAME:
        raise ValueError(f"{where}: at most {MAX_STUDY_NAME} characters (got {len(name)})")
    if not re.fullmatch(STUDY_NAME_PATTERN.strip("^$"), name):  # fullmatch: '$' would let a trailing newline through
        raise ValueError(f"{where}: {name!r} is not a valid study name: use letters, digits, '_', '.', '-', "
                         "starting with a letter or digit (no '/' or spaces)")
    return name


def check_in_flight(concurrency: int, n_replicates: int, what: str) -> None:
    """Raise ValueError if ``concurrency`` x ``n_replicates`` simulations at once exceed the limit."""
    if concurrency * n_replicates > MAX_REPLICATES_IN_FLIGHT:
        raise ValueError(f"{what} {concurrency} x n_replicates {n_replicates} = {concurrency * n_replicates:,} simulations "
                         f"at once, more than {MAX_REPLICATES_IN_FLIGHT:,}: lower one of them")


def check_seconds(flag: str, value: float | None, top: float = MAX_FLAG_SECONDS) -> None:
    """A flag that counts seconds: finite, >= 0 and at most ``top``.

    Raises:
        ConfigurationError: otherwise (exit 2), naming the flag and its range.
    """
    if value is not None and not (value == value and 0 <= value <= top):  # value == value: not NaN
        raise ConfigurationError(f"{flag} must be a number of seconds from 0 to {top:,.0f}, got {value!r}",
                                 hint="see the limits table in docs/reliability.md")


def check_fixed_values(value: Any, where: str = "fixed") -> None:
    """Every number inside ``fixed``: a finite float, an integer within int64.

    Raises:
        ValueError: naming the first value out of range (pydantic turns it into a field error).
    """
    import math

    stack = [(where, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{path} is {item!r}: every number in 'fixed' must be finite")
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_FIXED_INT:
            raise ValueError(f"{path} is a whole number beyond ±{MAX_FIXED_INT:,} (2^63 - 1)")
        if isinstance(item, dict):
            stack += [(f"{path}.{k}", v) for k, v in item.items()]
        elif isinstance(item, (list, tuple)):
            stack += [(f"{path}[{i}]", v) for i, v in enumerate(item)]


def check_run_flags(*, max_trials: int | None = None, extend: int | None = None, workers: int | None = None,
                    n_replicates: int | None = None) -> None:
    """Check the flags that override a job's budget and concurrency against the same limits as the job.

    Raises:
        ConfigurationError: a flag out of range (exit 2), naming the flag and its range.
    """
    for flag, value, top in (("--max-trials", max_trials, MAX_TRIALS), ("--extend", extend, MAX_TRIALS),
                             ("--workers", workers, MAX_CONCURRENCY)):
        if value is None:
            continue
        if value < 1:
            raise ConfigurationError(f"{flag} must be >= 1, got {value}")
        if value > top:
            raise ConfigurationError(f"{flag} must be at most {top:,}, got {value:,}",
                                     hint="see the limits table in docs/reliability.md")
    if workers is not None and n_replicates is not None:
        try:
            check_in_flight(workers, n_replicates, "--workers")
        except ValueError as e:
            raise ConfigurationError(str(e)) from None


class _TooBig(Exception):
    pass


def count_values(value: Any, limit: int, depth: int = 0, memo: dict[int, int] | None = None) -> int:
    """Values in ``value`` with shared containers (YAML aliases) counted at every use.

    Stops early: returns ``limit + 1`` as soon as the count passes ``limit``, or when
    nesting is deeper than MAX_NESTING (which also ends a cycle), so a YAML alias bomb
    costs a few thousand steps, not its expanded size.
    """
    memo = {} if memo is None else memo
    if not isinstance(value, (dict, list, tuple)):
        return 1
    if depth > MAX_NESTING:
        return limit + 1
    key = id(value)
    if key in memo:
        return memo[key]
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    total = 1
    for item in items:
        total += count_values(item, limit, depth + 1, memo)
        if total > limit:
            return limit + 1
    memo[key] = total
    return total
