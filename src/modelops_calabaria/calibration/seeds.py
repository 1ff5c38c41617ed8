"""Replicate seeds: a pure function of the job seed, the replicate index and (optionally) the trial."""

from __future__ import annotations

import numpy as np


def replicate_seeds(job_seed: int, n_replicates: int, trial_number: int, mode: str = "common") -> list[int]:
    """Seeds for a trial's replicates.

    ``common`` (default): the same seeds in every trial (common random numbers),
    so that trials differ only by their parameters. ``independent``: seeds also
    depend on the trial number.
    """
    key = [job_seed] if mode == "common" else [job_seed, trial_number + 1]
    return [int(np.random.SeedSequence([*key, r]).generate_state(1, dtype=np.uint32)[0]) for r in range(n_replicates)]
