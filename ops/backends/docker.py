"""The Docker backend: each attempt runs the trainer in its own container, made the way a GPU training
container should be (--gpus, --ipc=host or a big --shm-size, memlock/stack ulimits, --init, the run folder,
working directory and HF cache mounted at their host paths, --memory as the attempt's limit). Does I/O
(the Docker engine through the docker SDK, files, /proc and cgroup reads). What to ask for: docker_args.

Ownership: containers carry the labels grpo-ops.run=<exp>, grpo-ops.run_dir=<abs results dir>, grpo-ops.attempt=N, grpo-ops.backend=docker
(and the GRPO_OPS_RUN_ID marker in their environment); `cleanup` stops and removes only containers with
this run's labels, never any other. The environment travels in the create request's body, never on a
command line. Output is copied from the engine's log stream into output.log by a thread, so the trainer
never waits on us; the exit code and State.OOMKilled come from the engine.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
from dataclasses import replace
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil
import structlog

from ops.backends import docker_args as da
from ops.backends.base import Exit, MemorySample, tree_rss_mib
from ops.cgroup import V1_ROOT, V2_ROOT, MemoryCgroup
from ops.errors import UserError
from training.spec import Launch

try:
    import docker
    from docker.errors import APIError, DockerException, ImageNotFound, NotFound
    from docker.types import DeviceRequest, Ulimit
except ImportError as _err:   # the [docker] extra is not installed
    raise ImportError(f"the docker SDK is missing: pip install 'grpo-ops[docker]' ({_err})") from None

log = structlog.get_logger()
_LOG_DRAIN_S = 15.0


def connect() -> "docker.DockerClient":
    """A client for the engine at DOCKER_HOST (default the local socket); UserError when none answers."""
    try:
        client = docker.from_env()
        client.ping()
        return client
    except DockerException as err:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise UserError(f"no Docker engine answers at {where} ({err}); start dockerd, or drop --docker") from None


def container_cgroup(pid: int) -> MemoryCgroup | None:
    """The memory cgroup of host process `pid` (the container's init), or None where it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        hid, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(","):
            cand = MemoryCgroup("v1", V1_ROOT / path.lstrip("/"))
        elif hid == "0" and ctrls == "":
            cand = MemoryCgroup("v2", V2_ROOT / path.lstrip("/"))
        else:
            continue
        if cand.path.is_dir():
            return cand
    return None


class DockerHandle:
    """One attempt's container. Two daemon threads: one waits for the exit, one copies the log stream."""

    def __init__(self, api_factory, container, log_path: Path, keep: bool):
        self.container = container
        self.id, self.name = container.id, container.name
        self.image = container.attrs.get("Config", {}).get("Image", "")
        self.host_pid = int(container.attrs.get("State", {}).get("Pid") or 0)
        self.log_path, self.keep = log_path, keep
        self._cgroup = container_cgroup(self.host_pid) if self.host_pid else None
        self._exit: Exit | None = None
        self._wait_status: int | None = None
        self._removed = False
        self._exited = threading.Event()
        self._waiter = threading.Thread(target=self._wait, args=(api_factory(),), daemon=True,
                                        name=f"docker-wait-{self.name}")
        self._pump = threading.Thread(target=self._copy_logs, args=(api_factory(),), daemon=True,
                                      name=f"docker-logs-{self.name}")
        self._pump.start()
        self._waiter.start()

    def _wait(self, api) -> None:
        try:
            self._wait_status = api.wait(self.id).get("StatusCode")
        except Exception as err:      # the engine went away or the container was removed under us
            log.warning("docker wait failed", container=self.name, error=repr(err))
        finally:
            self._exited.set()

    def _copy_logs(self, api) -> None:
        try:
            with open(self.log_path, "ab") as fh:
                for chunk in api.logs(self.id, stream=True, follow=True, stdout=True, stderr=True):
                    fh.write(chunk)
                    fh.flush()
        except Exception as err:
            log.warning("docker log copy stopped", container=self.name, error=repr(err))

    def poll(self) -> Exit | None:
        if self._exit is not None:
            return self._exit
        if not self._exited.is_set():
            return None
        self._pump.join(_LOG_DRAIN_S)             # its last lines are in output.log before we say "exited"
        try:
            self.container.reload()
            self._exit = da.exit_from_state(self.container.attrs.get("State", {}), self.name)
        except (NotFound, APIError) as err:   # removed under us: the wait's status code is all there is
            if self._wait_status is not None:
                self._exit = replace(da.exit_from_state({"ExitCode": self._wait_status}, self.name), oom_killed=None)
            else:
                self._exit = Exit(code=None, detail=f"container {self.name} vanished before its exit was read: "
                                                    f"{type(err).__name__}")
        return self._exit

    def pids(self) -> list[int]:
        if not self.host_pid:
            return []
        try:
            root = psutil.Process(self.host_pid)
            return [self.host_pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.Error:
            return []

    def memory(self) -> MemorySample | None:
        cg = self._cgroup
        return MemorySample(rss_mib=tree_rss_mib(self.pids()), cgroup_usage_mib=cg.usage_mib() if cg else None,
                            cgroup_limit_mib=cg.limit_mib() if cg else None,
                            cgroup_oom_kills=cg.oom_kills() if cg else None, extra={"container": self.name})

    def terminate(self, grace_s: float) -> Exit:
        """docker stop (SIGTERM, then SIGKILL after grace_s), read the exit, remove the container."""
        if not self._exited.is_set():
            try:
                self.container.stop(timeout=max(0, math.ceil(grace_s)))
            except (NotFound, APIError) as err:
                log.warning("docker stop failed", container=self.name, error=repr(err))
            if not self._exited.wait(grace_s + 30):
                try:
                    self.container.kill()
                except (NotFound, APIError):
                    pass
                self._exited.wait(10)
        exit_ = self.poll() or Exit(code=None, detail=f"container {self.name} did not stop")
        self.remove()
        return exit_

    def remove(self) -> None:
        if self.keep or self._removed:
            return
        try:
            self.container.remove(force=True)
        except NotFound:
            pass
        except APIError as err:
            log.warning("docker remove failed", container=self.name, error=repr(err))
            return
        self._removed = True

    def describe(self) -> dict:
        return {"backend": "docker", "container": self.id[:12], "name": self.name, "image": self.image,
                "pid": self.host_pid}


class DockerBackend:
    name = "docker"

    def __init__(self, image: str, memory_limit_mib: int | None = None, *, gpus: str | None = None,
                 network: str | None = None, ipc_host: bool = True, shm_size: str | None = None,
                 hf_cache: Path | None = None, volumes: Sequence[str] = (), env_passthrough: Sequence[str] = (),
                 user: str | None = None, keep_containers: bool = False, client=None,
                 host_env: Mapping[str, str] | None = None, check_image: bool = True,
                 run_dir: Path | None = None):
        """Defaults for `gpus` and `network` come from GRPO_OPS_DOCKER_GPUS / GRPO_OPS_DOCKER_NETWORK, else
        "auto" / "host". Raises UserError when an option is bad, no engine answers, or the image is missing."""
        self.host_env = dict(os.environ if host_env is None else host_env)
        self.run_dir = str(run_dir) if run_dir else None     # cleanup then matches this run's tree only
        try:
            self.opts = da.DockerOptions(
                image=image, memory_limit_mib=memory_limit_mib,
                gpus=str(gpus or self.host_env.get("GRPO_OPS_DOCKER_GPUS") or "auto"),
                network=network or self.host_env.get("GRPO_OPS_DOCKER_NETWORK") or "host",
                ipc_host=ipc_host and shm_size is None, shm_size=shm_size, hf_cache=hf_cache,
                volumes=tuple(volumes), env_passthrough=tuple(env_passthrough), user=user,
                keep_containers=keep_containers).validate()
        except ValueError as err:
            raise UserError(f"--docker: {err}") from None
        self.client = client or connect()
        self._memlock_ok = True          # False once the engine refused memlock=unlimited
        if check_image:
            try:
                self.client.images.get(image)
            except ImageNotFound:
                raise UserError(f"docker image {image!r} not found; build it (docker build -t {image} .) or pull "
                                "it first") from None

    def _api(self):
        """A separate low-level client (same engine: DOCKER_HOST) without a read timeout, for one blocking
        thread (wait / log stream)."""
        return docker.from_env(timeout=None, version=self.client.api.api_version).api

    def spawn(self, launch: Launch, log_path: Path) -> DockerHandle:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        kwargs = self.create_args(launch, log_path)
        try:
            container = self._start(kwargs)
        except APIError as err:
            if "rlimit" not in str(err):
                raise self._start_error(err) from None
            # The engine may not raise memlock (no CAP_SYS_RESOURCE, as in nested containers): run with its
            # default and say so; NCCL over InfiniBand/RDMA would need the real limit.
            log.warning("engine refused memlock=unlimited; using its default", error=str(err)[:200])
            self._memlock_ok = False
            kwargs = self.create_args(launch, log_path)
            try:
                container = self._start(kwargs)
            except (APIError, DockerException) as err2:
                raise self._start_error(err2) from None
        except DockerException as err:
            raise self._start_error(err) from None
        handle = DockerHandle(self._api, container, log_path, self.opts.keep_containers)
        log.info("container started", container=handle.name, image=self.opts.image, pid=handle.host_pid)
        return handle

    def create_args(self, launch: Launch, log_path: Path) -> dict:
        """The docker SDK `containers.create` keyword arguments for one attempt (reads only path existence)."""
        o = self.opts
        run_id = launch.labels.get("exp") or launch.env.get("GRPO_OPS_RUN_ID", "run")
        attempt = launch.labels.get("attempt") or launch.env.get("GRPO_OPS_ATTEMPT", "0")
        argv = da.container_argv(launch.argv, o.python)
        env = da.container_env(launch.env, self.host_env, o.env_passthrough)
        hf = da.hf_cache_dir(launch.env, o.hf_cache)
        vols = da.mounts(Path(launch.cwd), log_path.parent, argv, hf, o.volumes, Path.exists)
        if str(hf) in vols:
            env.setdefault("HF_HOME", str(hf))
        req = da.gpu_request(o.gpus, launch.env, Path("/dev/nvidiactl").exists())
        ulimits = [Ulimit(name="stack", soft=da.STACK_BYTES, hard=da.STACK_BYTES)]
        if self._memlock_ok:
            ulimits.append(Ulimit(name="memlock", soft=-1, hard=-1))
        kwargs = dict(
            entrypoint=[argv[0]], command=argv[1:], environment=env, working_dir=str(launch.cwd),
            labels=da.labels(run_id, attempt, o.labels, launch.env.get("GRPO_OPS_RUN_DIR")), name=da.container_name(run_id, attempt, secrets.token_hex(3)),
            volumes=vols, network_mode=o.network, init=True, detach=True, user=o.user, ulimits=ulimits,
            device_requests=[DeviceRequest(**req)] if req else None)
        if o.ipc_host:
            kwargs["ipc_mode"] = "host"
        elif o.shm_size:
            kwargs["shm_size"] = o.shm_size
        if o.memory_limit_mib:
            kwargs["mem_limit"] = kwargs["memswap_limit"] = f"{o.memory_limit_mib}m"
        return kwargs

    def _start(self, kwargs: dict):
        container = self.client.containers.create(self.opts.image, **kwargs)
        try:
            container.start()
            container.reload()
        except Exception:
            _force_remove(container)
            raise
        return container

    def _start_error(self, err: Exception) -> UserError:
        text = getattr(err, "explanation", None) or str(err)
        hint = "; install nvidia-container-toolkit or use GRPO_OPS_DOCKER_GPUS=none" if "device driver" in text else ""
        return UserError(f"cannot start a container from {self.opts.image!r}: {text}{hint}")

    def cleanup(self, run_id: str, dry_run: bool = False) -> list[str]:
        """Stop and remove this run's containers (by its labels); others are never touched."""
        filters = {"label": [f"{da.LABEL_RUN}={run_id}", f"{da.LABEL_BACKEND}=docker"]
                   + ([f"{da.LABEL_RUN_DIR}={self.run_dir}"] if self.run_dir else [])}
        lines = []
        for c in self.client.containers.list(all=True, filters=filters):
            labels = c.labels or {}
            if labels.get(da.LABEL_RUN) != run_id:      # belt and braces over the engine's filter
                continue
            if self.run_dir and labels.get(da.LABEL_RUN_DIR) != self.run_dir:
                continue
            running = c.status in ("running", "restarting", "paused", "created")
            if self.opts.keep_containers and not running:
                continue
            what = f"container {c.name} ({c.short_id}, {c.status}, attempt {labels.get(da.LABEL_ATTEMPT)})"
            if dry_run:
                lines.append(f"would stop and remove {what}")
                continue
            if running:
                try:
                    c.stop(timeout=5)
                except (NotFound, APIError):
                    pass
            _force_remove(c)
            lines.append(f"stopped and removed {what}" if running else f"removed {what}")
        return lines


def _force_remove(container) -> None:
    try:
        container.remove(force=True)
    except (NotFound, APIError):
        pass
