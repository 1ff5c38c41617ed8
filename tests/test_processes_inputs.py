"""Inputs that used to end or hang the command silently: models that misbehave while they are
imported, and numeric or address settings out of range. Each is refused on the real command with
one line naming what did what, exit 2, nothing created, and nothing of the command left running."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from support import proctree
from test_faults import CLI, clean_env

IMPORT_FAULTS = {
    "sys_exit_0": ("import sys\nsys.exit(0)", "called sys.exit(0) while importing"),
    "sys_exit_3": ("import sys\nsys.exit(3)", "called sys.exit(3) while importing"),
    "os_exit": ("import os\nos._exit(4)", "ended the process while importing (exit code 4)"),
    "sigkill": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "ended the process while importing (killed by signal 9 (SIGKILL))"),
    "keyboard_interrupt": ("raise KeyboardInterrupt", "raised KeyboardInterrupt while importing"),
    "hangs": ("import time\ntime.sleep(3600)", "did not finish importing within 3 s"),
}
# The commands that load the model first thing: calibrate (the user's default), validate, simulate.
COMMANDS = ["calibrate", "validate", "simulate"]


def write_job(tmp_path: Path, model_source: str) -> Path:
    (tmp_path / "model.py").write_text(model_source + textwrap.dedent('''

        def model(params, seed):
            return {"y": [params["a"], 1.0, 2.0]}

        model.outputs = ("y",)
    '''))
    job = {"study": "imports", "model": "model.py:model", "parameters": {"a": {"lower": 0.0, "upper": 1.0}},
           "targets": [{"name": "y", "output": "y", "data": {"t": [0, 1, 2], "y": [0.5, 1.0, 2.0]}, "score": "sse"}],
           "max_trials": 4}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def command_args(command: str, job: Path, tmp_path: Path) -> list[str]:
    if command == "calibrate":
        return ["calibrate", str(job), "--output", str(tmp_path / "run")]
    if command == "validate":
        return ["validate", str(job)]
    return ["simulate", str(job), "--output", str(tmp_path / "run")]


def run(tmp_path: Path, args: list[str], **env: str) -> tuple[subprocess.CompletedProcess, dict[int, str]]:
    return proctree.run_to_end([*CLI, *args], clean_env(**env), tmp_path, 300)


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), err
    assert all(line.startswith("  hint: ") for line in lines[1:]), err  # one line, and at most its hint
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fault", list(IMPORT_FAULTS))
def test_a_model_that_misbehaves_at_import_is_named_exit_2(tmp_path, fault, command):
    source, said = IMPORT_FAULTS[fault]
    job = write_job(tmp_path, source)
    done, left = run(tmp_path, command_args(command, job, tmp_path), CALABARIA_MODEL_IMPORT_TIMEOUT_S="3")
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    line = error_line(done.stderr)
    assert "model.py" in line and said in line, line
    assert not (tmp_path / "run").exists()
    assert not left, left


SETTINGS = {
    "CALABARIA_HEARTBEAT_INTERVAL_S": ["1e300", "0", "-1", "nan", "inf"],
    "CALABARIA_GRACE_PERIOD_S": ["1e300", "0", "nan"],
    "CALABARIA_MODEL_IMPORT_TIMEOUT_S": ["1e300", "0"],
    "CALABARIA_LOCAL_WORKERS": ["0", "100000"],
    "CALABARIA_REPLICATES_PER_TASK": ["0", "1e9"],
    "CALABARIA_LISTEN_HOST": ["0", "10.1.2.3", "0.0.0.0.", "no-such-host.invalid", "::0"],
}
CASES = [(name, value) for name, values in SETTINGS.items() for value in values]


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{n}={v}" for n, v in CASES])
def test_a_setting_out_of_range_is_refused_with_one_line_exit_2(tmp_path, name, value):
    job = write_job(tmp_path, "")
    done, left = run(tmp_path, command_args("calibrate", job, tmp_path), **{name: value})
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    line = error_line(done.stderr)
    assert (name in line) if name != "CALABARIA_LISTEN_HOST" else ("listen host" in line and "loopback" in line or "resolve" in line), line
    assert not (tmp_path / "run").exists()
    assert not left, left


def test_grace_flag_out_of_range_is_refused(tmp_path):
    job = write_job(tmp_path, "")
    done, _ = run(tmp_path, [*command_args("calibrate", job, tmp_path), "--grace", "1e300"])
    assert done.returncode == 2, done.stderr
    assert "--grace" in error_line(done.stderr)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "0.0.0.0", "::"])
def test_loopback_or_an_explicit_every_interface_is_accepted(value):
    from modelops_calabaria.settings import resolve_settings

    assert resolve_settings(None, listen_host=value).listen_host == value.strip("[]")
