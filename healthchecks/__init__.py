"""Preflight checks: one module per concern, listed by name in `healthchecks.base.REGISTRY`."""
