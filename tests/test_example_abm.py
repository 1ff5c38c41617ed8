"""The starsim example (examples/starsim_sir): an agent-based model from PyPI, wrapped,
calibrated through the real CLI, recovers the transmission rate its data came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "starsim_sir"
CALABARIA = Path(sys.executable).with_name("calabaria")
TRUE_BETA = 0.065  # examples/starsim_sir/generate_data.py


@pytest.mark.slow
@pytest.mark.timeout(900)  # starsim's import and 60 simulations on a shared 2-core machine
def test_starsim_example_recovers_beta(tmp_path):
    pytest.importorskip("starsim")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALABARIA_")}
    env["STARSIM_INSTALL_FONTS"] = "0"
    proc = subprocess.run(
        [str(CALABARIA), "calibrate", str(EXAMPLE / "job.yaml"), "--scheduler", "inline", "--local-workers", "2",
         "--output", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["trials"]["COMPLETE"] == 30
    beta = summary["best_params"]["beta"]
    assert abs(beta - TRUE_BETA) <= 0.1 * TRUE_BETA, beta
