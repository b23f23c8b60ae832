"""Test helpers for the NeMo RL trainer tests: an HF cache tree laid out exactly as huggingface_hub lays it out,
and a tiny Hub on 127.0.0.1 (real HTTP, real huggingface_hub client) that can answer 429. Does file and socket I/O.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
NEMO_CONFIGS = FIXTURES / "nemo_rl"
TEMPLATES = FIXTURES / "nemotron_nano_9b_v2"
WORKPLACE = NEMO_CONFIGS / "grpo_workplace_assistant_nemotron_nano_v2_9b.yaml"
MODEL = "nvidia/NVIDIA-Nemotron-Nano-9B-v2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# Nemotron-H 9B v2's published config values that matter for TP (heads 40, KV groups 8).
MODEL_CONFIG = {"architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "num_attention_heads": 40,
                "num_key_value_heads": 8, "hidden_size": 4480, "num_hidden_layers": 56}


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def model_files(shards: int = 4, shard_bytes: int = 64, pretty_template: bool = False) -> dict[str, bytes]:
    """A small stand-in for the Nemotron snapshot: config, index + shards, tokenizer config, tool parser."""
    names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    weight_map = {f"layer.{i}.weight": name for i, name in enumerate(names)}
    files = {
        "config.json": json.dumps(MODEL_CONFIG, indent=2).encode(),
        "model.safetensors.index.json": json.dumps({"metadata": {}, "weight_map": weight_map}).encode(),
        "tokenizer_config.json": (TEMPLATES / "tokenizer_config.json").read_bytes(),
        "nemotron_toolcall_parser_no_streaming.py": b"# tool parser plugin\n",
    }
    if pretty_template:
        files["chat_template.jinja"] = (TEMPLATES / "chat_template.jinja").read_bytes()
    for i, name in enumerate(names):
        files[name] = bytes([i % 256]) * shard_bytes
    return files


def is_lfs(name: str) -> bool:
    return name.endswith(".safetensors")


def etag(name: str, content: bytes) -> str:
    return hashlib.sha256(content).hexdigest() if is_lfs(name) else git_blob_id(content)


def build_cache(cache: Path, files: dict[str, bytes], model: str = MODEL, commit: str = COMMIT,
                tree_listing: bool = True) -> Path:
    """Lay out models--org--name/{blobs,snapshots/<commit>,refs/main[,trees/<commit>.json]}; returns the snapshot."""
    repo = cache / ("models--" + model.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    listing = {}
    for name, content in files.items():
        tag = etag(name, content)
        (repo / "blobs" / tag).write_bytes(content)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(repo / "blobs" / tag, link.parent), link)
        listing[name] = {"size": len(content), "blob_id": git_blob_id(content)}
    if tree_listing:
        (repo / "trees").mkdir(exist_ok=True)
        (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    return snap


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)


class FakeHub:
    """The few Hub endpoints snapshot_download uses, served on 127.0.0.1; `fail_first` requests get HTTP 429."""

    def __init__(self, files: dict[str, bytes], model: str = MODEL, commit: str = COMMIT, fail_first: int = 0,
                 retry_after: int | None = None):
        self.files, self.model, self.commit = files, model, commit
        self.fail_left, self.retry_after = fail_first, retry_after
        self.requests: list[str] = []
        self.auth_headers: list[str] = []
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                hub.handle(self, head=True)

            def do_GET(self):
                hub.handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _send(self, h, code: int, body: bytes, headers: dict | None = None, head: bool = False) -> None:
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, str(v))
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def handle(self, h, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        with self._lock:
            self.requests.append(f"{h.command} {path}")
            self.auth_headers.append(h.headers.get("authorization", ""))
            if self.fail_left > 0:
                self.fail_left -= 1
                extra = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
                return self._send(h, 429, b'{"error": "Too Many Requests"}', extra, head)
        api = f"/api/models/{self.model}"
        if path.startswith(api + "/revision/"):
            body = {"id": self.model, "modelId": self.model, "sha": self.commit, "private": False,
                    "siblings": [{"rfilename": n} for n in self.files]}
            return self._send(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
        if path.startswith(api + "/tree/"):
            items = []
            for name, content in self.files.items():
                item = {"type": "file", "path": name, "size": len(content), "oid": git_blob_id(content)}
                if is_lfs(name):
                    item["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content),
                                   "pointerSize": 134}
                items.append(item)
            return self._send(h, 200, json.dumps(items).encode(), {"Content-Type": "application/json"}, head)
        prefix = f"/{self.model}/resolve/"
        if path.startswith(prefix):
            rev, _, name = path[len(prefix):].partition("/")
            if name not in self.files:
                return self._send(h, 404, b"not found", {"X-Error-Code": "EntryNotFound"}, head)
            content = self.files[name]
            headers = {"X-Repo-Commit": self.commit, "ETag": f'"{etag(name, content)}"'}
            if is_lfs(name):
                headers["X-Linked-Etag"] = f'"{etag(name, content)}"'
                headers["X-Linked-Size"] = len(content)
            return self._send(h, 200, content, headers, head)
        return self._send(h, 404, b"not found", {}, head)
