"""The entry `ops status --watch` calls (docs/contracts.md): `watch(exp, paths) -> exit code`. The view
itself is ops.live; this module only adapts the contract's signature. Terminal I/O through ops.live."""

from __future__ import annotations

from ops import live
from training.spec import RunPaths


def watch(exp: str, paths: RunPaths) -> int:
    return live.watch(paths, run_id=exp)
