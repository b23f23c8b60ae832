"""Shared by the tests that need a real memory cgroup (root + cgroup v1, or v2 with the memory controller)."""

import os

import pytest

from ops.cgroup import CgroupUnavailable, detect


def has_memory_cgroup() -> bool:
    try:
        detect()
        return os.geteuid() == 0
    except CgroupUnavailable:
        return False


needs_memory_cgroup = pytest.mark.skipif(not has_memory_cgroup(), reason="needs root and a memory cgroup")
