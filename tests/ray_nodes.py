"""A real multi-node Ray cluster on loopback for tests and benches: a head plus N nodes joined with
`ray start --address`, all on this machine, each with a distinct custom resource so tasks can be pinned.

Does I/O: starts `ray start --block` processes (one per node, each in its own session), picks free ports,
and stops the cluster by killing only the processes it started (the `--block` parents, their descendants,
and processes whose command line names this cluster's own temp dir). Never `ray stop`: other people's
clusters run on this machine too.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY_BIN = str(Path(sys.executable).with_name("ray"))


@dataclass
class RayNode:
    name: str                 # "head", "node1", ...
    resource: str             # the node's own custom resource, e.g. "grpo_test_head"
    proc: subprocess.Popen


@dataclass
class RayCluster:
    address: str              # the dashboard URL: what `--ray-address` takes
    gcs_address: str          # host:port, what `ray start --address` / `ray.init` take
    temp_dir: Path
    nodes: list[RayNode] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return cluster_env(self.temp_dir)


def cluster_env(temp_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_TMPDIR=str(temp_dir), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return env


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """n distinct ports, free now, from a random spot so concurrent clusters rarely collide."""
    out: list[int] = []
    while len(out) < n:
        p = random.randint(20000, 45000)
        if p not in out and _is_free(p):
            out.append(p)
    return out


def _worker_port_range() -> tuple[int, int]:
    while True:
        lo = random.randint(46000, 64000)
        if all(_is_free(p) for p in range(lo, lo + 200, 20)):
            return lo, lo + 199


# `ray start --address` refuses to join when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the only setting that keeps
# Ray on 127.0.0.1 here: with 1, 127.0.0.1 is rewritten to the VM's eth0 address). Ray's own multi-node test
# harness (ray.cluster_utils.Cluster) runs several raylets on one IP; this lifts only the CLI's refusal, in
# the `ray start` process itself (and keeps its idea of "this node's IP" on loopback), and leaves the
# variable at 0 for every Ray component it starts.
_JOIN = ("import ray._private.ray_constants as c, ray._private.services as s; c.ENABLE_RAY_CLUSTER = True; "
         "s.node_ip_address_from_perspective = lambda *a, **k: '127.0.0.1'; "
         "from ray.scripts.scripts import main; main()")


def _start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    head = "--head" in args
    cmd = [RAY_BIN] if head else [sys.executable, "-c", _JOIN]
    with open(log, "ab") as out:
        return subprocess.Popen([*cmd, "start", "--block", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _alive_nodes(gcs_address: str, env: dict[str, str]) -> int:
    code = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
            "print(sum(1 for n in ray.nodes() if n['Alive']))")
    p = subprocess.run([sys.executable, "-c", code, gcs_address], env=env, capture_output=True, text=True,
                       timeout=120)
    return int(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 and p.stdout.strip() else 0


def _wait_dashboard(url: str, deadline: float) -> None:
    import urllib.request
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/api/version", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"Ray dashboard at {url} did not answer")


def start_cluster(extra_nodes: int = 1, num_cpus: int = 2, timeout_s: float = 180.0,
                  node_env: dict[str, dict[str, str]] | None = None) -> RayCluster:
    """Start a head and `extra_nodes` more nodes; return once the dashboard answers and all nodes are alive.
    `node_env` adds variables to one node's daemons (and so its workers), by node name ("head", "node1")."""
    temp_dir = Path(tempfile.mkdtemp(prefix="grpo-ray-", dir="/tmp"))
    env = cluster_env(temp_dir)
    node_env = node_env or {}
    gcs, dash, client, agent = free_ports(4)
    lo, hi = _worker_port_range()
    cluster = RayCluster(address=f"http://127.0.0.1:{dash}", gcs_address=f"127.0.0.1:{gcs}", temp_dir=temp_dir)
    head_args = ["--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", "--include-dashboard=true",
                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
                 f"--dashboard-agent-listen-port={agent}", f"--min-worker-port={lo}", f"--max-worker-port={hi}",
                 f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
                 "--resources", json.dumps({"grpo_test_head": 1})]
    cluster.nodes.append(RayNode("head", "grpo_test_head", _start_node(head_args, {**env, **node_env.get("head", {})},
                                                                     temp_dir / "head.out")))
    deadline = time.monotonic() + timeout_s
    try:
        _wait_dashboard(cluster.address, deadline)
        for i in range(1, extra_nodes + 1):
            (agent_i,) = free_ports(1)
            lo, hi = _worker_port_range()
            res = f"grpo_test_node{i}"
            args = [f"--address={cluster.gcs_address}", "--node-ip-address=127.0.0.1",
                    f"--dashboard-agent-listen-port={agent_i}", f"--min-worker-port={lo}",
                    f"--max-worker-port={hi}", f"--num-cpus={num_cpus}", "--disable-usage-stats",
                    "--resources", json.dumps({res: 1})]
            cluster.nodes.append(RayNode(f"node{i}", res, _start_node(args, {**env, **node_env.get(f"node{i}", {})},
                                                                  temp_dir / f"node{i}.out")))
        while _alive_nodes(cluster.gcs_address, env) < extra_nodes + 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only some Ray nodes came up; see {temp_dir}/*.out")
            time.sleep(1.0)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def _owned_processes(cluster: RayCluster) -> list[psutil.Process]:
    """The `--block` parents, their descendants, and anything naming this cluster's temp dir or GCS port."""
    found: dict[int, psutil.Process] = {}
    for node in cluster.nodes:
        try:
            parent = psutil.Process(node.proc.pid)
            found[parent.pid] = parent
            for child in parent.children(recursive=True):
                found[child.pid] = child
        except psutil.NoSuchProcess:
            pass
    markers = (str(cluster.temp_dir), f"--gcs-address={cluster.gcs_address}", f"--address={cluster.gcs_address}")
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or ())
        if any(m in cmd for m in markers):
            found[proc.pid] = proc
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_cluster(cluster: RayCluster, grace_s: float = 10.0) -> None:
    """SIGTERM the `ray start --block` parents (they stop their node), then SIGKILL whatever of ours is left."""
    procs = _owned_processes(cluster)
    for node in reversed(cluster.nodes):
        try:
            node.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive + _owned_processes(cluster):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    for node in cluster.nodes:
        try:
            node.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
