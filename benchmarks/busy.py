"""The service's slot utilisation against Dask's own ceiling with the same task shape, in one run.

    python benchmarks/busy.py --storage postgresql://... [--storage memory] --repeats 3 \\
        [--slots 20] [--replicates 5] [--mean-sim 0.06] [--trials 300] [--concurrency N | --also-fixed] --json OUT

One LocalCluster (2 worker processes x slots/2 threads, as ``throughput.py``) is
started here and shared by everything below. Each of ``--repeats`` rounds runs,
one after the other:

1. **service**: ``run_calibration`` in parallel mode (the ``sleepy`` model of
   ``synthetic.py``, ``concurrency: auto`` unless ``--concurrency``), once per
   ``--storage``. A scheduler plugin records every replicate task the service
   submits (keys ``calabaria-rep-<run>-<trial>-<first replicate>``), so its
   *task shape* is read from what it did, not assumed: replicates per task of
   each trial (the most common split, e.g. 2+2+1), tasks per trial, loops
   (``RunResult.concurrency``), the time-weighted mean of tasks in flight and
   of trials with a task in flight over the middle 80 % of the run.
2. **ceiling, refill per task**: a plain client keeps that many tasks in flight
   (``loops x tasks per trial``, and again at the service's measured mean in
   flight when that is higher), each sleeping lognormal durations (sigma 0.5,
   mean ``--mean-sim``) for the split's replicate counts in turn, a new task
   submitted as each one ends, until the same number of simulations ran.
3. **ceiling, refill per trial**: ``loops`` groups of the split's tasks in
   flight; a group is resubmitted only when all its tasks ended: what the
   service's loops would keep busy if asking and telling cost nothing.

With ``--also-fixed``, each round also runs the service with a fixed count of as
many loops as ``auto`` started (a fixed count runs one trial per loop at a time:
no look-ahead), alternately before and after the ``auto`` run, against the same
ceilings: the look-ahead's effect, measured in the same run.

Utilisation = busy simulation-seconds / (slots x wall), the service's own
definition. Printed per round and as medians: both utilisations and
**service / ceiling** (the ceiling at the larger of the two in-flight counts),
which, measured side by side, moves far less with the machine's load than
either figure alone.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import (
    machine,
    make_job,
    make_settings,
    masked,
    parse_setting_overrides,
    quiet_logging,
    settings_record,
    storage_list,
    study_name,
    warm_up,
)
import cloudpickle
import dask_ceiling
from dask_ceiling import simulate  # one task of the ceiling: sleep each duration in turn, return the seconds slept
from distributed import Client, LocalCluster, as_completed
from distributed.diagnostics.plugin import SchedulerPlugin

from modelops_calabaria import run_calibration

# Workers cannot import this directory's modules: the ceiling's task travels by value, as one defined here would.
cloudpickle.register_pickle_by_value(dask_ceiling)

PREFIX = "calabaria-rep-"
SIGMA = 0.5


class TaskLog(SchedulerPlugin):
    """Every replicate task of the service: (time, +1/-1, key) as it enters and leaves the scheduler's care."""

    name = "calabaria-busy-tasklog"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: set[str] = set()
        self.events: list[tuple[float, int, str]] = []

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        key = str(key)
        if not key.startswith(PREFIX):
            return
        now = time.perf_counter()
        with self._lock:
            if finish in ("waiting", "queued", "processing", "no-worker") and key not in self._active:
                self._active.add(key)
                self.events.append((now, +1, key))
            elif finish in ("memory", "erred", "released", "forgotten") and key in self._active:
                self._active.discard(key)
                self.events.append((now, -1, key))

    def take(self) -> list[tuple[float, int, str]]:
        with self._lock:
            out, self.events = self.events, []
            self._active.clear()
        return out


def _trial_of(key: str) -> tuple[str, int, int]:
    run, trial, first = key[len(PREFIX):].rsplit("-", 2)
    return run, int(trial), int(first)


def _weighted_mean(steps: list[tuple[float, int]], lo: float, hi: float) -> float:
    """Time-weighted mean of a step function given as (time, value from then on), over [lo, hi]."""
    total, value, at = 0.0, 0, lo
    for t, v in steps:
        if t > lo:
            total += value * (min(t, hi) - at)
            at = min(t, hi)
        value = v
        if t >= hi:
            break
    total += value * max(0.0, hi - at)
    return total / (hi - lo) if hi > lo else 0.0


