"""Logging configured once at the entry point: JSON lines when not on a terminal, secrets redacted."""

from __future__ import annotations

import io
import json

import structlog

from ops import logs


def test_json_when_not_a_terminal_and_secrets_redacted(monkeypatch):
    key = "0123456789abcdef0123456789abcdef01234567"
    token = "hf_" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2"
    monkeypatch.setenv("WANDB_API_KEY", key)
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        structlog.get_logger().info("preflight.fix", lines=[f"SIGTERM pid 1 (python train.py --token {token})"],
                                    env={"WANDB_API_KEY": key, "HOME": "/root"}, note=f"key is {key}")
    finally:
        logs.configure()
    line = stream.getvalue().strip()
    event = json.loads(line)                                   # one JSON object per line
    assert event["event"] == "preflight.fix" and event["level"] == "info" and "timestamp" in event
    assert key not in line and token not in line
    assert event["env"] == {"WANDB_API_KEY": "***", "HOME": "/root"}
    assert event["note"] == "key is ***"


def test_redact_env_and_token_shapes():
    assert logs.redact_env({"HF_TOKEN": "x", "MY_SECRET": "y", "PATH": "/bin"}) == \
        {"HF_TOKEN": "***", "MY_SECRET": "***", "PATH": "/bin"}
    assert logs.redact("api_key=abc123 and ghp_" + "a" * 30) == "api_key=*** and ***"


def test_snapshot_commit_in_a_path_is_not_a_secret():
    path = "/hf/hub/models--nvidia--m/snapshots/" + "a" * 40 + "/nemotron_toolcall_parser_no_streaming.py"
    assert logs.redact(path) == path
    assert logs.redact("key " + "b" * 40 + " end") == "key *** end"
