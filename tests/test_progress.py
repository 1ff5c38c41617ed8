"""Progress: the live line (study-wide best, rate, ETA) and what goes to the log."""

from __future__ import annotations

import io
import logging
import sys

import pytest
import structlog

from structlog.testing import capture_logs

from conftest import make_job
from modelops_calabaria.calibration.runner import run_calibration
from modelops_calabaria.calibration.wire import TrialRecord
from modelops_calabaria.logging import configure_logging
from modelops_calabaria.reporting.progress import LOG_STREAM, Progress
from modelops_calabaria.settings import Settings


def record(n: int, loss: float | None, new_best: bool = False) -> TrialRecord:
    state = "COMPLETE" if loss is not None else "FAIL"
    return TrialRecord(n, state, loss, {"a": 1.0}, {"y": loss} if loss is not None else {}, 0.1,
                       reason=None if loss is not None else "boom", new_best=new_best)


@pytest.fixture
def debug_logs():
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    yield
    configure_logging("json")


def test_live_line_shows_the_study_best_and_never_lags(monkeypatch, debug_logs):
    err, out = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", out)
    p = Progress(10, already=5, best=3.0, bar=True)
    with capture_logs() as logs:
        p(record(5, 5.0, new_best=True))  # this process's first best, but not the study's
        assert p.best == 3.0 and "6/10 trials | best loss 3 |" in err.getvalue().rsplit("\r", 1)[-1]
        p(record(6, None))
        p(record(7, 2.0, new_best=True))
    assert p.best == 2.0
    last = err.getvalue().rsplit("\r", 1)[-1]
    assert "8/10 trials | best loss 2 |" in last and "1 failed" in last and "ETA" in last
    # on a terminal, per-trial lines are DEBUG (shown with -v), not INFO
    assert [e["log_level"] for e in logs if e["event"] in ("trial finished", "trial failed")] == ["debug"] * 3
    # a log line clears the live line, then the line is drawn again under it
    before = len(err.getvalue())
    LOG_STREAM.write("a log line\n")
    assert out.getvalue() == "a log line\n" and err.getvalue()[before:].startswith("\r\x1b[K\r")
    p.close()
    assert LOG_STREAM.live is None and err.getvalue().endswith("\n")


def test_without_a_terminal_every_trial_is_an_info_line_and_maximize_is_respected():
    p = Progress(3, best=1.0, bar=False, direction="maximize")
    with capture_logs() as logs:
        p(record(0, 0.5, new_best=True))
        p(record(1, 4.0, new_best=True))
    assert p.best == 4.0
    assert [e["log_level"] for e in logs if e["event"] == "trial finished"] == ["info", "info"]


def test_resumed_run_reports_the_study_best(tmp_path):
    job = make_job(tmp_path, max_trials=8)
    settings = Settings(storage=f"sqlite:///{tmp_path}/s.db", scheduler="inline", log_format="json")
    first = run_calibration(job, settings, output_dir=tmp_path / "run", show_progress=False)
    # two more trials: unless one of them beats the first run, this process never tells the study's best itself
    with capture_logs() as logs:
        run_calibration(job, settings, output_dir=tmp_path / "run", max_trials=10, show_progress=False)
    told = [e for e in logs if e.get("done") == 10]
    assert told and told[-1]["best_loss"] == min(first.best_loss, *(e["loss"] for e in logs if e["event"] == "trial finished"))
