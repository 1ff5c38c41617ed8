"""Sensitivity analysis without a cluster: designs, summaries, indices against closed forms.

The Ishigami test runs the code path a sweep's analysis uses (``sensitivity.design`` for
the rows, ``sensitivity.analysis.indices`` for the indices), evaluating the function
in-process, over 40 designs with different seeds: the bootstrap intervals must cover
the analytic indices at least as often as their 95 % level says (binomial test).
"""

from __future__ import annotations

import datetime
import os
import math
import sys

import numpy as np
import pytest
from scipy import stats

from modelops_calabaria.errors import JobSpecError, SimulationError
from modelops_calabaria.job import SummarySpec, job_from_dict
from modelops_calabaria.sensitivity.analysis import indices, noise_share
from modelops_calabaria.sensitivity.design import design_points, natural_rows, problem, scaled_design
from modelops_calabaria.simulation.summaries import summarize, summary

from conftest import SUPPORT

sys.path.insert(0, str(SUPPORT))
import ishigami  # noqa: E402

PI = math.pi
BOX = {f"x{i}": {"lower": -PI, "upper": PI} for i in (1, 2, 3)}


def sweep_job(parameters=None, seed: int = 0, targets=None, **sweep):
    data = {"study": "s", "model": f"{SUPPORT / 'ishigami.py'}:ishigami", "parameters": parameters or BOX, "seed": seed,
            "sweep": {"design": "sobol", "points": 64, "replicates": 1, **sweep}}
    if targets is not None:
        data["targets"] = targets
    return job_from_dict(data)


def ishigami_indices(seed: int, n: int) -> dict:
    job = sweep_job(seed=seed, points=n)
    x = scaled_design(job)
    y = np.array([ishigami.value(*row) for row in natural_rows(job, x)])
    return indices("sobol", problem(job), x, y[:, None], resamples=500, confidence=0.95, seed=seed)


def test_ishigami_intervals_cover_the_analytic_indices_at_their_level():
    covered, total = 0, 0
    for seed in range(40):
        res = ishigami_indices(seed, 256)
        for key in ("S1", "ST"):
            for j in range(3):
                total += 1
                covered += abs(res[key][j] - ishigami.EXACT[key][j]) <= res[f"{key}_conf"][j]
    # H0: coverage >= 0.95; refuse it only when the count is implausibly low for 95 %
    assert stats.binomtest(covered, total, 0.95, alternative="less").pvalue > 0.01, (covered, total)
    assert covered / total >= 0.9


def test_ishigami_indices_converge_on_a_large_design():
    res = ishigami_indices(1, 4096)
    for key in ("S1", "ST"):
        assert np.allclose(res[key], ishigami.EXACT[key], atol=0.03), (key, res[key])
        assert all(c < 0.05 for c in res[f"{key}_conf"])


def test_morris_of_a_linear_function_is_its_slope_times_the_range():
    """y = 3 a on a in [0, 2], b unused: every elementary effect of a is 3 × 2 (SALib scales by the range), σ = 0."""
    job = sweep_job({"a": {"lower": 0, "upper": 2}, "b": {"lower": -1, "upper": 1}}, design="morris", points=20)
    x = scaled_design(job)
    y = 3 * natural_rows(job, x)[:, 0]
    res = indices("morris", problem(job), x, y[:, None], levels=4, resamples=200)
    assert res["mu_star"] == pytest.approx([6.0, 0.0]) and res["sigma"] == pytest.approx([0.0, 0.0])


def test_noise_share_is_within_point_over_total_variance():
    rng = np.random.default_rng(0)
    point = rng.normal(0, 1, size=(4000, 1))
    values = point + rng.normal(0, 0.5, size=(4000, 4))
    assert noise_share(values) == pytest.approx(0.25 / 1.25, abs=0.01)
    assert noise_share(np.repeat(point, 3, axis=1)) == pytest.approx(0.0, abs=1e-12)
    assert noise_share(point) == 0.0  # one replicate: no within-point variance to see


