"""The Ray job backend: the trainer as a job on a Ray cluster, submitted through Ray's own Jobs API
(`ray.job_submission.JobSubmissionClient`), as NeMo RL runs do when one node is not enough. Does I/O (HTTP to
the cluster's dashboard, the run's log file, /proc for processes of the job that run on this host).

- The entrypoint is the shell-quoted argv only (`cd <cwd> && exec <argv>`); the environment travels in
  `runtime_env.env_vars`, so no secret is ever part of a command line. (Ray keeps a job's runtime_env in its
  job table: anyone who can reach the dashboard can read it, as with any Ray job. Ray also expands `$VAR` /
  `${VAR}` inside env_vars values on the node.)
- submission_id `grpo-ops-<run>-a<attempt>-<nonce>` names the run and attempt; metadata
  `{grpo_ops_run_id, grpo_ops_attempt}` marks ownership. Clean-up stops only jobs whose metadata names this
  run; every other live job is reported, never stopped.
- Two daemon threads per job: one follows the job's status (`get_job_info`), one copies its log
  (`tail_job_logs`, reconnecting and reconciling with `get_job_logs`) into `log_path`. `poll()` only reads
  what they found, so it never blocks, and it reports the end only once the log is copied.
- Multi-node assumption (as NeMo RL on Slurm): the repo, the Python environment and `results/` sit at the
  same paths on every node (a shared filesystem); the job's driver runs on the head unless
  `entrypoint_resources` pins it elsewhere.
"""

from __future__ import annotations

import asyncio
import math
import re
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ops import procs
from ops.backends.base import Exit, MemorySample
from ops.errors import UserError
from training.spec import Launch

log = structlog.get_logger()

PREFIX = "grpo-ops"
META_RUN = "grpo_ops_run_id"
META_ATTEMPT = "grpo_ops_attempt"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

# Variables that describe the submitting process or its own Ray session, not the run: the job gets the
# cluster's own values (Ray sets RAY_ADDRESS for the driver itself).
_NOT_FORWARDED = frozenset({"RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_TMPDIR", "RAY_JOB_CONFIG_JSON_ENV_VAR",
                            "PWD", "OLDPWD", "SHLVL", "_"})


# ---------------------------------------------------------------------------------------------- pure parts
def slug(text: str) -> str:
    """A string fit for a submission id (it becomes part of the Jobs API's URLs)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def submission_id(run_id: str, attempt: int | str, nonce: str) -> str:
    return f"{PREFIX}-{slug(run_id)}-a{attempt}-{nonce}"


def entrypoint(launch: Launch) -> str:
    """The job's command: the argv shell-quoted, run in the launch's cwd; `exec` keeps the trainer's exit
    status (and a terminating signal) as the job's driver_exit_code."""
    return f"cd {shlex.quote(str(launch.cwd))} && exec {shlex.join(launch.argv)}"


def job_env(env: Mapping[str, str], stop_wait_s: float) -> dict[str, str]:
    """runtime_env.env_vars: the launch's environment, less what belongs to the submitting host, plus the
    grace Ray's stop_job gives between SIGTERM and SIGKILL (read by the job's supervisor actor)."""
    out = {k: str(v) for k, v in env.items() if k not in _NOT_FORWARDED}
    out["RAY_JOB_STOP_WAIT_TIME_S"] = str(max(1, math.ceil(stop_wait_s)))
    return out


def is_owned(metadata: Mapping[str, str] | None, run_id: str) -> bool:
    return bool(metadata) and metadata.get(META_RUN) == run_id


