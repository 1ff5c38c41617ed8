"""Bad inputs through the real CLI: one clear message, the right exit code, nothing created.

Each directory under ``tests/bad_inputs/`` is one case (see its README.md): a job
file, any data or model file it needs, and ``expect.yaml``. The case is copied
into a temporary directory and run as a subprocess::

    calabaria calibrate CASE/job.yaml --output TMP/run --local-workers 1 [args]

(and ``calabaria validate CASE/job.yaml`` when ``validate: true``), from that
temporary directory, with no CALABARIA_* variables in the environment. Every case
must exit with its ``exit`` code (2 bad input, 1 unreachable service), print
exactly one ``error:`` message on stderr holding every ``stderr_contains``
substring, print no traceback, and create nothing: the temporary directory holds
the same files afterwards as before (so no ``--output`` directory and no SQLite
study file). A case whose arguments or environment use ``{pg}`` (the test
PostgreSQL database, CALABARIA_TEST_PG) also leaves that database as it found it:
same tables, functions and studies. A case with ``command`` runs that command
line instead of ``calibrate`` (e.g. ``worker --study ...``).

Each case runs in this test process through the console script's own ``main()``
(``sys.argv`` set, output captured at the file descriptors, no CALABARIA_*
variables): the same code the ``calabaria`` command runs, without paying an
interpreter start and the imports per case. ``THROUGH_THE_COMMAND`` names one
case per class that also runs as a real ``calabaria`` subprocess, so the
process boundary (exit status, stderr, no traceback) is checked too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

CORPUS = Path(__file__).parent / "bad_inputs"
CALABARIA = Path(sys.executable).with_name("calabaria")
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expect.yaml").is_file())
DEFAULT_TIMEOUT_S = 60


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CALABARIA_") and k not in ("PARALLEL_TRIALS", "DASK_SCHEDULER_ADDRESS", "PYTHONPATH")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _fill(value: Any, tmp: Path, pg: str = "") -> Any:
    """Replace {tmp} (the test's temporary directory), {case} (the case's copy in it), {pg} (the test database)."""
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp)).replace("{case}", str(tmp / "case")).replace("{pg}", pg)
    if isinstance(value, list):
        return [_fill(v, tmp, pg) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, tmp, pg) for k, v in value.items()}
    return value


def _pg_snapshot(url: str) -> dict[str, Any]:
    """What a bad input must not change in a PostgreSQL database: tables, functions, studies."""
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            tables = sorted(r[0] for r in conn.execute(sa.text(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")))
            functions = sorted(r[0] for r in conn.execute(sa.text(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = current_schema()")))
            studies = sorted(r[0] for r in conn.execute(sa.text("SELECT study_name FROM studies"))) if "studies" in tables else []
    finally:
        engine.dispose()
    return {"tables": tables, "functions": functions, "studies": studies}


def _run(args: list[str], cwd: Path, timeout: float = DEFAULT_TIMEOUT_S,
         env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([str(CALABARIA), *args], cwd=cwd, env=_env(env), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return proc, time.monotonic() - started


class _Finished:
    """What a finished command left: its exit status and both outputs (as subprocess.CompletedProcess)."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _run_in_process(args: list[str], cwd: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                    env: dict[str, str] | None = None) -> tuple[_Finished, float]:
    """Run ``calabaria ARGS`` through ``cli.main`` in this process, as the console script would."""
    import structlog

    from modelops_calabaria import cli

    with monkeypatch.context() as m:
        for key in os.environ:
            if key.startswith("CALABARIA_") or key in ("PARALLEL_TRIALS", "DASK_SCHEDULER_ADDRESS"):
                m.delenv(key)
        for key, value in (env or {}).items():
            m.setenv(key, value)
        m.chdir(cwd)
        m.setattr(sys, "argv", ["calabaria", *args])
        capfd.readouterr()
        logging_config = structlog.get_config()
        started = time.monotonic()
        try:
            cli.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            structlog.configure(**logging_config)  # the command bound its log lines to this test's captured stream
        elapsed = time.monotonic() - started
        out, err = capfd.readouterr()
    return _Finished(code, out, err), elapsed


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _job_file(case_dir: Path, expect: dict[str, Any]) -> Path:
    if expect.get("job"):
        return case_dir / expect["job"]
    for name in ("job.yaml", "job.json"):
        if (case_dir / name).is_file():
            return case_dir / name
    raise AssertionError(f"{case_dir.name}: no job.yaml/job.json and no 'job' in expect.yaml")


