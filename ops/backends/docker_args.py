"""What the Docker backend asks the engine for, as plain data: the container's options, argv, environment,
mounts, GPU request, labels and name, and how a finished container's State becomes an `Exit`. Pure (reads
only the mappings and paths handed in; `existing` is a predicate the caller supplies); no engine calls.

The environment never goes on a command line: it travels in the create request's body (Docker SDK
`environment=`). Only variables grpo-ops or the trainer spec set, plus an allowlist of the training stack's
own prefixes, are passed; host-specific ones (PATH, HOME, VIRTUAL_ENV, ...) never are.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ops.backends.base import Exit

LABEL_RUN = "grpo-ops.run"
LABEL_ATTEMPT = "grpo-ops.attempt"
LABEL_BACKEND = "grpo-ops.backend"
LABEL_RUN_DIR = "grpo-ops.run_dir"     # the run's absolute results/<exp>: experiment names repeat across trees

# Host variables a training container wants even when grpo-ops did not set them.
PASS_PREFIXES = ("GRPO_OPS_", "HF_", "HUGGING_FACE_", "TRANSFORMERS_", "WANDB_", "NRL_", "NEMO_", "NCCL_",
                 "TORCH_", "PYTORCH_", "VLLM_", "TOKENIZERS_", "UV_", "OMP_NUM_THREADS", "PYTHONUNBUFFERED",
                 "PYTHONHASHSEED", "TZ")
# Never passed: they describe the host, not the run (the image sets its own), or are translated (CUDA_...).
HOST_ONLY = frozenset({"PATH", "HOME", "HOSTNAME", "PWD", "OLDPWD", "SHELL", "USER", "LOGNAME", "TERM", "SHLVL",
                       "VIRTUAL_ENV", "PYTHONHOME", "LD_LIBRARY_PATH", "TMPDIR", "CUDA_VISIBLE_DEVICES",
                       "RAY_ADDRESS", "RAY_TMPDIR", "DOCKER_HOST", "SSH_AUTH_SOCK", "DISPLAY", "_"})
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
STACK_BYTES = 64 << 20


@dataclass(frozen=True)
class DockerOptions:
    """How each attempt's container is made. Every field has a default; `validate()` names a bad one."""
    image: str
    memory_limit_mib: int | None = None       # --memory (and --memory-swap, so no swap escape)
    gpus: str = "auto"                        # "auto" (all, when the host has NVIDIA devices), "all", "none", "N"
    ipc_host: bool = True                     # --ipc=host (NeMo RL / vLLM / NCCL want big shared memory)
    shm_size: str | None = None               # used instead of --ipc=host when set, e.g. "16g"
    network: str = "host"                     # "host" for Ray/NCCL/W&B; "none" in tests here
    hf_cache: Path | None = None              # mounted at the same path; default from HF_HOME / ~/.cache
    volumes: tuple[str, ...] = ()             # extra "host:container[:ro]"
    env_passthrough: tuple[str, ...] = ()     # extra host variable names to pass
    user: str | None = None                   # default: the image's user
    python: str = "python"                    # what a host python argv[0] becomes inside
    keep_containers: bool = False             # keep exited containers (debugging); default remove
    labels: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> "DockerOptions":
        if not self.image:
            raise ValueError("image must be given, e.g. --docker grpo-ops:nemo-rl")
        if self.memory_limit_mib is not None and self.memory_limit_mib < 16:
            raise ValueError(f"memory_limit_mib {self.memory_limit_mib} is too small; give at least 16 MiB")
        if self.gpus not in ("auto", "all", "none") and not self.gpus.isdigit():
            raise ValueError(f"gpus {self.gpus!r} must be auto, all, none or a count")
        if self.shm_size is not None and not re.fullmatch(r"\d+[bkmg]?", self.shm_size.lower()):
            raise ValueError(f"shm_size {self.shm_size!r} must look like 16g or 1024m")
        return self


def container_argv(argv: Sequence[str], python: str = "python") -> list[str]:
    """The host's interpreter path (e.g. /work/.venv/bin/python3) means the image's own Python."""
    out = list(argv)
    if out and _PYTHON.match(os.path.basename(out[0])):
        out[0] = python
    return out


