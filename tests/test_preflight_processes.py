"""stale_processes / ray_cluster: pure verdicts over hand-built process tables, then the real thing: a real
Ray head, a real detached `VllmAsyncGenerationWorker` actor, `ops preflight --fix` as a subprocess, and
processes that must survive it (a decoy naming vllm, another user's process, the shared session head)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from healthchecks import processes as hp
from healthchecks.base import Status
from ops import procs, ray_local
from ops.procs import ProcInfo
from ops.ray_local import RayTarget

ME, OTHER = 0, 1234
S = "/tmp/rt/ray/session_2026-11-25_10-00-00_000000_1"
GCS = "127.0.0.1:6380"


def row(pid, ppid, *cmd, uid=ME) -> ProcInfo:
    return ProcInfo(pid=pid, ppid=ppid, uid=uid, user="root" if uid == ME else "bob", create_time=1.0,
                    cmdline=tuple(cmd))


def cluster_table(extra=()) -> dict[int, ProcInfo]:
    rows = [
        row(1, 0, "/sbin/init"),
        row(10, 1, "/v/ray/core/src/ray/gcs/gcs_server", f"--session-dir={S}"),
        row(11, 1, "/v/ray/core/src/ray/raylet/raylet", f"--session_dir={S}", f"--gcs-address={GCS}"),
        row(12, 11, "ray::VllmAsyncGenerationWorker" + " " * 30),
        row(13, 11, "ray::IDLE"),
        row(20, 1, "sleep", "600", "VllmAsyncGenerationWorker"),                 # decoy
        row(30, 1, "ray::VllmAsyncGenerationWorker", uid=OTHER),                 # another user's
        *extra,
    ]
    return {r.pid: r for r in rows}


def target_of(table) -> RayTarget:
    members = tuple(ray_local.cluster_members(table, S, GCS))
    return RayTarget(GCS, "/tmp/rt/ray/ray_current_cluster", Path("/tmp/rt/ray"), S, members, ME)


def verdicts(findings) -> dict[int, tuple[bool, str]]:
    return {f.proc.pid: (f.leftover, f.why) for f in findings}


def test_members_by_session_and_tree():
    t = cluster_table()
    assert sorted(target_of(t).members) == [10, 11, 12, 13]


def test_vllm_worker_in_target_without_driver_is_a_leftover():
    t = cluster_table()
    v = verdicts(hp.assess(t, target_of(t), ME, skip=set()))
    assert v[12][0] is True
    assert 20 not in v                                   # the decoy is not even classified
    assert v[30] == (False, "user bob: reported only")   # never touched
    assert v[10][0] is False and v[13][0] is False       # daemons / idle workers of a live cluster stay
    r = hp.judge_stale(hp.assess(t, target_of(t), ME, skip=set()))
    assert r.status == Status.FAIL and r.fix_id == "stop_stale_processes" and "pid 12" in r.detail


def test_vllm_worker_with_a_live_driver_is_in_use():
    t = cluster_table()
    v = verdicts(hp.assess(t, target_of(t), ME, skip=set(), drivers=[99]))
    assert v[12] == (False, "in use: driver pid 99 is attached")
    r = hp.judge_stale(hp.assess(t, target_of(t), ME, skip=set(), drivers=[99]))
    assert r.status == Status.WARN and r.fix_id is None


def test_orphans_are_leftovers_only_when_mine():
    extra = [row(40, 1, "ray::VllmGenerationWorker.generate"),                   # raylet gone
             row(41, 1, "/v/ray/core/src/ray/raylet/raylet", "--session_dir=/tmp/x/session_2026-11-25_09-00-00_1_2"),
             row(42, 1, "ray::MegatronPolicyWorker", uid=OTHER),
             row(43, 1, "/g/.venv/bin/python", "app.py", "+config_paths=[resources_servers/w/c.yaml]"),
             row(44, 11, "/g/.venv/bin/python", "app.py", "+config_paths=[resources_servers/w/c.yaml]")]
    t = cluster_table(extra)
    v = verdicts(hp.assess(t, None, ME, skip=set()))
    assert v[40][0] and v[41][0] and v[43][0]            # no raylet above / no gcs_server / parent gone
    assert not v[42][0] and not v[44][0]
    assert not v[12][0]                                   # no target: a live cluster's worker is not ours to stop


def test_self_and_ancestors_are_skipped():
    t = cluster_table([row(50, 11, "ray::VllmAsyncGenerationWorker"), row(51, 50, "python", "ops")])
    assert 50 not in verdicts(hp.assess(t, target_of(t), ME, skip=hp.self_pids(t, 51)))


@pytest.mark.parametrize("drivers, uid, status, fix_id", [
    ((), ME, Status.WARN, "stop_ray_cluster"),
    ((77,), ME, Status.WARN, None),
    ((), OTHER, Status.WARN, None),
])
def test_ray_cluster_verdicts(drivers, uid, status, fix_id):
    t = cluster_table()
    target = target_of(t)
    target = RayTarget(target.address, target.source, target.temp_dir, S, target.members, uid)
    r = hp.judge_ray_cluster(target, t, ME, drivers, Path("/tmp/rt/ray"), None)
    assert (r.status, r.fix_id) == (status, fix_id)


def test_ray_cluster_none_and_stale_file_and_clean():
    t = {k: v for k, v in cluster_table().items() if k != 12}
    assert hp.judge_ray_cluster(None, t, ME, (), Path("/tmp/ray"), None).status == Status.PASS
    stale = RayTarget(GCS, "/tmp/ray/ray_current_cluster", Path("/tmp/ray"), None, (), None)
    assert "not running" in hp.judge_ray_cluster(stale, t, ME, (), Path("/tmp/ray"), None).detail
    gone = RayTarget(GCS, "RAY_ADDRESS", Path("/tmp/ray"), None, (), None)
    assert hp.judge_ray_cluster(gone, t, ME, (), Path("/tmp/ray"), GCS).status == Status.FAIL
    clean = hp.judge_ray_cluster(target_of(t), t, ME, (), Path("/tmp/rt/ray"), None)
    assert clean.status == Status.PASS and "NeMo RL would attach to 127.0.0.1:6380" in clean.detail


# --- real Ray --------------------------------------------------------------------------------------------
DRIVER = """
import os, time, ray
ray.init(address=os.environ["RAY_ADDRESS"])

