"""The journal: append-only, atomic lines, seq continuity across supervisors, torn lines, redaction."""

import json
import multiprocessing as mp
import os

from ops.journal import Journal, read_journal, read_json, write_json_atomic


def test_seq_continues_and_fields(tmp_path):
    p = tmp_path / "ops" / "journal.jsonl"
    j = Journal(p, "exp/1", clock=lambda: 12.5, wall=lambda: 0.0)
    r = j.append("run_start", 0, trainer="embedded")
    j.close()
    assert r["seq"] == 1 and r["mono"] == 12.5 and r["ts"] == "1970-01-01T00:00:00.000Z" and r["run_id"] == "exp/1"
    j2 = Journal(p, "exp/1")
    assert j2.append("transition", 1, **{"from": "A", "to": "B"})["seq"] == 2
    j2.close()
    assert [r["seq"] for r in read_journal(p)] == [1, 2]


def test_torn_last_line_is_ignored_then_terminated(tmp_path):
    p = tmp_path / "j.jsonl"
    j = Journal(p, "x")
    j.append("run_start", 0)
    j.close()
    with open(p, "ab") as fh:
        fh.write(b'{"seq": 2, "kind": "trans')          # a supervisor killed mid-write
    assert [r["seq"] for r in read_journal(p)] == [1]
    j = Journal(p, "x")
    assert j.append("warning", 0, message="resumed")["seq"] == 2
    j.close()
    assert [r["kind"] for r in read_journal(p)] == ["run_start", "warning"]


def test_listeners_called_after_write_and_errors_ignored(tmp_path):
    p = tmp_path / "j.jsonl"
    seen = []

    def check(rec):
        assert json.loads(p.read_text().splitlines()[-1])["seq"] == rec["seq"]   # on disk before the call
        seen.append(rec["seq"])
    j = Journal(p, "x", listeners=[lambda r: 1 / 0, check])
    j.append("a", 0)
    j.append("b", 0)
    assert seen == [1, 2]


def test_secrets_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "s3cr3t-value-123")
    p = tmp_path / "j.jsonl"
    Journal(p, "x").append("attempt_start", 1, argv=["--key", "s3cr3t-value-123"],
                           env={"HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz", "A": "1"})
    text = p.read_text()
    assert "s3cr3t" not in text and "hf_abc" not in text and '"A": "1"' in text


def _writer(path, n, tag):
    j = Journal(path, "x")
    for i in range(n):
        j.append("progress", 1, tag=tag, i=i, pad="y" * 3000)
    j.close()


def test_concurrent_appends_never_interleave(tmp_path):
    p = tmp_path / "j.jsonl"
    procs = [mp.get_context("fork").Process(target=_writer, args=(p, 100, t)) for t in "ab"]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(30)
    lines = p.read_bytes().split(b"\n")[:-1]
    assert len(lines) == 200 and all(json.loads(ln)["pad"] == "y" * 3000 for ln in lines)


def test_atomic_json(tmp_path):
    p = tmp_path / "state.json"
    write_json_atomic(p, {"state": "RUNNING"})
    write_json_atomic(p, {"state": "SUCCEEDED"})
    assert read_json(p) == {"state": "SUCCEEDED"}
    assert [f for f in os.listdir(tmp_path)] == ["state.json"]
    assert read_json(tmp_path / "missing.json") is None
