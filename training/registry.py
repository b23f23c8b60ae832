"""Trainer specs by name: "embedded" (the built-in GRPO workload) and "nemo-rl" (a NeMo RL checkout).
Imports lazily; an unknown name lists the valid ones. No I/O beyond imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ops.errors import UserError

# name -> (module, class). Factories take keyword options (e.g. repo=PATH for nemo-rl).
TRAINERS: dict[str, tuple[str, str]] = {
    "embedded": ("training.embedded", "EmbeddedTrainer"),
    "nemo-rl": ("training.nemo_rl", "NemoRLTrainer"),
}


def _plugins(env: dict | None = None) -> dict[str, tuple[str, str]]:
    """Extra trainers from GRPO_OPS_TRAINERS="name=module:Class,..." (site plugins, test trainers)."""
    import os
    spec = (env if env is not None else os.environ).get("GRPO_OPS_TRAINERS", "")
    out = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, _, target = item.partition("=")
        module, _, cls = target.partition(":")
        if not (name and module and cls):
            raise UserError(f"GRPO_OPS_TRAINERS item {item!r} is malformed; use name=module:Class")
        out[name] = (module, cls)
    return out


def register(name: str, module: str, cls: str) -> None:
    TRAINERS[name] = (module, cls)


def factory(name: str) -> Callable[..., Any]:
    known = {**TRAINERS, **_plugins()}
    if name not in known:
        raise UserError(f"unknown trainer {name!r}; valid trainers: {', '.join(known)}")
    module, cls = known[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as err:
        raise UserError(f"trainer {name!r} is not available in this install ({module}.{cls}: {err})") from None


def make(name: str, **options: Any) -> Any:
    """A trainer spec instance; options the factory does not take are dropped (repo is nemo-rl's)."""
    fn = factory(name)
    import inspect
    try:
        params = inspect.signature(fn).parameters
        accepted = {k: v for k, v in options.items()
                    if k in params or any(p.kind is p.VAR_KEYWORD for p in params.values())}
    except (TypeError, ValueError):
        accepted = options
    return fn(**{k: v for k, v in accepted.items() if v is not None})
