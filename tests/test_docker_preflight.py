"""Preflight in a container (healthchecks/container.py): the pure verdicts, the check over a faked "in a
container" context on this host, and the real thing: `ops preflight --json` inside the project's image,
with Docker's 64 MiB /dev/shm and no GPU, then with --shm-size."""

import json
import resource
import subprocess

import pytest

from docker_support import project_image, require_engine
from healthchecks.base import CheckContext, Status
from healthchecks.container import (check_container, in_container, judge_gpu, judge_shm, judge_ulimits,
                                    needs_gpu)
from healthchecks.fake_gpu import FakeGpuReader, h100

MIB = 1 << 20


@pytest.mark.parametrize("env,files,cgroup,want", [
    ({}, (), "12:memory:/\n", None),
    ({"GRPO_OPS_IN_CONTAINER": "1"}, (), "", "GRPO_OPS_IN_CONTAINER=1"),
    ({}, ("/.dockerenv",), "", "/.dockerenv"),
    ({}, ("/run/.containerenv",), "", "/run/.containerenv"),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, (), "", "KUBERNETES_SERVICE_HOST"),
    ({}, (), "4:memory:/kubepods/burstable/pod1/abc\n", "/proc/1/cgroup mentions kubepods"),
])
def test_in_container(env, files, cgroup, want):
    assert in_container(env, lambda p: p in files, cgroup) == want


@pytest.mark.parametrize("total,status,text", [
    (64 * MIB, Status.WARN, "/dev/shm is 64 MiB, Docker's default"),
    (512 * MIB, Status.WARN, "only 512 MiB"),
    (16 << 30, Status.PASS, "16.0 GiB"),
    (None, Status.UNKNOWN, "cannot be read"),
])
def test_shm(total, status, text):
    r = judge_shm(total)
    assert r.status is status and text in r.detail
    assert ("--ipc=host" in r.fix) == (status is not Status.PASS)


@pytest.mark.parametrize("visible,needed,status", [
    (0, True, Status.FAIL), (0, False, Status.PASS), (2, True, Status.PASS), (None, True, Status.FAIL)])
def test_gpu(visible, needed, status):
    r = judge_gpu(visible, needed, "NVML library not found")
    assert r.status is status
    if status is Status.FAIL:
        assert "--gpus all" in r.fix and "needs one" in r.detail


def test_needs_gpu_from_context():
    assert needs_gpu(CheckContext(require_gpu=True)) and needs_gpu(CheckContext(gpus_required=8))
    assert needs_gpu(CheckContext(trainer="nemo-rl")) and not needs_gpu(CheckContext(trainer="embedded"))


def test_ulimits():
    inf = resource.RLIM_INFINITY
    assert judge_ulimits(inf, 64 * MIB).status is Status.PASS
    assert judge_ulimits(inf, inf).status is Status.PASS
    r = judge_ulimits(8 * MIB, 8 * MIB)
    assert r.status is Status.WARN and "memlock is 8192 KiB" in r.detail and "stack is 8 MiB" in r.detail
    assert r.fix == "docker run --ulimit memlock=-1 --ulimit stack=67108864"


def test_check_with_the_gpu_seam_in_a_container_context():
    env = {"GRPO_OPS_IN_CONTAINER": "1"}
    out = {r.name: r for r in check_container(CheckContext(env=env, require_gpu=True,
                                                           gpu=FakeGpuReader(unavailable="no NVML")))}
    assert set(out) == {"container_shm", "container_gpu", "container_ulimits"}
    assert out["container_gpu"].status is Status.FAIL and "no NVML" in out["container_gpu"].detail
    ok = {r.name: r for r in check_container(CheckContext(env=env, require_gpu=True, gpu=FakeGpuReader.of(h100())))}
    assert ok["container_gpu"].status is Status.PASS and ok["container_gpu"].data == {"gpus": 1}


@pytest.fixture(scope="module")
def image():
    require_engine()
    return project_image()


def docker_run(*args, timeout=120):
    return subprocess.run(["docker", "run", "--rm", "--network", "none", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.docker
@pytest.mark.timeout(1800)          # may build the image first
def test_image_entrypoint_help_and_healthcheck(image):
    p = docker_run(image, "--help")
    assert p.returncode == 0 and "Commands:" in p.stdout and "health" in p.stdout and "preflight" in p.stdout
    cfg = json.loads(subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True,
                                    check=True).stdout)[0]["Config"]
    assert cfg["Entrypoint"] == ["ops"] and cfg["Healthcheck"]["Test"] == ["CMD", "ops", "health"]
    p = docker_run(image, "health")
    assert p.returncode == 1 and p.stdout.startswith("no_run:")


@pytest.mark.docker
@pytest.mark.timeout(1800)
def test_preflight_json_in_the_image(image):
    p = docker_run(image, "preflight", "--json", "--require-gpu")
    assert p.returncode == 1, p.stderr
    res = {r["name"]: r for r in json.loads(p.stdout)["results"]}
    assert res["container_shm"]["status"] == "WARN" and "64 MiB, Docker's default" in res["container_shm"]["detail"]
    assert res["container_gpu"]["status"] == "FAIL" and "--gpus all" in res["container_gpu"]["fix"]
    p = docker_run("--shm-size=2g", image, "preflight", "--json")
    res = {r["name"]: r for r in json.loads(p.stdout)["results"]}
    assert res["container_shm"]["status"] == "PASS" and res["container_gpu"]["status"] == "PASS"
