"""Throughput and slot utilisation of the real service: parallel loops vs batched rounds.

    python benchmarks/throughput.py --storage URL --mode parallel|batched|both \\
        --slots 20 --loops 16 --replicates 5 --mean-sim 0.06 --trials 300 --json OUT \\
        [--model sleepy|cpu] [--seed N] [--batch-size K] [--cluster processes|threads] [--scheduler ADDR]

Each mode is one ``run_calibration`` call (the public API, exactly what
``calabaria calibrate`` runs) on a fresh study with a unique name, against a
Dask cluster started once here and shared by both modes. The model is
``benchmarks/synthetic.py`` (lognormal durations with mean ``--mean-sim``).
Reported, from the service's own ``RunResult``:

- ``utilization``: busy simulation-seconds / (slots x wall time of the wire);
- ``trials_per_s``: trials told / wall time; ``ideal_trials_per_s`` = slots / (replicates x mean_sim);
- ``ask_ms_*`` / ``tell_ms_*``: the service's ask and tell latencies (p50, p95).

Cluster (unless ``--scheduler`` names an external one):

- ``sleepy`` (default), ``--cluster processes`` (default): 2 worker processes x
  slots/2 threads (1 x slots when slots is odd). A sleeping replicate releases
  the GIL, so 10 threads per process share a core without slowing each other,
  and 20 slots fit on 2 cores. Worker processes keep the Dask worker machinery
  (task deserialisation, result handling, heartbeats) off the coordinator's GIL,
  where the 16 loops run TPE: with ``--cluster threads`` (``processes=False``,
  one in-process worker with ``slots`` threads) every task's Python overhead
  competes with the coordinator and the measured utilisation is the
  coordinator's plus the workers' GIL contention, not the coordinator's alone.
  The LocalCluster's scheduler runs in this process in both cases, as it does
  for ``calabaria calibrate`` without ``--scheduler``.
- ``cpu``: one single-threaded worker process per core (slots = cores; ``--slots``
  is ignored): a CPU-bound model cannot run more simulations than cores. The
  coordinator shares those cores, so this measures the coordinator's CPU cost too.

Trials at once:

- parallel: ``--loops`` loops (the job's ``concurrency``);
- batched: ``--batch-size`` if given, else ceil(slots / replicates), the
  service's own default (one round fills every slot once: 4 trials x 5
  replicates = 20 tasks). ``--loops`` is NOT used for batched: batches of 16
  would be 80 tasks per round on 20 slots, i.e. 4 TPE-blind waves per round,
  a configuration nobody would choose; pass ``--batch-size`` to measure one anyway.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    local_cluster,
    machine,
    make_job,
    make_settings,
    masked,
    parse_setting_overrides,
    print_table,
    quiet_logging,
    settings_record,
    study_name,
    warm_up,
)

from modelops_calabaria import run_calibration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", required=True, help="memory | sqlite:///path.db | journal:///path.log | postgresql://...")
    p.add_argument("--mode", choices=["parallel", "batched", "both"], default="both")
    p.add_argument("--slots", type=int, default=20, help="Dask slots (worker threads) for the sleepy model")
    p.add_argument("--loops", type=int, default=16, help="parallel mode: trials at once (loops)")
    p.add_argument("--batch-size", type=int, default=None, help="batched mode: trials per round (default ceil(slots/replicates))")
    p.add_argument("--replicates", type=int, default=5)
    p.add_argument("--mean-sim", type=float, default=0.06, help="mean simulation duration, seconds")
    p.add_argument("--trials", type=int, default=300, help="trial budget of each run")
    p.add_argument("--json", dest="json_out", required=True, help="write the results here")
    p.add_argument("--model", choices=["sleepy", "cpu"], default="sleepy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cluster", choices=["processes", "threads"], default="processes",
                   help="sleepy model: 2 worker processes (default) or one in-process threaded worker")
    p.add_argument("--scheduler", default=None, help="use this Dask scheduler instead of starting a LocalCluster")
    p.add_argument("--setting", action="append", metavar="KEY=VALUE",
                   help="extra Settings field for both modes, e.g. --setting heartbeat_interval_s=5 (repeatable)")
    a = p.parse_args(argv)
    a.overrides = parse_setting_overrides(a.setting)
    for name in ("slots", "loops", "replicates", "trials"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
    if a.batch_size is not None and a.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if a.mean_sim < 0:
        p.error("--mean-sim must be >= 0")
    return a


def cluster_shape(a: argparse.Namespace) -> dict[str, Any]:
    if a.model == "cpu":
        cores = os.cpu_count() or 1
        if a.slots != cores:
            print(f"note: --model cpu uses one single-threaded worker process per core: {cores} slots (not {a.slots})", file=sys.stderr)
        return {"n_workers": cores, "threads_per_worker": 1, "processes": True}
    if a.cluster == "threads":
        return {"n_workers": 1, "threads_per_worker": a.slots, "processes": False}
    workers = 2 if a.slots % 2 == 0 else 1
    return {"n_workers": workers, "threads_per_worker": a.slots // workers, "processes": True}


def run_mode(mode: str, a: argparse.Namespace, address: str, slots: int) -> dict[str, Any]:
    parallel = mode == "parallel"
    at_once = a.loops if parallel else (a.batch_size or max(1, math.ceil(slots / a.replicates)))
    job = make_job(study=study_name(f"tp-{mode}"), model=a.model, trials=a.trials, replicates=a.replicates,
                   concurrency=at_once, mean_sim=a.mean_sim, seed=a.seed)
    settings = make_settings(parallel=parallel, storage=a.storage, scheduler=address, overrides=a.overrides)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="calabaria-bench-") as tmp:
        r = run_calibration(job, settings, output_dir=Path(tmp) / "run", show_progress=False)
    call_s = time.perf_counter() - t0
    told = r.this_run["told"]
    wall = r.wall_time_s
    lat = r.latency_ms
    busy = r.utilization * r.slots * wall  # simulation-seconds, as the service counted them
    return {
        "mode": mode,
        "storage": masked(a.storage),
        "model": a.model,
        "utilization": r.utilization,
        "trials_per_s": round(told / wall, 3) if wall > 0 else None,
        "ideal_trials_per_s": round(r.slots / (a.replicates * a.mean_sim), 3) if a.mean_sim > 0 else None,
        "ask_ms_p50": lat.get("ask_p50"),
        "ask_ms_p95": lat.get("ask_p95"),
        "tell_ms_p50": lat.get("tell_p50"),
        "tell_ms_p95": lat.get("tell_p95"),
        "wall_time_s": wall,
        "call_time_s": round(call_s, 3),
        "trials": told,
        "trials_completed": r.this_run["completed"],
        "trials_failed": r.this_run["failed"],
        "trial_states": r.trials,
        "slots": r.slots,
        "loops": r.concurrency,
        **({"batch_size": r.concurrency} if not parallel else {}),
        "replicates": a.replicates,
        "mean_sim": a.mean_sim,
        "mean_replicate_s": round(busy / (told * a.replicates), 4) if told else None,
        "best_loss": r.best_loss,
        "study": r.study,
        "seed": a.seed,
        "loadavg_1m_before": round(load_before, 2),
        "settings": settings_record(settings),
    }


COLUMNS = [
    ("mode", "mode", ""), ("slots", "slots", "d"), ("loops", "at once", "d"), ("trials", "trials", "d"),
    ("wall_time_s", "wall s", ".2f"), ("trials_per_s", "trials/s", ".2f"), ("ideal_trials_per_s", "ideal/s", ".1f"),
    ("utilization", "util", ".3f"), ("mean_replicate_s", "rep s", ".4f"),
    ("ask_ms_p50", "ask p50", ".1f"), ("ask_ms_p95", "ask p95", ".1f"),
    ("tell_ms_p50", "tell p50", ".1f"), ("tell_ms_p95", "tell p95", ".1f"),
]


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    quiet_logging()
    shape = cluster_shape(a)
    modes = ["parallel", "batched"] if a.mode == "both" else [a.mode]
    env = machine()
    results: dict[str, dict[str, Any]] = {}
    with local_cluster(scheduler=a.scheduler, **shape) as address:
        slots = warm_up(address, a.model, a.overrides)
        where = ("external scheduler" if a.scheduler else
                 "{n_workers} worker(s) x {threads_per_worker} thread(s), processes={processes}".format(**shape))
        print(f"storage {masked(a.storage)}, model {a.model}, {slots} slots ({where}), "
              f"{a.replicates} replicates, mean sim {a.mean_sim} s, {a.trials} trials per mode", flush=True)
        for mode in modes:
            results[mode] = run_mode(mode, a, address, slots)
            results[mode]["cluster"] = {"scheduler": "external" if a.scheduler else "LocalCluster", **shape}
            results[mode]["machine"] = env
    if len(modes) == 1:
        print_table([results[modes[0]]], COLUMNS)
    if len(modes) == 2:
        print_table([results[m] for m in modes], COLUMNS)
        p, b = results["parallel"], results["batched"]
        ratio = round(p["trials_per_s"] / b["trials_per_s"], 3) if b["trials_per_s"] else None
        out: dict[str, Any] = {
            "parallel": p, "batched": b, "ratio_parallel_over_batched": ratio,
            "ratio_utilization_parallel_over_batched": round(p["utilization"] / b["utilization"], 3) if b["utilization"] else None,
        }
        print(f"parallel / batched trials/s: {ratio}")
    else:
        out = results[modes[0]]
    Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json_out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
