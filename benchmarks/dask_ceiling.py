"""What Dask alone keeps busy on this machine: the ceiling under the service's utilisation.

    python benchmarks/dask_ceiling.py --scheduler tcp://127.0.0.1:8790 --mean-sim 0.06 --tasks 1500 --json OUT

No calibration, no storage: one client keeps a fixed number of sleep tasks in
flight (lognormal durations, sigma 0.5, mean ``--mean-sim``), refilling as each
finishes, and reports busy simulation-seconds / (slots x wall). Run once with
one simulation per task (80 in flight: 16 trials x 5 replicates) and once with
``--per-task 3`` (32 in flight: 16 trials x 2 tasks), the service's two shapes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

from distributed import Client, as_completed


def simulate(durations: list[float]) -> float:
    """One task: sleep each duration in turn; the seconds slept (as the service counts busy time)."""
    busy = 0.0
    for d in durations:
        started = time.perf_counter()
        time.sleep(d)
        busy += time.perf_counter() - started
    return busy


def measure(client: Client, per_task: int, in_flight: int, n_sims: int, mean_sim: float, seed: int) -> dict:
    rng = random.Random(seed)

    def durations() -> list[float]:
        return [mean_sim * math.exp(0.5 * rng.gauss(0, 1) - 0.125) for _ in range(per_task)]

    slots = sum(client.nthreads().values())
    tasks = n_sims // per_task
    started = time.perf_counter()
    pending = as_completed([client.submit(simulate, durations(), pure=False) for _ in range(min(in_flight, tasks))])
    submitted, busy = min(in_flight, tasks), 0.0
    for future in pending:
        busy += future.result()
        if submitted < tasks:
            pending.add(client.submit(simulate, durations(), pure=False))
            submitted += 1
    wall = time.perf_counter() - started
    return {"per_task": per_task, "in_flight": in_flight, "tasks": tasks, "slots": slots, "wall_s": round(wall, 3),
            "utilization": round(busy / (slots * wall), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scheduler", required=True)
    p.add_argument("--mean-sim", type=float, default=0.06)
    p.add_argument("--tasks", type=int, default=1500, help="simulations per measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_out", required=True)
    a = p.parse_args(argv)
    rows = []
    with Client(a.scheduler) as client:  # the default client: as_completed looks it up
        for per_task, in_flight in ((1, 80), (3, 32)):
            row = measure(client, per_task, in_flight, a.tasks, a.mean_sim, a.seed)
            rows.append(row)
            print(f"{per_task} simulation(s) per task, {in_flight} in flight: utilisation {row['utilization']:.3f} "
                  f"({row['wall_s']} s)", flush=True)
    Path(a.json_out).write_text(json.dumps({"config": vars(a), "results": rows}, indent=2) + "\n")
    print(f"wrote {a.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
