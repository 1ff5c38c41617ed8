"""report.html of real runs (SQLite and PostgreSQL): parsed, checked against the job and
results.json, rendered by headless Chromium; plus the pure timing and seed functions."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import unique
from modelops_calabaria.calibration.seeds import replicate_seeds
from modelops_calabaria.reporting.simulate import fresh_seeds
from modelops_calabaria.reporting.timing import busy_wall, in_flight, lanes, speedup

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "seir"
CLI = [sys.executable, "-m", "modelops_calabaria"]
EXPECTED_FIGURES = {"figure-fit-fit-1", "figure-convergence-convergence", "figure-parameters-traces",
                    "figure-parameters-pairs", "figure-parameters-profiles", "figure-targets-targets",
                    "figure-timeline-timeline"}
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def small_job(tmp_path: Path, study: str, trials: int = 30) -> Path:
    job = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
    job.update(study=study, max_trials=trials, n_replicates=2, report={"replicates": 8, "others": 2})
    job["targets"][0]["data"] = str(EXAMPLE / "cases.csv")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


class ReportParser(HTMLParser):
    """Collects figures, images, tables (by id, with data-key/data-value rows), links and scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[str] = []
        self.images: list[dict[str, str]] = []
        self.refs: list[str] = []
        self.scripts = 0
        self.tables: dict[str, list[list[str]]] = {}
        self.keyed: dict[str, str] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self.figures.append(a.get("id", ""))
        if tag == "img":
            self.images.append(a)
        for key in ("src", "href"):
            if a.get(key):
                self.refs.append(a[key])
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.scripts += 1
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
        if tag == "tr" and self._table:
            self._row = []
            if "data-key" in a:
                self.keyed[a["data-key"]] = a["data-value"]
        if tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        if tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        if tag == "table":
            self._table = None


def not_blank(png: bytes) -> None:
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    assert img.shape[0] > 100 and img.shape[1] > 100
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    assert colours > 8 and img.std() > 10, (colours, img.std())


STUDY_KEYS = {"study", "best_loss", "best_trial", "trials.total", "trials.COMPLETE", "trials.FAIL", "trials.RUNNING"}


