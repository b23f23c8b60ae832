"""The model in the Hugging Face cache: download it (huggingface_hub) and prove the snapshot complete.

Layout, as huggingface_hub writes it (`<HF_HOME>/hub` unless `HF_HUB_CACHE` says otherwise):
```
models--<org>--<name>/
  blobs/<etag>                 file contents; `<etag>.incomplete` while a download is unfinished
  snapshots/<commit>/<file>    symlinks into ../../blobs
  refs/main                    the commit that `main` points at
  trees/<commit>.json          (huggingface_hub >= 2.x) the repo's file list at that commit
```
`HF_HUB_OFFLINE=1` is safe only when the snapshot `refs/main` names holds every file NeMo RL will read: every
shard named in `model.safetensors.index.json`, no `.incomplete` blob, and every snapshot link resolving.

`verify_snapshot` only reads files; `download_model` does network I/O (with tenacity retries on HTTP 429).
`HF_TOKEN` goes to huggingface_hub as an argument and is never logged or printed.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tenacity

DEFAULT_MODEL = "nvidia/NVIDIA-Nemotron-Nano-9B-v2"
TOOL_PARSER_FILE = "nemotron_toolcall_parser_no_streaming.py"
INDEX_FILE = "model.safetensors.index.json"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_cache_dir(env: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps repos for this environment (HF_HUB_CACHE, else HF_HOME/hub)."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                              "huggingface")
    return Path(home).expanduser() / "hub"


def repo_dir(cache: Path, model: str) -> Path:
    return cache / ("models--" + model.replace("/", "--"))


def snapshot_dir(cache: Path, model: str, revision: str = "main") -> Path | None:
    """The snapshot folder `revision` (a branch/tag in refs/, or a commit) points at; None when unknown."""
    repo = repo_dir(cache, model)
    commit = revision if _COMMIT.match(revision) else None
    ref = repo / "refs" / revision
    if commit is None and ref.is_file():
        commit = ref.read_text().strip()
    if commit is None:
        return None
    return repo / "snapshots" / commit


@dataclass(frozen=True)
class CacheReport:
    """Whether the cached snapshot is complete. `problems` are one line each; `fix` says what to run."""
    model: str
    repo: Path
    snapshot: Path | None
    problems: tuple[str, ...] = ()
    shards_expected: int = 0
    shards_present: int = 0
    incomplete_blobs: tuple[str, ...] = ()
    size_bytes: int = 0

    @property
    def complete(self) -> bool:
        return self.snapshot is not None and not self.problems

    @property
    def fix(self) -> str:
        return "" if self.complete else f"ops prepare model --model {self.model}  (resumes the download)"

    def to_json(self) -> dict:
        return {"model": self.model, "repo": str(self.repo), "snapshot": str(self.snapshot) if self.snapshot else None,
                "complete": self.complete, "problems": list(self.problems), "shards_expected": self.shards_expected,
                "shards_present": self.shards_present, "incomplete_blobs": list(self.incomplete_blobs),
                "size_gib": round(self.size_bytes / 2**30, 2)}


def _link_problem(path: Path, rel: str) -> str | None:
    if path.is_symlink() and not path.exists():
        return f"{rel} is a dangling link ({os.readlink(path)})"
    if not path.exists():
        return f"{rel} missing"
    return None


def _expected_files(repo: Path, commit: str) -> dict[str, int] | None:
    """path -> size from huggingface_hub's tree listing of `commit`, when it wrote one."""
    listing = repo / "trees" / f"{commit}.json"
    try:
        files = json.loads(listing.read_text())["files"]
        return {p: int(info["size"]) for p, info in files.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify_snapshot(cache: Path, model: str, revision: str = "main") -> CacheReport:
    """Read the cache and say whether `model` at `revision` is complete enough for HF_HUB_OFFLINE=1."""
    repo = repo_dir(cache, model)
    if not repo.is_dir():
        return CacheReport(model, repo, None, (f"{model} is not in the cache {cache}",))
    snap = snapshot_dir(cache, model, revision)
    if snap is None:
        return CacheReport(model, repo, None, (f"no refs/{revision} under {repo} (download never finished)",))
    if not snap.is_dir():
        return CacheReport(model, repo, None, (f"refs/{revision} names snapshot {snap.name}, which is missing",))
    problems: list[str] = []
    incomplete = tuple(sorted(p.name for p in (repo / "blobs").glob("*.incomplete")))
    if incomplete:
        problems.append(f"{len(incomplete)} unfinished download(s) in blobs/ ({incomplete[0]}...)")
    for entry in sorted(snap.rglob("*")):
        if entry.is_symlink() and not entry.exists():
            problems.append(f"{entry.relative_to(snap)} is a dangling link ({os.readlink(entry)})")
    for name in ("config.json", "tokenizer_config.json"):
        if (p := _link_problem(snap / name, name)) and p not in problems:
            problems.append(p)
    shards: set[str] = set()
    if (snap / INDEX_FILE).exists():
        try:
            shards = set(json.loads((snap / INDEX_FILE).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as err:
            problems.append(f"{INDEX_FILE} unreadable: {type(err).__name__}")
    elif not any((snap / n).exists() for n in ("model.safetensors", "pytorch_model.bin")):
        problems.append(f"no weights: neither {INDEX_FILE} nor model.safetensors")
    present = {s for s in shards if (snap / s).exists()}
    missing = sorted(shards - present)
    if missing:
        problems.append(f"{len(missing)} of {len(shards)} weight shards missing ({', '.join(missing[:3])})")
    expected = _expected_files(repo, snap.name)
    if expected:
        absent = sorted(p for p in expected if not (snap / p).exists() and p not in missing)
        wrong = sorted(p for p, size in expected.items()
                       if (snap / p).exists() and p not in ("tokenizer_config.json", "chat_template.jinja")
                       and (snap / p).stat().st_size != size)
        if absent:
            problems.append(f"{len(absent)} file(s) of the repo missing ({', '.join(absent[:3])})")
        if wrong:
            problems.append(f"{len(wrong)} file(s) with the wrong size ({', '.join(wrong[:3])})")
    size = sum(p.stat().st_size for p in snap.rglob("*") if p.is_file())
    return CacheReport(model, repo, snap, tuple(problems), len(shards), len(present), incomplete, size)


def find_tool_parser(snapshot: Path | None) -> Path | None:
    """The tutorial's `find $HF_HOME -name nemotron_toolcall_parser_no_streaming.py`, within one snapshot."""
    if snapshot is None or not snapshot.is_dir():
        return None
    hits = sorted(snapshot.rglob(TOOL_PARSER_FILE))
    return hits[0] if hits and hits[0].exists() else None


def model_architecture(snapshot: Path | None) -> dict:
    """Heads / KV groups from the snapshot's config.json ({} when absent): what TP must divide."""
    try:
        cfg = json.loads((snapshot / "config.json").read_text())  # type: ignore[operator]
    except (OSError, ValueError, TypeError):
        return {}
    out = {"num_attention_heads": cfg.get("num_attention_heads"),
           "num_key_value_heads": cfg.get("num_key_value_heads") or cfg.get("num_query_groups"),
           "model_type": cfg.get("model_type")}
    return {k: v for k, v in out.items() if v is not None}


# ---- download -------------------------------------------------------------------------------------------

def _status_code(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def is_rate_limited(err: BaseException) -> bool:
    """HTTP 429 anywhere in the exception chain (huggingface_hub wraps some errors)."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if _status_code(cur) == 429 or "429 Too Many Requests" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def retry_after_s(err: BaseException) -> float | None:
    """The server's Retry-After (seconds) on the 429 in the chain, when it sent one."""
    cur: BaseException | None = err
    while cur is not None:
        response = getattr(cur, "response", None)
        value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
        if value and str(value).strip().isdigit():
            return float(value)
        cur = cur.__cause__
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """Back-off on HTTP 429: exponential from `initial_s`, capped at `max_wait_s`, or the server's Retry-After."""
    attempts: int = 6
    initial_s: float = 5.0
    max_wait_s: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_s < 0 or self.max_wait_s < self.initial_s:
            raise ValueError(f"bad RetryPolicy {self}: need attempts >= 1 and 0 <= initial_s <= max_wait_s")

    def wait_s(self, attempt: int, err: BaseException | None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based). Pure."""
        hinted = retry_after_s(err) if err is not None else None
        if hinted is not None:
            return min(hinted, self.max_wait_s)
        return min(self.initial_s * 2 ** (attempt - 1), self.max_wait_s)

    def retrying(self, sleep: Callable[[float], None] = time.sleep,
                 before_sleep: Callable[[tenacity.RetryCallState], None] | None = None) -> tenacity.Retrying:
        import tenacity   # here, so that reading the cache needs no third-party package (GPU host)

        def wait(state: tenacity.RetryCallState) -> float:
            err = state.outcome.exception() if state.outcome else None
            return self.wait_s(state.attempt_number, err)
        return tenacity.Retrying(retry=tenacity.retry_if_exception(is_rate_limited),
                                 stop=tenacity.stop_after_attempt(self.attempts), wait=wait, sleep=sleep,
                                 before_sleep=before_sleep, reraise=True)


def download_model(model: str, cache: Path, env: Mapping[str, str], *, revision: str = "main",
                   policy: RetryPolicy = RetryPolicy(), sleep: Callable[[float], None] = time.sleep,
                   on_retry: Callable[[int, float], None] | None = None, progress: bool = True) -> Path:
    """snapshot_download into `cache` (resuming unfinished blobs), retrying on HTTP 429. Returns the snapshot."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (disable_progress_bars if not progress else enable_progress_bars)()
    token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None

    def report(state: "tenacity.RetryCallState") -> None:
        if on_retry is not None:
            on_retry(state.attempt_number, state.upcoming_sleep)

    for attempt in policy.retrying(sleep=sleep, before_sleep=report):
        with attempt:
            path = snapshot_download(model, revision=revision, cache_dir=str(cache), token=token,
                                     endpoint=env.get("HF_ENDPOINT") or None)
    return Path(path)


@dataclass(frozen=True)
class PrepareOutcome:
    report: CacheReport
    downloaded: bool
    retries: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