def exit_of(status: str, driver_exit_code: int | None, message: str | None) -> Exit | None:
    """The Exit for a job in `status`; None while it is PENDING or RUNNING. Pure."""
    status = str(getattr(status, "value", status))
    first = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    if status not in TERMINAL:
        return None
    if status == "SUCCEEDED":
        return Exit(code=0, detail=f"ray job SUCCEEDED: {first}".rstrip(": "))
    if status == "STOPPED":
        return Exit(code=None, signal=int(signal.SIGTERM), detail=f"ray job STOPPED (stop_job): {first}")
    if driver_exit_code is not None and driver_exit_code < 0:        # the driver died by a signal
        return Exit(code=None, signal=-driver_exit_code, detail=f"ray job FAILED: {first}")
    if driver_exit_code is not None:
        return Exit(code=driver_exit_code, signal=None, detail=f"ray job FAILED: {first}")
    return Exit(code=None, signal=None, detail=f"ray job FAILED before its entrypoint ended: {first}")


@dataclass(frozen=True)
class JobRow:
    """One job as `list_jobs` shows it (just what clean-up needs)."""
    submission_id: str
    status: str
    metadata: Mapping[str, str]
    entrypoint: str = ""


def split_jobs(rows: Iterable[JobRow], run_id: str) -> tuple[list[JobRow], list[JobRow]]:
    """(this run's live jobs, everybody else's live jobs). Terminal jobs need nothing. Pure."""
    live = [r for r in rows if r.status not in TERMINAL]
    return [r for r in live if is_owned(r.metadata, run_id)], [r for r in live if not is_owned(r.metadata, run_id)]


# ---------------------------------------------------------------------------------------------- the client
def connect(address: str):
    """A JobSubmissionClient for `address` (the dashboard URL); a UserError when unreachable."""
    if not re.match(r"^(https?://)?[\w.\-\[\]:]+(:\d+)?/?$", address or ""):
        raise UserError(f"--ray-address {address!r} is not a dashboard URL; give http://HEAD:8265")
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as err:
        raise UserError(f"--ray-address needs ray[default] ({err}); pip install 'grpo-ops[ray]'") from None
    try:
        return JobSubmissionClient(address if "://" in address else f"http://{address}")
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(f"cannot reach the Ray Jobs API at {address} ({str(err).splitlines()[0]}); start a "
                        "cluster with `ray start --head --dashboard-host=0.0.0.0` or fix --ray-address") from None


def _info_row(job: Any) -> JobRow:
    return JobRow(job.submission_id or job.job_id or "", str(getattr(job.status, "value", job.status)),
                  dict(job.metadata or {}), job.entrypoint or "")


