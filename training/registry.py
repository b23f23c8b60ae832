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


def register(name: str, module: str, cls: str) -> None:
    TRAINERS[name] = (module, cls)


def factory(name: str) -> Callable[..., Any]:
    if name not in TRAINERS:
        raise UserError(f"unknown trainer {name!r}; valid trainers: {', '.join(TRAINERS)}")
    module, cls = TRAINERS[name]
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
