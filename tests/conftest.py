"""Shared pytest fixtures. `ray_head`: one real, isolated Ray head per test session (see tests/ray_cluster.py);
`fresh_ray_head`: a separate head for one test that may stop it (e.g. `ops preflight --fix`)."""

from __future__ import annotations

import shutil

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
    custom resource (`grpo_test_head`, `grpo_test_node1`); for the Ray job backend and cluster preflight.
    Each node's daemons carry their own fake GPU (GRPO_OPS_FAKE_GPU): the head a healthy H100, node1 one with
    uncorrected ECC errors, so a cluster preflight has a node to name."""
    import tempfile
    from pathlib import Path

    from healthchecks.fake_gpu import FakeGpuReader
    from ray_nodes import start_cluster, stop_cluster
    gpus = Path(tempfile.mkdtemp(prefix="grpo-ray-gpus-", dir="/tmp"))
    FakeGpuReader.healthy(1).dump(gpus / "head.json")
    FakeGpuReader.ecc_errors(1).dump(gpus / "node1.json")
    cluster = start_cluster(extra_nodes=1, node_env={"head": {"GRPO_OPS_FAKE_GPU": str(gpus / "head.json")},
                                                     "node1": {"GRPO_OPS_FAKE_GPU": str(gpus / "node1.json")}})
    yield cluster
    stop_cluster(cluster)
    shutil.rmtree(gpus, ignore_errors=True)
