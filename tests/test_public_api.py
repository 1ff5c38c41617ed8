"""The public API is deliberate: these names, and importing them is cheap."""

from __future__ import annotations

import subprocess
import sys

import modelops_calabaria


def test_exported_members():
    assert sorted(modelops_calabaria.__all__) == sorted([
        "CalabariaError", "CalibrationJob", "ParameterSpec", "RunResult", "ScoreSpec", "Settings", "TargetSpec",
        "__version__", "job_from_dict", "load_job", "project", "resolve_settings", "run_calibration",
    ])
    for name in modelops_calabaria.__all__:
        assert getattr(modelops_calabaria, name) is not None


def test_import_does_not_load_the_heavy_machinery_or_configure_logging():
    code = ("import sys, logging, modelops_calabaria; "
            "print(sorted(m for m in ('optuna', 'distributed', 'sqlalchemy') if m in sys.modules)); "
            "print(logging.getLogger().handlers)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "[]"


def test_every_error_derives_from_the_root():
    from modelops_calabaria import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert all(issubclass(c, errors.CalabariaError) for c in classes)
