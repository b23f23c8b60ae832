"""A real Ray head on loopback for tests, isolated from every other Ray cluster on this machine (I/O).

Other engineers' clusters run on the same node as the same user (root), so a head here uses: free ports for
everything Ray would otherwise bind at a fixed default (GCS 6379, client server 10001, dashboard 8265,
dashboard agent 52365, ...), its own temp dir (`RAY_TMPDIR` and `--temp-dir`), and
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` so Ray stays on 127.0.0.1. It is stopped by killing the PIDs of that
cluster only (found by its session dir / GCS address, see `ops.ray_local`), never with `ray stop`.

    head = start_head(tmp_dir)          # ~4-8 s on 2 cores
    head.env                            # environment for a driver / `ops` subprocess targeting this head
    head.stop()

A second node: `ray start --address` refuses to join while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with the
refusal lifted the joiner rewrites 127.0.0.1 to the VM's eth0 address and never reaches this head's GCS
(tried: 60 s timeout). tests/ray_nodes.py (Ray jobs) starts its multi-node clusters its own way; `stop()` here
kills every process naming this head's session dir or GCS address, so nodes joined to it are stopped too.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ops import procs, ray_local

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports_args(*names: str) -> list[str]:
    return [f"--{name}={free_port()}" for name in names]


@dataclass
class RayHead:
    address: str                 # GCS host:port, what RAY_ADDRESS / ray.init(address=...) take
    gcs_address: str
    dashboard_url: str           # http://127.0.0.1:<port>: the dashboard and the jobs API
    temp_dir: Path               # Ray's temp dir (contains session_*/ and ray_current_cluster)
    env: dict[str, str]          # os.environ + RAY_TMPDIR, RAY_ADDRESS, loopback settings
    session_dir: str | None = None

    def members(self) -> list[int]:
        return ray_local.cluster_members(procs.snapshot(with_markers=False), self.session_dir,
                                         self.gcs_address)

    def is_alive(self) -> bool:
        table = procs.snapshot(with_markers=False)
        return any(table[p].kind == procs.RAY_DAEMON and "gcs_server" in table[p].cmdline[0]
                   for p in ray_local.cluster_members(table, self.session_dir, self.gcs_address))

    def stop(self, grace_s: float = 2.0) -> list[str]:
        """Kill this cluster's processes by PID (SIGTERM, then SIGKILL after `grace_s`)."""
        table = procs.snapshot(with_markers=False)
        pids = ray_local.cluster_members(table, self.session_dir, self.gcs_address)
        return procs.terminate_pids([table[p] for p in pids if p in table], grace_s=grace_s)


def start_head(root: Path | None = None, num_cpus: int = 2, resources: dict | None = None,
               include_dashboard: bool = True, timeout_s: float = 120.0) -> RayHead:
    """Start an isolated Ray head under `root` (a fresh temp dir by default) and return how to reach it."""
    root = Path(root or tempfile.mkdtemp(prefix="gor-", dir="/tmp"))
    ray_tmp = root / "rt"
    ray_tmp.mkdir(parents=True, exist_ok=True)
    temp_dir = ray_tmp / "ray"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "GRPO_OPS_FAKE_GPU")}
    env.update(RAY_TMPDIR=str(ray_tmp), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    gcs_port, dash_port = free_port(), free_port()
    args = [RAY, "start", "--head", f"--port={gcs_port}", f"--num-cpus={num_cpus}", "--disable-usage-stats",
            f"--temp-dir={temp_dir}", f"--resources={json.dumps(resources if resources is not None else {'head': 1})}",
            f"--include-dashboard={'true' if include_dashboard else 'false'}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash_port}",
            *_ports_args("ray-client-server-port", "node-manager-port", "object-manager-port",
                         "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                         "runtime-env-agent-port")]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s)
    gcs = f"127.0.0.1:{gcs_port}"
    head = RayHead(address=gcs, gcs_address=gcs, dashboard_url=f"http://127.0.0.1:{dash_port}",
                   temp_dir=temp_dir, env=dict(env, RAY_ADDRESS=gcs))
    head.session_dir = ray_local.session_for_address(procs.snapshot(with_markers=False), gcs)
    if proc.returncode != 0 or head.session_dir is None:
        head.stop(grace_s=0.5)
        raise RuntimeError(f"ray start failed (rc={proc.returncode}): {proc.stderr[-2000:]}")
    if include_dashboard:
        _wait_http(head.dashboard_url + "/api/version", deadline=time.monotonic() + timeout_s)
    return head


def _wait_http(url: str, deadline: float) -> None:
    import urllib.request
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray dashboard at {url} did not answer")
        time.sleep(0.2)


def remove_tree(head: RayHead) -> None:
    shutil.rmtree(head.temp_dir.parent.parent, ignore_errors=True)
