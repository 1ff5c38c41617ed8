"""Imported once by the fork server of local worker processes (:mod:`.forkserver`): loads the
model named in ``CALABARIA_PRELOAD_MODEL``, so that every forked worker inherits it and its
imports. A model that fails to load is left to the workers (the first replicate reports it)."""

from modelops_calabaria.simulation.worker_setup import load_run_model

load_run_model()
