"""Built-in models and model loading (no cluster)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from modelops_calabaria.errors import JobSpecError, SimulationError
from modelops_calabaria.models import load_model
from modelops_calabaria.models.compartmental import age_seir, seir, sir

BASE = {"beta": 0.5, "sigma": 0.25, "gamma": 0.2, "population": 50_000, "initial_infected": 50, "n_days": 140}


def test_seir_outputs_and_reproducibility():
    a, b = seir(BASE, 3), seir(BASE, 3)
    for key in seir.outputs:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["incidence"].shape == (20,) and a["prevalence"].shape == (140,)
    assert not np.array_equal(a["incidence"], seir(BASE, 4)["incidence"])
    # every onset is counted once: weekly incidence sums to the attack rate times the population
    assert a["incidence"].sum() == pytest.approx(a["attack_rate"][0] * 50_000)
    assert (a["cases"] <= a["incidence"]).all()


def test_final_size_follows_r0():
    """Mean attack rate ≈ the SIR final-size relation z = 1 - exp(-R0 z) for R0 = 2."""
    from scipy.optimize import brentq

    r0 = 2.0
    z = brentq(lambda z: z - 1 + np.exp(-r0 * z), 1e-6, 1)
    params = {**BASE, "beta": r0 * 0.2, "population": 200_000, "initial_infected": 200, "n_days": 365}
    rates = [sir(params, s)["attack_rate"][0] for s in range(5)]
    assert np.mean(rates) == pytest.approx(z, rel=0.03)


class CountingGenerator(np.random.Generator):
    """A numpy Generator that counts its binomial draws: the model's work, without a clock.
    (``np.random.default_rng`` returns a Generator it is given as it is.)"""

    def __init__(self, seed: int) -> None:
        super().__init__(np.random.PCG64(seed))
        self.draws = 0

    def binomial(self, *args, **kwargs):
        self.draws += 1
        return super().binomial(*args, **kwargs)


def test_run_time_depends_on_parameters():
    """A subcritical outbreak dies out in days; a supercritical one runs for months, in finer steps.
    Work is counted in random draws (3 per sub-step), not timed: timing belongs in benchmarks."""
    def work(params):
        rng = CountingGenerator(1)
        out = seir({**BASE, "n_days": 365, **params}, rng)
        return rng.draws, out

    dies_out, small = work({"beta": 0.05, "initial_infected": 5})
    epidemic, large = work({"beta": 0.6, "sigma": 0.5})
    assert small["attack_rate"][0] < 0.01 < 0.5 < large["attack_rate"][0]
    # 0.6 / 0.1 = 6 sub-steps a day for as long as the epidemic lasts, against 1 a day for a few days.
    assert epidemic > 10 * dies_out
    # and the work grows with the rate itself: a faster rate, more sub-steps
    faster, _ = work({"beta": 1.2, "sigma": 0.5})
    assert faster > epidemic


def test_age_seir_shapes():
    out = age_seir({"beta": 0.05, "sigma": 0.25, "gamma": 0.2, "n_days": 70}, 1)
    assert out["incidence_by_age"].shape == (10, 3)
    np.testing.assert_allclose(out["incidence_by_age"].sum(axis=1), out["incidence"])


def test_bad_model_parameters_raise_clear_errors():
    with pytest.raises(SimulationError, match="'gamma' is missing"):
        seir({"beta": 0.5, "sigma": 0.2}, 0)
    with pytest.raises(SimulationError, match="positive finite"):
        seir({**BASE, "beta": -1}, 0)


def test_file_model_loads_once_under_concurrent_threads(tmp_path):
    path = tmp_path / "slow_import.py"
    path.write_text("import time\ntime.sleep(0.3)\n\ndef model(params, seed):\n    return {'x': [1.0]}\n")
    ref = f"{path}:model"
    results, errors = [], []

    def load() -> None:
        try:
            results.append(load_model.__wrapped__(ref))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 6
    assert all(r.run({}, 0) == {"x": [1.0]} for r in results)


@pytest.mark.parametrize("ref, fragment", [
    ("nosuchmodel", "unknown model"),
    ("nosuchpkg_xyz.mod:fn", "cannot be imported"),
    ("/nonexistent/model.py:fn", "not found"),
    ("modelops_calabaria.models.compartmental:nothing", "no object named 'nothing'"),
])
def test_bad_entrypoints(ref, fragment):
    with pytest.raises(JobSpecError, match=fragment):
        load_model.__wrapped__(ref)


def test_class_and_simulate_method_entrypoints(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "class Model:\n    outputs = ('y',)\n    def simulate(self, params, seed):\n        return {'y': [params['a'], seed]}\n"
    )
    loaded = load_model.__wrapped__(f"{path}:Model")
    assert loaded.outputs == ("y",) and loaded.run({"a": 2.0}, 5) == {"y": [2.0, 5]}
