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


@pytest.fixture(scope="session")
def ray_two_nodes():
    """A head plus a second node joined with `ray start --address` (tests/ray_nodes.py), each with its own
    custom resource (`grpo_test_head`, `grpo_test_node1`); for the Ray job backend and cluster preflight."""
    from ray_nodes import start_cluster, stop_cluster
    cluster = start_cluster(extra_nodes=1)
    yield cluster
    stop_cluster(cluster)