def task_shape(events: list[tuple[float, int, str]], n_replicates: int) -> dict[str, Any]:
    """What the service submitted: the splits of its trials and what it kept in flight."""
    firsts: dict[tuple[str, int], set[int]] = {}
    tasks_steps: list[tuple[float, int]] = []
    trial_steps: list[tuple[float, int]] = []
    in_flight, per_trial = 0, Counter()
    for t, d, key in events:
        run, trial, first = _trial_of(key)
        firsts.setdefault((run, trial), set()).add(first)
        in_flight += d
        tasks_steps.append((t, in_flight))
        before = len(per_trial)
        per_trial[(run, trial)] += d
        if per_trial[(run, trial)] == 0:
            del per_trial[(run, trial)]
        if len(per_trial) != before:
            trial_steps.append((t, len(per_trial)))
    splits = Counter()
    for fs in firsts.values():
        edges = sorted(fs) + [n_replicates]
        splits[tuple(b - a for a, b in zip(edges, edges[1:]))] += 1
    split, count = splits.most_common(1)[0]
    t0, t1 = events[0][0], events[-1][0]
    lo, hi = t0 + 0.1 * (t1 - t0), t1 - 0.1 * (t1 - t0)
    return {
        "split": list(split), "split_share": round(count / len(firsts), 3), "tasks_per_trial": len(split),
        "splits": {"+".join(map(str, s)): c for s, c in splits.most_common()},
        "tasks": sum(len(fs) for fs in firsts.values()), "trials": len(firsts),
        "mean_tasks_in_flight": round(_weighted_mean(tasks_steps, lo, hi), 2),
        "mean_trials_in_flight": round(_weighted_mean(trial_steps, lo, hi), 2),
        "max_tasks_in_flight": max(v for _, v in tasks_steps),
    }


class Draws:
    def __init__(self, mean_sim: float, seed: int) -> None:
        self.rng, self.mean_sim = random.Random(seed), mean_sim

    def __call__(self, k: int) -> list[float]:
        return [self.mean_sim * math.exp(SIGMA * self.rng.gauss(0, 1) - SIGMA**2 / 2) for _ in range(k)]


def ceiling_per_task(client: Client, split: list[int], in_flight: int, n_sims: int, mean_sim: float, seed: int) -> dict[str, Any]:
    """Keep ``in_flight`` tasks running, sized by ``split`` in turn; refill each as it ends."""
    draws = Draws(mean_sim, seed)
    order = [split[i % len(split)] for i in range(n_sims)]  # sizes in turn, as trials split them
    left, i = n_sims, 0

    def next_task() -> Any:
        nonlocal left, i
        k = min(order[i], left)
        i, left = i + 1, left - k
        return client.submit(simulate, draws(k), pure=False)

    started = time.perf_counter()
    first = [next_task() for _ in range(in_flight) if left > 0]
    pending, busy = as_completed(first, loop=client.loop), 0.0
    for future in pending:
        busy += future.result()
        if left > 0:
            pending.add(next_task())
    wall = time.perf_counter() - started
    slots = sum(client.nthreads().values())
    return {"in_flight": in_flight, "wall_s": round(wall, 3), "utilization": round(busy / (slots * wall), 4)}


def ceiling_per_trial(client: Client, split: list[int], groups: int, n_sims: int, mean_sim: float, seed: int) -> dict[str, Any]:
    """Keep ``groups`` trials of ``split`` tasks running; a trial's group is resubmitted only when all its tasks ended."""
    draws, per_trial = Draws(mean_sim, seed), sum(split)
    trials_left = n_sims // per_trial
    waiting: dict[Any, int] = {}  # future -> group
    open_tasks: dict[int, int] = {}

    def start(group: int) -> list[Any]:
        nonlocal trials_left
        trials_left -= 1
        fs = [client.submit(simulate, draws(k), pure=False) for k in split]
        open_tasks[group] = len(fs)
        waiting.update({f: group for f in fs})
        return fs

    started = time.perf_counter()
    first = [f for g in range(groups) if trials_left > 0 for f in start(g)]
    pending, busy = as_completed(first, loop=client.loop), 0.0
    for future in pending:
        busy += future.result()
        g = waiting.pop(future)
        open_tasks[g] -= 1
        if open_tasks[g] == 0 and trials_left > 0:
            for f in start(g):
                pending.add(f)
    wall = time.perf_counter() - started
    slots = sum(client.nthreads().values())
    return {"groups": groups, "wall_s": round(wall, 3), "utilization": round(busy / (slots * wall), 4)}