@ray.remote(num_cpus=0)
class VllmAsyncGenerationWorker:
    def pid(self):
        return os.getpid()

w = VllmAsyncGenerationWorker.options(name="stale_vllm", lifetime="detached").remote()
print("actor", ray.get(w.pid.remote()), flush=True)
time.sleep(3600)
"""
OTHER_USER = "grpoopstest"


def _other_user() -> str:
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
                       check=True, capture_output=True)
    return OTHER_USER


def _ops(env, *args):
    p = subprocess.run([sys.executable, "-m", "ops.cli", "preflight", "--json", "--only",
                        "stale_processes,ray_cluster", *args], env=env, capture_output=True, text=True, timeout=180)
    assert p.stdout.strip().startswith("{"), p.stderr
    doc = json.loads(p.stdout)
    return p, doc, {r["name"]: r for r in doc["results"]}


def _proc_entry(result, pid):
    return next((e for e in result["data"].get("processes", ()) if e["pid"] == pid), None)


@pytest.mark.ray
@pytest.mark.slow
def test_fix_stops_only_this_users_leftovers(ray_head, fresh_ray_head, tmp_path):
    env = {k: v for k, v in fresh_ray_head.env.items() if k != "RAY_ADDRESS"}  # found via ray_current_cluster
    started: list[subprocess.Popen] = []
    try:
        driver = subprocess.Popen([sys.executable, "-c", DRIVER], env=fresh_ray_head.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        started.append(driver)
        line = ""
        while not line.startswith("actor"):
            line = driver.stdout.readline()
            assert line, "the driver exited before creating its actor"
        actor = int(line.split()[1])
        decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "vllm",
                                  "VllmAsyncGenerationWorker"], start_new_session=True)
        started.append(decoy)
        other = subprocess.Popen(["bash", "-c", "exec -a ray::VllmAsyncGenerationWorker sleep 600"],
                                 user=_other_user(), start_new_session=True)
        started.append(other)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "VllmAsync" not in " ".join(psutil.Process(other.pid).cmdline()):
            time.sleep(0.05)

        # While its driver lives, the worker is in use: reported, not a leftover, and --fix leaves it.
        p, doc, res = _ops(env)
        assert _proc_entry(res["stale_processes"], actor)["why"].startswith("in use: driver pid")
        assert res["ray_cluster"]["status"] == "WARN" and driver.pid in res["ray_cluster"]["data"]["live_drivers"]
        assert fresh_ray_head.session_dir == res["ray_cluster"]["data"]["session_dir"]

        driver.kill()                       # the driver dies; its detached actor stays: a leftover
        driver.wait(timeout=30)
        p, doc, res = _ops(env)
        stale = res["stale_processes"]
        assert p.returncode == 1 and stale["status"] == "FAIL" and f"pid {actor}" in stale["detail"]
        mine = _proc_entry(stale, actor)
        assert mine["kind"] == "vllm_worker" and mine["leftover"] and mine["user"] == "root"
        theirs = _proc_entry(stale, other.pid)
        assert theirs["user"] == OTHER_USER and not theirs["leftover"] and not theirs["mine"]
        assert _proc_entry(stale, decoy.pid) is None
        assert res["ray_cluster"]["fix_id"] == "stop_ray_cluster"

        p, doc, res = _ops(env, "--fix", "--dry-run")
        assert any(f"would SIGTERM pid {actor}" in line for line in doc["fix"]["lines"])
        assert psutil.pid_exists(actor) and fresh_ray_head.is_alive()

        p, doc, res = _ops(env, "--fix")
        assert any(f"SIGTERM pid {actor}" in line for line in doc["fix"]["lines"]), doc["fix"]
        assert not psutil.pid_exists(actor) or psutil.Process(actor).status() == psutil.STATUS_ZOMBIE
        assert not fresh_ray_head.is_alive(), "this user's leftover cluster is stopped by PID"
        assert not (fresh_ray_head.temp_dir / "ray_current_cluster").exists()
        assert _proc_entry(res["stale_processes"], actor) is None
        assert decoy.poll() is None, "a process that only mentions vllm must survive --fix"
        assert other.poll() is None, "another user's process must survive --fix"
        assert ray_head.is_alive(), "the shared session head is not the target and must survive"
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def test_fix_stops_processes_of_a_run_whose_supervisor_died(tmp_path):
    """The ownership marker: a process carrying GRPO_OPS_RUN_ID of a run whose heartbeat names a dead
    supervisor is a leftover; the same marker with a live supervisor is left alone."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    runs = {"20261125/embedded/dead_001": gone.pid, "20261125/embedded/live_001": os.getpid()}
    started = []
    try:
        for run_id, supervisor_pid in runs.items():
            (tmp_path / run_id / "ops").mkdir(parents=True)
            (tmp_path / run_id / "ops" / "heartbeat.json").write_text(json.dumps({"ts": 1.0, "pid": supervisor_pid}))
            started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                                            env=dict(os.environ, GRPO_OPS_RUN_ID=run_id), start_new_session=True))
        dead_proc, live_proc = started
        args = ["--results-dir", str(tmp_path)]
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
        env["RAY_TMPDIR"] = str(tmp_path / "no-ray")
        p, doc, res = _ops(env, *args)
        stale = res["stale_processes"]
        assert stale["status"] == "FAIL" and _proc_entry(stale, dead_proc.pid)["kind"] == "grpo_ops_run"
        assert "no live supervisor" in _proc_entry(stale, dead_proc.pid)["why"]
        assert _proc_entry(stale, live_proc.pid) is None
        p, doc, res = _ops(env, *args, "--fix")
        assert dead_proc.wait(timeout=30) is not None
        assert live_proc.poll() is None
        assert _proc_entry(res["stale_processes"], dead_proc.pid) is None   # gone after the fix
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_same_run_name_in_two_results_trees_is_judged_by_run_dir(tmp_path):
    """Experiment names repeat across results trees: a live run must not be called a leftover because another
    tree's run of the same name lost its supervisor."""
    import json as _json
    import os as _os

    from healthchecks.processes import assess, dead_runs
    from ops.procs import ProcInfo

    live_dir, dead_dir = tmp_path / "a" / "exp", tmp_path / "b" / "exp"
    for d, pid in ((live_dir, _os.getpid()), (dead_dir, 2 ** 22 + 7)):
        (d / "ops").mkdir(parents=True)
        (d / "ops" / "heartbeat.json").write_text(_json.dumps({"pid": pid}))
    uid = _os.getuid()
    me = ProcInfo(_os.getpid(), 1, uid, "me", 0.0, ("python",))
    live = ProcInfo(101, _os.getpid(), uid, "me", 0.0, ("python", "-m", "training.grpo"), run_id="exp",
                    run_dir=str(live_dir))
    dead = ProcInfo(102, 1, uid, "me", 0.0, ("python", "-m", "training.grpo"), run_id="exp", run_dir=str(dead_dir))
    table = {p.pid: p for p in (me, live, dead)}
    gone = dead_runs(table, tmp_path / "unused", uid)
    assert gone == {str(dead_dir)}
    leftovers = {f.proc.pid for f in assess(table, None, uid, set(), (), gone) if f.leftover}
    assert leftovers == {102}