class RayJobHandle:
    """One submitted job. Threads follow its status and copy its log; the methods only read their findings."""

    def __init__(self, client: Any, sid: str, log_path: Path, run_id: str, attempt: str, *, address: str,
                 poll_s: float, lost_after_s: float, drain_s: float, clock: Callable[[], float] = time.monotonic):
        self.client, self.sid, self.log_path = client, sid, log_path
        self.run_id, self.attempt, self.address = run_id, attempt, address
        self.poll_s, self.lost_after_s, self.drain_s, self.clock = poll_s, lost_after_s, drain_s, clock
        self.status = "PENDING"
        self.driver_node_id: str | None = None
        self._exit: Exit | None = None          # set by the status thread at the job's end
        self._ended_at: float | None = None
        self._written = 0                       # characters of the job's log copied so far
        self._log_done = threading.Event()
        self._stop = threading.Event()
        self._pids_cache: tuple[float, list[int]] = (-1e9, [])
        threading.Thread(target=self._follow_status, name=f"ray-status-{sid}", daemon=True).start()
        threading.Thread(target=self._copy_log, name=f"ray-log-{sid}", daemon=True).start()

    # --- threads
    def _follow_status(self) -> None:
        failing_since: float | None = None
        while self._exit is None:
            try:
                info = self.client.get_job_info(self.sid)
                failing_since = None
                self.status = str(getattr(info.status, "value", info.status))
                self.driver_node_id = info.driver_node_id or self.driver_node_id
                found = exit_of(self.status, info.driver_exit_code, info.message)
            except Exception as err:   # an unreachable head is evidence, not a crash of the supervisor
                failing_since = failing_since or self.clock()
                found = None
                if self.clock() - failing_since > self.lost_after_s:
                    found = Exit(code=None, detail=f"lost the Ray Jobs API at {self.address} for "
                                 f"{self.lost_after_s:.0f}s: {type(err).__name__}: {str(err).splitlines()[0]}")
            if found is not None:
                self._ended_at = self.clock()
                self._exit = found
                return
            time.sleep(self.poll_s)

    def _copy_log(self) -> None:
        with open(self.log_path, "a", encoding="utf-8", errors="replace") as out:
            while True:
                try:
                    asyncio.run(self._follow(out))
                except Exception as err:   # the websocket dropped: reconnect (the tail replays from the start)
                    log.debug("ray job log tail dropped", job=self.sid, error=repr(err))
                if self._exit is not None or self._stop.is_set():
                    break
                time.sleep(self.poll_s)
            self._reconcile(out)
        self._log_done.set()

    async def _follow(self, out) -> None:
        """Tail until the stream ends or the job is known to have ended: Ray's server closes a finished job's
        stream only after a few idle seconds, while the log file is already complete (`_reconcile` reads it)."""
        task = asyncio.ensure_future(self._tail_into(out))
        while not task.done():
            if self._exit is not None or self._stop.is_set():
                task.cancel()
                break
            await asyncio.sleep(0.05)
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def _tail_into(self, out) -> None:
        seen = 0
        async for chunk in self.client.tail_job_logs(self.sid):
            new = chunk[max(0, self._written - seen):] if seen < self._written else chunk
            seen += len(chunk)
            if new:
                out.write(new)
                out.flush()
                self._written += len(new)

    def _reconcile(self, out) -> None:
        """After the end: append whatever the stream missed (get_job_logs holds the whole log)."""
        for _ in range(3):
            try:
                full = self.client.get_job_logs(self.sid)
            except Exception as err:
                log.debug("ray job logs unavailable", job=self.sid, error=repr(err))
                time.sleep(self.poll_s)
                continue
            if len(full) > self._written:
                out.write(full[self._written:])
                out.flush()
                self._written = len(full)
            return

    # --- Handle
    def poll(self) -> Exit | None:
        if self._exit is None:
            return None
        if not self._log_done.is_set() and self.clock() - (self._ended_at or 0) < self.drain_s:
            return None                     # the end is known; the last lines are still on their way
        return self._exit

    def pids(self) -> list[int]:
        """This attempt's processes that run on this host (found by the ownership marker), for stack dumps."""
        at, cached = self._pids_cache
        if self.clock() - at < 5.0:
            return cached
        table = procs.snapshot(with_markers=True)
        found = [p.pid for p in table.values() if p.run_id == self.run_id and p.attempt == self.attempt
                 and not _is_ray_plumbing(p.cmd)]
        self._pids_cache = (self.clock(), found)
        return found

    def memory(self) -> MemorySample | None:
        import psutil
        rss, n = 0.0, 0
        for pid in self.pids():
            try:
                rss += psutil.Process(pid).memory_info().rss
                n += 1
            except psutil.Error:
                continue
        return MemorySample(rss_mib=rss / 2**20, extra={"local_processes": n}) if n else None

    def terminate(self, grace_s: float) -> Exit:
        """stop_job (Ray: SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S), then wait for the end."""
        if self._exit is None:
            try:
                self.client.stop_job(self.sid)
            except Exception as err:
                log.warning("ray stop_job failed", job=self.sid, error=repr(err))
        deadline = self.clock() + max(grace_s, 1.0) + 30.0
        while self.clock() < deadline:
            found = self.poll()
            if found is not None:
                return found
            time.sleep(min(self.poll_s, 0.2))
        self._stop.set()
        return self._exit or Exit(code=None, detail=f"ray job {self.sid} still {self.status} after stop_job")

    def describe(self) -> dict:
        return {"backend": "ray_job", "job_id": self.sid, "address": self.address,
                "driver_node_id": self.driver_node_id}


def _is_ray_plumbing(cmd: str) -> bool:
    """The job's supervisor actor and its fate-sharing shell carry the marker too; they are not the trainer."""
    return cmd.startswith("ray::JobSupervisor") or ("while kill -s 0" in cmd)