def container_env(launch_env: Mapping[str, str], host_env: Mapping[str, str],
                  passthrough: Sequence[str] = ()) -> dict[str, str]:
    """Variables the trainer spec or the supervisor set (differ from the host's), plus allowlisted ones."""
    out = {}
    for key, value in launch_env.items():
        if key in HOST_ONLY:
            continue
        if host_env.get(key) != value or key.startswith(PASS_PREFIXES) or key in passthrough:
            out[key] = value
    return out


def gpu_request(gpus: str, env: Mapping[str, str], has_gpu: bool) -> dict | None:
    """The DeviceRequest fields, or None for no GPUs. CUDA_VISIBLE_DEVICES picks devices by id (inside the
    container they are renumbered from 0, so the variable itself is not passed)."""
    if gpus == "none" or (gpus == "auto" and not has_gpu):
        return None
    visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible and gpus in ("auto", "all"):
        return {"device_ids": visible, "capabilities": [["gpu"]]}
    return {"count": -1 if gpus in ("auto", "all") else int(gpus), "capabilities": [["gpu"]]}


def hf_cache_dir(env: Mapping[str, str], configured: Path | None) -> Path:
    if configured is not None:
        return Path(configured)
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"])
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).parent
    return Path(env.get("HOME", "/root")) / ".cache" / "huggingface"


def mounts(cwd: Path, run_dir: Path, argv: Sequence[str], hf_cache: Path, extra: Sequence[str],
           existing: Callable[[Path], bool]) -> dict[str, dict]:
    """Docker SDK `volumes=`: each host path mounted at the same path, so argv and env need no rewriting.
    The run's folder and the working directory read-write; the HF cache read-write (downloads); the folder
    of each absolute path in argv (e.g. --config=/x/y.yaml) read-only unless already inside a mount."""
    vols: dict[str, dict] = {}

    def add(path: Path, mode: str) -> None:
        path = Path(os.path.normpath(path))
        if path == Path("/") or not existing(path):
            return
        if any(path == Path(p) or Path(p) in path.parents for p in vols):
            return
        vols[str(path)] = {"bind": str(path), "mode": mode}

    add(cwd, "rw")
    add(run_dir, "rw")
    add(hf_cache, "rw")
    for token in argv[1:]:
        value = token.split("=", 1)[-1]
        if value.startswith("/") and existing(Path(value)):
            add(Path(value).parent, "ro")
    for spec in extra:
        host, _, rest = spec.partition(":")
        target, _, mode = rest.partition(":")
        if not host or not target:
            raise ValueError(f"volume {spec!r} must be host:container[:ro]")
        vols[host] = {"bind": target, "mode": mode or "rw"}
    return vols


def labels(run_id: str, attempt: str, extra: Mapping[str, str], run_dir: str | None = None) -> dict[str, str]:
    out = {**extra, LABEL_RUN: run_id, LABEL_ATTEMPT: str(attempt), LABEL_BACKEND: "docker"}
    if run_dir:
        out[LABEL_RUN_DIR] = run_dir
    return out


def container_name(run_id: str, attempt: str, suffix: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_id).strip("-.") or "run"
    return f"grpo-ops-{safe[-60:]}-a{attempt}-{suffix}"


def exit_from_state(state: Mapping, name: str) -> Exit:
    """Docker's verdict as an Exit: 128+N (what the init process reports for a child killed by signal N)
    becomes signal N; OOMKilled is the engine's own word."""
    code = state.get("ExitCode")
    oom = bool(state.get("OOMKilled"))
    detail = f"container {name} exit code {code}" + (", OOMKilled" if oom else "")
    if state.get("Error"):
        detail += f": {state['Error']}"
    if isinstance(code, int) and 128 < code <= 128 + 64:
        try:
            sig = signal.Signals(code - 128)
            return Exit(code=None, signal=int(sig), oom_killed=oom, detail=detail)
        except ValueError:
            pass
    return Exit(code=code, signal=None, oom_killed=oom, detail=detail)