def check_report(run: Path, report: Path, from_run_dir: bool = True) -> ReportParser:
    """Check one report; a report made from the study alone (no run directory) is
    compared with results.json on what the study itself holds."""
    text = report.read_text(encoding="utf-8")
    p = ReportParser()
    p.feed(text)
    assert EXPECTED_FIGURES <= set(p.figures), set(p.figures)
    # self-contained: every reference is inline data or an in-page anchor; no script, no network
    assert p.scripts == 0
    assert all(r.startswith(("data:image/png;base64,", "#")) for r in p.refs), [r[:60] for r in p.refs]
    assert "http://" not in text and "https://" not in text
    for img in p.images:
        png = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        not_blank(png)
        assert (report.parent / img["data-file"]).read_bytes() == png  # the same figure as a PNG beside the report
    # the fit figure's observed points are the job's data
    with (EXAMPLE / "cases.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    fit = p.tables["data-fit-1"]
    assert fit[0][:2] == ["week", "observed:cases"]  # the stored job keeps the index column's name
    assert [int(r[0]) for r in fit[1:]] == [int(r["week"]) for r in rows]
    assert [float(r[1]) for r in fit[1:]] == [float(r["cases"]) for r in rows]
    median = np.array([float(r[fit[0].index("median:cases")]) for r in fit[1:]])
    observed = np.array([float(r["cases"]) for r in rows])
    assert np.corrcoef(median, observed)[0, 1] > 0.8  # the best trial's fresh replicates follow the data
    # the facts table says what results.json says
    results = json.loads((run / "results.json").read_text())
    compared = 0
    for key, raw in p.keyed.items():
        value: object = results
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and key != "storage" and (from_run_dir or key in STUDY_KEYS):
            assert json.loads(raw) == value, key
            compared += 1
    assert compared >= (10 if from_run_dir else len(STUDY_KEYS) - 1), p.keyed
    assert {"wall_time_s", "trials_per_minute", "speedup", "best_loss", "trials.total"} <= set(p.keyed)
    return p


@pytest.fixture(scope="module")
def sqlite_run(tmp_path_factory, dask_cluster) -> Path:
    tmp = tmp_path_factory.mktemp("sqlite-run")
    job = small_job(tmp, unique("report"))
    proc = cli("calibrate", str(job), "--output", str(tmp / "run"), "--scheduler", dask_cluster.scheduler_address,
               "--log-format", "json", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report written" in proc.stdout
    return tmp / "run"


@pytest.mark.slow
def test_calibrate_writes_a_self_contained_report(sqlite_run):
    p = check_report(sqlite_run, sqlite_run / "report.html")
    results = json.loads((sqlite_run / "results.json").read_text())
    assert results["speedup"] > 0.5  # two loops on a shared machine overlap their trials
    best = [r for r in p.tables["best-params"][1:]]
    assert {r[0] for r in best} == {"beta", "reporting_rate"}


@pytest.mark.slow
def test_the_fit_shows_the_reported_best_when_re_evaluation_chose_another(sqlite_run, tmp_path, dask_cluster):
    run = tmp_path / "run"
    shutil.copytree(sqlite_run, run)
    rows = list(csv.DictReader(io.StringIO((run / "trials.csv").read_text())))
    complete = sorted((float(r["loss"]), int(r["number"])) for r in rows if r["state"] == "COMPLETE")
    in_sample, chosen = complete[0][1], complete[-1][1]  # the worst completed trial, as if fresh seeds had picked it
    # The study's stored choice (reporting/best.py), as if fresh seeds had picked the worst trial:
    # the report names the study's best as every command does, not whatever results.json says.
    from modelops_calabaria.backend.factory import open_store
    from modelops_calabaria.reporting.best import store
    from modelops_calabaria.storage import parse_storage_url

    backend = open_store(parse_storage_url(f"sqlite:///{run / 'study.db'}"), 1)
    try:
        sid = backend.study_id(json.loads((run / "results.json").read_text())["study"])
        store(backend, sid, backend.trials(sid), {"best_trial": chosen, "selected_by": "reevaluation"})
    finally:
        backend.close()
    proc = cli("report", str(run), "--scheduler", dask_cluster.scheduler_address, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (run / "report.html").read_text(encoding="utf-8")
    assert f"fresh replicates of trial {chosen} " in text
    assert f"fresh replicates of trial {in_sample} " not in text


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(900)  # three CLI runs, each starting a cluster
def test_report_of_a_postgresql_study_by_name(tmp_path, pg_url, dask_cluster):
    study = unique("report-pg")
    job = small_job(tmp_path, study, trials=20)
    run = tmp_path / "run"
    proc = cli("calibrate", str(job), "--output", str(run), "--storage", pg_url, "--scheduler",
               dask_cluster.scheduler_address, "--log-format", "json", "--no-report", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (run / "report.html").exists()  # --no-report
    out = tmp_path / "elsewhere" / "r.html"
    rep = cli("report", "--study", study, "--storage", pg_url, "--output", str(out), "--scheduler", "inline",
              "--local-workers", "2", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "optuna-dashboard 'postgresql+psycopg2://" in rep.stdout  # the form Optuna's own tools accept
    check_report(run, out, from_run_dir=False)
    # the run directory of a PostgreSQL run, with the storage given again (results.json masks passwords)
    again = cli("report", str(run), "--storage", pg_url, "--replicates", "0", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    text = (run / "report.html").read_text()
    assert "no re-simulation" in text
    p = ReportParser()
    p.feed(text)
    assert json.loads(p.keyed["wall_time_s"]) == json.loads((run / "results.json").read_text())["wall_time_s"]


@pytest.mark.slow
def test_report_renders_in_headless_chromium(sqlite_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if CI:
            pytest.fail("chromium is not installed (scripts/test.sh installs Debian's chromium as root)")
        pytest.skip("chromium is not installed")

    def shoot(page: Path, name: str) -> tuple[bytes, list[str]]:
        shot = tmp_path / f"{name}.png"
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / ('profile-' + name)}",
             "--enable-logging=stderr", "--v=0", "--window-size=1100,2400", f"--screenshot={shot}", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
        return shot.read_bytes(), [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]

    # the detector sees a console error when there is one ...
    control = tmp_path / "control.html"
    control.write_text('<html><body><p>x</p><script>console.error("control-error")</script></body></html>')
    assert any("control-error" in ln for ln in shoot(control, "control")[1])
    # ... and the report has none, and draws its figures
    png, console = shoot(sqlite_run / "report.html", "report")
    assert console == []
    not_blank(png)
    (sqlite_run / "screenshot.png").write_bytes(png)


@pytest.mark.slow
def test_report_bad_inputs_are_one_line_and_create_nothing(tmp_path):
    missing = cli("report", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "file").write_text("x")
    db = tmp_path / "x.db"
    under_file = cli("report", "--study", "s", "--storage", f"sqlite:///{db}", "--output", str(tmp_path / "file" / "r.html"))
    assert under_file.returncode == 2 and "is a file" in under_file.stderr and "Traceback" not in under_file.stderr
    no_study = cli("report", "--study", "s", "--storage", f"sqlite:///{db}", "--output", str(tmp_path / "out" / "r.html"))
    assert no_study.returncode == 1 and "study 's' does not exist" in no_study.stderr
    assert not db.exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_report_failure_never_fails_the_calibration(tmp_path, scheduler):
    run = tmp_path / "run"
    (run / "report.html").mkdir(parents=True)  # where the report goes is a directory ...
    (run / "report.html" / "report.html").mkdir()  # ... holding a directory of that name: it cannot be written
    job = small_job(tmp_path, unique("report-fail"), trials=6)
    proc = cli("calibrate", str(job), "--output", str(run), "--scheduler", scheduler, "--log-format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "report not written" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert json.loads((run / "results.json").read_text())["trials"]["COMPLETE"] >= 1


# -- pure functions: known answers ------------------------------------------------------------------


def test_speedup_and_wall_time_of_known_intervals():
    # two loops back to back for 10 s, then a 5 s gap (between runs), then one 2 s trial
    start = np.array([0.0, 0.0, 5.0, 5.0, 15.0])
    end = np.array([5.0, 5.0, 10.0, 10.0, 17.0])
    assert busy_wall(start, end) == pytest.approx(12.0)
    assert speedup(start, end) == pytest.approx(22.0 / 12.0)
    assert speedup(np.array([np.nan]), np.array([np.nan])) is None
    times, count = in_flight(start, end)
    assert count.max() == 2 and count[-1] == 0
    lane = lanes(start, end)
    assert sorted(lane[:2]) == [0, 1] and sorted(lane[2:4]) == [0, 1] and lane.max() == 1


def test_lanes_never_overlap():
    rng = np.random.default_rng(3)
    start = rng.uniform(0, 100, 500)
    end = start + rng.exponential(3, 500)
    lane = lanes(start, end)
    for r in np.unique(lane):
        sel = np.argsort(start[lane == r])
        s, e = start[lane == r][sel], end[lane == r][sel]
        assert (s[1:] >= e[:-1]).all()
    # as few rows as the most trials ever running at once
    assert lane.max() + 1 == in_flight(start, end)[1].max()


def test_fresh_seeds_are_none_of_the_trials_seeds():
    seeds = fresh_seeds(7, 20)
    assert len(set(seeds)) == 20 and fresh_seeds(7, 20) == seeds and fresh_seeds(8, 20) != seeds
    used = set(replicate_seeds(7, 50, 0, "common"))
    for trial in range(2000):
        used.update(replicate_seeds(7, 20, trial, "independent"))
    assert used.isdisjoint(seeds)


def test_profile_is_the_best_loss_per_bin_and_running_best_skips_failures():
    from modelops_calabaria.reporting.figures import profile, running_best

    values = np.array([0.05, 0.15, 0.12, 0.55, 0.95, 0.91])
    loss = np.array([5.0, 4.0, 3.0, 7.0, 1.0, 2.0])
    centres, best = profile(values, loss, bins=3)
    assert centres == pytest.approx([0.2, 0.5, 0.8]) and best.tolist() == [3.0, 7.0, 1.0]
    _, best_max = profile(values, loss, bins=3, minimize=False)
    assert best_max.tolist() == [5.0, 7.0, 2.0]
    assert np.allclose(running_best(np.array([np.nan, 3.0, np.nan, 4.0, 1.0])), [np.nan, 3, 3, 3, 1], equal_nan=True)


def test_profile_threshold_is_chi2_half_for_likelihood_losses_only(tmp_path):
    from modelops_calabaria.job import job_from_dict
    from modelops_calabaria.reporting.figures import profile_interval
    from modelops_calabaria.reporting.report import profile_threshold

    base = {"study": "s", "model": "sir", "parameters": {"beta": {"lower": 0.1, "upper": 1}},
            "targets": [{"name": "y", "output": "cases", "data": {"t": [0, 1], "cases": [1, 2]}, "score": "poisson_nll"}]}
    step, note = profile_threshold(job_from_dict(base, base_dir=tmp_path))
    assert step == pytest.approx(1.920729, abs=1e-6) and "95 %" in note  # chi2.ppf(0.95, 1) / 2
    base["targets"][0]["score"] = "sse"
    step, note = profile_threshold(job_from_dict(base, base_dir=tmp_path))
    assert step is None and "not every target's score is a log-likelihood" in note
    base["targets"][0].update(score="poisson_nll", weight=2.0)
    assert profile_threshold(job_from_dict(base, base_dir=tmp_path))[0] is None
    # the interval: bins within the step of the lowest
    x = np.arange(10.0)
    y = (x - 4.0) ** 2  # lowest 0 at 4; within 1.92: 3, 4, 5
    assert profile_interval(x, y, 1.92) == (3.0, 5.0)


def test_trials_in_flight_peak_is_the_facts_number():
    """The timeline's curve and the facts' 'most trials in flight' are one computation:
    two loops, each asking its next trial during the tail of its current one."""
    start = np.array([0.0, 0.0, 0.9, 0.95, 2.0])
    end = np.array([1.0, 1.0, 2.0, 2.1, 3.0])
    _, count = in_flight(start, end)
    assert count.max() == 4  # 0.95 .. 1.0: trials 0, 1, 2, 3
    assert lanes(start, end).max() + 1 == 4


def test_fit_panels_and_breaks_of_a_keyed_target():
    """One panel per age group in data order; rows absent from the data break the lines."""
    from modelops_calabaria.reporting.fit import FitData, segments

    dates = np.array(["2024-01-07", "2024-01-14", "2024-01-28", "2024-01-07", "2024-01-14"], dtype="datetime64[D]")
    ages = np.array(["65+", "65+", "65+", "0-17", "0-17"], dtype=object)
    obs = np.array([[1.0], [np.nan], [3.0], [4.0], [5.0]])
    fit = FitData("adm", None, ["admissions"], obs, None, keys={"date": dates, "age_group": ages}, time_key="date", x_label="date")
    assert fit.dated and [(title, rows.tolist()) for title, rows, _ in fit.panels()] == [("65+", [0, 1, 2]), ("0-17", [3, 4])]
    assert [s.tolist() for s in segments(fit.x, np.array([0, 1, 2]))] == [[0, 1], [2]]  # no 2024-01-21 row
    assert not fit.wants_log()
    fit.observed[0, 0] = 1000.0
    assert fit.wants_log()  # 1 .. 1000: three decades


def test_gap_note_counts_cells_and_dates_apart(tmp_path):
    from modelops_calabaria.job import job_from_dict
    from modelops_calabaria.targets.evaluate import compile_targets, gap_note

    dates = [f"2024-01-{d:02d}" for d in (7, 14, 21)]
    data = {"date": [d for d in dates for _ in range(3)], "age_group": ["a", "b", "c"] * 3,
            "y": [1, None, 2, None, None, 3, 4, 5, 6]}
    job = job_from_dict({"study": "s", "model": "sir", "parameters": {"beta": {"lower": 0.1, "upper": 1}},
                         "targets": [{"name": "t", "output": "cases", "data": data, "on": ["date", "age_group"],
                                      "score": "poisson_nll"}]}, base_dir=tmp_path)
    target = compile_targets(job)[0]
    assert gap_note(job.targets[0], target.observed) == "target t: 3 of 9 cells have no data, on 2 of 3 dates"
