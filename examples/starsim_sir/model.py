"""An agent-based SIR model from starsim (https://starsim.org), wrapped as a calabaria model.

The wrapper is the whole protocol: a function of ``(params, seed)`` that builds the
simulator from the parameters, seeds it, runs it and returns named outputs. Here
one output, ``cases``: a table with a ``date`` key column (the first day of each
weekly step) and the week's new infections.

starsim must be importable by the service's Python and by every Dask worker
(``pip install starsim``).
"""

from __future__ import annotations

import numpy as np
import starsim as ss

START = "2024-01-01"
STOP = "2024-05-01"
STEP_DAYS = 7


def sir(params, seed):
    """Weekly new infections of a starsim SIR epidemic on a random contact network.

    Parameters: ``beta`` (transmission probability per contact per day), ``init_prev``
    (fraction infected at the start); optional ``n_agents`` (10000), ``n_contacts`` (4),
    ``dur_inf`` (mean infectious days, 8).
    """
    sim = ss.Sim(
        n_agents=int(params.get("n_agents", 10_000)),
        diseases=ss.SIR(beta=ss.perday(float(params["beta"])), init_prev=float(params["init_prev"]),
                        dur_inf=ss.lognorm_ex(mean=ss.days(float(params.get("dur_inf", 8.0))))),
        networks=ss.RandomNet(n_contacts=int(params.get("n_contacts", 4))),
        start=START, stop=STOP, dt=ss.days(STEP_DAYS), rand_seed=int(seed), verbose=0,
    )
    sim.run()
    new = np.asarray(sim.results.sir.new_infections.values, dtype=float)
    dates = np.datetime64(START) + STEP_DAYS * np.arange(len(new))
    return {"cases": {"date": dates.astype(str), "cases": new}}


sir.outputs = ("cases",)
