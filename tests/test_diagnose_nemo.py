"""NeMo RL, vLLM and Ray failure texts (reference/nemo_rl.md section 5) inside realistic transcripts:
classified by NemoRLTrainer's signatures with the phase from the stage lines, and by `ops diagnose` as a user
runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_transcripts import CASES, CLEAN, growing_memory
from ops.classify import Evidence, classify
from training.nemo_log import host_memory_growth, memory_points
from training.nemo_rl import SIGNATURES

ROOT = Path(__file__).resolve().parents[1]
IDS = [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_signatures_classify_each_failure(case):
    failure = classify(Evidence(lines=case.lines), SIGNATURES)
    assert failure is not None
    assert (failure.kind, failure.deterministic, failure.phase) == (case.kind, case.deterministic, case.phase)


def test_oom_numbers_come_through_the_ray_prefix():
    case = next(c for c in CASES if c.name == "ray_wrapped_training_oom")
    failure = classify(Evidence(lines=case.lines), SIGNATURES)
    assert failure.numbers["tried_mib"] == 2048.0 and failure.numbers["free_mib"] == pytest.approx(1044.48)


def test_clean_transcript_has_no_failure():
    failure = classify(Evidence(lines=CLEAN.lines), SIGNATURES)
    assert failure is None or "no failure text" in failure.summary


def test_host_memory_growth_warns_step_over_step():
    lines = growing_memory(steps=5, per_step=1.5)
    assert [p.after_gb for p in memory_points(lines)] == [10.0, 11.5, 13.0, 14.5, 16.0]
    warn = host_memory_growth(lines, window=3, min_growth_gb=1.0, limit_gb=24.0)
    assert warn is not None and warn.stage == "Generation" and warn.steps == (2, 3, 4, 5)
    assert warn.growth_gb == 4.5 and warn.per_step_gb == 1.5 and warn.steps_to_limit == 5
    assert "grew +4.50 GB over 3 step(s)" in warn.message
    assert host_memory_growth(growing_memory(steps=5, per_step=0.0)) is None
    assert host_memory_growth(growing_memory(steps=3, per_step=2.0)) is None        # too few steps to tell


def _diagnose(tmp_path, lines, *extra) -> subprocess.CompletedProcess:
    log = tmp_path / "output.log"
    log.write_text("\n".join(lines) + "\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf")}
    return subprocess.run([sys.executable, "-m", "ops.cli", "diagnose", str(log), "--trainer", "nemo-rl", "--json",
                           *extra], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ops_diagnose_names_each_failure(tmp_path, case):
    out = _diagnose(tmp_path, case.lines)
    assert out.returncode in (0, 1), out.stderr
    failure = json.loads(out.stdout)["failure"]
    assert (failure["kind"], failure["deterministic"], failure["phase"]) == (case.kind, case.deterministic, case.phase)
    assert failure["evidence_lines"]


def test_ops_diagnose_clean_log(tmp_path):
    out = _diagnose(tmp_path, CLEAN.lines)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["failure"] is None


def test_no_signature_matches_a_healthy_line():
    import re
    for sig in SIGNATURES:
        rx = re.compile(sig.pattern)
        assert not [ln for ln in CLEAN.lines if rx.search(ln)], sig


def test_trainer_log_warnings_hook():
    from training.nemo_rl import NemoRLTrainer
    warnings = NemoRLTrainer().log_warnings(growing_memory(steps=5, per_step=1.5), host_limit_gb=24.0)
    assert len(warnings) == 1 and "driver host memory after 'Generation' grew +4.50 GB" in warnings[0]
    assert NemoRLTrainer().log_warnings(CLEAN.lines) == []


@pytest.mark.parametrize("line, kind", [
    ("  ╰─▶ HTTP status client error (429 Too Many Requests) for url (https://pypi.org/simple/torch/)",
     "uv_rate_limit"),
    ("huggingface_hub.errors.HfHubHTTPError: 429 Client Error: Too Many Requests for url: https://huggingface.co/a",
     "hf_rate_limit"),
    ("  × Failed to download `torch==2.9.0`: 404 Not Found", None),          # not a rate limit
    ("Step 429/1000 finished; huggingface cache warm", None),
])
def test_rate_limit_signatures_tell_uv_from_the_hub(line, kind):
    import re
    hits = [s.kind for s in SIGNATURES if s.kind.endswith("rate_limit") and re.search(s.pattern, line)]
    assert hits == ([kind] if kind else [])
