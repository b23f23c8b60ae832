"""What the container layer costs: DockerBackend spawn -> first output line, OOM kill -> Exit read,
docker stop (SIGTERM) -> Exit, cleanup, and an `ops health` probe (the CLI, as Docker's HEALTHCHECK runs
it). Needs a Docker engine; uses a busybox image imported from the host (tests/docker_support.py). Prints
medians over N rounds; asserts nothing.

    PYTHONPATH=.:tests .venv/bin/python bench/docker_backend.py [N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from docker_support import busybox_image  # noqa: E402
from ops.backends.docker import DockerBackend  # noqa: E402
from training.spec import Launch  # noqa: E402


def until(fn, timeout_s=120.0, every_s=0.005):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(every_s)
    raise TimeoutError


def one_round(tmp: Path, image: str) -> dict[str, float]:
    rid = f"bench/{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "GRPO_OPS_RUN_ID": rid, "GRPO_OPS_ATTEMPT": "1"}
    b = DockerBackend(image, memory_limit_mib=64, network="none", gpus="none")
    out: dict[str, float] = {}
    log = tmp / f"{rid.replace('/', '_')}.log"
    t0 = time.monotonic()
    h = b.spawn(Launch(("/bin/sh", "-c", "echo up; sleep 1; dd if=/dev/zero of=/dev/null bs=300M count=1"),
                       env, tmp, {"exp": rid, "attempt": "1"}), log)
    out["spawn_s"] = time.monotonic() - t0
    until(lambda: log.exists() and "up" in log.read_text())
    t_up = time.monotonic()
    out["first_line_s"] = t_up - t0
    e = until(h.poll)
    out["alloc_oom_exit_read_s"] = time.monotonic() - t_up - 1.0      # minus the script's own sleep
    assert e.oom_killed, e
    h.terminate(1.0)
    t3 = time.monotonic()
    h2 = b.spawn(Launch(("/bin/sh", "-c", "trap 'exit 0' TERM; echo up; while true; do sleep 0.05; done"),
                        env, tmp, {"exp": rid, "attempt": "2"}), log)
    out["spawn_again_s"] = time.monotonic() - t3        # the engine's memlock refusal is remembered
    until(lambda: log.read_text().count("up") >= 2)
    t1 = time.monotonic()
    h2.terminate(5.0)
    out["stop_and_remove_s"] = time.monotonic() - t1
    t2 = time.monotonic()
    b.cleanup(rid)
    out["cleanup_s"] = time.monotonic() - t2
    return out


def probe_s(tmp: Path) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "ops.cli", "health"], cwd=tmp, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.monotonic() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    image = busybox_image()
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for _ in range(n):
            for k, v in one_round(tmp, image).items():
                rows.setdefault(k, []).append(v)
            rows.setdefault("ops_health_probe_s", []).append(probe_s(tmp))
    print(f"docker backend bench: {n} rounds, busybox image, engine {os.environ.get('DOCKER_HOST', 'local socket')}")
    for k, v in rows.items():
        print(f"  {k:22s} median {statistics.median(v):7.3f}  min {min(v):7.3f}  max {max(v):7.3f}")


if __name__ == "__main__":
    main()
