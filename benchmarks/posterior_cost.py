"""Posterior cost per stage: time per 1,000 trials as the study grows, on a cheap model.

    python benchmarks/posterior_cost.py --storage postgresql://postgres@127.0.0.1:5432/DB [--trials 10000]

One posterior run (the line model of tests/support/posterior_models.py: microseconds per
simulation, so the time is the service's and the sampler's), parallel loops, inline
backend, re-evaluation off. Afterwards the study's completion times give the wall time of
each block of 1,000 trials; the claim is that it stays flat (last/first ≤ 1.3) because an
IMIS stage reads only the trials newer than its cursor and updates the weights
incrementally. It also times one stage both ways at the final study size: the
from-scratch form (read every trial, weigh them all) and the incremental one (read the
last ``per_stage`` trials, fold them in, weigh).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, study_name  # noqa: E402

from modelops_calabaria import Settings, run_calibration  # noqa: E402
from modelops_calabaria.backend.factory import open_store  # noqa: E402
from modelops_calabaria.job import job_from_dict  # noqa: E402
from modelops_calabaria.logging import configure_logging  # noqa: E402
from modelops_calabaria.storage import parse_storage_url  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", required=True)
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--loops", type=int, default=2)
    ap.add_argument("--blocks-only", action="store_true",
                    help="only the time per 1,000 trials (runs on code without posterior/incremental.py, for a before/after)")
    args = ap.parse_args()
    configure_logging("json", level=logging.WARNING, stream=sys.stderr)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    y = [1.0 + 0.8 * t + e for t, e in zip(range(1, 7), (0.3, -0.4, 0.1, 0.5, -0.2, -0.6))]
    per_stage = 50
    job = job_from_dict({
        "study": study_name("posterior-cost"), "model": f"{ROOT / 'tests/support/posterior_models.py'}:line",
        "parameters": {"a": {"lower": -10.0, "upper": 10.0}, "b": {"lower": -5.0, "upper": 5.0}},
        "targets": [{"name": "y", "output": "y", "data": {"i": list(range(6)), "y": y},
                     "score": {"kind": "normal_nll", "sigma": 0.5}}],
        "n_replicates": 1, "max_trials": args.trials, "seed": 1, "reevaluate": {"top_k": 0},
        "posterior": {"initial": 200, "per_stage": per_stage},
    }, base_dir=ROOT)
    settings = Settings(parallel_trials=True, storage=args.storage, scheduler="inline", local_workers=args.loops,
                        log_format="json")
    load_before = machine()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as out:
        result = run_calibration(job, settings, output_dir=Path(out) / "run", show_progress=False)
    wall = time.monotonic() - started
    store = open_store(parse_storage_url(args.storage))
    try:
        sid = store.study_id(job.study)
        storage = store.optuna_storage
        trials = storage.get_all_trials(sid, deepcopy=False)
        done = sorted(t.datetime_complete for t in trials if t.datetime_complete is not None)
        blocks = []
        for k in range(1000, len(done) + 1, 1000):
            start = done[k - 1000] if k > 1000 else min(t.datetime_start for t in trials if t.datetime_start)
            blocks.append(round((done[k - 1] - start).total_seconds(), 1))
        stage = None if args.blocks_only else stage_both_ways(job, store, sid, per_stage)
    finally:
        store.close()
    report = {
        "trials": len(trials), "wall_s": round(wall, 1), "ess": (result.posterior or {}).get("ess"),
        "seconds_per_1000_trials": blocks,
        "last_over_first": round(blocks[-1] / blocks[0], 2) if len(blocks) > 1 else None,
        "stage_at_final_size_s": stage, "machine_before": load_before, "machine_after": machine(),
    }
    print(json.dumps(report, indent=1))


def stage_both_ways(job, store, sid: int, per_stage: int) -> dict:
    """One stage at the study's final size: from scratch (read all, weigh all) and incremental."""
    from modelops_calabaria.posterior.incremental import MixtureState
    from modelops_calabaria.posterior.prior import joint_prior
    from modelops_calabaria.posterior.records import parse_records, weigh

    storage = store.optuna_storage
    prior = joint_prior(job.parameters)
    t0 = time.monotonic()
    every = storage.get_all_trials(sid, deepcopy=False)
    attrs = storage.get_study_system_attrs(sid)
    weigh(prior, every, attrs)
    full_s = time.monotonic() - t0
    state = MixtureState(prior)
    components, sources = parse_records(attrs)
    for cid, c in components.items():
        state.add_component(cid, c)
    stored, top = store.trials_since(sid, -1, set(), set())
    ids = sorted(s.trial_id for s in stored)
    state.add_trials([s.trial for s in stored if s.trial_id <= ids[-per_stage - 1]], sources)
    t0 = time.monotonic()
    new, _ = store.trials_since(sid, ids[-per_stage - 1], set(), set())
    state.add_trials([s.trial for s in new], sources)
    state.sample()
    incremental_s = time.monotonic() - t0
    return {"from_scratch": round(full_s, 3), "incremental": round(incremental_s, 3)}


if __name__ == "__main__":
    main()
