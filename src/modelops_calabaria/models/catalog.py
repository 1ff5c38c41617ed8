"""What each built-in model takes and returns, for `calabaria models` and the docs.

Kept beside the code it describes (:mod:`.compartmental`); a test checks that
every parameter a built-in reads is listed here and that every listed output
is returned with the stated shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelops_calabaria.models.compartmental import DEFAULT_AGE_GROUPS


@dataclass(frozen=True)
class ParamDoc:
    """One model parameter: name, meaning, unit, default (None = required)."""

    name: str
    meaning: str
    unit: str
    default: object = None


@dataclass(frozen=True)
class OutputDoc:
    """One model output: name, meaning, shape and the keys its rows (and columns) stand for."""

    name: str
    meaning: str
    shape: str
    keys: str


@dataclass(frozen=True)
class ModelDoc:
    """A built-in model's documentation."""

    name: str
    summary: str
    parameters: tuple[ParamDoc, ...]
    outputs: tuple[OutputDoc, ...]
    schedulable: tuple[str, ...] = ("beta", "reporting_rate")  # parameters that accept a per-day schedule


_COMMON = (
    ParamDoc("population", "total population", "people", 100_000),
    ParamDoc("initial_infected", "infectious people on day 0", "people", 10),
    ParamDoc("n_days", "days simulated (weekly outputs use whole weeks)", "days", 182),
    ParamDoc("reporting_rate", "probability that an infection is reported (binomial thinning; or a per-day schedule)", "probability", 1.0),
)
_WEEKLY_KEYS = "row = week number from 0 (on: [week]); week w sums days 7w..7w+6"
_DAILY_KEYS = "row = day number from 0 (on: [day], or on: [date] with start_date)"
_OUTPUTS = (
    OutputDoc("incidence", "new infections (SEIR: onsets of infectiousness) per week", "(n_days // 7,)", _WEEKLY_KEYS),
    OutputDoc("cases", "reported new infections per week", "(n_days // 7,)", _WEEKLY_KEYS),
    OutputDoc("prevalence", "infectious people at the end of each day", "(n_days,)", _DAILY_KEYS),
    OutputDoc("attack_rate", "fraction of the population infected by the end", "(1,)", "one row (index 0)"),
)

CATALOG: dict[str, ModelDoc] = {
    "sir": ModelDoc(
        "sir", "stochastic chain-binomial SIR, daily steps split into sub-steps of at most 0.1 events per person",
        (ParamDoc("beta", "transmission rate (or a per-day schedule)", "per day"), ParamDoc("gamma", "recovery rate (1 / infectious period)", "per day"), *_COMMON),
        _OUTPUTS,
    ),
    "seir": ModelDoc(
        "seir", "stochastic chain-binomial SEIR: SIR with a latent class",
        (ParamDoc("beta", "transmission rate (or a per-day schedule)", "per day"), ParamDoc("sigma", "rate of becoming infectious (1 / latent period)", "per day"),
         ParamDoc("gamma", "recovery rate (1 / infectious period)", "per day"), *_COMMON),
        _OUTPUTS,
    ),
    "age_seir": ModelDoc(
        "age_seir", f"age-structured stochastic SEIR with a contact matrix (default groups {', '.join(DEFAULT_AGE_GROUPS)})",
        (ParamDoc("beta", "transmission probability per contact (or a per-day schedule)", "per contact per day"),
         ParamDoc("sigma", "rate of becoming infectious", "per day"), ParamDoc("gamma", "recovery rate", "per day"),
         ParamDoc("contacts", "G x G daily contacts of a person in row group with column group", "contacts per day", "3x3 POLYMOD-like"),
         ParamDoc("age_population", "people per age group", "people", "22000, 60000, 18000"),
         ParamDoc("initial_infected", "infectious people on day 0, in the middle group", "people", 10),
         ParamDoc("n_days", "days simulated", "days", 182),
         ParamDoc("reporting_rate", "probability that an infection is reported (or a per-day schedule)", "probability", 1.0),
         ParamDoc("susceptibility_65", "relative susceptibility of the last age group", "ratio", 1.0)),
        (OutputDoc("incidence_by_age", "onsets per week and age group", "(n_days // 7, G)", _WEEKLY_KEYS + "; column = age group"),
         OutputDoc("cases_by_age", "reported onsets per week and age group", "(n_days // 7, G)", _WEEKLY_KEYS + "; column = age group"),
         OutputDoc("incidence", "onsets per week, all ages", "(n_days // 7,)", _WEEKLY_KEYS),
         OutputDoc("prevalence", "infectious people at the end of each day", "(n_days,)", _DAILY_KEYS)),
    ),
}


def describe(name: str) -> str:
    """A built-in's documentation as plain text."""
    doc = CATALOG[name]
    lines = [f"{doc.name}: {doc.summary}", "  parameters:"]
    for p in doc.parameters:
        default = "required" if p.default is None else f"default {p.default}"
        lines.append(f"    {p.name:<18} {p.meaning} [{p.unit}] ({default})")
    if doc.schedulable:
        lines.append(f"  schedules (per-day arrays, docs/projections.md): {', '.join(doc.schedulable)}")
    lines.append("  outputs:")
    for o in doc.outputs:
        lines.append(f"    {o.name:<18} {o.meaning}; shape {o.shape}; {o.keys}")
    return "\n".join(lines)
