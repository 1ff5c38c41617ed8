"""Processes of a run, on the real command: models that end their process or leave processes
behind, SIGTERM with a model that never ends, nothing alive after the command returns.

Each test runs ``calabaria calibrate`` in a session of its own (tests/support/proctree.py)
and, after it returns, lists every process of the run still alive 1 s later: there must be
none. Models are in tests/support/misbehaving.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from conftest import SUPPORT, unique
from support import proctree
from test_faults import CLI, check_invariants, clean_env, trials_of, wait_for

MISBEHAVING = SUPPORT / "misbehaving.py"
EXIT_MARGIN_S = 10.0  # the documented bound: a signal ends the command within --grace + 10 s


def write_job(tmp_path: Path, model: str, **overrides) -> tuple[Path, str]:
    data = {
        "study": unique("proc"),
        "model": f"{MISBEHAVING}:{model}",
        "parameters": {"a": {"lower": 0.0, "upper": 2.0}, "b": {"lower": 0.0, "upper": 2.0}},
        "targets": [{"name": "y", "output": "y", "data": {"t": [0, 1, 2], "y": [1.0, 2.0, 3.0]}, "score": "sse"}],
        "n_replicates": 2,
        "max_trials": 20,
        "seed": 11,
    }
    data.update(overrides)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data["study"]


def run(tmp_path: Path, args: list[str], env: dict[str, str], timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict[int, str]]:
    """Run the command to its end; return its outcome and what of it is alive 1 s later."""
    return proctree.run_to_end([*CLI, *args], env, tmp_path, timeout)


# Shapes of the simulation service a user can get: inline threads, the local cluster's
# threads (built-in models' default), the local cluster's worker processes (any other model's default).
SHAPES = {
    "inline": (["--scheduler", "inline"], {}),
    "local-threads": ([], {"CALABARIA_LOCAL_PROCESSES": "false"}),
    "local-processes": ([], {}),
}


EXITS = [("local-processes", "os_exit"), ("local-processes", "sys_exit"), ("local-processes", "sigkill"),
         ("inline", "sys_exit"), ("local-threads", "sys_exit")]


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "how"), EXITS, ids=[f"{s}-{h}" for s, h in EXITS])
def test_a_model_that_ends_its_process_fails_its_own_trial_only(tmp_path, shape, how):
    storage = f"sqlite:///{tmp_path}/s.db"
    job, study = write_job(tmp_path, "exits", fixed={"how": how, "code": 3 if how == "sys_exit" else 7, "exit_above": 1.6})
    flags, extra = SHAPES[shape]
    done, left = run(tmp_path, ["calibrate", str(job), "--storage", storage, "--output", str(tmp_path / "run"),
                                "--local-workers", "3", "--no-report", *flags], clean_env(**extra))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["trials"]["total"] == 20
    trials = check_invariants(storage, study, 20)
    for t in trials:
        if t.params["a"] > 1.6:
            assert t.state == TrialState.FAIL, t
            reason = t.user_attrs["fail_reason"]
            if how == "sys_exit":
                assert "the model called sys.exit(3)" in reason, reason
            else:
                status = "exit code 7" if how == "os_exit" else "killed by signal 9 (SIGKILL)"
                assert "its worker process (pid " in reason and f"{status}) ended" in reason, reason
        else:  # healthy trials are not failed by their neighbours' deaths
            assert t.state == TrialState.COMPLETE, (t.number, t.params, t.user_attrs.get("fail_reason"))
    assert any(t.state == TrialState.FAIL for t in trials) and any(t.state == TrialState.COMPLETE for t in trials)
    assert not left, f"processes of the run still alive 1 s after it returned: {left}"


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SHAPES))
def test_sigterm_ends_the_run_within_the_grace_period_with_a_model_that_never_ends(tmp_path, shape):
    storage = f"sqlite:///{tmp_path}/s.db"
    job, study = write_job(tmp_path, "spins", max_trials=50)
    flags, extra = SHAPES[shape]
    grace = 2.0
    proc, token = proctree.start([*CLI, "calibrate", str(job), "--storage", storage, "--output", str(tmp_path / "run"),
                                  "--local-workers", "2", "--grace", str(grace), "--no-report", *flags],
                                 clean_env(**extra), cwd=tmp_path)
    try:
        def running() -> bool:
            try:
                return any(t.state == TrialState.RUNNING for t in trials_of(storage, study))
            except KeyError:
                return False

        wait_for(running, 300, "a trial running")
        time.sleep(1.0)  # its replicates are on the model's threads by now
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            out, err = proc.communicate(timeout=grace + EXIT_MARGIN_S + 120)  # hang guard; the bound is asserted below
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"still running {grace + EXIT_MARGIN_S + 120:g} s after SIGTERM: {err[-3000:]}") from None
        ended = time.monotonic() - signalled
        left = proctree.left_after(proc, token, tmp_path)
    finally:
        proctree.reap(proc, token, tmp_path)
    assert ended <= grace + EXIT_MARGIN_S, f"ended {ended:.1f} s after SIGTERM (promise: --grace {grace:g} + {EXIT_MARGIN_S:g} s)"
    assert proc.returncode == 0, err[-3000:]
    trials = check_invariants(storage, study, None)
    assert trials and all(t.state == TrialState.FAIL for t in trials)
    assert all(t.user_attrs["fail_reason"].startswith("cancelled: SIGTERM") for t in trials), [t.user_attrs for t in trials]
    assert not left, f"processes of the run still alive 1 s after it returned: {left}"


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SHAPES))
def test_processes_a_model_leaves_behind_are_killed(tmp_path, shape):
    markers = tmp_path / "markers"
    markers.mkdir()
    storage = f"sqlite:///{tmp_path}/s.db"
    job, study = write_job(tmp_path, "forks", max_trials=4, fixed={"marker_dir": str(markers), "sleep_s": 3600})
    flags, extra = SHAPES[shape]
    done, left = run(tmp_path, ["calibrate", str(job), "--storage", storage, "--output", str(tmp_path / "run"),
                                "--local-workers", "2", "--no-report", *flags], clean_env(**extra))
    assert done.returncode == 0, done.stderr[-3000:]
    check_invariants(storage, study, 4)
    orphans = [int(p.name) for p in markers.iterdir()]
    assert len(orphans) >= 4  # one per replicate that ran
    alive = [p for p in orphans if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]]
    assert not alive, f"processes the model started are still alive: {alive}"
    assert not left, left


@pytest.mark.slow
@pytest.mark.parametrize("model", ["seir", "user"])
def test_nothing_of_a_finished_run_is_alive_a_second_after_it_returns(tmp_path, model):
    """The default shapes (a built-in on threads, a user model on worker processes), calibrate then report."""
    storage = f"sqlite:///{tmp_path}/s.db"
    if model == "seir":
        data = yaml.safe_load((Path(__file__).parents[1] / "examples" / "seir" / "job.yaml").read_text())
        data.update(study=unique("proc"), max_trials=6, n_replicates=2)
        data["targets"][0]["data"] = str(Path(__file__).parents[1] / "examples" / "seir" / "cases.csv")
        data["report"] = {"replicates": 2, "others": 1}
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump(data))
    else:
        job, _ = write_job(tmp_path, "exits", max_trials=6, fixed={"exit_above": 3.0, "delay": 0.01},
                           report={"replicates": 2, "others": 1})
    done, left = run(tmp_path, ["calibrate", str(job), "--storage", storage, "--output", str(tmp_path / "run"),
                                "--local-workers", "2"], clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert not left, f"processes of the run still alive 1 s after calibrate returned: {left}"
    done, left = run(tmp_path, ["report", str(tmp_path / "run"), "--storage", storage, "--local-workers", "2", "--replicates", "2"], clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert not left, f"processes of the run still alive 1 s after report returned: {left}"
