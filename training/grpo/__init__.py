"""The embedded GRPO workload: `python -m training.grpo` (see training/grpo/__main__.py)."""
