"""The Nemotron Nano 9B v2 chat-template edits the NeMo Gym GRPO tutorial makes with `sed`, made by meaning.

The tutorial's two `sed -i` commands only match the compact form of the template and silently change nothing on
the pretty-printed form (tests/fixtures/nemotron_nano_9b_v2/README.md). Here each edit is a whitespace-tolerant
pattern over Jinja tags, and the result is judged by rendering it with jinja2 the way transformers does:
1. default thinking off: `namespace(enable_thinking = true)` -> `false`, so the generation prompt ends in
   `<think></think>` (the per-message `/think` switch keeps working);
2. the block that sets aside a trailing assistant message is removed, so a conversation that ends in an
   assistant turn renders that turn like any earlier one.

Where the files live: a Hugging Face cache snapshot entry is a symlink to `blobs/<etag>`. Writing through the
link would make a blob's content disagree with its name (and change every revision sharing it); `sed -i` instead
replaces the link with a plain file. We keep the cache content-addressed: the patched bytes go into a new blob
named by their git blob id (what the Hub uses as the ETag of a non-LFS file), and the snapshot link is repointed
at it. The original blob stays untouched; the backup `<file>.orig` next to the entry links to it. For a plain
file (a local model directory) the backup is a copy and the file is replaced atomically.

`patch_text` and `verify_template` are pure; `patch_file` / `patch_snapshot` do file I/O.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_FILES = ("tokenizer_config.json", "chat_template.jinja")
BACKUP_SUFFIX = ".orig"

_OPEN, _CLOSE = r"\{%-?\s*", r"\s*-?%\}"
_Q = r"""['"]"""
# Edit 1: the namespace's default only (the per-message `ns.enable_thinking = true` must stay).
THINKING_DEFAULT_ON = re.compile(r"(namespace\(\s*enable_thinking\s*=\s*)true(\s*\))")
THINKING_DEFAULT_OFF = re.compile(r"namespace\(\s*enable_thinking\s*=\s*false\s*\)")
# Edit 2: the four statements that set aside a trailing assistant message (compact or pretty), plus the
# whitespace after them (which the closing `-%}` trims anyway, so dropping it changes no output).
TRAILING_ASSISTANT_BLOCK = re.compile(
    _OPEN + rf"if\s+messages\[-1\]\[{_Q}role{_Q}\]\s*==\s*{_Q}assistant{_Q}" + _CLOSE + r"\s*"
    + _OPEN + rf"set\s+ns\.last_turn_assistant_content\s*=\s*messages\[-1\]\[{_Q}content{_Q}\]\.strip\(\)"
    + _CLOSE + r"\s*"
    + _OPEN + r"set\s+messages\s*=\s*messages\[\s*:\s*-1\s*\]" + _CLOSE + r"\s*"
    + _OPEN + r"endif\s*(?:-%\}\s*|%\})"
)

EDIT_THINKING = "default thinking off"
EDIT_TRAILING = "trailing assistant turn kept"


@dataclass(frozen=True)
class TextPatch:
    """What `patch_text` did to one template."""
    text: str
    applied: tuple[str, ...] = ()          # edits made now
    already: tuple[str, ...] = ()          # edits found already made
    not_found: tuple[str, ...] = ()        # neither the original nor the patched form was recognised

    @property
    def changed(self) -> bool:
        return bool(self.applied)


def patch_text(template: str) -> TextPatch:
    """Both tutorial edits on one template string. Pure; idempotent (a patched template comes back unchanged)."""
    applied, already, not_found = [], [], []
    text, n = THINKING_DEFAULT_ON.subn(r"\1false\2", template, count=1)
    if n:
        applied.append(EDIT_THINKING)
    elif THINKING_DEFAULT_OFF.search(text):
        already.append(EDIT_THINKING)
    else:
        not_found.append(EDIT_THINKING)
    text, n = TRAILING_ASSISTANT_BLOCK.subn("", text, count=1)
    if n:
        applied.append(EDIT_TRAILING)
    elif "last_turn_assistant_content" in text and "messages[:-1]" not in text.replace(" ", ""):
        already.append(EDIT_TRAILING)
    else:
        not_found.append(EDIT_TRAILING)
    return TextPatch(text, tuple(applied), tuple(already), tuple(not_found))


# ---- verification by rendering --------------------------------------------------------------------------

_USER = {"role": "user", "content": "Write a haiku about GPUs"}
_ASSISTANT = {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\nSilicon rivers hum."}
_NEXT_USER = {"role": "user", "content": "Another one"}


def _environment() -> jinja2.Environment:
    """Set up like transformers' chat-template renderer (sandboxed, trim/lstrip blocks, tojson)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def render(template: str, messages: Sequence[dict], add_generation_prompt: bool, **kwargs) -> str:
    return _environment().from_string(template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt, tools=None,
        bos_token="<s>", eos_token="<SPECIAL_12>", **kwargs)


@dataclass(frozen=True)
class Verification:
    ok: bool
    problems: tuple[str, ...] = ()
    samples: dict = field(default_factory=dict)     # name -> rendered text, for --json and debugging


def verify_template(template: str) -> Verification:
    """Render the conversations the tutorial's edits are about; pure. `ok` only when both behaviours hold."""
    problems: list[str] = []
    try:
        gen = render(template, [_USER], add_generation_prompt=True)
        think = render(template, [{"role": "system", "content": "/think"}, _USER], add_generation_prompt=True)
        ends_in_assistant = render(template, [_USER, _ASSISTANT], add_generation_prompt=False)
        continued = render(template, [_USER, _ASSISTANT, _NEXT_USER], add_generation_prompt=False)
    except jinja2.TemplateError as err:
        return Verification(False, (f"template does not render: {type(err).__name__}: {err}",))
    if not gen.endswith("<think></think>"):
        problems.append(f"default generation prompt ends in {gen[-16:]!r}, not '<think></think>' (thinking still on)")
    if not think.endswith("<think>\n"):
        problems.append("'/think' in a system message no longer turns thinking on")
    normal_turn = "<SPECIAL_11>Assistant\nSilicon rivers hum.\n<SPECIAL_12>\n"
    if not ends_in_assistant.endswith(normal_turn) or not continued.startswith(ends_in_assistant):
        problems.append("a conversation ending in an assistant turn is still set aside (not rendered as a normal turn)")
    samples = {"generation_prompt": gen, "ends_in_assistant": ends_in_assistant}
    return Verification(not problems, tuple(problems), samples)


# ---- files ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FilePatch:
    path: Path
    status: str                            # "patched" | "already patched" | "would patch" | "unrecognized"
    applied: tuple[str, ...] = ()
    not_found: tuple[str, ...] = ()
    backup: Path | None = None
    verification: Verification | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("patched", "already patched", "would patch") and bool(
            self.verification and self.verification.ok)


def read_template(path: Path) -> tuple[str, object]:
    """(template text, the parsed JSON or None) of a tokenizer_config.json or a chat_template.jinja."""
    raw = path.read_text(encoding="utf-8")
    if path.suffix != ".json":
        return raw, None
    data = json.loads(raw)
    tpl = data.get("chat_template")
    if isinstance(tpl, list):                # named templates: [{"name": "default", "template": ...}, ...]
        tpl = next((t["template"] for t in tpl if t.get("name") == "default"), tpl[0]["template"] if tpl else None)
    if not isinstance(tpl, str):
        raise ValueError(f"{path} has no chat_template string")
    return tpl, data


def _replace_template_json(raw: str, data: dict, old: str, new: str) -> str:
    """The JSON file's text with the template replaced, written in the file's own style when recognisable."""
    tpl = data["chat_template"]
    if isinstance(tpl, list):
        data["chat_template"] = [dict(t, template=new) if t.get("template") == old else t for t in tpl]
    else:
        data["chat_template"] = new
    hf_style = json.dumps(json.loads(raw), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if raw == hf_style:                      # how save_pretrained writes it
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return json.dumps(data, indent=2, ensure_ascii=False) + ("\n" if raw.endswith("\n") else "")


def git_blob_id(content: bytes) -> str:
    """The git blob sha1 of `content`: the Hub's ETag (and cache blob name) for a non-LFS file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _atomic_write(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.grpo-ops.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def _write_patched(path: Path, content: bytes) -> Path:
    """Write `content` as the new version of `path`; returns the backup. See the module docstring."""
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if path.is_symlink():
        target = Path(os.readlink(path))
        blob = (path.parent / target).resolve()
        new_blob = blob.parent / git_blob_id(content)
        if not new_blob.exists():
            _atomic_write(new_blob, content)
        if not backup.exists() and not backup.is_symlink():
            os.symlink(target, backup)       # the original blob, by the same relative path
        link_tmp = path.with_name(f".{path.name}.grpo-ops.link")
        if link_tmp.is_symlink() or link_tmp.exists():
            link_tmp.unlink()
        os.symlink(os.path.relpath(new_blob, path.parent), link_tmp)
        os.replace(link_tmp, path)
        return backup
    if not backup.exists():
        backup.write_bytes(path.read_bytes())
    _atomic_write(path, content)
    return backup


def patch_file(path: Path, dry_run: bool = False) -> FilePatch:
    """Patch one tokenizer_config.json / chat_template.jinja in place (backup first), then verify by rendering."""
    raw = path.read_text(encoding="utf-8")
    template, data = read_template(path)
    result = patch_text(template)
    if result.not_found and not result.changed and not result.already:
        return FilePatch(path, "unrecognized", not_found=result.not_found, verification=verify_template(template))
    verification = verify_template(result.text)
    if not result.changed:
        return FilePatch(path, "already patched", not_found=result.not_found, verification=verification)
    if dry_run:
        return FilePatch(path, "would patch", result.applied, result.not_found, verification=verification)
    if not verification.ok:    # never write a template that does not do what it should
        return FilePatch(path, "unrecognized", result.applied, result.not_found, verification=verification)
    new_raw = result.text if data is None else _replace_template_json(raw, data, template, result.text)
    backup = _write_patched(path, new_raw.encode("utf-8"))
    return FilePatch(path, "patched", result.applied, result.not_found, backup, verification)


def template_files(snapshot: Path) -> list[Path]:
    """The template-bearing files of a snapshot or model directory that exist (tokenizer_config.json first)."""
    return [snapshot / name for name in TEMPLATE_FILES if (snapshot / name).exists()]


def patch_snapshot(snapshot: Path, dry_run: bool = False) -> list[FilePatch]:
    files = template_files(snapshot)
    if not files:
        raise FileNotFoundError(f"no tokenizer_config.json or chat_template.jinja in {snapshot}")
    return [patch_file(p, dry_run) for p in files]


def inspect_snapshot(snapshot: Path) -> list[FilePatch]:
    """What patch_snapshot would find, without writing: per file 'already patched' / 'would patch' / ..."""
    return patch_snapshot(snapshot, dry_run=True)
