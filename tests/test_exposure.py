"""Exposure: every server a local run starts listens on loopback (``CALABARIA_LISTEN_HOST``,
default 127.0.0.1), whatever the shape of its local cluster and whatever the command.

The matrix: the local cluster's shapes (a built-in model on threads of the coordinator, its
default; a built-in on worker processes; a user model on worker processes, its default; a
user model on threads) x the commands that simulate (``calibrate``, ``worker``, ``simulate``,
``report``, which re-simulates the best trial). Each command runs for real, in a session of
its own (tests/support/proctree.py); while it runs, the listening TCP sockets (IPv4 and
IPv6, read from /proc/net/tcp{,6}) of every process of the run are collected.
"""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import SUPPORT, unique
from support import proctree
from test_faults import CLI, clean_env, told

EXAMPLE = Path(__file__).parents[1] / "examples" / "seir"
SHAPES = {  # name: (model, CALABARIA_LOCAL_PROCESSES or None for the model's default)
    "builtin-threads": ("seir", None),
    "builtin-processes": ("seir", "true"),
    "user-processes": ("user", None),
    "user-threads": ("user", "false"),
}
COMMANDS = ["calibrate", "worker", "simulate", "report"]


def write_job(tmp_path: Path, model: str, max_trials: int) -> tuple[Path, str]:
    if model == "seir":
        data = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
        data["targets"][0]["data"] = str(EXAMPLE / "cases.csv")
        data.update(n_replicates=2)
    else:
        data = {"model": f"{SUPPORT / 'models.py'}:slow", "fixed": {"delay": 0.2},
                "parameters": {"a": {"lower": 0.0, "upper": 2.0}, "b": {"lower": 0.0, "upper": 2.0}},
                "targets": [{"name": "y", "output": "y", "data": {"t": [0, 1, 2], "y": [1.0, 2.0, 3.0]}, "score": "sse"}],
                "n_replicates": 2}
    data.update(study=unique("expose"), max_trials=max_trials, report={"replicates": 4, "others": 1})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data["study"]


def run_watching(tmp_path: Path, args: list[str], env: dict[str, str], *, stop_when=None,
                 timeout: float = 600) -> tuple[subprocess.CompletedProcess, set[tuple[int, str, int]], dict[int, str]]:
    """Run the command; collect the listening sockets of its processes while it runs (every 0.1 s);
    with ``stop_when``, SIGTERM it once that holds. Returns its outcome, the sockets, and what of
    the run is alive 1 s after it returned."""
    proc, token = proctree.start([*CLI, *args], env, cwd=tmp_path)
    sockets: set[tuple[int, str, int]] = set()
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            sockets |= set(proctree.listening(set(proctree.members(proc.pid, token))))
            if stop_when is not None and stop_when():
                sockets |= set(proctree.listening(set(proctree.members(proc.pid, token))))
                proc.send_signal(signal.SIGTERM)
                stop_when = None
            time.sleep(0.1)
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        left = proctree.left_after(proc, token, tmp_path)
    finally:
        proctree.reap(proc, token, tmp_path)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), sockets, left


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_listening_socket_of_a_local_run_is_on_loopback(tmp_path, shape, command):
    model, processes = SHAPES[shape]
    env = clean_env(**({"CALABARIA_LOCAL_PROCESSES": processes} if processes else {}))
    storage = f"sqlite:///{tmp_path}/s.db"
    run_dir = tmp_path / "run"
    # worker: enough budget that the first calibrate is still running when it is stopped (the
    # built-in model's trials take milliseconds), with work left for the worker.
    budget = 200 if command == "worker" and model == "seir" else 24
    job, study = write_job(tmp_path, model, budget)
    calibrate = ["calibrate", str(job), "--storage", storage, "--output", str(run_dir), "--local-workers", "2"]
    if command == "calibrate":
        done, sockets, left = run_watching(tmp_path, [*calibrate, "--no-report"], env)
    elif command == "worker":
        # A study with work left: a calibrate stopped after its first trials, then a worker joins it.
        first, _, _ = run_watching(tmp_path, [*calibrate, "--no-report", "--grace", "30"], env,
                                   stop_when=lambda: told(storage, study) >= 2)
        assert first.returncode == 0, first.stderr[-2000:]
        assert told(storage, study) < budget
        done, sockets, left = run_watching(tmp_path, ["worker", "--study", study, "--storage", storage, "--local-workers", "2",
                                                      "--output", str(tmp_path / "worker")], env)
    elif command == "simulate":
        done, sockets, left = run_watching(tmp_path, ["simulate", str(job), "--replicates", "4", "--output", str(tmp_path / "sim")], env)
    else:
        first, _, _ = run_watching(tmp_path, [*calibrate, "--no-report", "--max-trials", "4"], env)
        assert first.returncode == 0, first.stderr[-2000:]
        done, sockets, left = run_watching(tmp_path, ["report", str(run_dir), "--storage", storage, "--local-workers", "2", "--replicates", "40"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    exposed = sorted(s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback)
    assert not exposed, f"listening beyond loopback: {exposed}"
    # These start a local cluster (report: 40 replicates of 0.2 s are too many to run in-process): its servers were seen.
    if command in ("calibrate", "worker") or (command == "report" and model == "user"):
        assert sockets, "no listening socket seen: the watch saw nothing of the cluster"
        if processes == "true" or (processes is None and model == "user"):
            assert len({pid for pid, _, _ in sockets}) >= 3, sockets  # the coordinator and two worker processes
    assert not left, f"processes of the run still alive 1 s after it returned: {left}"


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["builtin-threads", "user-processes"])
def test_listen_host_is_where_every_server_listens(tmp_path, shape):
    model, _ = SHAPES[shape]
    storage = f"sqlite:///{tmp_path}/s.db"
    job, _ = write_job(tmp_path, model, 16)
    done, sockets, _ = run_watching(tmp_path, ["calibrate", str(job), "--storage", storage, "--output", str(tmp_path / "run"),
                                               "--local-workers", "2", "--no-report"], clean_env(CALABARIA_LISTEN_HOST="127.0.0.2"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sockets and {ip for _, ip, _ in sockets} == {"127.0.0.2"}, sockets
