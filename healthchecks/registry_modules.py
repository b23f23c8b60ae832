"""The check modules `ops preflight` imports, in order; importing a module registers its checks (and fixes)
in `healthchecks.base.REGISTRY` / `FIXES`, so this order is the order of the table. To add checks, write a
module under healthchecks/ and append its dotted name here (one line). I/O: imports only.
"""

from __future__ import annotations

import importlib

CHECK_MODULES = [
    "healthchecks.gpu",          # gpu, cuda_arch, gpu_memory, gpu_health
    "healthchecks.processes",    # stale_processes, ray_cluster
    "healthchecks.host",         # host, wandb
    "healthchecks.nemo_rl_checks",  # hf_cache, chat_template, tool_parser_plugin, training_config (NeMo RL runs)
]


def load_checks() -> None:
    """Import every listed check module (idempotent)."""
    for name in CHECK_MODULES:
        importlib.import_module(name)
