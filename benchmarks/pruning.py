"""Replicate-level pruning: simulations saved, and best loss at equal simulations.

    python benchmarks/pruning.py --seeds 10                       # both problems, 10 seeds each
    python benchmarks/pruning.py --problems seir --seeds 3 --quick # minutes: develop with this

For each problem and search seed, two calibrations of the same job (parallel
mode, one loop, ``scheduler: inline``, a SQLite study in a temporary
directory, TPE, in-sample best: ``reevaluate.top_k: 0``), every target with
``aggregation: mean_of_scores`` (the only aggregation pruning accepts):

- ``off``: no pruning, ``--trials`` trials, so ``trials x n_replicates`` simulations;
- ``on``: ``pruning`` as given by ``--after`` / ``--against`` / ``--error-rate``,
  ``--trials-on`` trials (more, so that its simulations pass the ``off`` run's).

With one loop trials are told in number order, so each run's cumulative
simulations (COMPLETE: ``n_replicates``; PRUNED: its ``replicates`` attribute)
and running best are curves over the trial number. Per seed:

- ``sims_to_reach``: simulations the ``on`` run needed to reach the ``off`` run's
  final best loss, over the ``off`` run's simulations (None: not reached);
- ``best_at_equal``: the ``on`` run's best loss at the ``off`` run's number of
  simulations, against the ``off`` run's final best.

Both runs share the job seed, hence the replicate seeds (common random
numbers): their in-sample losses are comparable. Problems: ``seir`` (the SEIR
demo, examples/seir) and ``age_seir`` (the built-in age-structured SEIR of
benchmarks/quality_epi.py), with ``--replicates`` replicates. Nothing asserts:
a table on stdout, everything in the JSON (``--json``) with the machine load
and the commit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """One calibration; its per-trial simulations and losses in trial order."""
    import logging
    import warnings

    import optuna

    from modelops_calabaria import Settings
    from modelops_calabaria.calibration.runner import run_calibration
    from modelops_calabaria.job import job_from_dict
    from modelops_calabaria.logging import configure_logging
    from quality_epi import HERE as QHERE, SEIR_DIR, problem_job

    configure_logging("json", level=logging.ERROR, stream=sys.stderr)
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    name, seed = spec["problem"], spec["seed"]
    data = problem_job(name, seed=seed, trials=spec["trials"], aggregation="mean_of_scores")
    data["n_replicates"] = spec["replicates"]
    data["reevaluate"] = {"top_k": 0}
    data["study"] = f"prune-{name}-{seed}-{spec['arm']}"
    if spec["arm"] == "on":
        data["pruning"] = {"after": spec["after"], "against": spec["against"], "error_rate": spec["error_rate"]}
    job = job_from_dict(data, source="pruning benchmark", base_dir=SEIR_DIR if name == "seir" else QHERE)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/s.db"
        settings = Settings(parallel_trials=True, storage=storage, scheduler="inline", local_workers=1, log_format="json")
        run_calibration(job, settings, output_dir=Path(tmp) / "run", concurrency=1, show_progress=False)
        trials = optuna.load_study(study_name=job.study, storage=storage).get_trials(deepcopy=False)
    wall = time.monotonic() - started
    trials.sort(key=lambda t: t.number)
    sims = [spec["replicates"] if t.state.name == "COMPLETE" else int(t.user_attrs.get("replicates", 0)) for t in trials]
    losses = [t.value if t.state.name == "COMPLETE" and t.value is not None else math.inf for t in trials]
    return {**spec, "wall_s": round(wall, 2), "sims": sims, "losses": losses,
            "states": [t.state.name for t in trials]}


def compare(off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    """The two per-seed measures (module docstring)."""
    budget = sum(off["sims"])
    best_off = min(off["losses"])
    spent, best, reached, at_equal = 0, math.inf, None, math.inf
    for s, loss in zip(on["sims"], on["losses"]):
        spent += s
        best = min(best, loss)
        if spent <= budget:
            at_equal = best
        if reached is None and best <= best_off:
            reached = spent
    return {
        "seed": off["seed"], "best_off": best_off, "best_on_at_equal": at_equal,
        "sims_off": budget, "sims_to_reach": reached,
        "ratio": None if reached is None else reached / budget,
        "pruned": on["states"].count("PRUNED"), "trials_on": len(on["states"]),
        "trials_on_at_equal": sum(1 for c in _cumsum(on["sims"]) if c <= budget),
    }


def _cumsum(xs: list[int]) -> list[int]:
    out, total = [], 0
    for x in xs:
        total += x
        out.append(total)
    return out


def _git() -> dict[str, Any]:
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"commit": run("rev-parse", "HEAD"), "dirty_src": bool(run("status", "--porcelain", "src"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default="seir,age_seir")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=80, help="trials of the unpruned run")
    ap.add_argument("--trials-on", type=int, default=None, help="trials of the pruned run (default 2 x --trials)")
    ap.add_argument("--replicates", type=int, default=4)
    ap.add_argument("--after", default="2", help="comma list: pruning.after")
    ap.add_argument("--against", type=int, default=1)
    ap.add_argument("--error-rate", type=float, default=0.05)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="40 / 80 trials")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    trials = 40 if args.quick else args.trials
    trials_on = args.trials_on or 2 * trials
    after = [int(a) for a in args.after.split(",")]
    specs = []
    for problem in args.problems.split(","):
        for seed in range(args.seeds):
            common = {"problem": problem, "seed": seed, "replicates": args.replicates}
            specs.append({**common, "arm": "off", "trials": trials})
            specs.append({**common, "arm": "on", "trials": trials_on, "after": after, "against": args.against,
                          "error_rate": args.error_rate})
    load0 = os.getloadavg()
    git = _git()  # before the runs: the code they ran
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.procs) as pool:
        rows = list(pool.map(run_one, specs))
    by = {(r["problem"], r["seed"], r["arm"]): r for r in rows}
    summary = []
    print(f"{'problem':9} {'seed':>4} {'best off':>12} {'on @ equal':>12} {'sims off':>8} {'on reach':>8} {'ratio':>6} {'pruned':>9}")
    for problem in args.problems.split(","):
        per_seed = []
        for seed in range(args.seeds):
            c = compare(by[(problem, seed, "off")], by[(problem, seed, "on")])
            per_seed.append(c)
            print(f"{problem:9} {seed:>4} {c['best_off']:>12.6g} {c['best_on_at_equal']:>12.6g} {c['sims_off']:>8} "
                  f"{c['sims_to_reach'] if c['sims_to_reach'] is not None else '-':>8} "
                  f"{c['ratio'] if c['ratio'] is None else round(c['ratio'], 3)!s:>6} {c['pruned']:>4}/{c['trials_on']}")
        ratios = [c["ratio"] if c["ratio"] is not None else math.inf for c in per_seed]
        row = {
            "problem": problem, "seeds": args.seeds,
            "median_ratio_sims_to_reach": statistics.median(ratios),
            "reached": sum(c["ratio"] is not None for c in per_seed),
            "median_best_off": statistics.median(c["best_off"] for c in per_seed),
            "median_best_on_at_equal": statistics.median(c["best_on_at_equal"] for c in per_seed),
            "on_better_or_equal_at_equal": sum(c["best_on_at_equal"] <= c["best_off"] for c in per_seed),
            "median_pruned_fraction": statistics.median(c["pruned"] / c["trials_on"] for c in per_seed),
            "per_seed": per_seed,
        }
        summary.append(row)
        print(f"{problem}: median sims to reach the unpruned best = {row['median_ratio_sims_to_reach']:.3f} x "
              f"(reached in {row['reached']}/{args.seeds}); median best at equal sims: on {row['median_best_on_at_equal']:.6g} "
              f"vs off {row['median_best_off']:.6g} (on <= off in {row['on_better_or_equal_at_equal']}/{args.seeds}); "
              f"median pruned fraction {row['median_pruned_fraction']:.2f}")
    out = {
        "args": vars(args) | {"json": str(args.json) if args.json else None, "trials": trials, "trials_on": trials_on},
        "machine": {"cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg()},
        "wall_s": round(time.monotonic() - started, 1), **git, "summary": summary, "runs": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
