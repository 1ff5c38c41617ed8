"""Random-kill fault campaign: the exact budget under a SIGKILL at any moment, on a loaded host.

Each run: a fresh study worked by two coordinator processes, ``calabaria calibrate``
and ``calabaria worker`` (each with its own inline cluster), one of them SIGKILLed
at a random moment (seeded) and restarted with the same command. Even runs are
calibrations (TPE), odd runs posterior runs (the job's ``posterior:`` block, IMIS).
Beside them, ``--hogs`` busy processes (started and stopped here) keep the host
loaded, so heartbeats are late and trials slow, as on a shared machine.

A run passes when both remaining processes exit 0 and the study holds exactly
``max_trials`` trials, all finished (COMPLETE, PRUNED or FAIL), with no final
re-run: the survivors alone must spend the victim's claims. The verdicts print
as a table and a one-line summary.

Usage::

    python benchmarks/kill_campaign.py --storage postgresql://postgres@127.0.0.1:5432/db [--runs 50] [--seed 0]
    python benchmarks/kill_campaign.py --sqlite [--runs 50]

The models below are loaded by the coordinators by file path
(``benchmarks/kill_campaign.py:slow_normal``); importing this file starts nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
CLI = [sys.executable, "-m", "modelops_calabaria"]
N_OBS = 30


def slow_normal(params, seed):
    """``mu`` repeated, after sleeping ``delay`` seconds: trials stay in flight long enough to be killed."""
    time.sleep(float(params.get("delay", 0.1)))
    return {"y": np.full(N_OBS, float(params["mu"]))}


slow_normal.outputs = ("y",)


@dataclass
class Verdict:
    run: int
    kind: str
    storage: str
    victim: str
    kill_at_s: float
    trials_at_kill: int
    trials: int
    budget: int
    states: dict
    exit_codes: list
    wall_s: float
    ok: bool
    problem: str = ""


def job_dict(study: str, kind: str, budget: int, delay: float, seed: int, model: Path = HERE) -> dict:
    rng = np.random.default_rng(seed)
    y = rng.normal(1.5, 1.0, size=N_OBS)
    job = {
        "study": study, "model": f"{model}:slow_normal", "fixed": {"delay": delay},
        "parameters": {"mu": {"lower": -10.0, "upper": 10.0}},
        "targets": [{"name": "y", "output": "y", "data": {"i": list(range(N_OBS)), "y": y.tolist()},
                     "score": {"kind": "normal_nll", "sigma": 1.0}}],
        "n_replicates": 1, "max_trials": budget, "seed": seed,
        "stop": {"max_consecutive_failures": budget},  # only the budget ends a run
    }
    if kind == "posterior":
        job["posterior"] = {"initial": max(4, budget // 3), "per_stage": max(2, budget // 8)}
    return job


def count_trials(storage: str, study: str) -> Counter:
    """Trial states of ``study`` (empty before it exists), read in a child process's way: a fresh open."""
    from modelops_calabaria.backend.factory import open_store
    from modelops_calabaria.errors import StudyNotFoundError
    from modelops_calabaria.storage import parse_storage_url

    try:
        backend = open_store(parse_storage_url(storage), 1, read_only=True)
    except StudyNotFoundError:
        return Counter()
    try:
        try:
            cols = backend.trial_columns(backend.study_id(study))
        except KeyError:
            return Counter()
        return Counter(s.name for s in cols.state)
    finally:
        backend.close()


