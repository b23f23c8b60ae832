"""ops report on hand-built journals: criteria, verdicts, redaction, the CLI, the Markdown summary."""

import json
import subprocess
import sys
import time

from report_fixtures import SECRET, T0, hang_then_recover, oom_give_up

from ops.report import FAIL, PASS, UNKNOWN, WARN, build_report, render_markdown
from ops.rundata import load_run


def _crit(report, prefix):
    return next(c for c in report.criteria if c.name.startswith(prefix))


def test_recovered_run_passes_every_criterion(tmp_path):
    r = build_report(load_run(hang_then_recover(tmp_path / "run")), now=T0 + 100)
    assert r.verdict == "SUCCEEDED" and r.ok
    assert "recovered from hang" in r.verdict_line
    assert [c.status for c in r.criteria] == [PASS] * 5
    assert "rising" in _crit(r, "reward").detail
    assert "[3, 6, 9, 12]" in _crit(r, "checkpoints saved").detail
    assert [b["step"] for b in r.best_checkpoints] == [12, 9]       # keep_top_k=2, best accuracy first
    assert r.attempts[0].outcome == "hang" and r.attempts[0].stack_dumps == ("ops/stacks/attempt-1-4242.txt",)
    assert r.attempts[0].decision["plan_diff"] == {"policy.train_micro_batch_size": [None, 1]}
    assert sorted(r.series["reward"]) == [1, 2]                      # both attempts plotted
    assert r.boundaries == ((1, 0.5), (2, 3.5))


def test_oom_give_up_fails_and_never_shows_the_secret(tmp_path):
    r = build_report(load_run(oom_give_up(tmp_path / "run")), now=T0 + 100)
    assert r.verdict == "FAILED_OOM" and not r.ok
    assert _crit(r, "no OOM").status == FAIL
    assert "cuda_oom" in _crit(r, "no OOM").detail
    assert _crit(r, "reward").status == UNKNOWN          # 2 points are not a trend
    assert _crit(r, "validation").status == UNKNOWN
    assert _crit(r, "checkpoints saved").status == PASS  # 2 steps < save_period 3: nothing was due
    assert _crit(r, "best keep_top_k").status == WARN
    text = json.dumps(r.to_json()) + render_markdown(r)
    assert SECRET not in text and "HF_TOKEN=***" in text
    assert "give_up" in render_markdown(r)


def test_missing_checkpoint_save_fails_the_interval_criterion(tmp_path):
    root = hang_then_recover(tmp_path / "run")
    (root / "output.log").write_text("Saving checkpoint for step 3...\n")
    for step_dir in root.glob("step_*"):
        for f in step_dir.iterdir():
            f.unlink()
        step_dir.rmdir()
    r = build_report(load_run(root), now=T0 + 100)
    c = _crit(r, "checkpoints saved")
    assert c.status == FAIL and "missing [6, 9, 12]" in c.detail
    assert not r.ok


def test_falling_reward_fails(tmp_path):
    root = hang_then_recover(tmp_path / "run")
    for exp in root.glob("exp_*/metrics.jsonl"):
        rows = [json.loads(x) for x in exp.read_text().splitlines()]
        for row in rows:
            if "train/reward" in row:
                row["train/reward"] = 1.0 - 0.05 * row["step"]
        exp.write_text("".join(json.dumps(x) + "\n" for x in rows))
    assert _crit(build_report(load_run(root), now=T0 + 100), "reward").status == FAIL


def test_no_run_end_with_fresh_heartbeat_is_running_and_stale_is_lost(tmp_path):
    root = hang_then_recover(tmp_path / "run")
    journal = root / "ops" / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(x for x in lines if '"run_end"' not in x and '"seq": 999' not in x))
    (root / "ops" / "heartbeat.json").write_text(json.dumps({"ts": T0 + 50, "pid": 1, "state": "RUNNING", "step": 12}))
    assert build_report(load_run(root), now=T0 + 55).verdict == "RUNNING"
    lost = build_report(load_run(root), now=T0 + 500)
    assert lost.verdict == "SUPERVISOR_LOST" and "450 s old" in lost.verdict_line


def _ops(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=240, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(_repo())})


def _repo():
    from pathlib import Path
    return Path(__file__).resolve().parents[1]


def test_cli_writes_html_and_markdown_for_the_latest_run(tmp_path):
    older = oom_give_up(tmp_path / "results" / "a" / "run_001")
    time.sleep(0.05)
    newer = hang_then_recover(tmp_path / "results" / "b" / "run_002")
    p = _ops("report", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "SUCCEEDED: 12/12 steps" in p.stdout
    assert (newer / "ops" / "report.html").stat().st_size > 20_000
    assert (newer / "ops" / "report.md").read_text() == p.stdout
    assert not (older / "ops" / "report.html").exists()
    p = _ops("report", "a/run_001", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["verdict"] == "FAILED_OOM" and doc["html"].endswith("report.html")
    assert SECRET not in p.stdout and SECRET not in (older / "ops" / "report.html").read_text()


def test_cli_unknown_run_is_one_line_exit_2(tmp_path):
    hang_then_recover(tmp_path / "results" / "b" / "run_002")
    p = _ops("report", "nope", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "'nope'" in p.stderr
    p = _ops("report", "--results", str(tmp_path / "empty"), cwd=tmp_path)
    assert p.returncode == 2 and "no experiment found under" in p.stderr


def test_settings_from_a_real_nemo_rl_config_with_overrides():
    from ops.rundata import read_settings
    cfg = _repo() / "tests" / "fixtures" / "nemo_rl" / "grpo_workplace_assistant_nemotron_nano_v2_9b.yaml"
    s = read_settings([], [{"kind": "run_start", "plan": {"config_path": str(cfg),
                                                          "overrides": ["++grpo.max_num_steps=3"]}}])
    assert (s.save_period, s.keep_top_k, s.max_num_steps, s.metric_name) == (6, 3, 3, "val:accuracy")
    assert s.model_name and "Nemotron" in s.model_name


def test_preflight_and_supervisor_warnings_are_shown(tmp_path):
    root = hang_then_recover(tmp_path / "run")
    journal = root / "ops" / "journal.jsonl"
    lines = [x for x in journal.read_text().splitlines(keepends=True) if x.endswith("\n")]
    extra = [{"seq": 100, "kind": "eval", "attempt": 0, "what": "preflight", "ok": True,
              "lines": [f"WARN hf_cache: token HF_TOKEN={SECRET} (fix: unset it)"]},
             {"seq": 101, "kind": "warning", "attempt": 2, "message": "step count did not continue from step 4"}]
    journal.write_text("".join(lines[:2] + [json.dumps(e) + "\n" for e in extra] + lines[2:]))
    r = build_report(load_run(root), now=T0 + 100)
    assert r.preflight["ok"] and "HF_TOKEN=***" in r.preflight["lines"][0]
    assert "attempt 2: step count did not continue from step 4" in r.warnings
    md = render_markdown(r)
    assert "Preflight: passed" in md and SECRET not in md
    assert r.evals == ()                         # the preflight's eval record is not a post-run evaluation
