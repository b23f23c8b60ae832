"""Shared pytest fixtures. `ray_head`: one real, isolated Ray head per test session (see tests/ray_cluster.py);
`fresh_ray_head`: a separate head for one test that may stop it (e.g. `ops preflight --fix`)."""

from __future__ import annotations

import pytest

from ray_cluster import RayHead, remove_tree, start_head


@pytest.fixture(scope="session")
def ray_head() -> RayHead:
    head = start_head()  # a short /tmp path: Ray's AF_UNIX socket paths must stay under 107 bytes
    yield head
    head.stop()
    remove_tree(head)


@pytest.fixture
def fresh_ray_head() -> RayHead:
    head = start_head(num_cpus=1)
    yield head
    head.stop()
    remove_tree(head)