def test_indices_are_of_the_replicate_mean():
    job = sweep_job(points=512)
    x = scaled_design(job)
    y = np.array([ishigami.value(*row) for row in natural_rows(job, x)])
    noisy = y[:, None] + np.random.default_rng(2).normal(0, 3.0, size=(len(y), 6))
    clean = indices("sobol", problem(job), x, y[:, None], seed=0)
    res = indices("sobol", problem(job), x, noisy, seed=0)
    expected = float(np.var(noisy - y[:, None], ddof=1) / np.var(noisy, ddof=1))
    assert res["noise_share"] == pytest.approx(expected, rel=0.02)
    assert np.allclose(res["ST"], clean["ST"], atol=0.1)


def test_no_indices_without_every_point_or_for_lhs_and_grid():
    job = sweep_job()
    x = scaled_design(job)
    values = np.ones((len(x), 2))
    values[3] = np.nan
    assert "point(s) have no value" in indices("sobol", problem(job), x, values)["reason"]
    assert "does not vary" in indices("sobol", problem(job), x, np.ones((len(x), 1)))["reason"]
    assert "lhs design" in indices("lhs", problem(job), x, values)["reason"]


@pytest.mark.parametrize("design, second_order, size", [("sobol", False, 64 * 5), ("sobol", True, 64 * 8),
                                                         ("morris", False, 64 * 4), ("lhs", False, 64),
                                                         ("grid", False, 64 ** 3)])
def test_designs_are_seeded_sized_and_inside_the_bounds(design, second_order, size):
    points = 64 if design != "grid" else 64
    if design == "grid":
        job, size = sweep_job(design="grid", points=5), 125
    else:
        job = sweep_job(design=design, points=points, second_order=second_order)
    rows = design_points(job)
    assert len(rows) == size == job.sweep.size(3)
    assert all(-PI <= r[n] <= PI for r in rows for n in r)
    assert rows == design_points(job)
    if design in ("sobol", "lhs"):
        other = design_points(sweep_job(seed=1, design=design, points=points, second_order=second_order))
        assert other != rows


def test_designs_use_the_search_scale_and_round_ints():
    params = {"p": {"lower": 1e-4, "upper": 0.5, "transform": "logit"}, "r": {"lower": 0.01, "upper": 100, "log": True},
              "k": {"kind": "int", "lower": 1, "upper": 9}}
    rows = design_points(sweep_job(params, design="lhs", points=400))
    p = np.array([r["p"] for r in rows])
    r = np.array([r["r"] for r in rows])
    assert 0.4 < (p < 0.01).mean() < 0.6  # half way on the logit scale
    assert 0.45 < (r < 1).mean() < 0.55  # half way on the log scale
    assert all(isinstance(row["k"], int) for row in rows) and {row["k"] for row in rows} == set(range(1, 10))


TABLE = {"date": np.array(["2024-01-01", "2024-01-02", "2024-01-03"], dtype="datetime64[D]"), "cases": np.array([1.0, 5.0, 2.0])}
OUTPUTS = {"one": np.array([1.0, 4.0, 2.0]), "two": np.array([[1.0, 1.0], [2.0, 5.0], [0.0, 1.0]]), "table": TABLE}
# (output, stat, at, expected): every stat on a 1-D array, a 2-D array (summed over columns) and a dated table
CASES = [
    ("one", "final", None, 2.0), ("one", "peak", None, 4.0), ("one", "peak_time", None, 1.0), ("one", "sum", None, 7.0),
    ("one", "mean", None, 7 / 3), ("one", "at", 0, 1.0),
    ("two", "final", None, 1.0), ("two", "peak", None, 7.0), ("two", "peak_time", None, 1.0), ("two", "sum", None, 10.0),
    ("two", "mean", None, 10 / 3), ("two", "at", 2, 1.0),
    ("table", "final", None, 2.0), ("table", "peak", None, 5.0),
    ("table", "peak_time", None, float((datetime.date(2024, 1, 2) - datetime.date(1970, 1, 1)).days)),
    ("table", "sum", None, 8.0), ("table", "mean", None, 8 / 3), ("table", "at", "2024-01-03", 2.0),
]


