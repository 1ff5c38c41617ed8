"""The feature matrix: every command × every target form × every model output form.

The cases are generated, not listed: :data:`TARGET_FORMS` (how the data are keyed
and scored), :data:`OUTPUT_FORMS` (what the model returns, tests/support/forms.py)
and :data:`COMMANDS` are crossed in code.

- Every (target form, output form) pair the output form can express is scored:
  ``validate`` runs the model and scores its output against the target (a dry run);
  a pair it cannot express must be refused by ``validate`` in one line, exit 2 (one
  such pair per output form).
- Every command runs on every target form, on that form's *lead* pair (the compatible
  output form used least so far, so that every output form leads somewhere), through
  the real CLI in subprocesses on the real Dask cluster of the ``dask_cluster`` fixture
  with tiny budgets, one calibration shared by the commands that read its run
  directory: ``validate``, ``calibrate`` with its report (opened in headless
  Chromium), ``report``, ``simulate --best --plot`` / ``--params``, ``status``, and a
  ``worker`` that joins the calibration's study while it runs.

The data are drawn from tests/support/forms.py's model at known parameters
(``forms.TRUE``), written as real CSV / Parquet files. Adding a form to one of the
lists adds its cases. Failures owned elsewhere are ``xfail(strict=True)`` with the
owning area named (:data:`KNOWN`).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"
sys.path.insert(0, str(SUPPORT))
import forms  # noqa: E402

CLI = [sys.executable, "-m", "modelops_calabaria"]
OUTPUT_FORMS = forms.OUTPUT_FORMS
COMMANDS = ("validate", "calibrate", "report", "simulate_best", "simulate_params", "status", "worker")


@dataclass(frozen=True)
class TargetForm:
    """One way of keying and scoring observed admissions, and what the model must return for it.

    grain/time/groups/columns: the model's output (forms.long_table); ``target``: the
    job's target fields besides name/output/data; ``observe``: how the observed table
    is drawn from the truth; ``fmt``: csv or parquet.
    """

    name: str
    grain: str
    time: str
    groups: tuple[str, ...] = ()
    columns: tuple[str, ...] = ("admissions",)
    target: dict[str, Any] = field(default_factory=dict)
    observe: str = "same"  # same | shift+2 | shift+3 | shift-3 | weekly_sum
    blanks: tuple[int, ...] = ()  # weeks with blank cells
    late: int = 0  # the 0-17 group is reported from this week on (absent rows before)
    fmt: str = "csv"
    extra_target: bool = False  # a second target (65+ only, sse, weight 0.01) on the same output

    @property
    def keyed(self) -> bool:
        return "on" in self.target


NB = {"kind": "negbin_nll", "dispersion": 20}
TARGET_FORMS = (
    TargetForm("rows", "weekly", "row", target={"index_column": "week", "score": "poisson_nll"}),
    TargetForm("rows_wide", "weekly", "row", columns=tuple(forms.AGES), target={"index_column": "week", "score": "poisson_nll"}),
    TargetForm("exact", "weekly", "week", ("age_group",), target={"on": ["week", "age_group"], "match": "exact", "score": "poisson_nll"}),
    *(TargetForm(f"asof_{m}", "weekly", "date", target={"on": ["date"], "match": m, "score": "poisson_nll"}, observe=shift)
      for m, shift in (("nearest", "shift+2"), ("backward", "shift+3"), ("forward", "shift-3"))),
    TargetForm("accumulate", "daily", "day", ("age_group",), observe="weekly_sum",
               target={"on": ["date", "age_group"], "match": "accumulate", "start_date": "2024-01-01", "score": NB}),
    TargetForm("several_keys", "weekly", "date", ("age_group", "region"),
               target={"on": ["date", "age_group", "region"], "score": "poisson_nll"}),
    TargetForm("blanks", "weekly", "week", ("age_group",), blanks=(7, 12, 20),
               target={"on": ["week", "age_group"], "score": "poisson_nll"}),
    TargetForm("late_group", "daily", "day", ("age_group",), observe="weekly_sum", blanks=(9, 15, 22), late=5,
               target={"on": ["date", "age_group"], "match": "accumulate", "start_date": "2024-01-01", "score": NB}),
    TargetForm("parquet", "weekly", "week", ("age_group",), fmt="parquet",
               target={"on": ["week", "age_group"], "score": "poisson_nll"}),
    TargetForm("several_targets", "weekly", "week", ("age_group",), extra_target=True,
               target={"on": ["week", "age_group"], "score": "poisson_nll", "weight": 1.0}),
)


def compatible(t: TargetForm, output: str) -> bool:
    """Whether an output form can carry what target form ``t`` needs."""
    if output == "array1d":
        return not t.keyed and len(t.columns) == 1
    if output == "array2d":
        return not t.keyed
    if output == "mapping":
        return t.keyed
    if output == "frame_dates":  # dates (or day numbers shown as dates) as the index; by row without keys
        return t.time in ("date", "day") or not t.keyed
    if output == "frame_multiindex":  # keyed: its levels are the keys; by row index: its rows
        return True
    raise ValueError(output)


PAIRS = [(t, o) for t in TARGET_FORMS for o in OUTPUT_FORMS if compatible(t, o)]
REFUSED = [(t, o) for t in TARGET_FORMS for o in OUTPUT_FORMS if not compatible(t, o)]


def _leads() -> dict[str, str]:
    """The output form each target form's commands run on: the compatible form used least
    so far (ties: list order), so that the lead pairs together use every output form."""
    used = dict.fromkeys(OUTPUT_FORMS, 0)
    leads = {}
    for t in TARGET_FORMS:
        options = [o for o in OUTPUT_FORMS if compatible(t, o)]
        pick = min(options, key=lambda o: (used[o], OUTPUT_FORMS.index(o)))
        used[pick] += 1
        leads[t.name] = pick
    return leads


LEADS = _leads()


def lead_output(t: TargetForm) -> str:
    return LEADS[t.name]


def test_the_design_covers_every_form_and_command():
    """Generated from the lists: every target form has a pair, every output form is used,
    and every output form leads (runs every command) on some target form."""
    assert {t.name for t, _ in PAIRS} == {t.name for t in TARGET_FORMS}
    assert {o for _, o in PAIRS} == set(OUTPUT_FORMS)
    assert {lead_output(t) for t in TARGET_FORMS} == set(OUTPUT_FORMS)
    assert len(PAIRS) + len(REFUSED) == len(TARGET_FORMS) * len(OUTPUT_FORMS)



# -- the long form of every output form (pure, fast) ----------------------------------------------

@pytest.mark.parametrize("output", OUTPUT_FORMS)
def test_to_long_reads_every_output_form(output):
    """to_long of each form gives back the long table the form was packed from, for the output
    of every target form: the same values and, where the form carries keys, the same keys."""
    for t in TARGET_FORMS:
        _same_long_table(t, output)


def _same_long_table(t: TargetForm, output: str) -> None:
    from modelops_calabaria.targets.longform import to_long

    keys, values = forms.long_table(forms.TRUE, 3, grain=t.grain, time=t.time, groups=t.groups, columns=t.columns)
    raw = forms.pack(output, keys, values)
    long = to_long(raw, name="admissions", key_columns=list(keys), value_columns=list(values) if output == "array2d" else ())
    expected = np.column_stack(list(values.values()))
    if output == "array1d":
        expected = expected[:, :1]
    assert np.array_equal(long.values, expected.reshape(-1))
    m = expected.shape[1]
    assert (long.column is not None) == (m > 1)
    if output in ("array1d", "array2d"):
        assert np.array_equal(long.keys["index"], np.repeat(np.arange(len(expected), dtype=float), m))
        return
    for name, key in keys.items():
        got = long.keys["date" if output == "frame_dates" and name == next(iter(keys)) else name]
        if output == "frame_dates" and name == next(iter(keys)) and not np.issubdtype(key.dtype, np.datetime64):
            key = forms.START + key.astype(int).astype("timedelta64[D]")  # numbers the form shows as dates
        want = np.repeat(key, m)
        if np.issubdtype(key.dtype, np.datetime64):
            assert long.kinds[got is not None and ("date" if output == "frame_dates" and name == next(iter(keys)) else name)] == "date"
            assert np.array_equal(got.astype("datetime64[D]"), want.astype("datetime64[D]"))
        else:
            assert [str(v) for v in got] == [str(v) for v in want] or np.allclose(got.astype(float), want.astype(float))
    records = long.records()
    assert list(records)[-1] == long.value_name and len(records[long.value_name]) == len(long)


def test_to_long_refuses_shapes_that_are_not_tables():
    from modelops_calabaria.targets.longform import LongFormError, to_long

    with pytest.raises(LongFormError, match="output 'x'.*1-D or 2-D"):
        to_long(np.zeros((2, 2, 2)), name="x")
    with pytest.raises(LongFormError, match="one length"):
        to_long({"date": ["2024-01-01"], "y": [1.0, 2.0]}, name="x")
    with pytest.raises(LongFormError, match="no numeric value column"):
        to_long({"date": ["2024-01-01"], "group": ["a"]}, name="x")

# -- data and jobs -------------------------------------------------------------------------------

DATA_SEED = 11


def _week_of(t: TargetForm, keys: dict[str, np.ndarray]) -> np.ndarray:
    first = next(iter(keys.values()))
    if np.issubdtype(first.dtype, np.datetime64):
        return ((first - forms.START).astype(int) - 6) // 7
    return first.astype(int)


def observed(t: TargetForm) -> dict[str, list]:
    """The observed table of target form ``t``: a Poisson draw around the truth, as file columns."""
    time = "date" if t.time in ("date", "day") else ("week" if t.time == "week" else "row")
    keys, values = forms.long_table(forms.TRUE, DATA_SEED, grain="weekly", time=time, groups=t.groups, columns=t.columns)
    week = _week_of(t, keys)
    name = next(iter(keys))
    if t.observe.startswith("shift"):
        keys[name] = keys[name] + int(t.observe[5:])
    keep = np.ones(len(week), dtype=bool)
    if t.late:
        keep &= ~((keys.get("age_group", np.array([""] * len(week))) == "0-17") & (week < t.late))
    table: dict[str, list] = {}
    for k, v in keys.items():
        table[k] = [str(x) if np.issubdtype(v.dtype, np.datetime64) else (int(x) if k in ("week", "date") else x)
                    for x in v[keep]]
    blank = np.isin(week, t.blanks)[keep]
    for c, v in values.items():
        table[c] = [None if b else int(x) for x, b in zip(v[keep], blank)]
    return table


def write_table(table: dict[str, list], path: Path) -> None:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(table), path)
        return
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(table))
        for row in zip(*table.values()):
            w.writerow(["" if v is None else v for v in row])


def write_job(t: TargetForm, output: str, folder: Path, study: str) -> Path:
    """Data file(s) and job.yaml of one (target form, output form) pair in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    table = observed(t)
    data = folder / f"admissions.{t.fmt}"
    write_table(table, data)
    target = {"name": "admissions", "output": "admissions", "data": data.name, **t.target}
    targets = [target]
    if t.extra_target:
        older = {k: [v for v, a in zip(col, table["age_group"]) if a == "65+"] for k, col in table.items()}
        write_table(older, folder / "older.csv")
        targets.append({"name": "older", "output": "admissions", "data": "older.csv", "on": t.target["on"],
                        "value_columns": ["admissions"], "score": "sse", "weight": 0.01, "aggregation": "mean_of_scores"})
    job = {
        "study": study, "model": f"{SUPPORT / 'forms.py'}:model",
        "parameters": {k: {"lower": lo, "upper": hi} for k, (lo, hi) in forms.RANGES.items()},
        "fixed": {"grain": t.grain, "time": t.time, "groups": ",".join(t.groups), "columns": ",".join(t.columns), "form": output},
        "targets": targets, "n_replicates": 2, "max_trials": 6, "seed": 5, "sampler": "random",
        "start": [{"scale": 20.0, "peak": 80.0}], "report": {"replicates": 3, "others": 1},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def cli(*args: str, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kw)


# -- running the matrix --------------------------------------------------------------------------

# Failures whose fix belongs to another area: (target form, output form or "*", command or "*") -> reason.
KNOWN: dict[tuple[str, str, str], str] = {
}


def known(target: str, output: str, command: str) -> str | None:
    for (t, o, c), reason in KNOWN.items():
        if t == target and o in (output, "*") and c in (command, "*"):
            return reason
    return None


def _mark(target: str, output: str, command: str) -> list[Any]:
    reason = known(target, output, command)
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


@dataclass
class PairRun:
    """The commands run on one (target form, output form) pair, and where."""

    folder: Path
    job: Path
    procs: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)

    @property
    def run(self) -> Path:
        return self.folder / "run"


