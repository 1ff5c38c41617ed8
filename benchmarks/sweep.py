"""The SEIR demo's Saltelli sweep on PostgreSQL with two coordinators, one SIGKILLed and restarted.

``calabaria sweep`` (coordinator A) and ``calabaria worker`` (coordinator B) share a local Dask
cluster and a PostgreSQL study, ``--workers`` loops each. When A has asked ``--kill-after``
trials it is SIGKILLed and started again. At the end: every design row must have exactly one
COMPLETE trial, the ledger's claims equal the trials, and sensitivity.json holds the indices.
Results in docs/sensitivity.md.

    .venv/bin/python benchmarks/sweep.py --pg postgresql://postgres@127.0.0.1:5432/test \\
        --points 1024 --replicates 2 --workers 16 --json /tmp/sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import local_cluster, machine, masked  # noqa: E402

from modelops_calabaria.backend.factory import open_optuna_storage, open_store  # noqa: E402
from modelops_calabaria.job.sweep import POINT_ATTR  # noqa: E402
from modelops_calabaria.storage import parse_storage_url  # noqa: E402

CLI = [sys.executable, "-m", "modelops_calabaria"]


def trials_of(pg: str, study: str) -> list:
    try:
        return optuna.load_study(study_name=study, storage=open_optuna_storage(parse_storage_url(pg), 1)).get_trials(deepcopy=False)
    except KeyError:
        return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", required=True)
    ap.add_argument("--points", type=int, default=1024)
    ap.add_argument("--replicates", type=int, default=2)
    ap.add_argument("--workers", type=int, default=16, help="loops per coordinator")
    ap.add_argument("--kill-after", type=int, default=500, help="trials asked by A before it is killed")
    ap.add_argument("--dask-workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp") / f"sweep-bench-{uuid.uuid4().hex[:6]}")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    study = f"seir-sweep-{uuid.uuid4().hex[:8]}"
    job = yaml.safe_load((ROOT / "examples" / "seir" / "job.yaml").read_text())
    job["targets"][0]["data"] = str(ROOT / "examples" / "seir" / "cases.csv")
    job.update(study=study, sweep={"design": "sobol", "points": args.points, "replicates": args.replicates,
                                   "summaries": [{"output": "cases", "stat": "peak"}, {"output": "cases", "stat": "peak_time"},
                                                 {"output": "cases", "stat": "sum"}, {"output": "attack_rate"}]})
    path = args.out / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    rows = args.points * (len(job["parameters"]) + 2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALABARIA_", "PARALLEL_TRIALS"))}
    env.update(CALABARIA_GRACE_PERIOD_S="5", CALABARIA_HEARTBEAT_INTERVAL_S="1")

    with local_cluster(scheduler=None, n_workers=args.dask_workers, threads_per_worker=args.threads) as address:
        def start(kind: str, out: str) -> subprocess.Popen:
            head = ["sweep", str(path)] if kind == "sweep" else ["worker", "--study", study, "--wait", "300"]
            log = open(args.out / f"{out}-{kind}-{int(time.time())}.log", "w")
            return subprocess.Popen([*CLI, *head, "--storage", args.pg, "--scheduler", address, "--workers", str(args.workers),
                                     "--output", str(args.out / out), "--log-format", "json"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=args.out)

        started = time.monotonic()
        a = start("sweep", "a")
        b = start("worker", "b")
        tag = f"-{a.pid}-"
        while True:
            time.sleep(0.5)
            mine = [t for t in trials_of(args.pg, study) if tag in str(t.system_attrs.get("calabaria:coordinator"))]
            if len(mine) >= args.kill_after or a.poll() is not None:
                break
        killed_at = time.monotonic() - started
        running_at_kill = sum(1 for t in mine if t.state == TrialState.RUNNING)
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
        a2 = start("sweep", "a")
        codes = {"restarted_sweep": a2.wait(), "worker": b.wait()}
        wall = time.monotonic() - started

    trials = trials_of(args.pg, study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    points = sorted(t.user_attrs[POINT_ATTR] for t in complete)
    lost = [t for t in trials if t.state == TrialState.FAIL]
    backend = open_store(parse_storage_url(args.pg), 1, read_only=True)
    try:
        claimed, budget = backend.ledger.budget(study)
    finally:
        backend.close()
    result = json.loads((args.out / "a" / "sensitivity.json").read_text())
    record = {
        "study": study, "storage": masked(args.pg), "rows": rows, "replicates": args.replicates, "loops_per_coordinator": args.workers,
        "exit_codes": codes, "wall_s": round(wall, 1), "killed_at_s": round(killed_at, 1), "a_trials_at_kill": len(mine),
        "a_running_at_kill": running_at_kill, "trials": len(trials), "complete": len(complete), "lost": len(lost),
        "every_row_once": points == list(range(rows)), "claimed": claimed, "budget": budget,
        "indices": {k: {key: v.get(key) for key in ("S1", "S1_conf", "ST", "ST_conf", "noise_share")} for k, v in result["outputs"].items()},
        "parameters": result["parameters"], "out": str(args.out), "machine": machine(),
    }
    print(json.dumps({k: v for k, v in record.items() if k not in ("machine",)}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
