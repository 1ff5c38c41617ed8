"""Limits, strict parsing, URL checks, redaction and the results write path.

The bad-input corpus (tests/bad_inputs) drives the CLI one case at a time; these tests
check the mechanisms behind it directly (the loader, the limits, the redaction point),
the cases a corpus directory cannot hold (an 11 MiB job file, a full disk), and
redaction of awkward passwords through the real CLI.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from io import StringIO
from pathlib import Path

import numpy as np
import pytest

from modelops_calabaria.errors import ConfigurationError, JobSpecError, ResultsWriteError
from modelops_calabaria.job import (
    MAX_JOB_FILE_BYTES,
    MAX_JOB_VALUES,
    check_run_flags,
    count_values,
    job_from_dict,
    load_job,
)
from modelops_calabaria.redaction import redact, register_secrets_in
from modelops_calabaria.storage import parse_storage_url

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "seir" / "job.yaml"
CALABARIA = Path(sys.executable).with_name("calabaria")


def _job_text(**replace: str) -> str:
    text = EXAMPLE.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def _write_example(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    (tmp_path / "cases.csv").write_text((EXAMPLE.parent / "cases.csv").read_text())
    path = tmp_path / name
    path.write_text(text)
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALABARIA_") and k != "PARALLEL_TRIALS"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ---------------------------------------------------------------- loading and limits


def test_job_file_over_the_size_limit_is_refused_without_parsing(tmp_path):
    path = _write_example(tmp_path, _job_text() + "# " + "x" * MAX_JOB_FILE_BYTES + "\n")
    started = time.monotonic()
    with pytest.raises(JobSpecError, match="more than the limit of 10,485,760"):
        load_job(path)
    assert time.monotonic() - started < 5  # refused from its size, not after parsing 10 MiB


def test_alias_bomb_is_counted_without_expanding_it():
    leaf: list = ["lol"] * 10
    for _ in range(30):  # 10^31 values once expanded
        leaf = [leaf] * 10
    assert count_values({"fixed": leaf}, MAX_JOB_VALUES) == MAX_JOB_VALUES + 1
    assert count_values({"a": [1, 2, [3, 4]], "b": "x"}, MAX_JOB_VALUES) == 10  # 3 containers + 2 keys + 5 scalars


def test_yaml_job_values_are_counted_with_their_aliases(tmp_path):
    # 12 x 100 x 1,000 = 1.2 million values, from a 6 kB file: over the job's limit
    anchors = "  t1: &t1 [" + ", ".join(["1"] * 1000) + "]\n  t2: &t2 [" + ", ".join(["*t1"] * 100) + "]\n"
    text = _job_text(**{"fixed:\n": "fixed:\n" + anchors + "  many: [" + ", ".join(["*t2"] * 12) + "]\n"})
    with pytest.raises(JobSpecError, match="more than 1,000,000 values"):
        load_job(_write_example(tmp_path, text))


def test_recursive_yaml_alias_is_refused(tmp_path):
    text = _job_text(**{"fixed:\n": "fixed:\n  loop: &loop [1, *loop]\n"})
    with pytest.raises(JobSpecError, match="nested more than 32 levels"):
        load_job(_write_example(tmp_path, text))


def test_merge_keys_still_override_without_being_duplicates(tmp_path):
    text = _job_text(**{"fixed:\n": "defaults: &d {sigma: 0.1}\nfixed:\n  <<: *d\n"})
    # the anchor host 'defaults' is an unknown field; the merge itself is not a duplicate key
    with pytest.raises(JobSpecError) as info:
        load_job(_write_example(tmp_path, text))
    assert "defaults" in str(info.value) and "given twice" not in str(info.value)


@pytest.mark.parametrize("yaml_value, expected", [("1e-3", 0.001), ("2E-2", 0.02), ("+5.0e-2", 0.05), ("0", 0.0)])
def test_numbers_without_a_dot_are_numbers(tmp_path, yaml_value, expected):
    text = _job_text(**{"beta:           {lower: 0.2,": f"beta:           {{lower: {yaml_value},"})
    assert load_job(_write_example(tmp_path, text)).parameters["beta"].lower == expected


def test_numbers_stay_strict_but_whole_numbers_are_floats():
    base = json.loads(json.dumps(load_job(EXAMPLE).to_storable()))
    base["targets"][0]["data"] = str(EXAMPLE.parent / "cases.csv")
    ok = dict(base, parameters={"beta": {"lower": 0, "upper": 2}, "reporting_rate": {"lower": 0.1, "upper": 0.9}})
    assert job_from_dict(ok).parameters["beta"].upper == 2.0
    for field, value, message in (("n_replicates", True, "boolean true"), ("max_trials", "10", "got the string '10'"),
                                  ("max_trials", 10.0, "valid integer"), ("seed", 2**32, "4294967295")):
        with pytest.raises(JobSpecError, match=message):
            job_from_dict(dict(base, **{field: value}))
    with pytest.raises(JobSpecError, match="weight"):
        job_from_dict(dict(base, targets=[dict(base["targets"][0], weight=float("inf"))]))


def test_the_stored_job_round_trips_under_the_strict_spec():
    from modelops_calabaria.calibration.runner import prepare, storable_job
    from modelops_calabaria.settings import resolve_settings

    job = load_job(EXAMPLE)
    stored = json.loads(json.dumps(storable_job(prepare(job, resolve_settings()))))
    assert job_from_dict(stored).parameters == job.parameters


def test_flag_limits():
    check_run_flags(max_trials=1_000_000_000, extend=1, workers=256, n_replicates=390)
    for kwargs, message in (({"max_trials": 10**12}, "--max-trials must be at most"), ({"extend": 0}, "--extend must be >= 1"),
                            ({"workers": 100_000}, "--workers must be at most 256"),
                            ({"workers": 200, "n_replicates": 1000}, "200,000 simulations")):
        with pytest.raises(ConfigurationError, match=message):
            check_run_flags(**kwargs)


# ---------------------------------------------------------------- PostgreSQL URLs


@pytest.mark.parametrize("url, message", [
    ("postgresql://u:pw1234@h:notaport/db", "malformed host or port"),
    ("postgresql://u:pw1234@h:65536/db", "port 65536 is out of range"),
    ("postgresql://u:pw1234@h:0/db", "port 0 is out of range"),
    ("postgresql://u:pw1234@h/db?connect_timout=3", "did you mean 'connect_timeout'"),
    ("postgresql://u:pw1234@h/db?port=abc", "option port='abc' is not a port"),
    ("postgresql://u:pw1234@h_!x/db", "malformed host"),
    ("postgresql://u:pw1234@/db", "has no host"),
    ("postgres://u:pw@1234@h/db", "raw '@'"),
])
def test_malformed_postgresql_urls_are_refused_without_the_password(url, message):
    with pytest.raises(ConfigurationError, match=message) as info:
        parse_storage_url(url)
    assert "pw1234" not in str(info.value) and "pw@1234" not in str(info.value)


@pytest.mark.parametrize("url", [
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://u:p%40ss@db.example.org/x?sslmode=require&connect_timeout=5&application_name=c",
    "postgresql://u:pw@[::1]:5432/db",
    "postgresql:///db?host=/var/run/postgresql",
    "postgresql://u:pw@h1,h2/db?target_session_attrs=read-write",
    "postgresql://u:pa/ss:x@h:5432/db",  # SQLAlchemy reads this password as 'pa/ss:x'
])
def test_good_postgresql_urls_are_accepted(url):
    assert parse_storage_url(url).kind == "postgresql"


# ---------------------------------------------------------------- redaction


AWKWARD = ["p@ss w0rd", "pa ss:wd/x", "q%uo't\"e", "sl/ash@at", "x@y@z!9", "per%40cent"]


@pytest.mark.parametrize("password", AWKWARD)
def test_redact_masks_awkward_passwords_in_urls_and_dsns(password):
    texts = [f"cannot open postgresql+psycopg2://user:{password}@db.internal:5432/calib: refused",
             f"host=db user=u password='{password}' dbname=x",
             f'{{"password": "{password}"}}']
    for text in texts:
        out = redact(text)
        for piece in {password, *password.replace("@", " ").replace("/", " ").replace(":", " ").split()}:
            if len(piece) >= 3:
                assert piece not in out, (text, out)
    assert redact("postgresql://h:5432/db and tcp://10.0.0.1:8786") == "postgresql://h:5432/db and tcp://10.0.0.1:8786"


def test_a_registered_password_is_masked_anywhere():
    register_secrets_in("postgresql://u:Zq9 w@rd/x%25@db:5432/x")
    assert redact("first line of a file: Zq9 w@rd/x% and more") == "first line of a file: *** and more"
    assert "Zq9" not in redact("Zq9 w@rd/x%25 encoded")


def test_logging_pipeline_and_library_loggers_redact(tmp_path):
    from modelops_calabaria.logging import configure_logging, get_logger

    stream = StringIO()
    configure_logging("json", stream=stream)
    get_logger("test").info("opening", storage="postgresql://u:Vb7 x@y@db:5432/x")
    handler = logging.StreamHandler(buffer := StringIO())
    optuna_logger = logging.getLogger("optuna")
    optuna_logger.addHandler(handler)
    try:
        configure_logging("json", stream=stream)  # installs the filter on the handlers present
        optuna_logger.warning("storage %s failed", "postgresql://u:Vb7 x@y@db:5432/x")
    finally:
        optuna_logger.removeHandler(handler)
        configure_logging("json")
    assert "Vb7" not in stream.getvalue() and "u:***@db:5432/x" in stream.getvalue()
    assert "Vb7" not in buffer.getvalue() and "u:***@db" in buffer.getvalue()


@pytest.mark.parametrize("password", ["s3cr3t w0rd", "c0l:on/sl4sh", "qu0'te\"d", "pct%zz99"])
def test_awkward_passwords_are_masked_through_the_cli(tmp_path, password):
    """A server that does not listen: exit 1, one line, the password nowhere."""
    job = _write_example(tmp_path, _job_text())
    proc = subprocess.run([str(CALABARIA), "calibrate", str(job), "--output", str(tmp_path / "run"), "--local-workers", "1",
                           "--storage", f"postgresql://user:{password}@127.0.0.1:1/db"],
                          capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
    both = proc.stdout + proc.stderr
    assert proc.returncode == 1, both
    assert "Traceback" not in both and [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    for piece in {password, *password.replace(":", " ").replace("/", " ").split()}:
        assert len(piece) < 3 or piece not in both, (piece, both)
    assert not (tmp_path / "run").exists()


def test_awkward_password_in_environment_quoted_by_a_data_error(tmp_path):
    url = "postgresql://u:Mx9 p@ss@127.0.0.1:1/db"
    job = _write_example(tmp_path, _job_text())
    (tmp_path / "cases.csv").write_text(f"week,{url},{url}\n0,1,1\n")  # a header an error message quotes
    env = dict(_env(), CALABARIA_STORAGE=url)
    proc = subprocess.run([str(CALABARIA), "validate", str(job)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "Mx9" not in proc.stdout + proc.stderr and "ss@127" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------- results on a full disk


def _result_and_trials():
    import optuna

    from modelops_calabaria.reporting.results import RunResult, state_counts

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    for i in range(200):
        study.add_trial(optuna.trial.create_trial(params={"beta": i / 200}, distributions={
            "beta": optuna.distributions.FloatDistribution(0, 1)}, value=float(i), user_attrs={"fail_reason": "x" * 200}))
    trials = study.get_trials()
    result = RunResult(study="s", storage="memory", mode="parallel", concurrency=1, slots=1, best_params={"beta": 0.0},
                       best_loss=0.0, best_trial=0, best_targets={}, trials=state_counts(trials), this_run={},
                       wall_time_s=1.0, trials_per_minute=1.0, utilization=1.0, stop_reason=None)
    return result, trials


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the RLIMIT_FSIZE test covers the write path")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _old_results(out: Path) -> None:
    for name in ("best.yaml", "results.json", "trials.csv"):
        (out / name).write_text(f"an older run's {name}\n")


def test_full_disk_leaves_no_partial_or_stale_results(tmp_path):
    from modelops_calabaria.reporting.results import write_results

    result, trials = _result_and_trials()
    with _tmpfs(tmp_path / "fs", "64k") as fs:
        out = fs / "run"
        out.mkdir()
        _old_results(out)
        filler = fs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill the file system, then give back two pages
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - 8192))
        finally:
            os.close(fd)
        with pytest.raises(ResultsWriteError, match="No space left on device; no results file was left there"):
            write_results(out, result, trials)
        assert sorted(p.name for p in out.iterdir()) == []  # neither a .tmp file nor an older run's results
        filler.unlink()
        write_results(out, result, trials)  # with space again: whole
        assert sorted(p.name for p in out.iterdir()) == ["best.yaml", "results.json", "trials.csv"]
        assert json.loads((out / "results.json").read_text())["best_loss"] == 0.0


def test_file_size_limit_while_writing_results_is_one_clear_error(tmp_path):
    """RLIMIT_FSIZE in a child process (no mount needed): the same all-or-none outcome."""
    out = tmp_path / "run"
    out.mkdir()
    _old_results(out)
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_limits import _result_and_trials
        from modelops_calabaria.errors import ResultsWriteError
        from modelops_calabaria.reporting.results import write_results
        result, trials = _result_and_trials()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            write_results(__import__("pathlib").Path({str(out)!r}), result, trials)
        except ResultsWriteError as e:
            print(e.message)
            sys.exit(e.exit_code)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 1, proc.stderr
    assert "cannot write the results to" in proc.stdout and "File too large" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == []


@pytest.mark.slow
def test_full_disk_through_the_cli_exits_1_with_one_line(tmp_path):
    job = _write_example(tmp_path, _job_text(**{"n_replicates: 4": "n_replicates: 1"}))
    with _tmpfs(tmp_path / "fs", "16k") as fs:
        (fs / "filler").write_bytes(b"\0" * 8192)  # leave 2 pages: best.yaml fits, trials.csv does not
        proc = subprocess.run([str(CALABARIA), "calibrate", str(job), "--output", str(fs / "run"), "--max-trials", "40",
                               "--scheduler", "inline", "--local-workers", "1", "--storage", f"sqlite:///{tmp_path}/s.db"],
                              capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "No space left on device" in errors[0]
        assert not [p.name for p in (fs / "run").iterdir() if p.name in ("best.yaml", "results.json", "trials.csv")
                    or ".tmp" in p.name]


# ---------------------------------------------------------------- exact matching at the limits of key packing


@pytest.mark.parametrize("n_keys, distinct", [(5, 65_536), (3, 2_000_000), (8, 300)])
def test_exact_matching_on_many_keys_of_many_values_picks_the_right_row(n_keys, distinct):
    """Packing the keys of a row into one int64 overflowed at 5 keys of 65,536 values each
    (the first key ignored, the wrong row matched, no error): codes are re-ranked per key."""
    from modelops_calabaria.targets.align import Aligner, KeyColumn

    rng = np.random.default_rng(7)
    rows = distinct + 2
    model = {f"k{i}": np.concatenate([np.arange(distinct, dtype=float), [7.0, 7.0]]) for i in range(n_keys)}
    model["k0"][-2:] = [0.0, 1.0]  # the last two rows differ only in the first key
    model["v"] = rng.normal(size=rows)
    order = rng.permutation(rows)
    model = {k: v[order] for k, v in model.items()}
    observed = [np.array([1.0, 0.0, 5.0])] + [np.array([7.0, 7.0, 5.0]) for _ in range(n_keys - 1)]
    aligner = Aligner("t", "o", tuple(KeyColumn(f"k{i}", "number", observed[i]) for i in range(n_keys)), "exact",
                      None, None, None, ("v",))
    sim = aligner.simulated(model)[:, 0]
    position = {tuple(model[f"k{i}"][r] for i in range(n_keys)): r for r in range(rows)}
    expected = [model["v"][position[tuple(observed[i][j] for i in range(n_keys))]] for j in range(3)]
    assert sim.tolist() == expected


@pytest.mark.parametrize("cells", [["2025.01.01", "2025.01.08"], ["2025/01/01", "2025/01/08"], ["2025-01-01", "2025.01.08"]])
def test_year_first_dates_with_dots_or_slashes_are_dates(cells):
    """starsim writes its dates as 2025.01.01: year first, so unambiguous."""
    from modelops_calabaria.targets.align import date_days, parse_key

    key = parse_key("date", cells)
    assert key.kind == "date" and key.values.tolist() == [20089.0, 20096.0]
    assert date_days(np.array(cells, dtype=object)).tolist() == [20089.0, 20096.0]


def test_day_first_dates_stay_refused():
    from modelops_calabaria.targets.align import parse_key

    with pytest.raises(ValueError, match="'01.02.2025' is not a date"):
        parse_key("date", ["2025-01-01", "01.02.2025"])


# ---------------------------------------------------------------- starting points enqueued at once


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_starting_points_are_enqueued_at_once_in_order(kind, tmp_path, request):
    """10,000 start points were enqueued one commit (and one read of every trial) each:
    747 after 6.5 minutes. Now one transaction; every point WAITING, in order, popped once."""
    import uuid

    import optuna

    from modelops_calabaria.backend.factory import open_store
    from modelops_calabaria.storage import parse_storage_url

    url = {"sqlite": f"sqlite:///{tmp_path}/s.db", "journal": f"journal:///{tmp_path}/s.log"}.get(kind)
    url = url or request.getfixturevalue("pg_url")
    backend = open_store(parse_storage_url(url))
    name = f"enqueue-{uuid.uuid4().hex[:8]}"
    try:
        optuna.create_study(study_name=name, storage=backend.optuna_storage)
        study_id = backend.study_id(name)
        points = [{"a": i / 1000, "k": i % 7} for i in range(2000 if kind != "journal" else 300)]
        backend.enqueue(study_id, points)
        cols = backend.trial_columns(study_id)
        assert list(cols.number) == list(range(len(points)))
        assert set(cols.state) == {optuna.trial.TrialState.WAITING}
        popped = [backend.pop_waiting(study_id, {"calabaria:coordinator": "c"}) for _ in range(3)]
        assert [p.fixed_params for p in popped] == points[:3]
    finally:
        if kind == "postgresql":
            optuna.delete_study(study_name=name, storage=backend.optuna_storage)
        backend.close()
