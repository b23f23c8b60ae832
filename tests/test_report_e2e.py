"""The report of real supervised runs with injected faults.

1. The supervisor's fixture trainer (tests/supervisor_fixture_trainer.py, a real process printing NeMo RL's
   lines) under a 200 MiB memory cgroup: killed by the OOM killer twice (the planner halves the micro batch),
   then hung at step 6 (stacks dumped, killed, relaunched from step 5), then done. `--eval-cmd`, the webhook
   and the metrics textfile follow along. Fast.
2. (tests/test_report_e2e_embedded.py) the embedded GRPO workload, real torch training.
Then `ops report` must tell each story, and its page must render in Chromium.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_report_browser import has_colour, screenshot
from test_sinks import Hook, parse

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "training" / "configs" / "grpo_workplace_tiny.yaml"
EVAL = ("import json,sys; m,which,out=sys.argv[1:4];"
        "json.dump({'score': 0.25 if which=='base' else 0.75}, open(out,'w')); print('evaluated', m)")


def ops(*args, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "GRPO_OPS_ENABLE_FAULTS": "1",
           "GRPO_OPS_TRAINERS": "fixture=supervisor_fixture_trainer:FixtureTrainer"}
    for k in ("WANDB_API_KEY", "WANDB_MODE"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def oom_hang_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("fixture")
    hook = Hook()
    try:
        p = ops("run", "--trainer", "fixture", "--exp", "e2e/oom_hang", "--results", "results", "--skip-preflight",
                "--no-wandb", "--hang-floor-s", "3", "--grace-s", "2", "--memory-limit-mib", "200",
                "--notify", hook.url, "--metrics-textfile", str(work / "grpo_ops.prom"),
                "--eval-cmd", f"{sys.executable} -c \"{EVAL}\" {{model}} {{which}} {{out}}",
                "--", "steps=8", "step_s=0.3", "hang_at=6", "mib_per_sample=30", cwd=work)
    finally:
        hook.close()
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    p = ops("report", "e2e/oom_hang", "--results", "results", "--json", cwd=work)
    assert p.returncode == 0, p.stderr
    return work, work / "results" / "e2e" / "oom_hang", hook, json.loads(p.stdout)


def test_report_of_oom_then_hang_then_success(oom_hang_run):
    work, root, _, r = oom_hang_run
    assert r["verdict"] == "SUCCEEDED" and r["steps_done"] == 8
    outcomes = [a["outcome"] for a in r["attempts"]]
    assert outcomes[-1] == "succeeded" and outcomes.count("host_oom") >= 1 and "hang" in outcomes
    crit = {c["name"]: c for c in r["criteria"]}
    assert crit["no OOM in the final attempt"]["status"] == "PASS"
    assert "host_oom" in crit["no OOM in the final attempt"]["detail"]           # the earlier OOMs are named
    assert crit["reward mean rises over the steps"]["status"] == "PASS"
    oom = next(a for a in r["attempts"] if a["outcome"] == "host_oom")
    assert oom["exit"]["oom_killed"] and oom["numbers"]["limit_mib"] == 200
    assert "micro_batch" in oom["decision"]["plan_diff"]
    hang = next(a for a in r["attempts"] if a["outcome"] == "hang")
    assert hang["stack_dumps"] and (root / hang["stack_dumps"][0]).is_file()
    g = r["goodput"]
    assert 0 < g["goodput"] < 1 and g["lost_s"]["hang_detect"] >= 2.5 and g["lost_s"]["startup"] > 0
    assert g["productive_s"] + sum(g["lost_s"].values()) == pytest.approx(g["wall_s"], rel=1e-6)
    assert [e["which"] for e in r["evals"]] == ["trained"] and r["evals"][0]["score"] == 0.75
    html = (root / "ops" / "report.html").read_text()
    assert "stack dump: ops/stacks/attempt-" in html and "micro_batch" in html


def test_sinks_followed_the_supervised_run(oom_hang_run):
    work, _, hook, _ = oom_hang_run
    texts = [b["text"] for _, b in hook.bodies]
    assert any("recovered: attempt" in t for t in texts), texts
    assert "succeeded: 8/8 steps" in texts[-1]
    m = parse((work / "grpo_ops.prom").read_text())
    assert m[("grpo_ops_step", ())] == 8
    assert m[("grpo_ops_failures_total", (("kind", "hang"),))] == 1
    assert m[("grpo_ops_failures_total", (("kind", "host_oom"),))] >= 1
    assert m[("grpo_ops_state", (("grpo_ops_state", "SUCCEEDED"),))] == 1


def test_supervised_report_renders_in_chromium(oom_hang_run, tmp_path):
    _, root, _, _ = oom_hang_run
    shot = screenshot(root / "ops" / "report.html", tmp_path / "real.png", tmp_path)
    assert has_colour(shot, (31, 119, 180)) and has_colour(shot, (44, 160, 44))


def test_wandb_offline_files_of_a_supervised_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}",
           "GRPO_OPS_TRAINERS": "fixture=supervisor_fixture_trainer:FixtureTrainer"}
    env.pop("WANDB_API_KEY", None)
    p = subprocess.run([sys.executable, "-m", "ops.cli", "run", "--trainer", "fixture", "--exp", "e2e/wb",
                        "--skip-preflight", "--hang-floor-s", "3", "--grace-s", "2", "--wandb", "--",
                        "steps=6", "step_s=0.2", "hang_at=4"], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = b"".join(f.read_bytes() for f in runs[0].glob("*.wandb"))
    assert b"grpo-ops: recovered" in data and b"ops/failures/hang" in data and b"e2e/wb" in data
