"""Listeners the supervisor calls with every journal record: W&B, webhook, Prometheus.

`build_listeners(options, paths)` reads the `ops run` flags (`notify`, `metrics_port`, `metrics_textfile`,
`metrics_addr`, `wandb`) from a mapping or an object's attributes and returns callables
`(record) -> None` that never block (each a BackgroundSink with its own queue and thread). Call
`close_listeners(listeners)` once the run ended, so the last records (run_end) get out. Binding the
metrics port happens here, so a busy port is a UserError before anything launches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ops.sinks.base import BackgroundSink
from training.spec import RunPaths


def _opt(options: Any, name: str, default: Any = None) -> Any:
    if isinstance(options, Mapping):
        return options.get(name, default)
    return getattr(options, name, default)


def wants_wandb(flag: bool | None, env: Mapping[str, str] | None = None, trainer_logs_wandb: bool = False) -> bool:
    """--wandb / --no-wandb; unset means on when W&B was configured (WANDB_API_KEY or WANDB_MODE) or the
    trainer's own config logs to W&B (logger.wandb_enabled): the supervisor's events go where its metrics go
    (offline without a key)."""
    env = os.environ if env is None else env
    if flag is not None:
        return bool(flag)
    return bool(env.get("WANDB_API_KEY") or env.get("WANDB_MODE") or trainer_logs_wandb)


def build_listeners(options: Any, paths: RunPaths) -> list[BackgroundSink]:
    listeners: list[BackgroundSink] = []
    notify = _opt(options, "notify")
    if notify:
        from ops.sinks.notify import WebhookNotifier, resolve_url
        listeners.append(BackgroundSink(WebhookNotifier(resolve_url(notify))))
    port, textfile = _opt(options, "metrics_port"), _opt(options, "metrics_textfile")
    if port is not None or textfile:
        from ops.sinks.prometheus import PrometheusExporter
        listeners.append(BackgroundSink(PrometheusExporter(
            port=port, textfile=Path(textfile) if textfile else None, addr=_opt(options, "metrics_addr") or "0.0.0.0")))
    if wants_wandb(_opt(options, "wandb"), trainer_logs_wandb=bool(_opt(options, "trainer_logs_wandb"))):
        from ops.sinks.wandb_sink import WandbEvents
        listeners.append(BackgroundSink(WandbEvents(paths)))
    return listeners


def close_listeners(listeners: Iterable[Any], timeout_s: float = 30.0) -> None:
    """Drain and stop every listener that has `close` (bounded wait per listener)."""
    for listener in listeners:
        close = getattr(listener, "close", None)
        if close is not None:
            close(timeout_s)