class RayJobBackend:
    name = "ray_job"

    def __init__(self, address: str, *, stop_wait_s: float = 10.0, poll_s: float = 0.5, lost_after_s: float = 120.0,
                 drain_s: float = 15.0, entrypoint_resources: Mapping[str, float] | None = None, client: Any = None):
        for key, value in (("stop_wait_s", stop_wait_s), ("poll_s", poll_s), ("lost_after_s", lost_after_s)):
            if value <= 0:
                raise ValueError(f"{key} must be > 0, got {value}")
        self.address = address
        self.stop_wait_s, self.poll_s, self.lost_after_s, self.drain_s = stop_wait_s, poll_s, lost_after_s, drain_s
        self.entrypoint_resources = dict(entrypoint_resources or {})
        self.client = client or connect(address)

    def spawn(self, launch: Launch, log_path: Path) -> RayJobHandle:
        run_id = launch.labels.get("exp") or launch.env.get(procs.RUN_ID_VAR, "run")
        attempt = str(launch.labels.get("attempt") or launch.env.get(procs.ATTEMPT_VAR, "0"))
        sid = submission_id(run_id, attempt, _nonce())
        log_path.parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if self.entrypoint_resources:
            kwargs["entrypoint_resources"] = self.entrypoint_resources
        try:
            self.client.submit_job(entrypoint=entrypoint(launch), submission_id=sid,
                                   runtime_env={"env_vars": job_env(launch.env, self.stop_wait_s)},
                                   metadata={META_RUN: run_id, META_ATTEMPT: attempt}, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UserError(f"the Ray Jobs API at {self.address} refused the job: {str(err).splitlines()[0]}") \
                from None
        return RayJobHandle(self.client, sid, log_path, run_id, attempt, address=self.address, poll_s=self.poll_s,
                            lost_after_s=self.lost_after_s, drain_s=self.drain_s)

    def jobs(self) -> list[JobRow]:
        return [_info_row(j) for j in self.client.list_jobs()]

    def cleanup(self, run_id: str, dry_run: bool = False) -> list[str]:
        """Stop this run's live jobs (by the metadata marker); report everybody else's, never stop them."""
        mine, others = split_jobs(self.jobs(), run_id)
        lines: list[str] = []
        stopping: list[JobRow] = []
        for row in mine:
            if dry_run:
                lines.append(f"would stop ray job {row.submission_id} ({row.status}) of this run")
                continue
            try:
                self.client.stop_job(row.submission_id)
                stopping.append(row)
            except Exception as err:
                lines.append(f"could not stop ray job {row.submission_id}: {type(err).__name__}: {err}")
        lines += [f"stopped ray job {row.submission_id} (was {row.status}, now {status}) of this run"
                  for row, status in self._await_end(stopping)]
        lines += [f"left alone: ray job {r.submission_id} ({r.status}) is not this run's "
                  f"(owner {r.metadata.get(META_RUN) or 'unknown'})" for r in others]
        return lines

    def _await_end(self, rows: list[JobRow]) -> list[tuple[JobRow, str]]:
        """Wait (up to Ray's stop grace + a margin) until each stopped job is terminal: the next launch or a
        local sweep must not race Ray's own SIGTERM -> SIGKILL of the job's process tree."""
        deadline = time.monotonic() + self.stop_wait_s + 15.0
        status = {r.submission_id: r.status for r in rows}
        while rows and time.monotonic() < deadline:
            for r in rows:
                if status[r.submission_id] not in TERMINAL:
                    try:
                        status[r.submission_id] = str(self.client.get_job_status(r.submission_id).value)
                    except Exception:
                        pass
            if all(s in TERMINAL for s in status.values()):
                break
            time.sleep(self.poll_s)
        return [(r, status[r.submission_id]) for r in rows]


def _nonce() -> str:
    """Base-36 tenths of a second: a resumed run never reuses a submission id."""
    n, digits, out = int(time.time() * 10), "0123456789abcdefghijklmnopqrstuvwxyz", ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out