def _run_pair(t: TargetForm, output: str, root: Path, scheduler: str) -> PairRun:
    folder = root / f"{t.name}-{output}"
    pr = PairRun(folder, write_job(t, output, folder, f"m-{t.name}-{output}".replace("_", "-")))
    sched = ["--scheduler", scheduler]
    lead = lead_output(t) == output
    pr.procs["validate"] = cli("validate", str(pr.job))  # its dry run scores the output against the target
    if not lead:
        return pr
    # worker: joins the study (once the calibration has created it) and works on it until the budget is spent
    study = yaml.safe_load(pr.job.read_text())["study"]
    worker = subprocess.Popen([*CLI, "worker", "--study", study, "--storage", f"sqlite:///{pr.run / 'study.db'}", *sched,
                               "--wait", "300", "-o", str(folder / "worker")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pr.procs["calibrate"] = cli("calibrate", str(pr.job), "-o", str(pr.run), *sched)
    out, err = worker.communicate(timeout=300)
    pr.procs["worker"] = subprocess.CompletedProcess(worker.args, worker.returncode, out, err)
    if pr.procs["calibrate"].returncode != 0:
        return pr
    pr.procs["report"] = cli("report", str(pr.run), "--replicates", "0", "-o", str(folder / "bare" / "report.html"))
    sim = folder / ("sim.parquet" if t.fmt == "parquet" else "sim")
    pr.procs["simulate_best"] = cli("simulate", str(pr.job), "--best", str(pr.run), "--replicates", "3", "--plot", "-o", str(sim))
    (folder / "truth.yaml").write_text(yaml.safe_dump(forms.TRUE))
    pr.procs["simulate_params"] = cli("simulate", str(pr.job), "--params", str(folder / "truth.yaml"), "--replicates", "2",
                                      "-o", str(folder / "truth"))
    pr.procs["status"] = cli("status", str(pr.run))
    return pr


@pytest.fixture(scope="module")
def matrix(request, tmp_path_factory, dask_cluster) -> dict[tuple[str, str], PairRun]:
    """Every compatible pair validated (lead pairs: every command), three pairs at a time."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("matrix")
    needed = _pairs_of(request.session.items)  # a -k selection runs only the pairs its tests read
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {(t.name, o): pool.submit(_run_pair, t, o, root, dask_cluster.scheduler_address)
                   for t, o in PAIRS if (t.name, o) in needed}
        return {k: f.result() for k, f in futures.items()}


def _pairs_of(items: list[Any]) -> set[tuple[str, str]]:
    pairs = set()
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "matrix" not in getattr(item, "fixturenames", ()) or "target" not in params:
            continue
        t = next(x for x in TARGET_FORMS if x.name == params["target"])
        pairs.add((t.name, params.get("output", lead_output(t))))
    return pairs


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (proc.args, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("target,output", [pytest.param(t.name, o, id=f"{t.name}-{o}", marks=_mark(t.name, o, "validate"))
                                           for t, o in PAIRS])
def test_every_pair_is_scored(matrix, target, output):
    """validate's dry run runs the model at the midpoint and scores its output against the target."""
    proc = matrix[(target, output)].procs["validate"]
    _ok(proc)
    assert "dry run at the midpoint: admissions" in proc.stdout, proc.stdout


REFUSED_ONE_EACH = [next((t, o) for t, o in REFUSED if o == out) for out in OUTPUT_FORMS if any(o == out for _, o in REFUSED)]


@pytest.mark.slow
@pytest.mark.parametrize("target,output", [pytest.param(t.name, o, id=f"{t.name}-{o}", marks=_mark(t.name, o, "validate"))
                                           for t, o in REFUSED_ONE_EACH])
def test_a_pair_the_output_cannot_express_is_refused_in_one_line(tmp_path, target, output):
    t = next(x for x in TARGET_FORMS if x.name == target)
    proc = cli("validate", str(write_job(t, output, tmp_path, "refused")))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()  # one line, then at most a hint or the field to fix, indented
    assert lines[0].startswith("error:") and "admissions" in lines[0] and "Traceback" not in proc.stderr, lines
    assert len(lines) <= 2 and all(ln.startswith("  ") for ln in lines[1:]), lines


def _lead_cases() -> list[Any]:
    return [pytest.param(t.name, c, id=f"{t.name}-{c}", marks=_mark(t.name, lead_output(t), c))
            for t in TARGET_FORMS for c in COMMANDS]


def _chromium_shot(page: Path, folder: Path) -> bytes:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed")
    shot = folder / "shot.png"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={folder / 'profile'}", "--window-size=1100,2400", f"--screenshot={shot}",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    return shot.read_bytes()


def _check_report(t: TargetForm, report: Path, replicated: bool) -> None:
    from test_report import ReportParser, not_blank

    p = ReportParser()
    p.feed(report.read_text(encoding="utf-8"))
    table = p.tables["data-fit-1"]
    keys = t.target.get("on") or [table[0][0]]  # the index column: see test_the_fit_names_the_index_column_as_the_job_does
    assert table[0][: len(keys)] == keys, table[0]
    obs = observed(t)
    assert len(table) - 1 == len(next(iter(obs.values())))
    blanks = sum(v is None for c in t.columns for v in obs[c])
    assert sum(r[len(keys) + j] == "-" for r in table[1:] for j in range(len(t.columns))) == blanks
    figs = set(p.figures)
    assert "figure-fit-fit-1" in figs
    if replicated:
        best = json.loads((report.parent / "results.json").read_text())["best_trial"]
        assert ("figure-fit-fit-1-before-after" in figs) == (best != 0)  # the first trial against the best
        assert "median:" + t.columns[0] in table[0]
    for img in p.images:
        import base64

        not_blank(base64.b64decode(img["src"].split(",", 1)[1]))


@pytest.mark.slow
@pytest.mark.parametrize("target,command", _lead_cases())
def test_every_command_on_every_target_form(matrix, target, command, tmp_path):
    t = next(x for x in TARGET_FORMS if x.name == target)
    pr = matrix[(target, lead_output(t))]
    if command == "calibrate":
        _ok(pr.procs["calibrate"])
        assert "report not written" not in pr.procs["calibrate"].stderr
        results = json.loads((pr.run / "results.json").read_text())
        assert results["trials"]["COMPLETE"] == 6 and set(results["best_params"]) == set(forms.RANGES)
        _check_report(t, pr.run / "report.html", replicated=True)
        from test_report import not_blank

        not_blank(_chromium_shot(pr.run / "report.html", tmp_path))
        return
    proc = pr.procs[command]
    _ok(proc)
    if command == "validate":
        assert "valid." in proc.stdout and "dry run at the midpoint" in proc.stdout
    elif command == "report":  # calibrate's own report re-simulated; this one (--replicates 0) draws the data alone
        _check_report(t, pr.folder / "bare" / "report.html", replicated=False)
    elif command == "simulate_best":
        _check_simulation(t, lead_output(t), pr.folder, replicates=3, plot=True)
    elif command == "simulate_params":
        _check_simulation(t, lead_output(t), pr.folder, replicates=2, plot=False)
    elif command == "status":
        assert "trials:" in proc.stdout and "COMPLETE 6" in proc.stdout.replace(":", "")
    elif command == "worker":  # it shared the budget with the calibration: together, every trial completed
        _ok(pr.procs["calibrate"])
        results = json.loads((pr.run / "results.json").read_text())
        assert results["trials"]["COMPLETE"] == 6 and results["trials"]["FAIL"] == 0


def _read_simulation(path: Path) -> dict[str, list]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return {k: [str(v) if v is not None else "" for v in col] for k, col in pq.read_table(path).to_pydict().items()}
    with path.open() as fh:
        rows = list(csv.reader(fh))
    return {h: [r[j] for r in rows[1:]] for j, h in enumerate(rows[0])}


def _check_simulation(t: TargetForm, output: str, folder: Path, replicates: int, plot: bool) -> None:
    """The written outputs carry the target's keys; at the true parameters they follow the truth."""
    if plot:
        from test_report import not_blank

        sim = folder / ("sim.parquet" if t.fmt == "parquet" else "sim")
        table = _read_simulation(sim if t.fmt == "parquet" else sim / "admissions.csv")
        png = (sim.parent if t.fmt == "parquet" else sim) / "fit-admissions.png"
        not_blank(png.read_bytes())
    else:
        table = _read_simulation(folder / "truth" / "admissions.csv")
    keys = t.target.get("on") or []
    if output in ("array1d", "array2d") and t.fmt != "parquet" and not plot or (output in ("array1d", "array2d") and not keys):
        index = t.target.get("index_column", "index")
        assert index in table, list(table)
        return
    header = list(table)
    assert header[:3] == ["replicate", "seed", "output"] and header[-1] == "value", header
    assert set(keys) <= set(header), (keys, header)
    assert sorted(set(table["replicate"])) == [str(r) for r in range(replicates)]
    if not plot:  # the true parameters: the simulated mean follows the truth cell by cell
        truth_keys, truth = forms.long_table(forms.TRUE, None, grain=t.grain, time=t.time, groups=t.groups, columns=t.columns)
        n = len(next(iter(truth.values()))) * len(truth)
        values = np.array([float(v) for v in table["value"]]).reshape(replicates, n).mean(axis=0)
        expected = np.column_stack(list(truth.values())).reshape(-1)
        assert np.corrcoef(values, expected)[0, 1] > 0.95
        if "date" in keys and t.time in ("date", "day"):
            assert table["date"][0].startswith("2024-01-0")  # dates, day numbers shown as dates


@pytest.mark.slow
@pytest.mark.parametrize("target", [pytest.param(t.name, id=t.name, marks=_mark(t.name, lead_output(t), "index_name"))
                                    for t in TARGET_FORMS])
def test_the_fit_names_the_index_column_as_the_job_does(matrix, target):
    """The fit table's first columns (and the x axis) carry the job's key / index column names."""
    from test_report import ReportParser

    t = next(x for x in TARGET_FORMS if x.name == target)
    p = ReportParser()
    p.feed((matrix[(target, lead_output(t))].run / "report.html").read_text(encoding="utf-8"))
    keys = t.target.get("on") or [t.target["index_column"]]
    assert p.tables["data-fit-1"][0][: len(keys)] == keys
