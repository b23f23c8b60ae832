"""A listener that never blocks the supervisor: records go into a bounded queue, a thread handles them.

The supervisor's journal calls every listener with each record (ops.journal.Journal). `BackgroundSink`
turns a slow handler (an HTTP post, a W&B call, a file write) into a call that returns at once: a full
queue drops the record and counts it, a handler that raises is logged and the thread goes on. Does I/O
only through the handler it wraps, in its own thread.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Protocol

import structlog

log = structlog.get_logger()
_STOP = object()


class Handler(Protocol):
    name: str

    def handle(self, record: dict) -> None: ...

    def close(self) -> None: ...


class BackgroundSink:
    """Callable `(record) -> None` that enqueues and returns; `close()` drains and stops the thread."""

    def __init__(self, handler: Handler, maxsize: int = 10_000):
        self.handler = handler
        self.name = handler.name
        self.dropped = 0
        self.failed = 0
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._run, name=f"grpo-ops-sink-{self.name}", daemon=True)
        self._thread.start()

    def __call__(self, record: dict) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:                 # never block the watch loop; say so in the log once in a while
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("sink queue full, record dropped", sink=self.name, dropped=self.dropped)

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            try:
                if record is _STOP:
                    break
                self.handler.handle(record)
            except Exception as err:       # a sink failure must never reach the supervisor
                self.failed += 1
                log.warning("sink failed on a record", sink=self.name, kind=getattr(record, "get", dict().get)("kind"),
                            error=f"{type(err).__name__}: {err}")
            finally:
                self._queue.task_done()
        try:
            self.handler.close()
        except Exception as err:
            log.warning("sink failed to close", sink=self.name, error=f"{type(err).__name__}: {err}")

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued record was handled; False on time-out."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 30.0) -> bool:
        """Handle what is queued, close the handler, stop the thread. False if it did not finish in time."""
        if self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout_s)
            except queue.Full:
                return False
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def __repr__(self) -> str:
        return f"BackgroundSink({self.name})"
