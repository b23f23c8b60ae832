"""`ops preflight --ray-address`: the node checks on every alive node of a real two-node Ray cluster (the
head's fake GPU is healthy, node1's has ECC errors: see conftest's ray_two_nodes), results per node."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from healthchecks.base import Status
from healthchecks.cluster import summarize

ROOT = Path(__file__).resolve().parent.parent


def preflight(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("GRPO_OPS_FAKE_GPU", "RAY_ADDRESS")}
    return subprocess.run([sys.executable, "-m", "ops.cli", "preflight", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.ray
def test_cluster_preflight_reports_both_nodes_and_names_the_failing_one(ray_two_nodes, tmp_path):
    p = preflight(tmp_path, "--ray-address", ray_two_nodes.address, "--only", "gpu,gpu_health", "--json")
    assert p.returncode == 1, p.stderr                      # a node FAILed
    results = json.loads(p.stdout)["results"]
    cluster = results[0]
    assert cluster["name"] == "cluster" and cluster["status"] == "FAIL"
    verdicts = {r["node"]: r for r in results if r["name"] == "node"}
    assert len(verdicts) == 2                                # both nodes reported
    head = next(n for n in verdicts if n.endswith(" head"))
    other = next(n for n in verdicts if not n.endswith(" head"))
    assert verdicts[head]["status"] == "PASS" and verdicts[other]["status"] == "FAIL"
    assert verdicts[other]["data"]["resources"] == {"grpo_test_node1": 1.0}     # it is the node we started
    assert cluster["detail"].endswith(f"FAIL on {other}") and head not in cluster["detail"]
    per_check = {(r["node"], r["name"]): r["status"] for r in results if r["name"] in ("gpu", "gpu_health")}
    assert per_check == {(head, "gpu"): "PASS", (head, "gpu_health"): "PASS",
                         (other, "gpu"): "PASS", (other, "gpu_health"): "FAIL"}

    table = preflight(tmp_path, "--ray-address", ray_two_nodes.address, "--only", "gpu_health")
    assert table.returncode == 1
    assert other in table.stdout and "uncorrected" in table.stdout     # the table has a node column


@pytest.mark.ray
def test_cluster_preflight_runs_every_node_check(ray_two_nodes, tmp_path):
    """All default checks run on each node without breaking (no 'context' FAIL, every check once per node)."""
    p = preflight(tmp_path, "--ray-address", ray_two_nodes.address, "--json", "--skip", "cuda_arch")
    results = json.loads(p.stdout)["results"]
    nodes = {r["node"] for r in results if r["name"] == "node"}
    assert len(nodes) == 2
    names = {n: sorted(r["name"] for r in results if r["node"] == n and r["name"] != "node") for n in nodes}
    a, b = names.values()
    assert a == b and "gpu_health" in a and "ray_cluster" not in a and "cuda_arch" not in a
    assert not any(r["name"] == "context" for r in results)


def test_cluster_preflight_bad_address_and_fix_are_usage_errors(tmp_path):
    p = preflight(tmp_path, "--ray-address", "http://127.0.0.1:1")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "http://127.0.0.1:1" in p.stderr
    assert "Traceback" not in p.stderr
    p = preflight(tmp_path, "--ray-address", "http://127.0.0.1:1", "--fix")
    assert p.returncode == 2 and "--fix acts on this node only" in p.stderr
    p = preflight(tmp_path, "--ray-address", "http://127.0.0.1:1", "--only", "no_such_check")
    assert p.returncode == 2 and "no_such_check" in p.stderr


def _node(label, results=None, alive=True, error=None):
    return {"node_id": label.replace(" ", ""), "label": label, "alive": alive, "resources": {}, "results": results,
            "error": error}


def _r(name, status):
    return {"name": name, "status": status, "detail": f"{name} {status}", "fix": "", "data": {}, "fix_id": None}


def test_summarize_names_failing_unanswered_and_dead_nodes():
    out = summarize([_node("10.0.0.1 aaaa head", [_r("gpu", "PASS"), _r("host", "WARN")]),
                     _node("10.0.0.2 bbbb", [_r("gpu", "FAIL")]),
                     _node("10.0.0.3 cccc", error="did not answer within 300s"),
                     _node("10.0.0.4 dddd", alive=False)])
    cluster = out[0]
    assert cluster.status == Status.FAIL
    assert cluster.detail == "3 alive node(s) of 4; FAIL on 10.0.0.2 bbbb, 10.0.0.3 cccc"
    verdicts = {r.node: r for r in out if r.name == "node"}
    assert verdicts["10.0.0.1 aaaa head"].status == Status.WARN
    assert "not PASS: host" in verdicts["10.0.0.1 aaaa head"].detail
    assert verdicts["10.0.0.2 bbbb"].status == Status.FAIL
    assert "did not answer" in verdicts["10.0.0.3 cccc"].detail
    assert verdicts["10.0.0.4 dddd"].status == Status.WARN and "dead" in verdicts["10.0.0.4 dddd"].detail
    assert [r.node for r in out if r.name == "gpu"] == ["10.0.0.1 aaaa head", "10.0.0.2 bbbb"]


def test_summarize_all_pass():
    out = summarize([_node("h head", [_r("gpu", "PASS")]), _node("n1", [_r("gpu", "PASS")])])
    assert out[0].status == Status.PASS and out[0].detail == "2 alive node(s) of 2"
