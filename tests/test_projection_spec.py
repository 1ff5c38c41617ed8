"""scenarios.yaml, the composition of changes, and schedules in the built-in models."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import pytest

from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.models import load_model
from modelops_calabaria.models.compartmental import BUILTINS, age_seir, seir, sir
from modelops_calabaria.projection.schedules import apply_changes, check_changes, schedulable_of
from modelops_calabaria.projection.spec import Change, spec_from_dict

START = dt.date(2024, 1, 1)
PARAMS = {"beta": 0.5, "sigma": 0.25, "gamma": 0.2, "population": 20_000, "initial_infected": 20, "n_days": 70,
          "reporting_rate": 0.3}


def _change(**kw):
    return Change.model_validate(kw)


def test_a_spec_with_every_kind_of_change_validates():
    spec = spec_from_dict({"start_date": "2024-01-01", "scenarios": [
        {"name": "a", "changes": [{"parameter": "beta", "from": "2024-02-01", "multiply": 0.7}]},
        {"name": "b", "changes": [{"parameter": "reporting_rate", "value": 0.4}]},
        {"name": "c", "changes": [{"parameter": "beta", "steps": [["2024-01-10", 0.3], ["2024-02-10", 0.6]]}]},
        {"name": "d", "changes": [{"parameter": "beta", "multiply": 1.1}]},
    ]}, "s.yaml")
    assert [n for n, _ in spec.all()] == ["baseline", "a", "b", "c", "d"]
    assert spec.scenarios[0].changes[0].dated and not spec.scenarios[1].changes[0].dated


@pytest.mark.parametrize("bad, fragment", [
    ({"scenarios": [{"name": "a", "changes": [{"parameter": "beta"}]}]}, "exactly one of value, multiply or steps"),
    ({"scenarios": [{"name": "a", "changes": [{"parameter": "beta", "value": 1, "multiply": 2}]}]}, "exactly one"),
    ({"scenarios": [{"name": "a", "changes": [{"parameter": "beta", "value": 1, "from": "2024-03-01", "until": "2024-02-01"}]}]}, "must be after"),
    ({"scenarios": [{"name": "a", "changes": [{"parameter": "beta", "steps": [["2024-03-01", 1], ["2024-02-01", 2]]}]}]}, "increasing date order"),
    ({"scenarios": [{"name": "baseline"}]}, "unique"),
    ({"scenarios": [{"name": "a b"}]}, "letters, digits"),
    ({"scenarios": [{"name": "a", "changes": [{"parameter": "beta", "value": 1, "when": "x"}]}]}, "Extra inputs"),
    ({"start_date": "soon"}, "start_date"),
])
def test_bad_specs_name_the_field(bad, fragment):
    with pytest.raises(JobSpecError) as e:
        spec_from_dict(bad, "s.yaml")
    assert fragment in str(e.value) and "s.yaml" in str(e.value)


def test_changes_compose_in_order_later_values_win_and_factors_multiply():
    changes = [
        _change(parameter="beta", value=0.4),  # a plain value
        _change(parameter="beta", **{"from": "2024-01-11"}, multiply=0.5),  # from day 10: 0.2
        _change(parameter="beta", **{"from": "2024-01-21", "until": "2024-01-26"}, value=1.0),  # days 20-24: 1.0
        _change(parameter="beta", **{"from": "2024-01-23"}, multiply=2.0),  # from day 22: doubled
        _change(parameter="gamma", multiply=1.5),
    ]
    out = apply_changes({"beta": 0.9, "gamma": 0.2}, changes, START, 30)
    beta = out["beta"]
    assert beta.shape == (30,)
    np.testing.assert_allclose(beta[:10], 0.4)
    np.testing.assert_allclose(beta[10:20], 0.2)
    np.testing.assert_allclose(beta[20:22], 1.0)
    np.testing.assert_allclose(beta[22:25], 2.0)
    np.testing.assert_allclose(beta[25:], 0.4)
    assert out["gamma"] == pytest.approx(0.3)


def test_steps_hold_each_value_from_its_date():
    out = apply_changes({"beta": 0.5}, [_change(parameter="beta", steps=[["2024-01-05", 0.1], ["2024-01-08", 0.9]])], START, 10)
    np.testing.assert_allclose(out["beta"], [0.5] * 4 + [0.1] * 3 + [0.9] * 3)


@pytest.mark.parametrize("change, fragment", [
    ({"parameter": "nope", "value": 1.0}, "not a parameter"),
    ({"parameter": "sigma", "from": "2024-01-05", "value": 0.1}, "accepts schedules for beta, reporting_rate"),
    ({"parameter": "beta", "from": "2025-06-01", "multiply": 0.5}, "outside the simulated days"),
    ({"parameter": "extra", "multiply": 2.0}, "needs the value it starts from"),
])
def test_changes_that_cannot_apply_are_refused(change, fragment):
    with pytest.raises(JobSpecError) as e:
        check_changes([("s", [_change(**change)])], {"beta", "sigma", "extra"}, {"beta", "sigma"}, ("beta", "reporting_rate"),
                      "seir", START, 100)
    assert fragment in str(e.value) and "scenario 's'" in str(e.value)


def test_a_model_without_schedule_support_gets_a_clear_error():
    def plain(params, seed):
        return {"cases": np.zeros(3)}

    assert schedulable_of(plain) is None
    with pytest.raises(JobSpecError, match="declares no schedulable parameters"):
        check_changes([("s", [_change(parameter="beta", **{"from": "2024-01-02"}, multiply=0.5)])], {"beta"}, {"beta"},
                      schedulable_of(plain), "plain.py:plain", START, 30)


def test_builtins_declare_schedules_and_the_loader_keeps_the_declaration():
    for name in BUILTINS:
        assert schedulable_of(load_model(name).run) == ("beta", "reporting_rate")


@pytest.mark.parametrize("model, name", list(itertools.product([sir, seir, age_seir], ["beta", "reporting_rate"])))
def test_a_constant_schedule_runs_exactly_like_the_number(model, name):
    """A schedule holding the same value every day is the same simulation (same draws) as the number,
    for beta; for a reporting rate the thinning is daily, so the same in distribution: compared on incidence."""
    params = dict(PARAMS)
    flat = {**params, name: np.full(params["n_days"], params[name])}
    a, b = model(params, 11), model(flat, 11)
    np.testing.assert_array_equal(a["incidence"], b["incidence"])
    if name == "beta":
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("model", [sir, seir, age_seir])
def test_a_transmission_drop_from_a_date_lowers_incidence_only_after_it(model):
    params = {**PARAMS, "beta": 0.03} if model is age_seir else PARAMS  # age_seir: per contact (~13 a day)
    base = model(params, 5)
    beta = np.full(params["n_days"], params["beta"])
    beta[28:] *= 0.3
    dropped = model({**params, "beta": beta}, 5)
    np.testing.assert_array_equal(base["incidence"][:4], dropped["incidence"][:4])  # weeks 0-3: days 0-27, same draws
    assert dropped["incidence"][4:].sum() < 0.8 * base["incidence"][4:].sum()


def test_a_daily_reporting_schedule_thins_each_day():
    rho = np.full(PARAMS["n_days"], 0.9)
    rho[35:] = 0.05
    out = seir({**PARAMS, "reporting_rate": rho}, 3)
    ratio = out["cases"] / np.maximum(out["incidence"], 1)
    assert ratio[:5][out["incidence"][:5] > 50].min() > 0.8 and ratio[5:][out["incidence"][5:] > 50].max() < 0.15


@pytest.mark.parametrize("bad, fragment", [(np.full(10, 0.5), "one value per day"), (np.full(70, np.nan), "finite non-negative")])
def test_bad_schedules_are_model_errors(bad, fragment):
    from modelops_calabaria.errors import SimulationError

    with pytest.raises(SimulationError, match=fragment):
        seir({**PARAMS, "beta": bad}, 1)
