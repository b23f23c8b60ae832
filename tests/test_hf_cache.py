"""HF cache verification on trees laid out as huggingface_hub lays them out, and the real download path
(huggingface_hub's client against a small Hub on 127.0.0.1) with the 429 retry policy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nemo_support import COMMIT, MODEL, FakeHub, build_cache, model_files
from training import hf_cache
from training.hf_cache import RetryPolicy, download_model, find_tool_parser, model_architecture, verify_snapshot


def test_complete_cache_passes(tmp_path):
    snap = build_cache(tmp_path, model_files(shards=3))
    report = verify_snapshot(tmp_path, MODEL)
    assert report.complete, report.problems
    assert report.snapshot == snap and report.shards_expected == 3 and report.shards_present == 3
    assert report.fix == ""
    assert find_tool_parser(snap) == snap / "nemotron_toolcall_parser_no_streaming.py"
    assert model_architecture(snap) == {"num_attention_heads": 40, "num_key_value_heads": 8,
                                        "model_type": "nemotron_h"}


def test_missing_shard_fails_with_fix(tmp_path):
    snap = build_cache(tmp_path, model_files(shards=4))
    (snap / "model-00003-of-00004.safetensors").unlink()
    report = verify_snapshot(tmp_path, MODEL)
    assert not report.complete
    assert any("1 of 4 weight shards missing (model-00003-of-00004.safetensors)" in p for p in report.problems)
    assert report.fix.startswith("ops prepare model --model " + MODEL)


def test_missing_shard_without_tree_listing_still_fails(tmp_path):
    snap = build_cache(tmp_path, model_files(shards=2), tree_listing=False)
    (snap / "model-00002-of-00002.safetensors").unlink()
    assert any("weight shards missing" in p for p in verify_snapshot(tmp_path, MODEL).problems)


def test_incomplete_blob_fails(tmp_path):
    build_cache(tmp_path, model_files(shards=2))
    blobs = hf_cache.repo_dir(tmp_path, MODEL) / "blobs"
    (blobs / ("ab" * 32 + ".incomplete")).write_bytes(b"partial")
    report = verify_snapshot(tmp_path, MODEL)
    assert not report.complete and report.incomplete_blobs == ("ab" * 32 + ".incomplete",)
    assert "unfinished download" in report.problems[0]


def test_dangling_snapshot_link_fails(tmp_path):
    snap = build_cache(tmp_path, model_files(shards=2))
    blob = (snap / "model-00001-of-00002.safetensors").resolve()
    blob.unlink()
    report = verify_snapshot(tmp_path, MODEL)
    assert any("model-00001-of-00002.safetensors is a dangling link" in p for p in report.problems)


def test_absent_model_and_missing_ref(tmp_path):
    assert "is not in the cache" in verify_snapshot(tmp_path, MODEL).problems[0]
    build_cache(tmp_path, model_files(shards=1))
    (hf_cache.repo_dir(tmp_path, MODEL) / "refs" / "main").unlink()
    report = verify_snapshot(tmp_path, MODEL)
    assert report.snapshot is None and "no refs/main" in report.problems[0]
    assert verify_snapshot(tmp_path, MODEL, revision=COMMIT).complete   # a commit needs no ref


def test_hub_cache_dir_follows_env(tmp_path):
    assert hf_cache.hub_cache_dir({"HF_HOME": str(tmp_path)}) == tmp_path / "hub"
    assert hf_cache.hub_cache_dir({"HF_HOME": "/x", "HF_HUB_CACHE": str(tmp_path)}) == tmp_path


@pytest.mark.parametrize("attempt, expected", [(1, 5.0), (2, 10.0), (3, 20.0), (7, 300.0)])
def test_retry_policy_backs_off_exponentially(attempt, expected):
    assert RetryPolicy(initial_s=5.0, max_wait_s=300.0).wait_s(attempt, None) == expected


def test_retry_policy_rejects_bad_values():
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)


def test_download_retries_429_then_completes(tmp_path):
    files = model_files(shards=3)
    token = "hf_" + "Z" * 30
    waits: list[float] = []
    with FakeHub(files, fail_first=2) as hub:
        snap = download_model(MODEL, tmp_path, {"HF_ENDPOINT": hub.url, "HF_TOKEN": token},
                              policy=RetryPolicy(attempts=4, initial_s=0.01, max_wait_s=1.0), sleep=waits.append,
                              progress=False)
    assert waits == [0.01, 0.02]                           # two 429s, exponential back-off, then success
    assert snap == hf_cache.repo_dir(tmp_path, MODEL) / "snapshots" / COMMIT
    assert verify_snapshot(tmp_path, MODEL).complete
    assert os.path.islink(snap / "config.json")            # huggingface_hub's own layout
    assert any(h == f"Bearer {token}" for h in hub.auth_headers)   # the token from the env was used


def test_download_honours_retry_after_and_gives_up(tmp_path):
    waits: list[float] = []
    with FakeHub(model_files(shards=1), fail_first=100, retry_after=7) as hub:
        with pytest.raises(Exception) as info:
            download_model(MODEL, tmp_path, {"HF_ENDPOINT": hub.url},
                           policy=RetryPolicy(attempts=3, initial_s=0.01, max_wait_s=5.0),
                           sleep=waits.append, progress=False)
    assert hf_cache.is_rate_limited(info.value)
    assert waits == [5.0, 5.0]                             # Retry-After 7 s, capped at max_wait_s


def test_download_resumes_after_missing_shard(tmp_path):
    files = model_files(shards=2)
    with FakeHub(files) as hub:
        snap = download_model(MODEL, tmp_path, {"HF_ENDPOINT": hub.url}, progress=False)
        (snap / "model-00002-of-00002.safetensors").resolve().unlink()
        (snap / "model-00002-of-00002.safetensors").unlink()
        assert not verify_snapshot(tmp_path, MODEL).complete
        n_before = len(hub.requests)
        download_model(MODEL, tmp_path, {"HF_ENDPOINT": hub.url}, progress=False)
        fetched = [r for r in hub.requests[n_before:] if r.startswith("GET") and "/resolve/" in r]
    assert fetched == [f"GET /{MODEL}/resolve/{COMMIT}/model-00002-of-00002.safetensors"]
    assert verify_snapshot(tmp_path, MODEL).complete
