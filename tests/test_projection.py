"""Projections end to end: the SEIR demo and the age-structured keyed example, every output form,
the parameter sources, common random numbers, and bad input.

Runs are real calibrations (SQLite study, inline simulation service: the calibration is not
what is tested here); projections run on a real Dask LocalCluster and inline.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from modelops_calabaria import project
from modelops_calabaria.calibration.runner import run_calibration
from modelops_calabaria.job import load_job
from modelops_calabaria.projection.draws import ParameterSets
from modelops_calabaria.projection.hubverse import FIXED_COLUMNS, TAIL_COLUMNS
from modelops_calabaria.projection.outputs import HUB_LEVELS
from modelops_calabaria.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SEIR = ROOT / "examples" / "seir"
AGE = ROOT / "examples" / "age_seir"
CLI = [sys.executable, "-m", "modelops_calabaria"]
SCENARIOS = ["baseline", "distancing", "more-testing"]


def _calibrate(src: Path, out: Path, study: str, trials: int) -> Path:
    job = yaml.safe_load((src / "job.yaml").read_text())
    job.update(study=study, max_trials=trials, report={"replicates": 0, "others": 0})
    for t in job["targets"]:
        t["data"] = str(src / t["data"])
    if job["model"].endswith(".py:model"):
        job["model"] = str(src / job["model"])
    out.mkdir(parents=True)
    path = out / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    run_calibration(load_job(path), Settings(storage=f"sqlite:///{out / 'study.db'}", scheduler="inline"), output_dir=out)
    return out


@pytest.fixture(scope="module")
def seir_run(tmp_path_factory) -> Path:
    return _calibrate(SEIR, tmp_path_factory.mktemp("seir") / "run", "proj-seir", 24)


@pytest.fixture(scope="module")
def age_run(tmp_path_factory) -> Path:
    return _calibrate(AGE, tmp_path_factory.mktemp("age") / "run", "proj-age", 16)


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.scripts = 0
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "script":
            self.scripts += 1
        for key in ("href", "src"):
            if a.get(key) and not a[key].startswith(("#", "data:")):
                self.links.append(a[key])


def check_hubverse(path: Path, keys: list[str], scenarios: list[str], horizon: int) -> list[dict[str, str]]:
    """The hub file against the hubverse model-output format: columns, types, levels, one row per cell."""
    import datetime as dt

    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        rows = list(reader)
    assert header == [*FIXED_COLUMNS, *keys, *TAIL_COLUMNS]
    assert len(HUB_LEVELS) == 23 and list(HUB_LEVELS) == sorted(HUB_LEVELS) and 0.5 in HUB_LEVELS
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        ref, end = dt.date.fromisoformat(r["reference_date"]), dt.date.fromisoformat(r["target_end_date"])
        h = int(r["horizon"])
        assert 1 <= h <= horizon and end > ref
        assert r["output_type"] == "quantile"
        level = float(r["output_type_id"])
        assert level in HUB_LEVELS
        value = float(r["value"])
        assert np.isfinite(value)
        assert r["scenario_id"] in scenarios
        cells.setdefault((r["scenario_id"], r["target"], h, *[r[k] for k in keys]), []).append((level, value))
    for pairs in cells.values():
        assert [lv for lv, _ in pairs] == list(HUB_LEVELS)  # every level once, in order
        values = [v for _, v in pairs]
        assert values == sorted(values)  # quantiles do not cross
    assert {c[0] for c in cells} == set(scenarios)
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local-dask", "inline"])
def test_seir_demo_projection_in_every_form(seir_run, tmp_path, where, scheduler):
    out = tmp_path / "proj"
    result = project(seir_run, SEIR / "scenarios.yaml", draws=8, replicates=2, output=out,
                     scheduler=scheduler if where == "local-dask" else "inline")
    assert result.facts["parameter_source"] == "reevaluated" and result.facts["draws"] == 8
    assert {p.name for p in result.files} == {"projections.parquet", "quantiles.csv", "hubverse.csv", "summary.csv",
                                              "projection.json", "projection.html"}
    import pyarrow.parquet as pq

    table = pq.read_table(out / "projections.parquet")
    assert table.column_names == ["scenario", "draw", "replicate", "target", "output", "date", "value"]
    rows = 30 + 8  # 30 observed weeks + 8 projected
    assert table.num_rows == 3 * 8 * 2 * rows
    assert set(table.column("scenario").to_pylist()) == set(SCENARIOS)
    hub = check_hubverse(out / "hubverse.csv", [], SCENARIOS, 8)
    assert {r["reference_date"] for r in hub} == {"2024-12-01"}  # week 29 ends on day 209
    assert sorted({r["target_end_date"] for r in hub})[0] == "2024-12-08"
    page = Page()
    page.feed((out / "projection.html").read_text())
    assert page.scripts == 0 and page.links == [] and page.images and all(s.startswith("data:image/png;base64,") for s in page.images)
    assert {"projections", "differences", "summaries", "facts"} <= page.ids
    doc = json.loads((out / "projection.json").read_text())
    assert doc["facts"]["seed"] == 7 and len(doc["facts"]["drawn_trials"]) == 8
    assert {s["scenario"] for s in doc["summaries"]} == set(SCENARIOS)


@pytest.mark.slow
def test_age_structured_keyed_projection(age_run, tmp_path):
    out = tmp_path / "proj"
    result = project(age_run, AGE / "scenarios.yaml", draws=10, replicates=2, output=out, scheduler="inline")
    hub = check_hubverse(out / "hubverse.csv", ["age_group"], SCENARIOS, 8)
    assert {r["age_group"] for r in hub} == {"0-17", "18-64", "65+"}
    assert {r["reference_date"] for r in hub} == {"2024-11-24"}
    assert max(r["target_end_date"] for r in hub) == "2025-01-19"  # 8 weeks on
    import pyarrow.parquet as pq

    table = pq.read_table(out / "projections.parquet")
    assert "age_group" in table.column_names and table.num_rows == 3 * 10 * 2 * (12 + 8) * 3
    # distancing lowers every group's projected total, paired draw by draw (its interval lies below zero for the adults)
    sums = {(s["scenario"], s["age_group"]): s for s in result.summaries}
    assert sums[("distancing", "18-64")]["averted"][1] > 0
    with (out / "quantiles.csv").open() as fh:
        q = list(csv.DictReader(fh))
    assert {r["horizon"] for r in q} >= {"1", "8"} and all(float(r["q0.025"]) <= float(r["q0.5"]) <= float(r["q0.975"]) for r in q)


def test_posterior_draws_follow_the_weights_and_the_seed():
    sets = ParameterSets("posterior", ({"b": 1.0}, {"b": 2.0}, {"b": 3.0}), np.array([0.7, 0.2, 0.1]), (1, 2, 3))
    draws = sets.draw(3000, seed=5)
    counts = np.bincount(draws, minlength=3)
    assert stats.chisquare(counts, 3000 * np.array([0.7, 0.2, 0.1])).pvalue > 0.001
    assert sets.draw(50, seed=5) == draws[:50] and sets.draw(50, seed=6) != draws[:50]


@pytest.mark.slow
def test_posterior_csv_is_the_source_when_present(seir_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(seir_run, run)
    (run / "posterior.csv").write_text("trial,beta,reporting_rate,weight\n3,0.5,0.3,0.75\n9,0.6,0.25,0.25\n")
    result = project(run, SEIR / "scenarios.yaml", draws=12, replicates=1, output=tmp_path / "p", scheduler="inline", seed=3)
    assert result.facts["parameter_source"] == "posterior" and set(result.facts["drawn_trials"]) <= {3, 9}
    again = project(run, SEIR / "scenarios.yaml", draws=12, replicates=1, output=tmp_path / "q", scheduler="inline", seed=3)
    assert again.facts["drawn_trials"] == result.facts["drawn_trials"]
    import pyarrow.parquet as pq

    a, b = pq.read_table(tmp_path / "p" / "projections.parquet"), pq.read_table(tmp_path / "q" / "projections.parquet")
    assert a.equals(b)  # the same seed, the same numbers


@pytest.mark.slow
def test_common_random_numbers_make_paired_differences_less_variable(seir_run, tmp_path):
    """One parameter set (the best), many replicates: the variance of the scenario-minus-baseline total over the
    projected weeks is lower on common seeds than on independent ones (one-sided F-test, seeded)."""
    best = yaml.safe_load((seir_run / "best.yaml").read_text())["best_params"]
    sets = ParameterSets("best", (best,), np.ones(1), (None,))
    spec = yaml.safe_load((SEIR / "scenarios.yaml").read_text())
    spec["start_date"] = "2024-05-06"
    spec["scenarios"] = [{"name": "distancing", "changes": [{"parameter": "beta", "from": "2024-07-01", "multiply": 0.8}]}]
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    job = load_job(seir_run / "job.yaml")  # cut to weeks 0-7 (the growing epidemic), projected 4 weeks
    diffs = {}
    for common in (True, False):
        out = tmp_path / f"crn-{common}"
        project(seir_run, spec_path, draws=40, replicates=1, until=None, horizon=4, output=out, scheduler="inline",
                common_seeds=common, job=_short(job, weeks=8), sets=sets)
        import pyarrow.parquet as pq

        t = pq.read_table(out / "projections.parquet").to_pydict()
        per = {}
        for s, d, date, v in zip(t["scenario"], t["draw"], t["date"], t["value"]):
            if date >= dt.date(2024, 7, 1):  # the projected weeks (the change starts then)
                per[(s, d)] = per.get((s, d), 0.0) + v
        diffs[common] = np.array([per[("distancing", d)] - per[("baseline", d)] for d in range(40)])
    f = diffs[False].var(ddof=1) / diffs[True].var(ddof=1)
    assert stats.f.sf(f, 39, 39) < 0.01, f


def _short(job, weeks: int):
    """The job with its target's observations cut to the first ``weeks`` weeks (inline data)."""
    from modelops_calabaria.job import job_from_dict

    data = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    rows = [r for r in csv.DictReader((Path(job.base_dir) / job.targets[0].data).open())][:weeks]
    data["targets"][0]["data"] = {"week": [int(r["week"]) for r in rows], "cases": [float(r["cases"]) for r in rows]}
    return job_from_dict(data, base_dir=job.base_dir)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def _bad_spec(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


BAD = {
    "no scenarios file": (lambda tp: ["--scenarios", str(tp / "missing.yaml")], "scenarios file not found"),
    "unknown field": (lambda tp: ["--scenarios", _bad_spec(tp, "start_date: 2024-05-06\nscenario: []\n")], "scenario"),
    "unknown parameter": (lambda tp: ["--scenarios", _bad_spec(tp, "start_date: 2024-05-06\nscenarios:\n - {name: a, changes: [{parameter: zeta, value: 1}]}\n")], "not a parameter"),
    "schedule on a fixed-only parameter": (lambda tp: ["--scenarios", _bad_spec(tp, "start_date: 2024-05-06\nscenarios:\n - {name: a, changes: [{parameter: gamma, from: 2024-12-10, multiply: 0.5}]}\n")], "accepts schedules for beta, reporting_rate"),
    "no start date": (lambda tp: ["--scenarios", _bad_spec(tp, "scenarios: []\n")], "start_date"),
    "until before the data": (lambda tp: ["--scenarios", str(SEIR / "scenarios.yaml"), "--until", "2024-06-01"], "not after the last observation"),
    "until and horizon": (lambda tp: ["--scenarios", str(SEIR / "scenarios.yaml"), "--until", "2025-01-01", "--horizon", "3"], "both"),
    "bad date": (lambda tp: ["--scenarios", str(SEIR / "scenarios.yaml"), "--until", "soon"], "expected a date"),
    "zero draws": (lambda tp: ["--scenarios", str(SEIR / "scenarios.yaml"), "--draws", "0"], "--draws 0"),
    "holdout without truth": (lambda tp: ["--scenarios", str(SEIR / "scenarios.yaml"), "--holdout-after", "2024-08-01"], "--truth"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_creates_nothing(seir_run, tmp_path, case):
    make, fragment = BAD[case]
    out = tmp_path / "out"
    r = cli("project", str(seir_run), *make(tmp_path), "--output", str(out), "--scheduler", "inline")
    assert r.returncode == 2, r.stderr
    assert fragment in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ")
    assert not out.exists()


def test_a_missing_run_dir_is_exit_2(tmp_path):
    r = cli("project", str(tmp_path / "nope"), "--scenarios", str(SEIR / "scenarios.yaml"))
    assert r.returncode == 2 and "does not exist" in r.stderr and not (tmp_path / "nope").exists()


@pytest.mark.slow
def test_unreachable_scheduler_is_exit_1_and_creates_nothing(seir_run, tmp_path):
    out = tmp_path / "out"
    r = cli("project", str(seir_run), "--scenarios", str(SEIR / "scenarios.yaml"), "--output", str(out),
            "--scheduler", "tcp://127.0.0.1:9")
    assert r.returncode == 1 and "Traceback" not in r.stderr and not out.exists()


@pytest.mark.slow
def test_a_user_model_without_schedules_is_refused(tmp_path):
    model = tmp_path / "m.py"
    model.write_text("import numpy as np\n\ndef model(params, seed):\n    return {'cases': np.full(40, params['beta'])}\n"
                     "model.outputs = ('cases',)\n")
    job = {"study": "plain", "model": f"{model}:model", "parameters": {"beta": {"lower": 1, "upper": 2}},
           "targets": [{"name": "c", "output": "cases", "data": {"week": list(range(10)), "cases": [1.5] * 10},
                        "index_column": "week", "score": "sse"}], "max_trials": 4, "n_replicates": 1, "seed": 1}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    run = tmp_path / "run"
    run_calibration(load_job(tmp_path / "job.yaml"), Settings(storage=f"sqlite:///{tmp_path / 's.db'}", scheduler="inline"), output_dir=run)
    spec = _bad_spec(tmp_path, "start_date: 2024-01-01\ndays_parameter: null\nscenarios:\n"
                               " - {name: a, changes: [{parameter: beta, from: 2024-02-01, multiply: 0.5}]}\n")
    db = f"sqlite:///{tmp_path / 's.db'}"  # the study is outside the run directory: given as `report` takes it
    r = cli("project", str(run), "--scenarios", spec, "--output", str(tmp_path / "o"), "--scheduler", "inline", "--storage", db)
    assert r.returncode == 2 and "declares no schedulable parameters" in r.stderr and not (tmp_path / "o").exists()
    fine = _bad_spec(tmp_path, "start_date: 2024-01-01\ndays_parameter: null\nscenarios:\n - {name: a, changes: [{parameter: beta, multiply: 0.5}]}\n")
    r = cli("project", str(run), "--scenarios", fine, "--output", str(tmp_path / "o"), "--scheduler", "inline", "--draws", "3",
            "--horizon", "2", "--storage", db)
    assert r.returncode == 0, r.stderr  # a plain change needs no schedule support


@pytest.mark.slow
@pytest.mark.postgres
def test_a_run_whose_study_is_in_postgresql(pg_url, tmp_path):
    """The run directory holds no study.db: the job is read from the study at the storage URL given (as `report` takes it)."""
    from conftest import unique

    job = yaml.safe_load((SEIR / "job.yaml").read_text())
    job.update(study=unique("proj-pg"), max_trials=8, report={"replicates": 0, "others": 0})
    job["targets"][0]["data"] = str(SEIR / "cases.csv")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    run = tmp_path / "run"
    run_calibration(load_job(tmp_path / "job.yaml"), Settings(storage=pg_url, scheduler="inline"), output_dir=run)
    assert not (run / "study.db").exists()
    result = project(run, SEIR / "scenarios.yaml", draws=4, replicates=1, output=tmp_path / "p", scheduler="inline", storage=pg_url)
    assert result.facts["study"] == job["study"] and (tmp_path / "p" / "hubverse.csv").is_file()


@pytest.mark.slow
def test_projection_page_renders_in_headless_chromium(age_run, tmp_path):
    import os

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed (scripts/test.sh installs Debian's chromium as root)")
        pytest.skip("chromium is not installed")
    out = tmp_path / "proj"
    project(age_run, AGE / "scenarios.yaml", draws=6, replicates=1, output=out, scheduler="inline")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--window-size=1100,2400", f"--screenshot={shot}", (out / "projection.html").as_uri()],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    assert [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln] == []
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # figures and tables drawn, not a blank page
