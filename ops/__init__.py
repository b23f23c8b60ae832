"""grpo-ops: preflight, supervise, recover and report unattended GRPO runs."""

__version__ = "0.1.0"
