"""Imported once by the fork server of local worker processes (:mod:`.forkserver`): loads the
model named in ``CALABARIA_PRELOAD_MODEL``, so that every forked worker inherits it and its
imports. A model that fails to load is left to the workers (the first replicate reports it).
The server becomes a child sub-reaper (:mod:`.containment`)."""

from modelops_calabaria.simulation.containment import become_subreaper
from modelops_calabaria.simulation.worker_setup import load_run_model

become_subreaper()  # what a dead worker's model left running is re-parented here, where it can be found
load_run_model()
