"""Goodput: productive step time over wall time, lost time by bucket (pure, on hand-built journals)."""

import pytest

from ops.goodput import BUCKETS, StepTime, compute, step_times
from ops.rundata import load_run
from report_fixtures import hang_then_recover


def test_hang_then_recover_breakdown(tmp_path):
    run = load_run(hang_then_recover(tmp_path / "run"))
    g = compute(run.records, step_times(run.records, run.metrics))
    assert g.wall_s == 30.0
    assert g.productive_s == pytest.approx(12.0)
    assert g.ratio == pytest.approx(0.4)
    assert g.steps_kept == 12 and g.steps_recomputed == 2
    assert g.lost_s["recomputed"] == pytest.approx(2.0)
    assert g.lost_s["preflight"] == pytest.approx(2.0)
    assert g.lost_s["startup"] == pytest.approx(5.0)
    assert g.lost_s["hang_detect"] == pytest.approx(6.0)
    assert g.lost_s["cleanup"] == pytest.approx(1.0)
    assert g.lost_s["other"] == pytest.approx(2.0)
    assert set(g.lost_s) == set(BUCKETS)
    assert g.productive_s + sum(g.lost_s.values()) == pytest.approx(g.wall_s)


def test_metrics_step_time_overrides_progress():
    recs = [{"kind": "progress", "attempt": 1, "step": 1, "step_time_s": 5.0}]
    rows = [{"step": 1, "_attempt": 1, "timing/train/total_step_time": 2.5}]
    assert step_times(recs, rows) == [StepTime(1, 1, 2.5)]


def test_attempt_without_checkpoint_loses_all_its_steps():
    recs = [
        {"kind": "run_start", "mono": 0.0},
        {"kind": "attempt_start", "attempt": 1, "mono": 0.0, "resume_from_step": None},
        {"kind": "attempt_end", "attempt": 1, "mono": 10.0, "startup_s": 1.0, "failure": {"kind": "crash"}},
        {"kind": "attempt_start", "attempt": 2, "mono": 10.0, "resume_from_step": None},
        {"kind": "attempt_end", "attempt": 2, "mono": 20.0, "startup_s": 1.0, "failure": None},
        {"kind": "run_end", "mono": 20.0, "wall_s": 20.0},
    ]
    steps = [StepTime(1, s, 2.0) for s in (1, 2, 3)] + [StepTime(2, s, 2.0) for s in (1, 2, 3)]
    g = compute(recs, steps)
    assert g.productive_s == 6.0 and g.lost_s["recomputed"] == 6.0
    assert g.lost_s["hang_detect"] == 0.0        # a crash is not a hang
    assert g.ratio == pytest.approx(0.3)


def test_attempt_that_never_stepped_counts_wholly_as_startup():
    recs = [{"kind": "attempt_start", "attempt": 1, "mono": 0.0, "resume_from_step": None},
            {"kind": "attempt_end", "attempt": 1, "mono": 7.0, "startup_s": None, "duration_s": 7.0,
             "failure": {"kind": "hang"}}]
    g = compute(recs, [])
    assert g.wall_s == 7.0 and g.lost_s["startup"] == 7.0 and g.lost_s["hang_detect"] == 0.0
    assert g.ratio == 0.0


def test_empty_journal_has_no_ratio():
    g = compute([], [])
    assert g.wall_s == 0.0 and g.ratio is None
