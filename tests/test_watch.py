"""Log parsing, the hang clock and the tailer."""

import pytest

from ops.watch import EvidenceBuffer, HangClock, LogTailer, Progress, parse_line


@pytest.mark.parametrize("line,kind,value", [
    ("========================= Step 3/17 =========================", "step", 3),
    ("  • Avg Reward: 0.4123", "reward", 0.4123),
    ("    • Accuracy: 0.3500", "accuracy", 0.35),
    ("  • Total step time: 12.34s", "step_time", 12.34),
    ("  • Loss: -0.0012", "loss", -0.0012),
    ("▶ Generating responses for batch of size 1024...", "phase", "generation"),
    ("▶ Computing logprobs...", "phase", "logprob"),
    ("(MegatronPolicyWorker pid=1) ▶ Training policy...", "phase", "training"),
    ("Max number of steps has been reached, stopping training early", "done", None),
    ("hello world", None, None),
    ("  • generation: 1.20s (40.0%)", None, None),
])
def test_parse_line(line, kind, value):
    ev = parse_line(line)
    assert (ev.kind if ev else None) == kind
    if ev is not None and value is not None:
        assert ev.value == value


def test_memory_model_line():
    ev = parse_line("grpo-ops: memory model: static_mib=812.5 per_sample_mib=40.25 device=cuda:0 tp=2")
    assert ev.kind == "memory_model"
    assert ev.value == {"static_mib": 812.5, "per_sample_mib": 40.25, "device": "cuda:0", "tp": 2}


def test_progress_folds_steps():
    p = Progress()
    for line in ["========================= Step 1/3 =========================", "  • Avg Reward: 0.1",
                 "  • Total step time: 1.00s", "========================= Step 2/3 ========================="]:
        p = p.apply(parse_line(line))
    assert (p.step, p.completed_step, p.total_steps, p.reward, p.first_step) == (2, 1, 3, 0.1, 1)


def test_hang_clock_learned_deadline():
    c = HangClock(factor=3.0, floor_s=5.0, startup_s=100.0, started_at=0.0)
    assert c.deadline_s() == 100.0 and c.expired(99.0) is None and "first step" in c.expired(101.0)
    c = c.mark(50.0)
    assert c.deadline_s() == 50.0                # one step seen: half the start-up deadline (>= floor)
    c = c.mark(60.0).mark(70.0).mark(80.0)       # 10 s steps
    assert c.deadline_s() == 30.0 and c.expired(109.0) is None and c.expired(111.0)
    fast = HangClock(3.0, 5.0, 100.0, 0.0).mark(1.0).mark(1.5).mark(2.0)
    assert fast.deadline_s() == 5.0              # the floor


def test_tailer_whole_lines_only(tmp_path):
    f = tmp_path / "o.log"
    t = LogTailer(f)
    assert t.read_lines() == []
    f.write_bytes(b"one\ntw")
    assert t.read_lines() == ["one"]
    with open(f, "ab") as fh:
        fh.write("o\n\xe2\x96\xb6 x\n".encode("latin-1"))
    assert t.read_lines()[0] == "two"


def test_evidence_keeps_flagged_lines_beyond_tail():
    b = EvidenceBuffer(tail=5)
    b.add("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    for i in range(100):
        b.add(f"noise {i}")
    lines = b.lines()
    assert lines[0].startswith("torch.OutOfMemoryError") and len(lines) == 6 and lines[-1] == "noise 99"


def test_matching_lines_batch():
    from ops.watch import CUE_RX, matching_lines
    lines = ["noise", "========================= Step 1/3 =========================", "x", "  • Loss: 1 • again", "y"]
    assert matching_lines(lines, CUE_RX) == [1, 3]
    b = EvidenceBuffer(tail=2)
    assert b.add_many(["a", "Traceback (most recent call last):", "b", "c"]) == ["Traceback (most recent call last):"]
    assert b.lines() == ("Traceback (most recent call last):", "b", "c")
