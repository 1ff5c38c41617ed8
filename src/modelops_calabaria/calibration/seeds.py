"""Replicate seeds: a pure function of the job seed, the replicate index and (optionally) the trial."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

STAGE_TRIALS = 20  # trials per stage in ``staged`` mode
_REEVALUATION_KEY = 0xCA1B  # the fresh seeds of a re-evaluation: a key no trial seed uses


def _seed(key: list[int], r: int) -> int:
    return int(np.random.SeedSequence([*key, r]).generate_state(1, dtype=np.uint32)[0])


def replicate_seeds(job_seed: int, n_replicates: int, trial_number: int, mode: str = "common") -> list[int]:
    """Seeds for a trial's replicates.

    ``common`` (default): the same seeds in every trial (common random numbers),
    so that trials differ only by their parameters. ``independent``: seeds also
    depend on the trial number. ``staged``: common within a stage of
    ``STAGE_TRIALS`` consecutive trial numbers, fresh in the next stage.
    """
    if mode == "independent":
        key = [job_seed, trial_number + 1]
    elif mode == "staged":
        key = [job_seed, 0, trial_number // STAGE_TRIALS + 1]
    else:
        key = [job_seed]
    return [_seed(key, r) for r in range(n_replicates)]


def shares_seeds(mode: str, trial_a: int, trial_b: int) -> bool:
    """Whether replicate ``r`` of two trials runs on the same seed, for every ``r``."""
    if mode == "independent":
        return trial_a == trial_b
    if mode == "staged":
        return trial_a // STAGE_TRIALS == trial_b // STAGE_TRIALS
    return True


def used_seeds(job_seed: int, n_replicates: int, trial_numbers: Iterable[int], mode: str = "common") -> set[int]:
    """Every replicate seed the trials ``trial_numbers`` ran with."""
    out: set[int] = set()
    for number in trial_numbers:
        out.update(replicate_seeds(job_seed, n_replicates, number, mode))
    return out


def fresh_seeds(job_seed: int, n: int, exclude: set[int], round_: int = 0) -> list[int]:
    """``n`` distinct seeds, none in ``exclude`` (the trials' seeds), reproducible from
    the job seed; ``round_`` gives another independent set (a later re-evaluation)."""
    out: list[int] = []
    r = 0
    while len(out) < n:
        s = _seed([job_seed, _REEVALUATION_KEY, round_], r)
        if s not in exclude and s not in out:
            out.append(s)
        r += 1
    return out
