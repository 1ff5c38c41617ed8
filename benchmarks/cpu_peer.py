"""The simplest alternative to the service, for ``cpu_per_trial.py``: plain Optuna, one process per core.

    python benchmarks/cpu_peer.py --journal FILE --data DATA.json --trials 40 --replicates 3 \\
        [--processes 2] [--seed 0] [--fixed JSON]

The parent creates one study in a journal file (Optuna's ``JournalStorage``, its
recommended storage for processes on one machine), then forks ``--processes`` children
(``fork``: they inherit the parent's imports), each running ``study.optimize`` on that
study. The objective runs the replicates one after the other in-process (seeds
``1000 x trial + r``) and scores them as the service's job does: the sse of the
replicates' mean weekly incidence against the observed one (``score_of_mean``).
Trials are split evenly over the processes, so that exactly ``--trials`` run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_model import ibm_sir  # noqa: E402 - the user's model module, beside this file

BOUNDS = {"p_transmit": (0.01, 0.15), "p_recover": (0.05, 0.5)}


def objective_for(observed: np.ndarray, replicates: int, fixed: dict):
    def objective(trial: optuna.Trial) -> float:
        params = {**fixed, **{k: trial.suggest_float(k, lo, hi) for k, (lo, hi) in BOUNDS.items()}}
        series = [ibm_sir(params, 1000 * trial.number + r)["incidence"] for r in range(replicates)]
        return float(np.sum((np.mean(series, axis=0) - observed) ** 2))
    return objective


def work(journal: str, study_name: str, observed: list[float], replicates: int, n_trials: int, seed: int,
         fixed: dict) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective_for(np.asarray(observed), replicates, fixed), n_trials=n_trials)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--journal", required=True)
    p.add_argument("--data", required=True, help="JSON file: {'incidence': [...]}")
    p.add_argument("--trials", type=int, required=True)
    p.add_argument("--replicates", type=int, default=3)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fixed", default="{}", help="JSON: fixed model parameters (as the job's 'fixed')")
    a = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    observed = json.loads(Path(a.data).read_text())["incidence"]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(a.journal))
    name = "peer"
    optuna.create_study(study_name=name, storage=storage, direction="minimize")
    ctx = multiprocessing.get_context("fork")
    shares = [a.trials // a.processes + (1 if i < a.trials % a.processes else 0) for i in range(a.processes)]
    procs = [ctx.Process(target=work, args=(a.journal, name, observed, a.replicates, n, a.seed + i,
                                             json.loads(a.fixed)))
             for i, n in enumerate(shares) if n]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    study = optuna.load_study(study_name=name, storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    print(json.dumps({"trials": len(study.trials), "completed": len(done),
                      "best_loss": min((t.value for t in done), default=None)}))
    return 0 if all(proc.exitcode == 0 for proc in procs) else 1


if __name__ == "__main__":
    sys.exit(main())