def run_service(a: argparse.Namespace, storage: str, address: str, log: TaskLog, seed: int,
                concurrency: int | None) -> dict[str, Any]:
    job = make_job(study=study_name("busy"), model="sleepy", trials=a.trials, replicates=a.replicates,
                   concurrency=concurrency, mean_sim=a.mean_sim, seed=seed)
    settings = make_settings(parallel=True, storage=storage, scheduler=address, overrides=a.overrides)
    log.take()
    with tempfile.TemporaryDirectory(prefix="calabaria-busy-") as tmp:
        r = run_calibration(job, settings, output_dir=Path(tmp) / "run", show_progress=False)
    shape = task_shape(log.take(), a.replicates)
    return {"storage": masked(storage), "concurrency": "auto" if concurrency is None else concurrency, "utilization": r.utilization, "wall_s": r.wall_time_s, "loops": r.concurrency,
            "slots": r.slots, "told": r.this_run["told"], "completed": r.this_run["completed"],
            "trials_per_s": round(r.this_run["told"] / r.wall_time_s, 2), "ask_ms_p50": r.latency_ms.get("ask_p50"),
            "shape": shape, "settings": settings_record(settings)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", action="append", required=True, help="postgresql://... and/or memory (repeatable)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--slots", type=int, default=20)
    p.add_argument("--replicates", type=int, default=5)
    p.add_argument("--mean-sim", type=float, default=0.06)
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=None, help="fixed loops (default: auto, the service's default)")
    p.add_argument("--also-fixed", action="store_true",
                   help="each round, also run the service with a fixed count of as many loops as auto started "
                        "(one trial per loop at a time: the parallel mode without look-ahead), against the same ceilings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--setting", action="append", metavar="KEY=VALUE", help="extra Settings field (repeatable)")
    p.add_argument("--json", dest="json_out", required=True)
    a = p.parse_args(argv)
    a.overrides = parse_setting_overrides(a.setting)
    storages = storage_list(a.storage)
    if a.slots < 2 or a.slots % 2:
        p.error("--slots must be even and >= 2 (two worker processes)")
    quiet_logging()
    env = machine()
    n_sims = a.trials * a.replicates
    rounds: list[dict[str, Any]] = []
    cluster = LocalCluster(n_workers=2, threads_per_worker=a.slots // 2, processes=True, dashboard_address=None)
    try:
        log = TaskLog()
        cluster.scheduler.add_plugin(log)
        slots = warm_up(cluster.scheduler_address, "sleepy", a.overrides)
        print(f"{slots} slots (2 worker processes), {a.replicates} replicates, mean sim {a.mean_sim} s, {a.trials} trials, "
              f"storages {', '.join(masked(s) for s in storages)}, load {env['loadavg_1m']}", flush=True)
        auto_loops = None  # what auto started with in the previous round (odd rounds run the fixed count first)
        with Client(cluster.scheduler_address, set_as_default=False) as client:
            for rnd in range(a.repeats):
                for storage in storages:
                    fixed = None
                    if a.also_fixed and a.concurrency is None and rnd % 2:  # odd rounds: the fixed count first
                        fixed = run_service(a, storage, cluster.scheduler_address, log, a.seed + rnd, auto_loops)
                    svc = run_service(a, storage, cluster.scheduler_address, log, a.seed + rnd, a.concurrency)
                    auto_loops = svc["loops"]
                    if a.also_fixed and a.concurrency is None and not rnd % 2:
                        fixed = run_service(a, storage, cluster.scheduler_address, log, a.seed + rnd, auto_loops)
                    sh = svc["shape"]
                    nominal = svc["loops"] * sh["tasks_per_trial"]
                    measured = round(sh["mean_tasks_in_flight"])
                    seed = 1000 * rnd + 7
                    ceil_nominal = ceiling_per_task(client, sh["split"], nominal, n_sims, a.mean_sim, seed)
                    ceil_measured = (ceiling_per_task(client, sh["split"], measured, n_sims, a.mean_sim, seed)
                                     if measured > nominal else ceil_nominal)
                    ceil_trial = ceiling_per_trial(client, sh["split"], svc["loops"], n_sims, a.mean_sim, seed)
                    ceiling = max(ceil_nominal["utilization"], ceil_measured["utilization"])
                    row = {"round": rnd, "service": svc, "ceiling_per_task": ceil_nominal,
                           "ceiling_per_task_measured": ceil_measured, "ceiling_per_trial": ceil_trial,
                           "ratio": round(svc["utilization"] / ceiling, 4),
                           "ratio_per_trial_ceiling": round(ceil_trial["utilization"] / ceiling, 4)}
                    if fixed is not None:
                        row["fixed"] = fixed
                        row["ratio_fixed"] = round(fixed["utilization"] / ceiling, 4)
                    rounds.append(row)
                    print(f"round {rnd} {masked(storage)[:24]:24s} service {svc['utilization']:.3f} "
                          f"(loops {svc['loops']}, split {'+'.join(map(str, sh['split']))} in {sh['split_share']:.0%} of trials, "
                          f"tasks in flight {sh['mean_tasks_in_flight']:.1f}, trials in flight {sh['mean_trials_in_flight']:.1f}) | "
                          f"ceiling per task {ceil_nominal['utilization']:.3f} @{nominal}"
                          + (f", {ceil_measured['utilization']:.3f} @{measured}" if measured > nominal else "")
                          + f" | per trial {ceil_trial['utilization']:.3f} | service/ceiling {row['ratio']:.3f}"
                          + (f" | fixed {svc['loops']}: {fixed['utilization']:.3f} (tasks {fixed['shape']['mean_tasks_in_flight']:.1f}, "
                             f"trials {fixed['shape']['mean_trials_in_flight']:.1f}), /ceiling {row['ratio_fixed']:.3f}" if fixed else ""),
                          flush=True)
    finally:
        cluster.close(timeout=20)
    summary = {}
    for storage in storages:
        rows = [r for r in rounds if r["service"]["storage"] == masked(storage)]
        summary[masked(storage)] = {
            "median_service": statistics.median(r["service"]["utilization"] for r in rows),
            "median_ceiling_per_task": statistics.median(max(r["ceiling_per_task"]["utilization"],
                                                             r["ceiling_per_task_measured"]["utilization"]) for r in rows),
            "median_ceiling_per_trial": statistics.median(r["ceiling_per_trial"]["utilization"] for r in rows),
            "median_ratio": statistics.median(r["ratio"] for r in rows),
            "median_ratio_per_trial_ceiling": statistics.median(r["ratio_per_trial_ceiling"] for r in rows),
            "median_trials_in_flight": statistics.median(r["service"]["shape"]["mean_trials_in_flight"] for r in rows),
            "median_tasks_in_flight": statistics.median(r["service"]["shape"]["mean_tasks_in_flight"] for r in rows),
        }
        if all("fixed" in r for r in rows):
            summary[masked(storage)].update({
                "median_fixed": statistics.median(r["fixed"]["utilization"] for r in rows),
                "median_ratio_fixed": statistics.median(r["ratio_fixed"] for r in rows),
                "median_auto_over_fixed": statistics.median(r["service"]["utilization"] / r["fixed"]["utilization"] for r in rows),
                "median_trials_in_flight_fixed": statistics.median(r["fixed"]["shape"]["mean_trials_in_flight"] for r in rows),
            })
        s = summary[masked(storage)]
        print(f"median {masked(storage)}: service {s['median_service']:.3f}, ceiling per task {s['median_ceiling_per_task']:.3f}, "
              f"per trial {s['median_ceiling_per_trial']:.3f}; service/ceiling {s['median_ratio']:.3f} "
              f"(per-trial ceiling/ceiling {s['median_ratio_per_trial_ceiling']:.3f})"
              + (f"; fixed {s['median_fixed']:.3f}, fixed/ceiling {s['median_ratio_fixed']:.3f}, "
                 f"auto/fixed {s['median_auto_over_fixed']:.3f}" if "median_fixed" in s else ""))
    env["loadavg_1m_end"] = machine()["loadavg_1m"]
    out = {"config": {k: v for k, v in vars(a).items() if k not in ("storage", "overrides")}, "storages": [masked(s) for s in storages],
           "machine": env, "rounds": rounds, "summary": summary}
    Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json_out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.json_out} (load {env['loadavg_1m']} -> {env['loadavg_1m_end']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
