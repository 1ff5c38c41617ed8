"""The forecast check: WIS against its published definition, coverage on known-truth data, the check end to end."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from modelops_calabaria.job import job_from_dict
from modelops_calabaria.models import load_model
from modelops_calabaria.projection import holdout
from modelops_calabaria.projection.draws import ParameterSets
from modelops_calabaria.projection.outputs import HUB_LEVELS
from modelops_calabaria.projection.run import collect, plan_projection, run_plan
from modelops_calabaria.projection.spec import ScenarioSpec
from modelops_calabaria.projection.store import ChunkStore
from modelops_calabaria.projection.wis import coverage, interval_score, intervals_of, wis
from modelops_calabaria.simulation import InlineSimulationService, SimContext
from modelops_calabaria.targets.evaluate import compile_targets

SUPPORT = Path(__file__).resolve().parent / "support"
sys.path.insert(0, str(SUPPORT))
import projection_models as pm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_wis_of_a_worked_example():
    """y = 10, median 8, the 50 % interval [6, 9]: IS = (9 - 6) + 2/0.5 * (10 - 9) = 7;
    WIS = (0.5 * |10 - 8| + 0.25 * 7) / (1 + 1/2) = 2.75 / 1.5."""
    assert interval_score(6, 9, 10, 0.5) == pytest.approx(7.0)
    assert wis(np.array([6.0, 8.0, 9.0]), [0.25, 0.5, 0.75], np.array(10.0)) == pytest.approx(2.75 / 1.5)
    # inside every interval: only the widths and the distance to the median count
    assert wis(np.array([6.0, 8.0, 9.0]), [0.25, 0.5, 0.75], np.array(8.0)) == pytest.approx((0 + 0.25 * 3) / 1.5)


def test_wis_equals_its_quantile_loss_form_on_the_hub_levels():
    """Bracher et al. eq. 4: WIS = 2 / (2K + 1) * sum over the 2K + 1 quantiles of the pinball loss."""
    rng = np.random.default_rng(1)
    q = np.sort(rng.normal(50, 20, size=(200, len(HUB_LEVELS))), axis=1)
    y = rng.normal(50, 30, size=200)
    levels = np.array(HUB_LEVELS)
    pinball = ((y[:, None] - q) * (levels - (y[:, None] < q))).sum(axis=1)
    k = len(intervals_of(HUB_LEVELS))
    assert k == 11
    np.testing.assert_allclose(wis(q, HUB_LEVELS, y), 2 / (2 * k + 1) * pinball)


def test_coverage_and_wis_need_their_levels():
    assert coverage(np.array([1.0, 2, 3]), [0.025, 0.5, 0.975], np.array(2.5), 0.95)
    with pytest.raises(ValueError):
        coverage(np.array([1.0, 2, 3]), [0.1, 0.5, 0.9], np.array(2.5), 0.95)
    with pytest.raises(ValueError):
        wis(np.array([1.0, 3]), [0.25, 0.75], np.array(2.0))


WEEKS, OBSERVED, START = 16, 10, dt.date(2024, 1, 1)


def _check_one(tmp: Path, rng: np.random.Generator, i: int, shift_sd: float = 0.0) -> bool:
    """One dataset from the known truth; the exact posterior after OBSERVED weeks; project; score one held-back week."""
    mu = rng.normal(pm.PRIOR_MEAN, 30.0)
    y = mu + pm.SIGMA * rng.standard_normal(WEEKS)
    base = {"study": f"cov{i}", "model": f"{SUPPORT / 'projection_models.py'}:normal_level",
            "parameters": {"mu": {"lower": -500, "upper": 500}}, "fixed": {"n_weeks": WEEKS}, "max_trials": 1, "seed": i}
    full = job_from_dict({**base, "targets": [{"name": "y", "output": "y", "index_column": "week", "score": "sse",
                                              "data": {"week": list(range(WEEKS)), "y": y.tolist()}}]})
    short = job_from_dict({**base, "targets": [{"name": "y", "output": "y", "index_column": "week", "score": "sse",
                                               "data": {"week": list(range(OBSERVED)), "y": y[:OBSERVED].tolist()}}]})
    mean, sd = pm.posterior(y[:OBSERVED])
    draws = np.random.default_rng([i, 7]).normal(mean + shift_sd * sd, sd, size=200)
    sets = ParameterSets("posterior", tuple({"mu": float(m)} for m in draws), np.full(200, 1 / 200), tuple(range(200)))
    model = load_model(full.model)
    after = START + dt.timedelta(days=7 * OBSERVED - 1)
    plan = plan_projection(short, model, compile_targets(short, model.outputs), sets, ScenarioSpec(start_date=START, days_parameter=None),
                           draws=200, replicates=1, seed=i, until=START + dt.timedelta(days=7 * WEEKS - 1), reference_date=after)
    store = ChunkStore(tmp / f"d{i}", plan.fingerprint())
    store.open({})
    service = InlineSimulationService(SimContext(plan.model_ref, {}, plan.probes), 1)
    try:
        run_plan(plan, service, store)
    finally:
        service.close()
        store.close()
    points = holdout.held_back(plan, compile_targets(full, model.outputs), after, 7)
    assert len(points) == WEEKS - OBSERVED
    check = holdout.score(plan, collect(plan, store), points, after)
    row = check["rows"][i % len(points)]  # one held-back week per dataset: independent trials
    assert row["in_95"] == (row["lower_95"] <= row["observed"] <= row["upper_95"])
    return row["in_95"]


@pytest.mark.slow
def test_95_percent_intervals_cover_95_percent_of_held_back_observations_when_the_model_is_right(tmp_path):
    rng = np.random.default_rng(20240101)
    n = 150
    hits = [_check_one(tmp_path, rng, i) for i in range(n)]
    k = int(np.sum(hits))
    assert stats.binomtest(k, n, 0.95).pvalue > 0.01, f"{k}/{n} covered"


@pytest.mark.slow
def test_the_coverage_test_sees_a_wrong_posterior(tmp_path):
    """The same check with the posterior shifted by 3 of its standard deviations: coverage falls below 95 % (the test can fail)."""
    rng = np.random.default_rng(20240101)
    n = 60
    hits = [_check_one(tmp_path, rng, i, shift_sd=3.0) for i in range(n)]
    assert stats.binomtest(int(np.sum(hits)), n, 0.95, alternative="less").pvalue < 0.01


@pytest.mark.slow
def test_forecast_check_end_to_end_on_the_seir_demo(tmp_path):
    """`project RUN --holdout-after DATE --truth JOB` on a RUN that does not exist yet: calibrates on the weeks up to
    2024-07-07 (week 8 ends) into RUN, projects, and the check is in the outputs; then the same through a run made
    by calibrate_holdout; a run that saw the held-back weeks is refused."""
    import yaml

    from modelops_calabaria.projection import calibrate_holdout

    job = yaml.safe_load((ROOT / "examples" / "seir" / "job.yaml").read_text())
    job.update(max_trials=20, study="holdout-e2e")
    job["targets"][0]["data"] = str(ROOT / "examples" / "seir" / "cases.csv")
    truth = tmp_path / "job.yaml"
    truth.write_text(yaml.safe_dump(job))
    scenarios = str(ROOT / "examples" / "seir" / "scenarios.yaml")

    def project_cli(run: Path, out: Path, after: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "modelops_calabaria", "project", str(run), "--scenarios", scenarios,
                               "--holdout-after", after, "--truth", str(truth), "--draws", "10", "--scheduler", "inline",
                               "--output", str(out)], capture_output=True, text=True, timeout=600)

    run = tmp_path / "run"
    r = project_cli(run, tmp_path / "p", "2024-07-07")
    assert r.returncode == 0, r.stderr
    assert (run / "results.json").is_file() and (run / "study.db").is_file()
    doc = json.loads((tmp_path / "p" / "projection.json").read_text())
    check = doc["forecast_check"]
    assert check["after"] == "2024-07-07" and check["points"] == 21  # weeks 9-29
    assert 0 <= check["coverage_95"] <= 1 and check["wis"] > 0
    assert doc["facts"]["reference_date"] == "2024-07-07"
    assert "forecast check after 2024-07-07" in r.stdout
    assert 'id="forecast-check"' in (tmp_path / "p" / "projection.html").read_text()

    other = tmp_path / "other"
    calibrate_holdout(truth, dt.date(2024, 7, 7), other, start_date=dt.date(2024, 5, 6), max_trials=6, scheduler="inline")
    r = project_cli(other, tmp_path / "p2", "2024-07-07")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "p2" / "projection.json").read_text())["forecast_check"]["points"] == 21

    r = project_cli(run, tmp_path / "q", "2024-06-30")  # the run saw the week ending 2024-07-07
    assert r.returncode == 2 and "after the hold-out date" in r.stderr and not (tmp_path / "q").exists()
    r = project_cli(tmp_path / "never", tmp_path / "z", "2020-01-01")  # no observation before the date: nothing calibrated
    assert r.returncode == 2 and "no observation on or before" in r.stderr
    assert not (tmp_path / "never").exists() and not (tmp_path / "z").exists()
