"""The README demo: the SEIR example recovers its true parameters within 10%."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "seir"
sys.path.insert(0, str(EXAMPLE))
from generate_data import TRUE_PARAMS  # noqa: E402


def test_example_data_is_what_the_generator_makes(tmp_path, monkeypatch):
    before = (EXAMPLE / "cases.csv").read_text()
    import generate_data

    monkeypatch.setattr(generate_data, "__file__", str(tmp_path / "generate_data.py"))
    generate_data.main()
    assert (tmp_path / "cases.csv").read_text() == before


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["--parallel", "--batched"])
def test_demo_recovers_true_parameters_within_ten_percent(tmp_path, scheduler, mode):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "modelops_calabaria", "calibrate", str(EXAMPLE / "job.yaml"), "--output", str(out),
         "--scheduler", scheduler, mode, "--log-format", "json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((out / "best.yaml").read_text())
    for name, true in TRUE_PARAMS.items():
        assert best["best_params"][name] == pytest.approx(true, rel=0.10), (name, best)
    results = json.loads((out / "results.json").read_text())
    assert results["trials"]["total"] == 160 and results["trials"]["RUNNING"] == 0
