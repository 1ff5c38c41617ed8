"""Built-in stochastic compartmental models (chain-binomial, daily output).

Each model is a plain function ``(params, seed) -> {output name: ndarray}``
with an ``outputs`` attribute naming what it returns. Rates are per day. The
step is split into ``ceil(max rate / max_rate_per_step)`` sub-steps, so that
faster epidemics cost more sub-steps, as in real models, whose run time depends
on their parameters.

Weekly outputs sum days ``7w .. 7w+6``; ``n_days`` is rounded down to whole weeks.

Schedules (projections, docs/projections.md): the parameters a model names in its
``schedulable`` attribute may be given as a per-day array instead of a number:
element ``d`` is the value on model day ``d`` (at least ``n_days`` elements). A
scalar runs exactly as before (the same random draws). Here ``beta`` and
``reporting_rate`` accept schedules; a scheduled reporting rate thins each day's
onsets with that day's rate (a scalar one thins the weekly sums, as always).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from modelops_calabaria.errors import SimulationError

_MAX_RATE_PER_STEP = 0.1  # smaller steps: less chain-binomial bias in the infectious period

DEFAULT_AGE_GROUPS = ("0-17", "18-64", "65+")
DEFAULT_AGE_POPULATION = (22_000, 60_000, 18_000)
# Daily contacts of an individual in row group with people in column group (POLYMOD-like shape).
DEFAULT_CONTACTS = ((7.0, 5.0, 1.0), (2.0, 9.0, 1.5), (1.2, 4.0, 3.0))


def _substeps(*rates: float) -> int:
    return max(1, math.ceil(max(rates) / _MAX_RATE_PER_STEP))


def _prob(rate: np.ndarray | float, dt: float) -> np.ndarray | float:
    return -np.expm1(-np.asarray(rate) * dt)


def _require(params: Mapping[str, Any], name: str, *, positive: bool = True) -> float:
    if name not in params:
        raise SimulationError(f"model parameter '{name}' is missing: add it to 'parameters' or 'fixed'")
    value = float(params[name])
    if not math.isfinite(value) or (positive and value <= 0):
        raise SimulationError(f"model parameter '{name}' must be a positive finite number, got {value!r}")
    return value


def _series(params: Mapping[str, Any], name: str, n_days: int, default: float | None = None) -> np.ndarray | float:
    """A parameter as a number, or as a per-day schedule (array of ``n_days`` values) when given one."""
    raw = params.get(name, default) if default is not None else params.get(name)
    if raw is None:
        return _require(params, name)
    if np.ndim(raw) == 0:
        return _require(params, name) if default is None else float(raw)
    arr = np.asarray(raw, dtype=float).reshape(-1)
    if arr.shape[0] < n_days:
        raise SimulationError(f"model parameter '{name}': a schedule needs one value per day ({n_days}), got {arr.shape[0]}")
    arr = arr[:n_days]
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise SimulationError(f"model parameter '{name}': a schedule must hold finite non-negative numbers")
    return arr


def _thin(rng: np.random.Generator, onsets: np.ndarray, rho: np.ndarray | float) -> np.ndarray:
    """Reported weekly counts: the weekly sums thinned by a scalar rate, or each day thinned by its own."""
    if np.ndim(rho) == 0:
        return rng.binomial(_weekly(onsets), rho)
    rates = np.asarray(rho).reshape((-1,) + (1,) * (onsets.ndim - 1))
    return _weekly(rng.binomial(onsets, np.broadcast_to(rates, onsets.shape)))


def _weekly(daily: np.ndarray) -> np.ndarray:
    weeks = daily.shape[0] // 7
    return daily[: weeks * 7].reshape(weeks, 7, *daily.shape[1:]).sum(axis=1)


def _seir_core(params: Mapping[str, Any], seed: int, *, latent: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_days = int(params.get("n_days", 182))
    beta = _series(params, "beta", n_days)
    gamma = _require(params, "gamma")
    sigma = _require(params, "sigma") if latent else math.inf
    population = int(params.get("population", 100_000))
    seeded = int(params.get("initial_infected", 10))
    rho = _series(params, "reporting_rate", n_days, 1.0)
    if population <= 0 or not 0 < seeded <= population or n_days < 7 or not (np.all(0 < np.asarray(rho)) and np.all(np.asarray(rho) <= 1)):
        raise SimulationError(
            "need population > 0, 0 < initial_infected <= population, n_days >= 7 and 0 < reporting_rate <= 1"
        )
    daily_beta = np.broadcast_to(np.asarray(beta, dtype=float), (n_days,))
    k = _substeps(float(daily_beta.max()), gamma, sigma if latent else 0.0)
    dt = 1.0 / k
    s, e, i = population - seeded, 0, seeded
    onsets = np.zeros(n_days, dtype=np.int64)
    prevalence = np.zeros(n_days, dtype=np.int64)
    p_ei = _prob(sigma, dt) if latent else 1.0
    p_ir = _prob(gamma, dt)
    for day in range(n_days):
        new_onsets = 0
        beta_today = float(daily_beta[day])
        for _ in range(k):
            if i == 0 and e == 0:
                break
            n_se = rng.binomial(s, _prob(beta_today * i / population, dt))
            n_ei = rng.binomial(e, p_ei) if latent else n_se
            n_ir = rng.binomial(i, p_ir)
            s -= n_se
            e += n_se - n_ei
            i += n_ei - n_ir
            new_onsets += n_ei
        onsets[day] = new_onsets
        prevalence[day] = i
    weekly = _weekly(onsets)
    return {
        "incidence": weekly.astype(float),
        "cases": _thin(rng, onsets, rho).astype(float),
        "prevalence": prevalence.astype(float),
        "attack_rate": np.array([onsets.sum() / population]),
    }


def sir(params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Stochastic SIR. Parameters: beta, gamma; optional population (100000),
    initial_infected (10), n_days (182), reporting_rate (1).

    Outputs: ``incidence`` (weekly new infections), ``cases`` (weekly reported,
    binomially thinned by reporting_rate), ``prevalence`` (daily infectious),
    ``attack_rate`` (one value).
    """
    return _seir_core(params, seed, latent=False)


