"""`python -m training.grpo --config=PATH [--device cpu|cuda] [overrides...]`: the embedded GRPO workload,
launched like NeMo RL's `run_grpo*.py` (unknown arguments are Hydra overrides). Does I/O.

Exit codes: 0 done; 1 training failed (traceback on stderr); 2 bad config, override or flag (one line);
137 / 128+N a rank was killed by a signal (e.g. its memory cgroup's OOM killer).
"""

from __future__ import annotations

import argparse
import os
import sys

from ops.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.grpo", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (default: grpo_workplace_tiny.yaml)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="force a device (default: auto)")
    args, overrides = parser.parse_known_args(argv)
    from training.config import load_config, to_plain
    from training.grpo.run import DEFAULT_CONFIG, launch, pick_device

    config_path = args.config or str(DEFAULT_CONFIG)
    try:
        cfg = load_config(config_path, [])
        print(f"Loaded configuration from: {config_path}", flush=True)
        if overrides:
            print(f"Overrides: {overrides}", flush=True)
            cfg = load_config(config_path, overrides)
        return launch(to_plain(cfg), pick_device(args.device), dict(os.environ))
    except UserError as err:
        print(str(err), file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
