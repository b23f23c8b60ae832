"""`--notify URL`: Slack-compatible JSON webhook posts on give-up, recovery and success. Does network I/O.

What to say is decided by `NotifyPolicy.message(record)` (pure, keeps a little state: the last failure,
which recoveries were announced). Posting retries with tenacity on 429, 5xx and connection errors; it
runs in a BackgroundSink thread, so the supervisor never waits for the network. The URL itself is a
secret (Slack puts the token in the path): it is never logged; only its host is.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import structlog
from tenacity import retry_if_exception, stop_after_attempt, wait_exponential, Retrying

from ops.errors import UserError
from ops.logs import redact

log = structlog.get_logger()
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def resolve_url(value: str) -> str:
    """`env:NAME` reads the URL from the environment (keeps it off the command line); else the value."""
    url = os.environ.get(value[4:], "") if value.startswith("env:") else value
    if value.startswith("env:") and not url:
        raise UserError(f"--notify {value}: variable {value[4:]} is empty; export it or pass the URL")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise UserError(f"--notify: {redact(url)[:40]!r} is not an http(s) URL; pass e.g. "
                        "https://hooks.slack.com/services/... or env:SLACK_WEBHOOK_URL")
    return url


@dataclass
class NotifyPolicy:
    """Which journal records deserve a message, and its text."""
    last_failure: dict = field(default_factory=dict)     # attempt -> failure kind
    announced: set = field(default_factory=set)

    def message(self, record: dict) -> str | None:
        kind, attempt, run = record.get("kind"), record.get("attempt", 0), record.get("run_id", "?")
        if kind == "attempt_end" and record.get("failure"):
            self.last_failure[attempt] = record["failure"].get("kind", "failure")
            return None
        if kind == "progress" and attempt - 1 in self.last_failure and attempt not in self.announced:
            self.announced.add(attempt)
            return (f":white_check_mark: *{run}* recovered: attempt {attempt} is training again at step "
                    f"{record.get('step')}/{record.get('total_steps')} after {self.last_failure[attempt - 1]}")
        if kind == "run_end":
            state, steps = record.get("state"), f"{record.get('steps_done')}/{record.get('total_steps')}"
            if state == "SUCCEEDED":
                return f":tada: *{run}* succeeded: {steps} steps in {attempt} attempt(s). `ops report {run}`"
            return (f":rotating_light: *{run}* gave up: {state} after {attempt} attempt(s), {steps} steps: "
                    f"{record.get('reason', '')}. `ops report {run}`")
        return None


def slack_payload(text: str) -> dict:
    text = redact(text)
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


class HTTPStatusError(Exception):
    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


def _is_retryable(err: BaseException) -> bool:
    if isinstance(err, HTTPStatusError):
        return err.status in RETRY_STATUS
    return isinstance(err, (urllib.error.URLError, TimeoutError, ConnectionError))


class WebhookNotifier:
    """Handler for a BackgroundSink: posts the policy's messages as JSON."""

    name = "notify"

    def __init__(self, url: str, attempts: int = 5, wait=None, timeout_s: float = 10.0):
        self.url = url
        self.host = urllib.parse.urlsplit(url).netloc
        self.policy = NotifyPolicy()
        self.timeout_s = timeout_s
        self.retrying = Retrying(stop=stop_after_attempt(attempts), retry=retry_if_exception(_is_retryable),
                                 wait=wait or wait_exponential(multiplier=1, min=1, max=30), reraise=True)
        self.sent = 0

    def handle(self, record: dict) -> None:
        text = self.policy.message(record)
        if text is None:
            return
        try:
            self.retrying(self._post, slack_payload(text))
            self.sent += 1
            log.info("notification sent", host=self.host, kind=record.get("kind"))
        except Exception as err:
            log.warning("notification failed", host=self.host, error=type(err).__name__ + ": " + str(err)[:200])

    def _post(self, payload: dict) -> None:
        req = urllib.request.Request(self.url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as err:
            raise HTTPStatusError(err.code) from None

    def close(self) -> None:
        pass
