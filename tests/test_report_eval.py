"""Post-run evaluation with real commands: scores from JSON or output, failures recorded, report delta."""

from __future__ import annotations

import json
import sys

import pytest
from report_fixtures import T0, hang_then_recover

from ops.errors import UserError
from ops.evaluate import check_template, choose_models, parse_score, run_evals
from ops.report import build_report, render_markdown
from ops.rundata import Checkpoint, load_run
from training.spec import RunPaths

PY = sys.executable


@pytest.mark.parametrize("stdout,doc,want", [
    ("accuracy 0.5\nfinal: 0.61\n", None, 0.61),
    ("no numbers here", None, None),
    ("1e-3", None, 0.001),
    ("junk 9", {"score": 0.7, "n": 100}, 0.7),
    ("junk 9", {"overall_accuracy": 0.25}, 0.25),
    ("junk 9", {"only": 3}, 3.0),
    ("junk 9", {"a": 1, "b": 2}, 9.0),
    ("", 0.8, 0.8),
])
def test_parse_score(stdout, doc, want):
    assert parse_score(stdout, doc) == want


def test_choose_models_prefers_best_scored_checkpoint(tmp_path):
    cks = [Checkpoint(3, tmp_path / "step_3", 0.5), Checkpoint(6, tmp_path / "step_6", 0.7),
           Checkpoint(9, tmp_path / "step_9", None)]
    assert choose_models("base/m", cks) == [("base", "base/m", None), ("trained", str(tmp_path / "step_6"), 6)]
    assert choose_models(None, cks[2:])[0] == ("trained", str(tmp_path / "step_9"), 9)
    assert choose_models("m", cks, higher_is_better=False)[1][2] == 3


def test_template_must_name_the_model():
    with pytest.raises(UserError, match=r"must contain \{model\}"):
        check_template("bfcl --model base")
    with pytest.raises(UserError, match="quote"):
        check_template("bfcl 'unclosed {model}")


def test_eval_before_after_goes_into_the_report(tmp_path):
    root = hang_then_recover(tmp_path / "run")
    # base scores 0.31 (printed last); the checkpoint writes JSON to {out} with 0.52
    script = ("import json,sys; m,which,out=sys.argv[1:4]; print('evaluating',m);"
              "json.dump({'score':0.52},open(out,'w')) if which=='trained' else print('score 0.31')")
    results = run_evals(f"{PY} -c \"{script}\" {{model}} {{which}} {{out}}", RunPaths(root), timeout_s=120)
    assert [(r["which"], r["ok"], r["score"]) for r in results] == [("base", True, 0.31), ("trained", True, 0.52)]
    assert results[1]["model"].endswith("step_12") and results[1]["step"] == 12
    assert "evaluating tiny/base-model" in (root / "ops" / "eval-base.log").read_text()
    doc = json.loads((root / "ops" / "eval.json").read_text())
    assert doc["delta"] == pytest.approx(0.21)
    md = render_markdown(build_report(load_run(root), now=T0 + 100))
    assert "- trained: score 0.52" in md and "difference (trained - base): +0.21" in md


def test_failing_missing_and_hanging_evals_are_recorded_not_raised(tmp_path):
    root = hang_then_recover(tmp_path / "run")
    paths = RunPaths(root)
    failing = run_evals(f"{PY} -c \"import sys; print('boom'); sys.exit(3)\" {{model}}", paths, timeout_s=120)
    assert all(not r["ok"] and r["exit_code"] == 3 and "exit code 3: boom" in r["error"] for r in failing)
    missing = run_evals("/nonexistent/evaluator {model}", paths, timeout_s=120)
    assert all(not r["ok"] and "cannot start" in r["error"] for r in missing)
    hanging = run_evals(f"{PY} -c \"import time; time.sleep(600)\" {{model}}", paths, timeout_s=1)
    assert all(not r["ok"] and "timed out" in r["error"] and r["exit_code"] < 0 for r in hanging)
    silent = run_evals(f"{PY} -c \"print('done')\" {{model}}", paths, timeout_s=120)
    assert all(not r["ok"] and "no score" in r["error"] for r in silent)
    report = build_report(load_run(root), now=T0 + 100)
    assert [e["which"] for e in report.evals] == ["base", "trained"] and "no score" in report.evals[0]["error"]