def _check_output(what: str, proc: Any, elapsed: float, expect: dict[str, Any]) -> None:
    out, err = proc.stdout, proc.stderr
    both = out + err
    shown = f"\n--- {what}: exit {proc.returncode} in {elapsed:.1f} s\n--- stdout:\n{out}\n--- stderr:\n{err}"
    assert "Traceback" not in both, f"a traceback was printed{shown}"
    assert proc.returncode == expect["exit"], f"expected exit {expect['exit']}{shown}"
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, f"expected exactly one 'error:' line on stderr{shown}"
    message = err[err.index("error:"):]
    for piece in expect.get("stderr_contains", []):
        assert piece in message, f"stderr message lacks {piece!r}{shown}"
    for piece in expect.get("absent", []):
        assert piece not in both, f"output contains {piece!r}{shown}"
    limit = expect.get("max_seconds")
    if limit is not None:
        assert elapsed < limit, f"took {elapsed:.1f} s, limit {limit} s{shown}"


def _trial_count(storage: str, study: str) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = optuna.load_study(study_name=study, storage=storage)
    return len(loaded.get_trials(deepcopy=False))


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 60, CASES


# One case per class of bad input, run as a real `calabaria` subprocess as well.
THROUGH_THE_COMMAND = [
    "yaml_alias_bomb_fixed", "duplicate_key_max_trials", "max_trials_too_large", "int_fractional_step",
    "scheduler_unreachable", "storage_unreachable_postgres", "redact_raw_at_and_space_in_env",
    "worker_study_with_slash", "model_module_raises", "csv_not_utf8", "malformed_yaml", "status_study_with_space",
    "study_data_changed", "data_fifo", "yaml_octal_max_trials", "report_output_device", "sampler_tpe_gamma_number",
    "fixed_nan", "pg_read_only_session", "redact_sslpassword_parameter",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: str, tmp_path: Path, request: pytest.FixtureRequest, capfd: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    def run(args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> tuple[Any, float]:
        if any(key.startswith("PYTHON") for key in env or {}):  # read only when an interpreter starts
            return _run(args, cwd, timeout, env)
        return _run_in_process(args, cwd, capfd, monkeypatch, env)

    _check_case(case, tmp_path, request, run)


@pytest.mark.slow
@pytest.mark.parametrize("case", THROUGH_THE_COMMAND)
def test_bad_input_through_the_command(case: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    assert case in CASES, f"{case} is not in tests/bad_inputs/"
    _check_case(case, tmp_path, request, _run)


def _make(case_dir: Path, entries: list[dict[str, Any]]) -> None:
    """Files a case cannot keep in git, made in its copy: ``{fifo: NAME}`` a FIFO, ``{sparse: NAME,
    bytes: N}`` a sparse file of N bytes, ``{file: NAME, head, repeat, count, tail}`` a large text file."""
    for entry in entries:
        if "fifo" in entry:
            target = case_dir / entry["fifo"]
            target.unlink(missing_ok=True)
            os.mkfifo(target)
        elif "sparse" in entry:
            with open(case_dir / entry["sparse"], "wb") as fh:
                fh.truncate(int(entry["bytes"]))
        else:
            text = entry.get("head", "") + entry["repeat"] * int(entry["count"]) + entry.get("tail", "")
            (case_dir / entry["file"]).write_text(text)


def _check_case(case: str, tmp_path: Path, request: pytest.FixtureRequest, run_command: Any) -> None:
    source = CORPUS / case
    raw = (source / "expect.yaml").read_text()
    pg = request.getfixturevalue("pg_url") if "{pg}" in raw else ""
    expect = _fill(yaml.safe_load(raw), tmp_path, pg)
    case_dir = tmp_path / "case"
    shutil.copytree(source, case_dir)
    _make(case_dir, expect.get("make", []))
    output = tmp_path / "run"
    timeout = max(DEFAULT_TIMEOUT_S, 2 * expect.get("max_seconds", 0))
    env = expect.get("env")

    setup = expect.get("setup")
    if setup:
        proc, elapsed = _run(["calibrate", str(case_dir / setup["job"]), *setup.get("args", [])], tmp_path, timeout=120)
        assert proc.returncode == 0, f"setup run failed ({elapsed:.1f} s):\n{proc.stdout}\n{proc.stderr}"
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["trials"].get("COMPLETE") == expect["study_trials"]["count"], summary

    before = _files(tmp_path)
    pg_before = _pg_snapshot(pg) if pg else None

    if expect.get("command"):
        args = list(expect["command"])
    else:
        job_file = _job_file(case_dir, expect)
        if expect.get("validate"):
            proc, elapsed = run_command(["validate", str(job_file)], tmp_path, timeout, env)
            _check_output("validate", proc, elapsed, expect)
        args = ["calibrate", str(job_file), "--output", str(output), "--local-workers", "1", *expect.get("args", [])]
    proc, elapsed = run_command(args, tmp_path, timeout, env)
    _check_output(args[0], proc, elapsed, expect)

    assert not output.exists(), f"--output directory was created: {sorted(_files(output))}"
    created = _files(tmp_path) - before
    assert not created, f"files were created: {sorted(created)}"
    if pg:
        assert _pg_snapshot(pg) == pg_before, "the PostgreSQL database was changed"

    trials = expect.get("study_trials")
    if trials:
        assert _trial_count(trials["storage"], trials["study"]) == trials["count"]
