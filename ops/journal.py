"""The run's records on disk: the append-only journal, state.json and heartbeat.json. Does file I/O.

Journal: one JSON object per line, written with a single `os.write` of the whole line on an O_APPEND fd
and fsync'd, so a crash leaves at most a last line without `\\n`, which readers ignore. `seq` continues
from the existing file, so `ops run --resume` appends to the same journal. state.json and heartbeat.json
are replaced atomically (tmp + rename). Secrets are redacted on the way in.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

from ops.logs import _redact_value

log = structlog.get_logger()

Listener = Callable[[dict], None]


def iso_now(wall: float | None = None) -> str:
    return dt.datetime.fromtimestamp(time.time() if wall is None else wall, dt.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def read_journal(path: Path) -> list[dict]:
    """All complete records; a torn last line (no newline) or a garbled line is skipped."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    records = []
    for raw in data.split(b"\n")[:-1]:           # the piece after the last \n is incomplete
        try:
            records.append(json.loads(raw))
        except ValueError:
            continue
    return records


@retry(retry=retry_if_exception_type(OSError), stop=stop_after_attempt(3), wait=wait_fixed(0.05), reraise=True)
def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace `path` with `obj` as JSON: write a temp file, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None


class Journal:
    """Append-only JSONL writer; calls `listeners` with each record after it is on disk."""

    def __init__(self, path: Path, run_id: str, listeners: Iterable[Listener] = (),
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self.listeners = list(listeners)
        self.clock, self.wall = clock, wall
        existing = read_journal(self.path)
        self.seq = max((r.get("seq", 0) for r in existing), default=0)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._terminate_torn_line()

    def _terminate_torn_line(self) -> None:
        # A supervisor killed mid-write leaves a line without "\n"; end it so the next record parses.
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    os.write(self._fd, b"\n")

    def append(self, kind: str, attempt: int, **fields: Any) -> dict:
        self.seq += 1
        record = {"seq": self.seq, "ts": iso_now(self.wall()), "mono": round(self.clock(), 3), "kind": kind,
                  "run_id": self.run_id, "attempt": attempt, **_redact_value(fields)}
        line = (json.dumps(record, default=str) + "\n").encode()
        os.write(self._fd, line)
        os.fsync(self._fd)
        for listener in self.listeners:
            try:
                listener(record)
            except Exception as err:   # a listener must never stop the run
                log.warning("journal listener failed", listener=repr(listener), error=repr(err))
        return record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def host() -> str:
    return socket.gethostname()
