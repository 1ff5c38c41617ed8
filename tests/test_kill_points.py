"""The exact budget through a SIGKILL at random moments: the kill campaign's fast version.

Three seeded runs of ``benchmarks/kill_campaign.py`` (the full campaign, 50 runs
beside CPU hogs, is run by hand; docs/reliability.md): two coordinator processes
on PostgreSQL, one SIGKILLed at a seeded random point and restarted with the same
command; a calibration and a posterior run. Each must end, without a final re-run,
with exactly ``max_trials`` trials, all finished, and both remaining processes exit 0.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

CAMPAIGN = Path(__file__).resolve().parent.parent / "benchmarks" / "kill_campaign.py"


def _campaign():
    spec = importlib.util.spec_from_file_location("kill_campaign", CAMPAIGN)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("kill_campaign", module)  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("run", [0, 1, 2])
def test_a_random_sigkill_leaves_the_exact_budget_all_finished(pg_url, tmp_path, run):
    campaign = _campaign()
    verdict = campaign.one_run(run, 20261206, pg_url, tmp_path, budget=16, delay=0.1, grace_s=20.0)
    assert verdict.ok, verdict
    assert verdict.trials == 16 and set(verdict.states) <= {"COMPLETE", "PRUNED", "FAIL"}
