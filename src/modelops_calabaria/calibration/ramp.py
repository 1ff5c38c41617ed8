"""The concurrency ramp: trials in flight limited by how much the sampler knows (pure, no I/O).

With c trials in flight, each ask is made without the results of the c - 1
others: early in a run, when the sampler knows few trials, 16 loops spend many
trials on points one loop would not have tried (docs/quality.md, "Sample
efficiency with many trials at once"). The ramp lets the first wave of ``full``
trials go at once (the random start-up: the sampler knows nothing yet either
way), then holds the trials in flight to one per ``per`` finished trials, at
least ``floor``, widening to ``full`` as results come in:

    limit = full                                     while fewer than full trials were asked
    limit = min(full, max(floor, finished // per))   after

The wire's scheduler core (``scheduler/core.py``, through ``scheduler/rules.py``)
admits a new trial only while fewer than ``limit`` are in flight (parallel loops
wait, they do not exit), and sizes a batched round to ``limit``; ``full`` is its current target (the fixed concurrency, or
``elastic.target_loops`` of the live cluster), so the ramp only ever lowers it.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelops_calabaria.job import CalibrationJob, RampSpec


@dataclass(frozen=True)
class Ramp:
    """One trial in flight per ``per`` finished trials, at least ``floor`` (both >= 1)."""

    per: int
    floor: int = 2
    first: int | None = None  # trials of the first wave (None: full)

    def limit(self, asked: int, finished: int, full: int) -> int:
        """Trials allowed in flight after ``asked`` asks of which ``finished`` were told, out of ``full``.

        Never below 1 nor above ``max(1, full)``. After the first wave (``asked >= full``) it
        depends on ``finished`` only and never decreases as trials finish (for a fixed ``full``).
        """
        full = max(1, full)
        wave = full if self.first is None else max(1, min(full, self.first))
        if asked < wave:
            return wave
        return min(full, max(self.floor, finished // self.per, 1))


def ramp_of(job: CalibrationJob) -> Ramp | None:
    """The job's ramp: its ``ramp`` spec; ``off``: none; absent: the default :class:`RampSpec`
    for the TPE sampler (where it was measured, docs/quality.md), none for the others
    (random, QMC and grid points do not depend on results; a posterior run has its own stages)."""
    spec = job.ramp
    if spec is None:
        if job.sampler.name != "tpe" or job.posterior is not None:
            return None
        spec = RampSpec()
    return Ramp(spec.per, spec.floor, spec.first) if spec.enabled else None
