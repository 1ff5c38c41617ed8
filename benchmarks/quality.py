"""Sample quality of the fast path against plain Optuna ask/tell, on the same budget.

    python benchmarks/quality.py --trials 400 --seeds 16 --threads 4 --json OUT

For each seed and each path, ``--threads`` threads share one in-memory study
and run ask -> evaluate -> tell until ``--trials`` trials are told, on two test
functions (Rosenbrock in 2-D, and a 4-D Styblinski-Tang shifted to minimum 0).
Paths:

- ``plain``: ``study.ask`` / ``study.tell`` (TPE, multivariate, constant liar);
- ``fast``: the service's MirroredAsker with the sampler in this process
  (bounded mirror: the window matters once trials exceed it);
- ``fast_process``: the same with the sampler in a child process.

Reported per function and path: the geometric mean and the median of the best
loss over the seeds (lower is better). The functions cost nothing, so thread
timing decides how stale each ask's view is: compare paths over many seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import threading
import time
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution

from modelops_calabaria.calibration.asktell import DirectAsker, MirroredAsker


def rosenbrock(p: dict) -> float:
    return (1 - p["x0"]) ** 2 + 100 * (p["x1"] - p["x0"] ** 2) ** 2


def styblinski_tang(p: dict) -> float:
    xs = [p[f"x{i}"] for i in range(4)]
    return sum(x**4 - 16 * x**2 + 5 * x for x in xs) / 2 + 39.16616570377142 * 4


FUNCTIONS = {
    "rosenbrock_2d": (rosenbrock, {f"x{i}": FloatDistribution(-5, 5) for i in range(2)}),
    "styblinski_tang_4d": (styblinski_tang, {f"x{i}": FloatDistribution(-5, 5) for i in range(4)}),
}


def tpe(seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)


def run(path: str, fn, space: dict, seed: int, trials: int, threads: int) -> float:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), sampler=tpe(seed))
    if path == "plain":
        asker = DirectAsker(study, space, "q")
    else:
        asker = MirroredAsker(study, space, "q", tpe(seed), prefetch=max(1, threads // 4),
                              sampler_process=(path == "fast_process"))
    counter = iter(range(trials))
    lock = threading.Lock()

    def loop() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            t = asker.ask()
            value = fn(t.params)
            asker.tell_complete(t, value, {"f": value}, 0.0)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    asker.close()
    return study.best_value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=400)
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--paths", default="plain,fast,fast_process")
    p.add_argument("--json", dest="json_out", required=True)
    a = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    paths = [x for x in a.paths.split(",") if x]
    out: dict = {"config": vars(a), "results": {}}
    for name, (fn, space) in FUNCTIONS.items():
        out["results"][name] = {}
        for path in paths:
            started = time.monotonic()
            best = [run(path, fn, space, seed, a.trials, a.threads) for seed in range(a.seeds)]
            logs = [math.log(max(b, 1e-12)) for b in best]
            row = {"geomean_best": math.exp(statistics.mean(logs)), "median_best": statistics.median(best),
                   "wall_s": round(time.monotonic() - started, 1), "best": best}
            out["results"][name][path] = row
            print(f"{name:20s} {path:13s} geomean {row['geomean_best']:.4g}  median {row['median_best']:.4g}  "
                  f"({row['wall_s']} s)", flush=True)
    Path(a.json_out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