def seir(params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Stochastic SEIR: as :func:`sir` with a latent class left at rate ``sigma``.

    ``incidence`` counts weekly onsets of infectiousness (E→I).
    """
    return _seir_core(params, seed, latent=True)


def age_seir(params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Age-structured stochastic SEIR with a contact matrix.

    Parameters: beta (per contact per day), sigma, gamma; optional
    ``contacts`` (G×G daily contacts, default 3 groups), ``age_population``
    (G sizes), ``initial_infected`` (seeded in the middle group), n_days,
    reporting_rate, and ``susceptibility_65`` (relative susceptibility of the
    last group, default 1).

    Outputs: ``incidence_by_age`` and ``cases_by_age`` (weeks × G),
    ``incidence`` (weekly total), ``prevalence`` (daily total).
    """
    rng = np.random.default_rng(seed)
    n_days = int(params.get("n_days", 182))
    beta = _series(params, "beta", n_days)
    sigma = _require(params, "sigma")
    gamma = _require(params, "gamma")
    contacts = np.asarray(params.get("contacts", DEFAULT_CONTACTS), dtype=float)
    pop = np.asarray(params.get("age_population", DEFAULT_AGE_POPULATION), dtype=np.int64)
    groups = pop.shape[0]
    if contacts.shape != (groups, groups) or (contacts < 0).any() or (pop <= 0).any():
        raise SimulationError(f"'contacts' must be a non-negative {groups}x{groups} matrix matching 'age_population'")
    susceptibility = np.ones(groups)
    susceptibility[-1] = float(params.get("susceptibility_65", 1.0))
    rho = _series(params, "reporting_rate", n_days, 1.0)
    seeded = int(params.get("initial_infected", 10))
    daily_beta = np.broadcast_to(np.asarray(beta, dtype=float), (n_days,))
    s = pop.copy()
    e = np.zeros(groups, dtype=np.int64)
    i = np.zeros(groups, dtype=np.int64)
    i[groups // 2] = seeded
    s[groups // 2] -= seeded
    k = _substeps(float(daily_beta.max()) * float(contacts.sum(axis=1).max()), sigma, gamma)
    dt = 1.0 / k
    p_ei, p_ir = _prob(sigma, dt), _prob(gamma, dt)
    onsets = np.zeros((n_days, groups), dtype=np.int64)
    prevalence = np.zeros(n_days, dtype=np.int64)
    for day in range(n_days):
        beta_today = float(daily_beta[day])
        for _ in range(k):
            if not (i.any() or e.any()):
                break
            force = beta_today * susceptibility * (contacts @ (i / pop))
            n_se = rng.binomial(s, _prob(force, dt))
            n_ei = rng.binomial(e, p_ei)
            n_ir = rng.binomial(i, p_ir)
            s -= n_se
            e += n_se - n_ei
            i += n_ei - n_ir
            onsets[day] += n_ei
        prevalence[day] = i.sum()
    weekly = _weekly(onsets)
    return {
        "incidence_by_age": weekly.astype(float),
        "cases_by_age": _thin(rng, onsets, rho).astype(float),
        "incidence": weekly.sum(axis=1).astype(float),
        "prevalence": prevalence.astype(float),
    }


sir.outputs = ("incidence", "cases", "prevalence", "attack_rate")  # type: ignore[attr-defined]
seir.outputs = ("incidence", "cases", "prevalence", "attack_rate")  # type: ignore[attr-defined]
age_seir.outputs = ("incidence_by_age", "cases_by_age", "incidence", "prevalence")  # type: ignore[attr-defined]
# Parameters that accept a per-day schedule (an array, element d = the value on model day d).
for _model in (sir, seir, age_seir):
    _model.schedulable = ("beta", "reporting_rate")  # type: ignore[attr-defined]

BUILTINS: dict[str, Callable[[Mapping[str, Any], int], dict[str, np.ndarray]]] = {
    "sir": sir,
    "seir": seir,
    "age_seir": age_seir,
}
