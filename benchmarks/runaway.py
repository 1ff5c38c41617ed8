"""A runaway CPU-bound model against one that merely sleeps: does a timeout still cost only the timeout?

    python benchmarks/runaway.py --trials 60 --replicates 2 --timeout 1.0 --hang-above 0.8 \
        --local-workers 2 --repeats 2 --json OUT

Two models, loaded by the service from this file, identical except in how they hang:
for ``x0 > hang_above`` (20% of the space by default), ``spins`` busy-loops forever in
pure Python, ``sleeps`` sleeps for an hour; elsewhere both burn ``work_s`` of CPU and
return. Each run is one ``run_calibration`` with the random sampler (so both runs hang
equally often: TPE ignores failed trials and would not steer away), ``timeout_s`` set,
in-memory storage and the service's own local cluster (``--local-workers`` processes,
one thread each), as ``calabaria calibrate`` without ``--scheduler`` runs it.

Without worker recycling, every spinning replicate leaves a thread burning a core for
the rest of the run and the spinning run slows down without limit; with it, the worker
that held the thread is restarted after the timeout. Reported per run: wall time of the
calibration (``RunResult.wall_time_s``: the loops, without cluster start-up), trials
told and failed; per repeat the ratio spins / sleeps; the median ratio at the end.
Runs are interleaved (spins, sleeps, spins, ...) so that load on the machine hits
both alike: compare ``loadavg_1m`` before trusting a difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _work(seconds: float) -> None:
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        x += 1


def _y(params) -> dict:
    return {"y": np.array([params["x0"], 2 * params["x0"] + params["x1"], 3.0])}


def spins(params, seed):
    """Busy-loops forever when x0 > hang_above; otherwise burns work_s of CPU."""
    if params["x0"] > params["hang_above"]:
        while True:
            pass
    _work(params["work_s"])
    return _y(params)


def sleeps(params, seed):
    """Sleeps an hour when x0 > hang_above; otherwise burns work_s of CPU."""
    if params["x0"] > params["hang_above"]:
        time.sleep(3600)
    _work(params["work_s"])
    return _y(params)


spins.outputs = sleeps.outputs = ("y",)


def run_once(model: str, args: argparse.Namespace, repeat: int) -> dict:
    from modelops_calabaria import Settings, run_calibration
    from modelops_calabaria.job import job_from_dict

    sys.path.insert(0, str(HERE))
    from _common import study_name

    job = job_from_dict({
        "study": study_name(f"runaway-{model}"),
        "model": f"{HERE / 'runaway.py'}:{model}",
        "parameters": {"x0": {"lower": 0.0, "upper": 1.0}, "x1": {"lower": 0.0, "upper": 1.0}},
        "fixed": {"hang_above": args.hang_above, "work_s": args.work},
        "targets": [{"name": "y", "output": "y", "data": {"index": [0, 1, 2], "y": [0.5, 1.3, 3.0]},
                     "index_column": "index", "score": "sse"}],
        "n_replicates": args.replicates,
        "max_trials": args.trials,
        "sampler": "random",
        "seed": args.seed + repeat,
        "timeout_s": args.timeout,
        "stop": {"max_consecutive_failures": args.trials},
    }, source="runaway benchmark", base_dir=HERE)
    settings = Settings(storage="memory", scheduler=None, local_workers=args.local_workers, log_format="json")
    started = time.monotonic()
    result = run_calibration(job, settings, output_dir=Path(args.out) / job.study, show_progress=False)
    return {"model": model, "repeat": repeat, "wall_s": result.wall_time_s, "total_s": round(time.monotonic() - started, 2),
            "told": result.this_run["told"], "failed": result.this_run["failed"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--replicates", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1.0, help="the job's timeout_s")
    p.add_argument("--work", type=float, default=0.2, help="CPU seconds of a replicate that does not hang")
    p.add_argument("--hang-above", type=float, default=0.8, help="x0 above this hangs (1 - this = share of trials)")
    p.add_argument("--local-workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="/tmp/calabaria-runaway", help="run directories")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from _common import machine, quiet_logging

    quiet_logging()
    before = machine()
    runs, ratios = [], []
    for repeat in range(args.repeats):
        pair = {}
        for model in ("spins", "sleeps"):
            row = run_once(model, args, repeat)
            runs.append(row)
            pair[model] = row["wall_s"]
            print(f"repeat {repeat} {model:6s} wall {row['wall_s']:7.1f} s  (with cluster start {row['total_s']:6.1f} s)  "
                  f"told {row['told']}, failed {row['failed']}", flush=True)
        ratios.append(round(pair["spins"] / pair["sleeps"], 3))
        print(f"repeat {repeat} spins/sleeps = {ratios[-1]:.2f}", flush=True)
    summary = {"median_ratio_spins_over_sleeps": statistics.median(ratios), "ratios": ratios}
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "machine_before": before, "machine_after": machine(),
                                               "runs": runs, **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
