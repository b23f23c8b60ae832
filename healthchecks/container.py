"""Preflight inside a container (check `container`): /dev/shm big enough (Docker's default is 64 MiB, which
NCCL, vLLM and torch's shared-memory tensors outgrow), a GPU visible when the run needs one (a container
started without --gpus sees none), and memlock/stack ulimits as NVIDIA's containers want them. Outside a
container it passes with "nothing to check". Verdicts are pure `judge_*` functions; `check_container`
reads statvfs(/dev/shm), rlimits, /proc/1/cgroup and the GPU seam.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Mapping
from pathlib import Path

from healthchecks.base import CheckContext, CheckResult, Status, register

MIB = 1 << 20
DOCKER_DEFAULT_SHM = 64 * MIB
MIN_SHM = 1 << 30                      # below 1 GiB NCCL / vLLM start failing with "No space left on device"
WANT_STACK = 64 * MIB                  # NVIDIA's containers: --ulimit stack=67108864
_MARKERS = ("docker", "kubepods", "containerd", "libpod", "lxc")
SHM_FIX = "restart the container with --ipc=host (or --shm-size=16g); in Kubernetes mount an emptyDir " \
          "with medium: Memory at /dev/shm"


def in_container(env: Mapping[str, str], exists: Callable[[str], bool], init_cgroup: str) -> str | None:
    """Why we think this is a container (a short reason), or None. Pure."""
    if env.get("GRPO_OPS_IN_CONTAINER") == "1":
        return "GRPO_OPS_IN_CONTAINER=1"
    for marker in ("/.dockerenv", "/run/.containerenv"):
        if exists(marker):
            return marker
    if env.get("KUBERNETES_SERVICE_HOST"):
        return "KUBERNETES_SERVICE_HOST"
    hit = next((m for m in _MARKERS if m in init_cgroup), None)
    return f"/proc/1/cgroup mentions {hit}" if hit else None


def judge_shm(total_bytes: int | None) -> CheckResult:
    if total_bytes is None:
        return CheckResult("container_shm", Status.UNKNOWN, "/dev/shm cannot be read", SHM_FIX)
    mib = total_bytes / MIB
    if total_bytes <= DOCKER_DEFAULT_SHM + MIB:
        return CheckResult("container_shm", Status.WARN, f"/dev/shm is {mib:.0f} MiB, Docker's default",
                           SHM_FIX, {"shm_mib": mib})
    if total_bytes < MIN_SHM:
        return CheckResult("container_shm", Status.WARN, f"/dev/shm is only {mib:.0f} MiB (want >= 1 GiB)",
                           SHM_FIX, {"shm_mib": mib})
    return CheckResult("container_shm", Status.PASS, f"/dev/shm is {mib / 1024:.1f} GiB", "", {"shm_mib": mib})


def needs_gpu(ctx: CheckContext) -> bool:
    return bool(ctx.require_gpu or (ctx.gpus_required or 0) > 0 or ctx.trainer == "nemo-rl")


def judge_gpu(visible: int | None, needed: bool, why_none: str) -> CheckResult:
    """`visible`: GPUs the seam sees (None: it could not look). Pure."""
    fix = "start the container with --gpus all (the host needs nvidia-container-toolkit)"
    if visible:
        return CheckResult("container_gpu", Status.PASS, f"{visible} GPU(s) visible in the container", "",
                           {"gpus": visible})
    detail = "no GPU visible in the container" + (f" ({why_none})" if why_none else "")
    if needed:
        return CheckResult("container_gpu", Status.FAIL, detail + " but the run needs one", fix, {"gpus": 0})
    return CheckResult("container_gpu", Status.PASS, detail + "; the run does not ask for one", "", {"gpus": 0})


def judge_ulimits(memlock_soft: int, stack_soft: int) -> CheckResult:
    data = {"memlock": memlock_soft, "stack": stack_soft}
    low = []
    if memlock_soft != resource.RLIM_INFINITY:
        low.append(f"memlock is {memlock_soft // 1024} KiB (NCCL over InfiniBand/RDMA wants unlimited)")
    if stack_soft != resource.RLIM_INFINITY and stack_soft < WANT_STACK:
        low.append(f"stack is {stack_soft // MIB} MiB (want 64 MiB)")
    if low:
        return CheckResult("container_ulimits", Status.WARN, "; ".join(low),
                           "docker run --ulimit memlock=-1 --ulimit stack=67108864", data)
    return CheckResult("container_ulimits", Status.PASS, "memlock unlimited, stack >= 64 MiB", "", data)


def _shm_bytes() -> int | None:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_blocks * st.f_frsize


def _visible_gpus(ctx: CheckContext) -> tuple[int | None, str]:
    from healthchecks.gpu import read_gpus        # the one GPU seam (and CUDA_VISIBLE_DEVICES handling)
    snap, why = read_gpus(ctx)
    return (len(snap.gpus) if snap is not None else 0), why


@register("container")
def check_container(ctx: CheckContext) -> list[CheckResult]:
    try:
        init_cgroup = Path("/proc/1/cgroup").read_text()
    except OSError:
        init_cgroup = ""
    why = in_container(ctx.env, os.path.exists, init_cgroup)
    if why is None:
        return [CheckResult("container", Status.PASS, "not in a container: nothing to check")]
    visible, why_none = _visible_gpus(ctx)
    memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    return [judge_shm(_shm_bytes()), judge_gpu(visible, needs_gpu(ctx), why_none), judge_ulimits(memlock, stack)]
