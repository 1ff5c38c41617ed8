"""Projection overhead beyond the simulations themselves, measured side by side.

    python benchmarks/projection_overhead.py [--example seir|age_seir] [--draws 200] [--replicates 2] [--trials 40]

1. Calibrates the example into a temporary run directory (inline, small budget: only its
   parameter sets are needed).
2. **Projection**: ``project(...)`` in this process on the inline service with ONE thread,
   so every CPU-second it costs is this process's: reading the run, planning, the
   simulations with their probes, the chunk files, the Parquet/CSV/hub files, the figures
   and projection.html. Measured with ``time.process_time()``.
3. **Bare simulations**: the very same (parameters, seed) pairs the projection ran (read
   back from its plan), each a plain call of the model function, nothing else; the same clock.

4. **Run phase alone**: the plan run again into a fresh journal (probes, journal lines, the
   inline service's threads), without reading the run or writing any output.

Overhead = (projection CPU - bare CPU) / bare CPU; also the run phase's own. The target is at
most 10 %. The whole projection includes fixed costs (imports of matplotlib and pyarrow, the
figures), which weigh more the cheaper and fewer the simulations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def calibrate(example: str, run: Path, trials: int) -> None:
    from modelops_calabaria import Settings, run_calibration
    from modelops_calabaria.job import load_job

    src = ROOT / "examples" / example
    job = yaml.safe_load((src / "job.yaml").read_text())
    job.update(max_trials=trials, report={"replicates": 0, "others": 0})
    for t in job["targets"]:
        t["data"] = str(src / t["data"])
    if ".py:" in job["model"]:
        job["model"] = str(src / job["model"])
    run.mkdir(parents=True)
    (run / "job.yaml").write_text(yaml.safe_dump(job))
    run_calibration(load_job(run / "job.yaml"), Settings(storage=f"sqlite:///{run / 'study.db'}", scheduler="inline"), output_dir=run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--example", default="seir", choices=["seir", "age_seir"])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--replicates", type=int, default=2)
    ap.add_argument("--trials", type=int, default=40)
    args = ap.parse_args()

    from modelops_calabaria.logging import configure_logging
    from modelops_calabaria.models import canonical_ref, load_model
    from modelops_calabaria.projection import project
    from modelops_calabaria.projection.api import read_run
    from modelops_calabaria.projection.draws import parameter_sets
    from modelops_calabaria.projection.run import plan_projection
    from modelops_calabaria.projection.spec import load_spec
    from modelops_calabaria.targets.evaluate import compile_targets

    configure_logging("json", level="WARNING")
    scenarios = ROOT / "examples" / args.example / "scenarios.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        calibrate(args.example, run, args.trials)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = project(run, scenarios, draws=args.draws, replicates=args.replicates, output=Path(tmp) / "proj",
                         scheduler="inline", local_workers=1, progress_stream=open(os.devnull, "w"))
        proj_cpu, proj_wall = time.process_time() - cpu0, time.perf_counter() - wall0

        # the same simulations, bare: the plan is rebuilt exactly as project() built it (same seed, same draws)
        job = read_run(run)
        model = load_model(canonical_ref(job.model, job.base_dir))
        sets = parameter_sets(run, list(job.parameters), {n: p.kind for n, p in job.parameters.items()})
        plan = plan_projection(job, model, compile_targets(job, model.outputs), sets, load_spec(scenarios),
                               draws=args.draws, replicates=args.replicates)
        calls = [(plan.params(s, d), seed) for s in range(len(plan.scenarios)) for d in range(len(plan.draws))
                 for seed in plan.seeds(s, d)]
        cpu0 = time.process_time()
        for params, seed in calls:
            model.run(params, seed)
        bare_cpu = time.process_time() - cpu0

        from modelops_calabaria.projection.run import run_plan
        from modelops_calabaria.projection.store import ChunkStore
        from modelops_calabaria.simulation import InlineSimulationService, SimContext

        store = ChunkStore(Path(tmp) / "again", plan.fingerprint())
        store.open({})
        service = InlineSimulationService(SimContext(plan.model_ref, {}, plan.probes, job.timeout_s), 1)
        cpu0 = time.process_time()
        run_plan(plan, service, store)
        run_cpu = time.process_time() - cpu0
        service.close()
        store.close()

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {"example": args.example, "scenarios": len(plan.scenarios), "draws": args.draws, "replicates": args.replicates,
           "simulations": len(calls), "projection_cpu_s": round(proj_cpu, 2), "projection_wall_s": round(proj_wall, 2),
           "bare_simulation_cpu_s": round(bare_cpu, 2), "overhead": round((proj_cpu - bare_cpu) / bare_cpu, 4),
           "run_phase_cpu_s": round(run_cpu, 2), "run_phase_overhead": round((run_cpu - bare_cpu) / bare_cpu, 4),
           "simulation_seconds_reported": result.facts["simulation_seconds_this_run"],
           "commit": commit, "python": platform.python_version(), "load_1min": round(os.getloadavg()[0], 2),
           "cores": os.cpu_count()}
    print(json.dumps(out, indent=1))
    sys.exit(0 if out["overhead"] <= 0.10 else 1)


if __name__ == "__main__":
    main()
