"""Kill and resume: a projection SIGKILLed mid-run and started again finishes with exactly the requested
simulations, none recorded twice, none re-run that had finished; the result equals an uninterrupted run's.

The mechanism is a file (projection/store.py): an append-only journal, one line per finished (scenario, draw),
a torn last line dropped on reopening; no study storage is involved, so there is no SQLite/PostgreSQL variant.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from modelops_calabaria.calibration.runner import run_calibration
from modelops_calabaria.job import load_job
from modelops_calabaria.projection.draws import sim_seed
from modelops_calabaria.settings import Settings

SUPPORT = Path(__file__).resolve().parent / "support"
DRAWS, REPS, SEED = 24, 2, 5
SCENARIOS = {"baseline": "base", "higher": "up"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("resume")
    job = {"study": "resume", "model": f"{SUPPORT / 'projection_models.py'}:counted",
           "parameters": {"mu": {"lower": 0, "upper": 100}}, "fixed": {"n_weeks": 14, "tag": "calibration", "sleep": 0.0},
           "targets": [{"name": "y", "output": "y", "index_column": "week", "score": "sse",
                        "data": {"week": list(range(10)), "y": [50.0] * 10}}],
           "max_trials": 6, "n_replicates": 1, "seed": SEED, "reevaluate": {"top_k": 3}}
    (tmp / "job.yaml").write_text(yaml.safe_dump(job))
    run = tmp / "run"
    run_calibration(load_job(tmp / "job.yaml"), Settings(storage=f"sqlite:///{tmp / 's.db'}", scheduler="inline"), output_dir=run)
    spec = {"start_date": "2024-01-01", "days_parameter": None,
            "baseline": {"name": "baseline", "changes": [{"parameter": "tag", "value": "base"}, {"parameter": "sleep", "value": 0.08}]},
            "scenarios": [{"name": "higher", "changes": [{"parameter": "tag", "value": "up"}, {"parameter": "mu", "multiply": 1.2}]}]}
    (run / "scenarios.yaml").write_text(yaml.safe_dump(spec))
    return run


def _command(run: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "modelops_calabaria", "project", str(run), "--scenarios", str(run / "scenarios.yaml"),
            "--draws", str(DRAWS), "--replicates", str(REPS), "--horizon", "4", "--scheduler", "inline", "--local-workers", "2",
            "--output", str(out), "--storage", f"sqlite:///{run.parent / 's.db'}", *extra]


def _chunks(out: Path) -> set[tuple[str, int]]:
    """The (scenario, draw) pairs of the journal's whole lines; no pair twice."""
    lines = [line for line in (out / "chunks.jsonl").read_bytes().split(b"\n")[:-1]] if (out / "chunks.jsonl").exists() else []
    keys = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line torn by the kill (dropped when the journal is reopened)
        keys.append((rec["scenario"], rec["draw"]))
    assert len(keys) == len(set(keys)), "a chunk recorded twice"
    return set(keys)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_runs_each_simulation_once(run_dir, tmp_path):
    out = tmp_path / "proj"
    log = tmp_path / "calls.log"
    env = {**os.environ, "CALABARIA_TEST_CALL_LOG": str(log)}
    proc = subprocess.Popen(_command(run_dir, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(_chunks(out)) < 8 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = _chunks(out)
    total = len(SCENARIOS) * DRAWS
    assert 8 <= len(before) < total, "killed too late to test a resume"
    assert not (out / "projections.parquet").exists()
    calls_before = log.read_text().splitlines()

    log.write_text("")
    r = subprocess.run(_command(run_dir, out), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert _chunks(out) == {(s, d) for s in SCENARIOS for d in range(DRAWS)}
    # which (scenario, draw) a call belongs to: its tag and its seed
    draw_of = {sim_seed(SEED, d, rep): d for d in range(DRAWS) for rep in range(REPS)}
    scenario_of = {tag: name for name, tag in SCENARIOS.items()}
    after = [(scenario_of[tag], draw_of[int(seed)]) for tag, seed in (line.split(",") for line in log.read_text().splitlines())]
    assert not set(after) & before, "a finished chunk was simulated again"
    assert len(after) == (total - len(before)) * REPS  # exactly the missing ones, each replicate once
    assert len(calls_before) >= len(before) * REPS

    # the same request uninterrupted gives the same numbers
    clean = tmp_path / "clean"
    r = subprocess.run(_command(run_dir, clean), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    import pyarrow.parquet as pq

    assert pq.read_table(out / "projections.parquet").equals(pq.read_table(clean / "projections.parquet"))
    assert (out / "hubverse.csv").read_text() == (clean / "hubverse.csv").read_text()

    # another request into the same directory is refused, and touches nothing
    stamp = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))
    r = subprocess.run(_command(run_dir, out, "--seed", "99"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "another request" in r.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == stamp


def test_a_torn_last_line_is_dropped_and_appends_follow_the_last_whole_one(tmp_path):
    from modelops_calabaria.projection.store import JOURNAL, ChunkStore, read_journal

    store = ChunkStore(tmp_path, "f")
    store.open({})
    store.write("a", 0, [1], [[1.0]], 0.1)
    store.write("a", 1, [2], [[2.0]], 0.1)
    store.close()
    with (tmp_path / JOURNAL).open("ab") as fh:
        fh.write(b'{"scenario": "a", "draw": 2, "se')  # a kill in the middle of a write
    again = ChunkStore(tmp_path, "f")
    again.open({})
    assert again.done("a", 0) and again.done("a", 1) and not again.done("a", 2)
    again.write("a", 2, [3], [[3.0]], 0.1)
    again.close()
    records, size = read_journal(tmp_path / JOURNAL)
    assert sorted(records) == [("a", 0), ("a", 1), ("a", 2)] and size == (tmp_path / JOURNAL).stat().st_size
    with pytest.raises(Exception, match="another request"):
        ChunkStore(tmp_path, "other").check()
