"""The tutorial's two chat-template edits, made by meaning, on both fixture forms and inside a real HF cache
layout (snapshot symlinks into blobs)."""

from __future__ import annotations

import json
import os

import pytest

from nemo_support import MODEL, TEMPLATES, build_cache, model_files
from training import chat_template as ct
from training.hf_cache import verify_snapshot

PRETTY = (TEMPLATES / "chat_template.jinja").read_text()
COMPACT = json.loads((TEMPLATES / "tokenizer_config.json").read_text())["chat_template"]
SED_RESULT = (TEMPLATES / "tokenizer_config.patched.json").read_text()


@pytest.mark.parametrize("template", [PRETTY, COMPACT], ids=["pretty", "compact"])
def test_both_edits_apply_and_render_right(template):
    before = ct.verify_template(template)
    assert not before.ok and len(before.problems) == 2           # stock template: thinking on, turn set aside
    patched = ct.patch_text(template)
    assert patched.applied == (ct.EDIT_THINKING, ct.EDIT_TRAILING) and not patched.not_found
    after = ct.verify_template(patched.text)
    assert after.ok, after.problems
    assert after.samples["generation_prompt"].endswith("<SPECIAL_11>Assistant\n<think></think>")
    again = ct.patch_text(patched.text)                            # idempotent
    assert again.text == patched.text and not again.applied and again.already == patched.applied


def test_compact_form_gives_exactly_the_tutorial_sed_result(tmp_path):
    path = tmp_path / "tokenizer_config.json"
    path.write_text((TEMPLATES / "tokenizer_config.json").read_text())
    result = ct.patch_file(path)
    assert result.status == "patched" and result.ok
    assert path.read_text() == SED_RESULT                           # byte for byte what sed produces
    assert result.backup.read_text() == (TEMPLATES / "tokenizer_config.json").read_text()


def test_pretty_form_where_sed_does_nothing(tmp_path):
    path = tmp_path / "chat_template.jinja"
    path.write_text(PRETTY)
    first = ct.patch_file(path)
    assert first.status == "patched" and first.ok
    assert "namespace(enable_thinking = false)" in path.read_text()
    assert "messages[:-1]" not in path.read_text()
    assert path.with_name("chat_template.jinja.orig").read_text() == PRETTY
    second = ct.patch_file(path)
    assert second.status == "already patched" and second.ok
    assert path.with_name("chat_template.jinja.orig").read_text() == PRETTY   # backup never overwritten


def test_unknown_template_is_left_alone(tmp_path):
    path = tmp_path / "chat_template.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    result = ct.patch_file(path)
    assert result.status == "unrecognized" and not result.ok
    assert path.read_text() == "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert not path.with_name("chat_template.jinja.orig").exists()


def test_snapshot_symlinks_stay_content_addressed(tmp_path):
    snap = build_cache(tmp_path, model_files(shards=1, pretty_template=True))
    blobs = snap.parent.parent / "blobs"
    original_blob = (snap / "tokenizer_config.json").resolve()
    original_bytes = original_blob.read_bytes()
    results = ct.patch_snapshot(snap)
    assert [r.status for r in results] == ["patched", "patched"] and all(r.ok for r in results)
    for name in ct.TEMPLATE_FILES:
        entry = snap / name
        assert entry.is_symlink() and entry.resolve().parent == blobs
        content = entry.read_bytes()
        assert entry.resolve().name == ct.git_blob_id(content)           # blob name == git id of its bytes
        backup = snap / (name + ".orig")
        assert backup.is_symlink() and backup.resolve().parent == blobs
    assert original_blob.read_bytes() == original_bytes                  # the shared original blob untouched
    assert (snap / "tokenizer_config.json.orig").resolve() == original_blob
    assert (snap / "tokenizer_config.json").read_text() == SED_RESULT
    assert verify_snapshot(tmp_path, MODEL).complete                      # still a complete, consistent cache
    assert [r.status for r in ct.patch_snapshot(snap)] == ["already patched", "already patched"]
    assert not list(snap.glob(".*grpo-ops*"))                             # no temp files left


def test_dry_run_writes_nothing(tmp_path):
    snap = build_cache(tmp_path, model_files(shards=1))
    link_before = os.readlink(snap / "tokenizer_config.json")
    results = ct.inspect_snapshot(snap)
    assert [r.status for r in results] == ["would patch"]
    assert os.readlink(snap / "tokenizer_config.json") == link_before
    assert not (snap / "tokenizer_config.json.orig").exists()
