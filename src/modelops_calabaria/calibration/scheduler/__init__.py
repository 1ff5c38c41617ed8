"""The calibration wire's scheduler core: events in, instructions out, no I/O (``core.py``).

``wire.py`` is its executor: the only code with threads, locks and I/O.
"""

from modelops_calabaria.calibration.scheduler.core import Loop, Phase, Scheduler, SchedulerInvariantError
from modelops_calabaria.calibration.scheduler.rules import Rules

__all__ = ["Loop", "Phase", "Rules", "Scheduler", "SchedulerInvariantError"]