def one_run(i: int, seed: int, storage: str, workdir: Path, *, budget: int, delay: float, grace_s: float,
            kinds: tuple[str, ...] = ("calibration", "posterior"), timeout_s: float = 600) -> Verdict:
    """Run ``i`` of a campaign: two coordinators, one SIGKILLed at a seeded random moment and restarted."""
    rng = random.Random(seed * 100_003 + i)
    kind = kinds[i % len(kinds)]
    study = f"kill-{i}-{uuid.uuid4().hex[:8]}"
    run_dir = workdir / study
    run_dir.mkdir(parents=True)
    path = run_dir / "job.json"
    # The model from a copy: a study fingerprints its model file, and an edit of this script
    # during a campaign would make a restarted `calibrate` refuse the study (exit 2).
    model = workdir / "kill_model.py"
    if not model.exists():
        shutil.copy(HERE, model)
    path.write_text(json.dumps(job_dict(study, kind, budget, delay, seed + i, model)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALABARIA_", "PARALLEL_TRIALS"))}
    env.update(CALABARIA_GRACE_PERIOD_S=str(grace_s), CALABARIA_HEARTBEAT_INTERVAL_S="0.5")

    def start(role: str, out: str) -> subprocess.Popen:
        head = ["calibrate", str(path)] if role == "calibrate" else ["worker", "--study", study, "--wait", "120"]
        return subprocess.Popen([*CLI, *head, "--storage", storage, "--scheduler", "inline", "--workers", "2",
                                 "--output", str(run_dir / out)], env=env, stdout=subprocess.DEVNULL,
                                stderr=open(run_dir / f"{out}.err", "w"))

    started = time.monotonic()
    procs = {"calibrate": start("calibrate", "c"), "worker": start("worker", "w")}
    victim = rng.choice(["calibrate", "worker"])
    # A fifth of the kills land in start-up (study, budget and cluster being made), the rest
    # after a random number of trials was asked, plus a random fraction of a trial.
    if rng.random() < 0.2:
        kill_at = rng.uniform(0.2, 5.0)
        time.sleep(kill_at)
    else:
        k, extra = rng.randrange(1, budget), rng.uniform(0.0, 2 * delay)
        deadline = time.monotonic() + timeout_s
        while (sum(count_trials(storage, study).values()) < k and procs[victim].poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.1)
        time.sleep(extra)
        kill_at = time.monotonic() - started
    at_kill = sum(count_trials(storage, study).values())
    exited_before = procs[victim].poll() is not None
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait(timeout=30)
    survivor = "worker" if victim == "calibrate" else "calibrate"
    restarted = start(victim, "r")
    codes = []
    problem = ""
    try:
        for p in (procs[survivor], restarted):
            try:
                codes.append(p.wait(timeout=timeout_s))
            except subprocess.TimeoutExpired:
                codes.append(None)
                problem = "timed out"
    finally:
        for p in (*procs.values(), restarted):
            if p.poll() is None:
                p.kill()
                p.wait()
    states = count_trials(storage, study)
    n = sum(states.values())
    unfinished = {s: c for s, c in states.items() if s not in ("COMPLETE", "PRUNED", "FAIL")}
    if not problem and codes != [0, 0]:
        failed = f"{'w' if survivor == 'worker' else 'c'}.err" if codes[0] != 0 else "r.err"
        tail = (run_dir / failed).read_text().strip().splitlines()[-1:] if (run_dir / failed).exists() else []
        problem = f"exit codes {codes}: {tail[0][:160] if tail else ''}"
    if not problem and n != budget:
        problem = f"{n} trials of a {budget} budget"
    if not problem and unfinished:
        problem = f"unfinished trials {unfinished}"
    note = " (victim had exited)" if exited_before else ""
    return Verdict(i, kind, storage.split(":")[0], victim + note, round(kill_at, 2), at_kill, n, budget, dict(states),
                   codes, round(time.monotonic() - started, 1), not problem, problem)


def _hog() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--storage", help="PostgreSQL URL (each run makes a study of its own in it)")
    where.add_argument("--sqlite", action="store_true", help="a fresh SQLite file per run")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=int, default=30, help="max_trials of each run")
    ap.add_argument("--delay", type=float, default=0.15, help="seconds each simulation sleeps")
    ap.add_argument("--hogs", type=int, default=2, help="busy processes beside the runs")
    ap.add_argument("--grace", type=float, default=20.0,
                    help="CALABARIA_GRACE_PERIOD_S (a killed coordinator on this host is lost at once anyway)")
    ap.add_argument("--json", type=Path, help="write the verdicts here")
    args = ap.parse_args(argv)

    hogs = [mp.get_context("spawn").Process(target=_hog, daemon=True) for _ in range(args.hogs)]
    for h in hogs:
        h.start()
    load0 = os.getloadavg()
    verdicts: list[Verdict] = []
    started = time.monotonic()
    interrupted = False
    try:
        with tempfile.TemporaryDirectory(prefix="kill-campaign-") as tmp:
            for i in range(args.runs):
                if interrupted:
                    break
                storage = args.storage or f"sqlite:///{tmp}/run{i}.db"
                try:
                    v = one_run(i, args.seed, storage, Path(tmp), budget=args.budget, delay=args.delay, grace_s=args.grace)
                except KeyboardInterrupt:  # Ctrl-C: the run in progress is dropped, the finished ones summarised
                    interrupted = True
                    continue
                verdicts.append(v)
                print(f"{v.run:>3} {v.kind:<11} {v.storage:<10} {v.victim:<28} kill@{v.kill_at_s:>5.1f}s "
                      f"asked@kill={v.trials_at_kill:>3} trials={v.trials:>3}/{v.budget} "
                      f"{','.join(f'{k}={c}' for k, c in sorted(v.states.items())):<30} exit={v.exit_codes} "
                      f"{v.wall_s:>6.1f}s {'ok' if v.ok else 'FAIL ' + v.problem}", flush=True)
    finally:
        for h in hogs:
            h.terminate()
        for h in hogs:
            h.join(timeout=10)
    load1 = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps([asdict(v) for v in verdicts], indent=1))
    failed = [v for v in verdicts if not v.ok]
    kinds = Counter(v.kind for v in verdicts)
    print(f"SUMMARY: {len(verdicts) - len(failed)}/{len(verdicts)} runs exact and all terminal "
          f"({', '.join(f'{c} {k}' for k, c in kinds.items())}; storage {verdicts[0].storage if verdicts else '-'}; "
          f"{args.hogs} CPU hogs; load {load0[0]:.1f} -> {load1[0]:.1f}; {time.monotonic() - started:.0f} s)"
          + (f"; failed runs: {[v.run for v in failed]}" if failed else "")
          + (f"; interrupted after {len(verdicts)} of {args.runs} runs" if interrupted else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
