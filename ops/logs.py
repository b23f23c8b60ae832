"""Logging, configured once at the entry point (structlog). Does I/O only in `configure`.

JSON lines when stderr is not a terminal, a console renderer when it is; every event passes through
`redact_secrets`, so a token never reaches a log, journal or report by accident.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import structlog

SECRET_ENV_NAMES = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN",
                    "NGC_API_KEY", "OPENAI_API_KEY", "SLACK_WEBHOOK_URL")
REDACTED = "***"

# Token shapes: HF (hf_...), W&B (40 hex), Slack (xox?-), GitHub (ghp_), generic "key=..." pairs.
_TOKEN_PATTERNS = [
    re.compile(r"hf_[A-Za-z0-9]{20,}"),
    # 40 hex (a W&B key), but not a path component: HF snapshot dirs are 40-hex commit ids.
    re.compile(r"(?<![/\w.-])[0-9a-f]{40}(?![/\w])"),
    re.compile(r"xox[abprs]-[A-Za-z0-9-]{10,}"),
    re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"(?i)((?:api[_-]?key|token|secret|password)\s*[=:]\s*)([^\s'\",]+)"),
]


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    """The values of known secret variables in `env` (default: this process's), longest first."""
    env = os.environ if env is None else env
    values = [env[name] for name in SECRET_ENV_NAMES if env.get(name) and len(env[name]) >= 4]
    return sorted(values, key=len, reverse=True)


def redact(text: str, env: dict[str, str] | None = None) -> str:
    """`text` with every known secret value and every token-shaped string replaced by ***."""
    for value in secret_values(env):
        text = text.replace(value, REDACTED)
    for pattern in _TOKEN_PATTERNS:
        if pattern.groups == 2:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


def redact_env(env: dict[str, str]) -> dict[str, str]:
    """A copy of `env` fit to print: secret variables' values replaced by ***."""
    return {k: (REDACTED if k in SECRET_ENV_NAMES or _looks_secret_name(k) else v) for k, v in env.items()}


def _looks_secret_name(name: str) -> bool:
    return bool(re.search(r"(?i)(token|secret|password|api_key|apikey)", name))


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and (k in SECRET_ENV_NAMES or _looks_secret_name(k))
                    else _redact_value(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v) for v in value)
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: dict) -> dict:
    """structlog processor: no secret leaves through a log event."""
    return {k: _redact_value(v) for k, v in event_dict.items()}


def configure(debug: bool = False, json_logs: bool | None = None, stream=None) -> None:
    """Configure structlog once. JSON when the stream is not a terminal (or when asked)."""
    stream = stream or sys.stderr
    if json_logs is None:
        json_logs = not stream.isatty()
    level = logging.DEBUG if debug else logging.INFO
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