@pytest.mark.parametrize("output, stat, at, expected", CASES, ids=[f"{o}-{s}" for o, s, _, _ in CASES])
def test_summaries_of_every_output_form(output, stat, at, expected):
    spec = SummarySpec.model_validate({"output": output, "stat": stat, **({"at": at} if at is not None else {})})
    assert summary(spec, OUTPUTS) == pytest.approx(expected)


def test_summary_names_and_failures():
    specs = [SummarySpec(output="one"), SummarySpec(output="one", stat="at", at=1), SummarySpec(output="two", stat="sum", name="total")]
    assert summarize(specs, OUTPUTS) == {"one_final": 2.0, "one_at_1": 4.0, "total": 10.0}
    for spec, says in ((SummarySpec(output="nope"), "no output 'nope'"), (SummarySpec(output="one", stat="at", at=9), "row 9"),
                       (SummarySpec.model_validate({"output": "table", "stat": "at", "at": "2025-01-01"}), "no row dated"),
                       (SummarySpec(output="table", column="deaths"), "no column 'deaths'")):
        with pytest.raises(SimulationError, match=says):
            summary(spec, OUTPUTS)


BASE = {"study": "s", "model": "sir", "parameters": {"beta": {"lower": 0.1, "upper": 1.0}}}


@pytest.mark.parametrize("extra, says", [
    ({"sweep": {"design": "sobol", "points": 100}}, "power of 2"),
    ({"sweep": {"design": "morris", "levels": 5}}, "even number of levels"),
    ({"sweep": {"summaries": [{"output": "i", "stat": "at"}]}}, "needs 'at'"),
    ({"sweep": {"summaries": [{"output": "i", "at": 3}]}}, "only for stat: at"),
    ({"sweep": {"summaries": [{"output": "i"}, {"output": "i"}]}}, "unique"),
    ({"sweep": {"design": "grid", "points": 2000}, "parameters": {"a": {"lower": 0, "upper": 1}, "b": {"lower": 0, "upper": 1}}}, "more than"),
    ({"sweep": {}, "parameters": {"c": {"kind": "categorical", "choices": [1, 2]}}}, "categorical"),
    ({}, "at least one target"),
])
def test_sweep_spec_errors(extra, says):
    with pytest.raises(JobSpecError) as info:
        job_from_dict({**BASE, **extra})
    assert says in str(info.value) + str(info.value.problems)


def test_a_sweep_needs_no_target_and_keeps_their_losses_when_given():
    job = job_from_dict({**BASE, "sweep": {}})
    assert job.targets == [] and job.sweep.design == "sobol" and job.sweep.replicates == 2


def test_the_page_renders_in_headless_chromium(tmp_path):
    """sensitivity.html with a Sobol' output, a Morris one and one without indices: figures drawn, no console error."""
    import io
    import shutil
    import subprocess

    from matplotlib.image import imread

    from modelops_calabaria.sensitivity.html import write_page

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed (scripts/test.sh installs Debian's chromium as root)")
        pytest.skip("chromium is not installed")
    job = sweep_job(points=64)
    x = scaled_design(job)
    y = np.array([ishigami.value(*row) for row in natural_rows(job, x)])
    mjob = sweep_job(design="morris", points=10)
    mx = scaled_design(mjob)
    my = np.array([ishigami.value(*row) for row in natural_rows(mjob, mx)])
    result = {"study": "ishigami", "design": "sobol", "points": len(x), "replicates": 1, "parameters": ["x1", "x2", "x3"],
              "complete_points": len(x), "failed_points": 0, "partial": False, "confidence": 0.95, "first_failure": None,
              "outputs": {"y": indices("sobol", problem(job), x, y[:, None]),
                          "y_morris": indices("morris", problem(mjob), mx, my[:, None]),
                          "flat": indices("sobol", problem(job), x, np.ones((len(x), 1)))}}
    page = write_page(tmp_path / "sensitivity.html", result)
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 2 and "does not vary" in text and "<script" not in text
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--window-size=1100,2400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    assert not [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    pixels = imread(io.BytesIO(shot.read_bytes()))
    assert pixels.std() > 0.05  # figures and text, not a blank page
