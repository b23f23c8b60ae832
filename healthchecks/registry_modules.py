"""The check modules `ops preflight` imports, in order; importing a module registers its checks (and fixes)
in `healthchecks.base.REGISTRY` / `FIXES`, so this order is the order of the table. To add checks, write a
module under healthchecks/ and append its dotted name here (one line). I/O: imports only.
"""

from __future__ import annotations

import importlib

from healthchecks.base import REGISTRY

CHECK_MODULES = [
    "healthchecks.gpu",          # gpu, cuda_arch, gpu_memory, gpu_health
    "healthchecks.processes",    # stale_processes, ray_cluster
    "healthchecks.host",         # host, wandb
    "healthchecks.nemo_rl_checks",  # hf_cache, chat_template, tool_parser_plugin, training_config (NeMo RL runs)
    "healthchecks.container",    # container: /dev/shm, GPU visible, ulimits (inside a container only)
]


def load_checks() -> None:
    """Import every listed check module (idempotent) and put REGISTRY in the order of CHECK_MODULES, whatever
    order the modules happened to be imported in (checks from unlisted modules go last)."""
    for name in CHECK_MODULES:
        importlib.import_module(name)
    rank = {name: i for i, name in enumerate(CHECK_MODULES)}
    ordered = sorted(REGISTRY.items(), key=lambda kv: rank.get(getattr(kv[1], "__module__", ""), len(rank)))
    REGISTRY.clear()
    REGISTRY.update(ordered)
