"""`ops prepare model` / `ops prepare chat-template` as a user runs them (subprocess, real files, local Hub)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from nemo_support import MODEL, FakeHub, build_cache, model_files

OPS = [sys.executable, "-m", "ops.cli"]
ROOT = Path(__file__).resolve().parents[1]


def ops(*args: str, env: dict) -> subprocess.CompletedProcess:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([*OPS, *args], env=full, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_prepare_model_downloads_verifies_and_never_prints_the_token(tmp_path):
    token = "hf_" + "S3cr3t" * 5
    with FakeHub(model_files(shards=2), fail_first=2) as hub:
        env = {"HF_HOME": str(tmp_path), "HF_ENDPOINT": hub.url, "HF_TOKEN": token}
        first = ops("prepare", "model", "--json", env=env)
        n_requests = len(hub.requests)
        second = ops("prepare", "model", env=env)
        assert len(hub.requests) == n_requests          # complete cache: no network at all
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["complete"] and data["offline_safe"] and data["downloaded"] and data["shards_present"] == 2
    assert second.returncode == 0 and "HF_HUB_OFFLINE=1 is safe" in second.stdout
    for out in (first, second):
        assert token not in out.stdout + out.stderr


def test_prepare_model_offline_with_incomplete_cache_is_a_user_error(tmp_path):
    snap = build_cache(tmp_path / "hub", model_files(shards=2))
    (snap / "model-00001-of-00002.safetensors").unlink()
    out = ops("prepare", "model", env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2
    assert "HF_HUB_OFFLINE=1 forbids downloading" in out.stderr and "Traceback" not in out.stderr


def test_prepare_chat_template_patches_the_cached_snapshot(tmp_path):
    snap = build_cache(tmp_path / "hub", model_files(shards=1, pretty_template=True))
    env = {"HF_HOME": str(tmp_path)}
    dry = ops("prepare", "chat-template", "--dry-run", env=env)
    assert dry.returncode == 0 and dry.stdout.count("would patch") == 2
    out = ops("prepare", "chat-template", "--json", env=env)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["status"] for r in rows] == ["patched", "patched"] and all(r["verified"] for r in rows)
    assert (snap / "tokenizer_config.json.orig").is_symlink()
    again = ops("prepare", "chat-template", env=env)
    assert again.returncode == 0 and again.stdout.count("already patched") == 2


def test_prepare_chat_template_on_unknown_model_names_the_fix(tmp_path):
    out = ops("prepare", "chat-template", "--model", "org/absent", env={"HF_HOME": str(tmp_path)})
    assert out.returncode == 2
    assert "org/absent is not in the cache" in out.stderr and "ops prepare model --model org/absent" in out.stderr
