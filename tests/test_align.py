"""Alignment of keyed outputs to observed rows: pure functions, answers computed by hand."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from modelops_calabaria.job import TargetSpec
from modelops_calabaria.targets.align import AlignmentError
from modelops_calabaria.targets.data import load_observed
from modelops_calabaria.targets.evaluate import CompiledTarget, _aligner


def compiled(tmp_path, data, **spec) -> CompiledTarget:
    t = TargetSpec.model_validate({"name": "t", "output": "x", "data": data, "score": spec.pop("score", "sse"), **spec})
    obs = load_observed(t, tmp_path, "targets[0].data")
    return CompiledTarget(t.name, t.output, obs, t.score, t.aggregation, t.weight, _aligner(t, obs))


def test_exact_on_three_keys_in_any_row_order(tmp_path):
    t = compiled(tmp_path, {"week": [1, 0, 1], "age": ["old", "young", "young"], "region": ["n", "s", "s"], "y": [1, 2, 3]},
                 on=["week", "age", "region"])
    out = {"week": [0, 0, 1, 1], "age": ["young", "old", "young", "old"], "region": ["s", "s", "s", "n"], "y": [10., 20., 30., 40.]}
    assert t.align({"x": out}).ravel().tolist() == [40.0, 10.0, 30.0]


def test_a_key_matching_no_output_row_is_named(tmp_path):
    t = compiled(tmp_path, {"week": [0, 7], "age": ["a", "b"], "y": [1, 2]}, on=["week", "age"])
    with pytest.raises(AlignmentError, match=r"observed key week=7, age=b matches no output row"):
        t.align({"x": {"week": [0, 1], "age": ["a", "b"], "y": [1.0, 2.0]}})


def test_duplicate_output_rows_and_missing_key_columns(tmp_path):
    t = compiled(tmp_path, {"week": [0], "y": [1]}, on=["week"])
    with pytest.raises(AlignmentError, match="several rows with key week=0"):
        t.align({"x": {"week": [0, 0], "y": [1.0, 2.0]}})
    t2 = compiled(tmp_path, {"week": [0], "region": ["n"], "y": [1]}, on=["week", "region"])
    with pytest.raises(AlignmentError, match="no key column 'region'"):
        t2.align({"x": {"week": [0], "y": [1.0]}})


def test_asof_backward_forward_nearest_grouped(tmp_path):
    data = {"date": ["2024-01-03", "2024-01-06", "2024-01-03"], "g": ["a", "a", "b"], "y": [0, 0, 0]}
    out = {"date": ["2024-01-01", "2024-01-08", "2024-01-01", "2024-01-08"], "g": ["a", "a", "b", "b"],
           "y": [1.0, 2.0, 3.0, 4.0]}
    picks = {m: compiled(tmp_path, data, on=["date", "g"], match=m).align({"x": out}).ravel().tolist()
             for m in ("backward", "forward", "nearest")}
    assert picks == {"backward": [1.0, 1.0, 3.0], "forward": [2.0, 2.0, 4.0], "nearest": [1.0, 2.0, 3.0]}


def test_backward_rejects_a_date_beyond_the_last_step(tmp_path):
    t = compiled(tmp_path, {"date": ["2024-03-01"], "y": [1]}, on=["date"], match="backward")
    with pytest.raises(AlignmentError, match="date=2024-03-01 has no output row backward"):
        t.align({"x": {"date": ["2024-01-01", "2024-01-08"], "y": [1.0, 2.0]}})


def test_accumulate_sums_each_observed_interval_and_anchors_day_numbers(tmp_path):
    t = compiled(tmp_path, {"date": ["2024-01-07", "2024-01-14", "2024-01-28"], "y": [0, 0, 0]},
                 on=["date"], match="accumulate", start_date="2024-01-01")
    daily = np.arange(28, dtype=float)  # day d has value d
    expected = [sum(range(0, 7)), sum(range(7, 14)), sum(range(21, 28))]  # a missing week leaves a hole, not a 14-day sum
    assert t.align({"x": daily}).ravel().tolist() == expected
    assert t.align({"x": {"date": np.arange(28), "y": daily}}).ravel().tolist() == expected
    with pytest.raises(AlignmentError, match="not covered"):
        t.align({"x": daily[:20]})


def test_day_numbers_against_dates_need_a_start_date(tmp_path):
    t = compiled(tmp_path, {"date": ["2024-01-07"], "y": [0]}, on=["date"])
    with pytest.raises(AlignmentError, match="set the target's start_date"):
        t.align({"x": {"date": [6], "y": [1.0]}})


def test_dataframe_output_with_a_named_index(tmp_path):
    pd = pytest.importorskip("pandas")
    t = compiled(tmp_path, {"date": ["2024-01-02", "2024-01-01"], "y": [0, 0]}, on=["date"])
    frame = pd.DataFrame({"y": [5.0, 6.0]}, index=pd.DatetimeIndex(["2024-01-01", "2024-01-02"], name="date"))
    assert t.align({"x": frame}).ravel().tolist() == [6.0, 5.0]


def test_gaps_are_left_out_of_the_score(tmp_path):
    t = compiled(tmp_path, {"week": [0, 1, 2], "y": [1, None, 3]}, on=["week"])
    sim = t.align({"x": np.array([2.0, 100.0, 5.0])})
    assert t.loss(sim) == pytest.approx((2 - 1) ** 2 + (5 - 3) ** 2)


def test_cached_rows_follow_changed_keys_and_never_travel(tmp_path):
    t = compiled(tmp_path, {"week": [1], "y": [0]}, on=["week"])
    assert t.align({"x": {"week": [0, 1], "y": [1.0, 2.0]}}).ravel().tolist() == [2.0]
    assert t.align({"x": {"week": [1, 0], "y": [1.0, 2.0]}}).ravel().tolist() == [1.0]  # same keys, other order
    copy = pickle.loads(pickle.dumps(t))
    assert copy.aligner._cache is None
    assert copy.align({"x": {"week": [0, 1], "y": [1.0, 2.0]}}).ravel().tolist() == [2.0]
