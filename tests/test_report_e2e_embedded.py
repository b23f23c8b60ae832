"""The report of a real supervised run of the embedded GRPO workload (real torch training; slow): a hang
injected at step 7 with checkpoints every 4 steps; relaunched from step 4; evaluated before/after."""

from __future__ import annotations

import json
import sys

import pytest
from test_report_browser import has_colour, screenshot
from test_report_e2e import CONFIG, EVAL, ops
from test_sinks import Hook, parse


@pytest.fixture(scope="module")
def hang_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    hook = Hook()
    try:
        p = ops("run", "--config", str(CONFIG), "--exp", "e2e/hang", "--results", "results", "--skip-preflight",
                "--no-wandb", "--hang-floor-s", "10", "--startup-timeout-s", "300", "--grace-s", "2",
                "--notify", hook.url, "--metrics-textfile", str(work / "grpo_ops.prom"),
                "--eval-cmd", f"{sys.executable} -c \"{EVAL}\" {{model}} {{which}} {{out}}",
                "--", "grpo.max_num_steps=12", "checkpointing.save_period=4", "grpo.val_period=4",
                "++fault.hang_at_step=7", cwd=work)
    finally:
        hook.close()
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return work, work / "results" / "e2e" / "hang", hook, p


@pytest.mark.slow
def test_report_tells_the_hang_and_the_recovery(hang_run):
    work, root, _, _ = hang_run
    p = ops("report", "e2e/hang", "--results", "results", "--json", cwd=work)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["verdict"] == "SUCCEEDED" and r["steps_done"] == 12
    status = {c["name"].split(" ")[0]: c["status"] for c in r["criteria"]}
    assert status["no"] == "PASS" and status["checkpoints"] == "PASS", r["criteria"]
    assert status["reward"] in ("PASS", "WARN")          # tiny runs may not rise significantly in 12 steps
    first, last = r["attempts"][0], r["attempts"][-1]
    assert len(r["attempts"]) == 2 and first["outcome"] == "hang" and last["outcome"] == "succeeded"
    assert last["resume_from_step"] == 4
    # the trainer's metrics files (exp_001, exp_002) are tied to the attempts that wrote them
    rewards = r["series"]["reward"]
    assert sorted(rewards) == ["1", "2"]
    assert rewards["2"][0][0] == 5 and rewards["2"][-1][0] == 12 and rewards["1"][0][0] == 1
    assert r["series"]["accuracy"] and r["series"]["step_time"] and r["series"]["memory"]
    assert first["stack_dumps"] and (root / first["stack_dumps"][0]).is_file()
    assert first["decision"]["action"] == "relaunch"
    g = r["goodput"]
    assert 0 < g["goodput"] < 1
    assert g["lost_s"]["hang_detect"] > 0 and g["lost_s"]["startup"] > 0
    assert g["steps_recomputed"] >= 2 and g["lost_s"]["recomputed"] > 0    # steps 5-6 (or -7) redone
    assert g["productive_s"] + sum(g["lost_s"].values()) == pytest.approx(g["wall_s"], rel=1e-6)
    evals = {e["which"]: e for e in r["evals"]}
    assert evals["base"]["score"] == 0.25 and evals["trained"]["score"] == 0.75
    assert evals["trained"]["model"].endswith("step_12") or "step_" in evals["trained"]["model"]
    md = (root / "ops" / "report.md").read_text()
    assert "difference (trained - base): +0.5" in md


@pytest.mark.slow
def test_sinks_followed_the_real_run(hang_run):
    work, _, hook, _ = hang_run
    texts = [b["text"] for _, b in hook.bodies]
    assert any("recovered: attempt 2" in t for t in texts) and any("succeeded" in t for t in texts)
    m = parse((work / "grpo_ops.prom").read_text())
    assert m[("grpo_ops_step", ())] == 12
    assert m[("grpo_ops_failures_total", (("kind", "hang"),))] == 1
    assert m[("grpo_ops_state", (("grpo_ops_state", "SUCCEEDED"),))] == 1


@pytest.mark.slow
def test_real_report_renders_in_chromium(hang_run, tmp_path):
    _, root, _, _ = hang_run
    html = root / "ops" / "report.html"
    if not html.exists():
        assert ops("report", str(root), cwd=tmp_path).returncode == 0
    shot = screenshot(html, tmp_path / "real.png", tmp_path)
    assert has_colour(shot, (31, 119, 180)) and has_colour(shot, (255, 127, 14))
