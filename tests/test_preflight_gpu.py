"""GPU checks through the seam: the pure verdicts (table-driven), the fake scenarios through `ops preflight`
as a real subprocess (GRPO_OPS_FAKE_GPU), and the real NVML reader on this GPU-less machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from healthchecks import gpu
from healthchecks.base import CheckContext, Status
from healthchecks.fake_gpu import FakeGpuReader, h100
from healthchecks.gpu_seam import GpuUnavailable
from healthchecks.nvml_reader import NO_NVML, NvmlReader, clock_event_names


def ctx(reader, **kw) -> CheckContext:
    env = kw.pop("env", {"TORCH_CUDA_ARCH_LIST": "9.0 10.0"})
    return CheckContext(gpu=reader, env=env, **kw)


def preflight(fake: FakeGpuReader | None, tmp_path, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_CUDA_ARCH_LIST", "CUDA_VISIBLE_DEVICES")}
    if fake is not None:
        env["GRPO_OPS_FAKE_GPU"] = str(fake.dump(tmp_path / "gpu.json"))
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")     # the torch arch cache stays in the test's dir
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, "-m", "ops.cli", "preflight", "--json", *args], env=env,
                       capture_output=True, text=True, timeout=120)
    return p, (json.loads(p.stdout) if p.stdout.strip().startswith("{") else None)


def by_name(doc) -> dict:
    return {r["name"]: r for r in doc["results"]}


# --- the real reader on this machine ------------------------------------------------------------------
def test_real_nvml_reader_without_a_driver_says_why():
    try:
        NvmlReader().snapshot()
    except GpuUnavailable as err:
        assert str(err) == NO_NVML == "NVML library not found: no NVIDIA driver on this machine"
    else:
        pytest.skip("this machine has an NVIDIA driver")


def test_no_gpu_is_unknown_or_fail_with_require_gpu():
    no = FakeGpuReader.no_gpu()
    for name in ("gpu", "cuda_arch", "gpu_memory", "gpu_health"):
        check = {"gpu": gpu.check_gpu, "cuda_arch": gpu.check_cuda_arch, "gpu_memory": gpu.check_gpu_memory,
                 "gpu_health": gpu.check_gpu_health}[name]
        r = check(ctx(no))
        assert r.status == Status.UNKNOWN and "NVML library not found" in r.detail
        assert check(ctx(no, require_gpu=True)).status == Status.FAIL


# --- gpu ----------------------------------------------------------------------------------------------
def test_gpu_count_against_required():
    r = gpu.check_gpu(ctx(FakeGpuReader.healthy(2), gpus_required=2))
    assert r.status == Status.PASS and "2 x NVIDIA H100 80GB HBM3" in r.detail and "580.95.05" in r.detail
    r = gpu.check_gpu(ctx(FakeGpuReader.healthy(1), gpus_required=8))
    assert r.status == Status.FAIL and "8 GPUs required" in r.detail and "gpus_per_node=1" in r.fix


@pytest.mark.parametrize("cvd, visible", [(None, [0, 1, 2, 3]), ("", []), ("1,3", [1, 3]), ("2,x,3", [2]),
                                          ("GPU-fake-0003", [3]), ("0,0", [0]), ("7", [])])
def test_cuda_visible_devices(cvd, visible):
    gpus = FakeGpuReader.healthy(4).snap.gpus
    assert [g.index for g in gpu.visible_gpus(gpus, cvd)] == visible


# --- cuda_arch ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch_list, caps, status, fix", [
    ("9.0 10.0", [(9, 0)], Status.PASS, ""),
    ("9.0", [(9, 0)], Status.PASS, ""),
    ("8.0;9.0a", [(9, 0)], Status.PASS, ""),
    ("Hopper", [(9, 0)], Status.PASS, ""),
    ("8.0", [(9, 0)], Status.FAIL, 'export TORCH_CUDA_ARCH_LIST="8.0 9.0"'),
    (None, [(9, 0)], Status.FAIL, 'export TORCH_CUDA_ARCH_LIST="9.0"'),
    ("", [(9, 0)], Status.FAIL, 'export TORCH_CUDA_ARCH_LIST="9.0"'),
    ("8.0+PTX", [(9, 0)], Status.WARN, 'export TORCH_CUDA_ARCH_LIST="8.0 9.0"'),
    ("9.0 10.0", [(12, 0)], Status.FAIL, 'export TORCH_CUDA_ARCH_LIST="9.0 10.0 12.0"'),
    ("9.0 sm90", [(9, 0)], Status.FAIL, 'export TORCH_CUDA_ARCH_LIST="9.0"'),
    ("9.0", [(9, 0), (8, 0)], Status.FAIL, 'export TORCH_CUDA_ARCH_LIST="8.0 9.0"'),
])
def test_cuda_arch_env(arch_list, caps, status, fix):
    gpus = [h100(i, compute_capability=c) for i, c in enumerate(caps)]
    r = gpu.judge_cuda_arch(gpus, arch_list, None, "torch n/a", torch_is_fatal=True)
    assert r.status == status, r.detail
    assert r.fix == fix


@pytest.mark.parametrize("flags, fatal, status", [
    (["sm_80", "sm_90", "sm_100"], True, Status.PASS),
    (["sm_80", "sm_90a"], True, Status.PASS),
    (["sm_70", "sm_80"], True, Status.FAIL),
    (["sm_70", "sm_80"], False, Status.WARN),      # NeMo RL runs its own venvs: ops' torch only warns
    (["sm_80", "compute_80"], True, Status.WARN),  # PTX JIT only
    ([], True, Status.FAIL),                        # a CPU-only torch build
])
def test_cuda_arch_torch_build(flags, fatal, status):
    r = gpu.judge_cuda_arch([h100()], "9.0", flags, "torch 2.x", torch_is_fatal=fatal)
    assert r.status == status, r.detail
    if status != Status.PASS:
        assert "sm_90" in r.fix and "torch 2.x" in r.detail


def test_cuda_arch_check_reads_the_env_and_this_torch():
    r = gpu.check_cuda_arch(ctx(FakeGpuReader.healthy(), env={"TORCH_CUDA_ARCH_LIST": "8.0"}))
    assert r.status == Status.FAIL and 'TORCH_CUDA_ARCH_LIST="8.0 9.0"' in r.fix
    assert r.data["torch_arch_list"] is not None  # torch is importable here (a CPU build: [])


# --- gpu_memory ---------------------------------------------------------------------------------------
def test_foreign_process_listed_with_pid_user_and_cmdline():
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # holds-gpu-marker"])
    try:
        r = gpu.check_gpu_memory(ctx(FakeGpuReader.foreign_process(holder.pid)))
        assert r.status == Status.FAIL
        assert f"pid {holder.pid} (user root)" in r.detail or f"pid {holder.pid} (user " in r.detail
        assert "holds-gpu-marker" in r.detail
        assert r.data["gpus"][0]["processes"][0]["pid"] == holder.pid
        assert "ops preflight --fix" in r.fix or "kill" in r.fix  # this user's own process
        other = gpu.check_gpu_memory(ctx(FakeGpuReader.foreign_process(holder.pid), uid=4242))
        assert "ask the owners" in other.fix
    finally:
        holder.kill()
        holder.wait()


def test_gpu_memory_small_holder_warns_and_unknown_pid_is_named():
    snap = FakeGpuReader.foreign_process(pid=4_000_000, used_mib=500)
    r = gpu.check_gpu_memory(ctx(snap))
    assert r.status == Status.WARN
    assert "pid 4000000 (not visible here" in r.detail
    assert gpu.check_gpu_memory(ctx(FakeGpuReader.healthy())).status == Status.PASS


# --- gpu_health ---------------------------------------------------------------------------------------
def test_gpu_health_scenarios():
    assert gpu.check_gpu_health(ctx(FakeGpuReader.healthy(2))).status == Status.PASS
    r = gpu.check_gpu_health(ctx(FakeGpuReader.ecc_errors(2)))
    assert r.status == Status.FAIL
    for text in ("3 uncorrected volatile ECC errors", "row-remap failure", "retired pages pending",
                 "recovery action gpu_reset", "GPU 1: healthy"):
        assert text in r.detail
    assert "nvidia-smi -r" in r.fix
    r = gpu.check_gpu_health(ctx(FakeGpuReader.throttled()))
    assert r.status == Status.FAIL and "hw_slowdown" in r.detail and "sw_thermal" in r.detail
    r = gpu.check_gpu_health(ctx(FakeGpuReader.throttled(reasons=("sw_power_cap",))))
    assert r.status == Status.WARN
    blind = FakeGpuReader.of(h100(0, ecc_uncorrected_volatile=None, remapped_rows_failure=None,
                                  remapped_rows_pending=None))
    assert gpu.check_gpu_health(ctx(blind)).status == Status.UNKNOWN


def test_clock_event_mask_names():
    assert clock_event_names(0x1 | 0x8 | 0x80) == ("gpu_idle", "hw_slowdown", "hw_power_brake")
    assert clock_event_names(0) == ()


def test_fake_file_round_trip(tmp_path):
    for fake in (FakeGpuReader.healthy(3), FakeGpuReader.ecc_errors(), FakeGpuReader.foreign_process(123),
                 FakeGpuReader.uncovered_arch(), FakeGpuReader.no_gpu("because")):
        assert FakeGpuReader.load(fake.dump(tmp_path / "f.json")) == fake


# --- the CLI with fakes (real subprocesses) -----------------------------------------------------------
GPU_CHECKS = "gpu,cuda_arch,gpu_memory,gpu_health"


def test_cli_healthy_h100_passes(tmp_path):
    p, doc = preflight(FakeGpuReader.healthy(), tmp_path, "--only", GPU_CHECKS, "--gpus", "1",
                       env_extra={"TORCH_CUDA_ARCH_LIST": "9.0 10.0"})
    st = {k: v["status"] for k, v in by_name(doc).items()}
    # cuda_arch also judges this machine's torch (a CPU build): only that part may not pass here.
    assert st["gpu"] == st["gpu_memory"] == st["gpu_health"] == "PASS"
    assert "covered by TORCH_CUDA_ARCH_LIST" in by_name(doc)["cuda_arch"]["detail"] or \
        "CPU-only" in by_name(doc)["cuda_arch"]["detail"]
    assert "TORCH_CUDA_ARCH_LIST=" not in by_name(doc)["cuda_arch"]["fix"]


def test_cli_uncovered_arch_fails_naming_the_value(tmp_path):
    p, doc = preflight(FakeGpuReader.uncovered_arch(), tmp_path, "--only", "cuda_arch",
                       env_extra={"TORCH_CUDA_ARCH_LIST": "9.0 10.0"})
    assert p.returncode == 1
    r = by_name(doc)["cuda_arch"]
    assert r["status"] == "FAIL" and "12.0" in r["detail"]
    assert 'export TORCH_CUDA_ARCH_LIST="9.0 10.0 12.0"' in r["fix"]
    assert doc["summary"]["FAIL"] == 1 and doc["summary"]["exit_code"] == 1


def test_cli_h100_with_80_fails_and_names_9_0(tmp_path):
    p, doc = preflight(FakeGpuReader.healthy(), tmp_path, "--only", "cuda_arch",
                       env_extra={"TORCH_CUDA_ARCH_LIST": "8.0"})
    assert p.returncode == 1
    assert '"8.0 9.0"' in by_name(doc)["cuda_arch"]["fix"]


@pytest.mark.parametrize("fake, check, status", [
    (FakeGpuReader.ecc_errors(), "gpu_health", "FAIL"),
    (FakeGpuReader.throttled(), "gpu_health", "FAIL"),
    (FakeGpuReader.healthy(), "gpu_health", "PASS"),
])
def test_cli_health_scenarios(tmp_path, fake, check, status):
    p, doc = preflight(fake, tmp_path, "--only", check)
    assert by_name(doc)[check]["status"] == status
    assert p.returncode == (1 if status == "FAIL" else 0)


def test_cli_no_gpu_unknown_then_fail_with_require_gpu(tmp_path):
    p, doc = preflight(FakeGpuReader.no_gpu(), tmp_path, "--only", GPU_CHECKS)
    assert p.returncode == 0 and {r["status"] for r in doc["results"]} == {"UNKNOWN"}
    p, doc = preflight(FakeGpuReader.no_gpu(), tmp_path, "--only", GPU_CHECKS, "--require-gpu")
    assert p.returncode == 1 and {r["status"] for r in doc["results"]} == {"FAIL"}
    assert all("NVML library not found: no NVIDIA driver on this machine" == r["detail"] for r in doc["results"])


def test_cli_foreign_process_has_no_secret_in_output(tmp_path):
    token = "hf_" + "a1B2c3D4e5F6g7H8i9J0kLmNoPq"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--token={token}"])
    try:
        p, doc = preflight(FakeGpuReader.foreign_process(holder.pid), tmp_path, "--only", "gpu_memory")
        assert p.returncode == 1
        assert str(holder.pid) in by_name(doc)["gpu_memory"]["detail"]
        assert token not in p.stdout + p.stderr
    finally:
        holder.kill()
        holder.wait()


def test_gpu_memory_uses_the_configs_vllm_share(tmp_path):
    """NeMo RL's colocated vLLM needs gpu_memory_utilization x total free at start-up (0.8 in the YAML)."""
    cfg = os.path.join(os.path.dirname(__file__), "fixtures", "nemo_rl",
                       "grpo_workplace_assistant_nemotron_nano_v2_9b.yaml")
    fake = FakeGpuReader.foreign_process(pid=4_000_001, used_mib=20000)       # ~61 GB of 80 GB free
    p, doc = preflight(fake, tmp_path, "--only", "gpu_memory", "--config", cfg)
    r = by_name(doc)["gpu_memory"]
    assert r["status"] == "FAIL" and "vLLM gpu_memory_utilization=0.8 needs" in r["detail"]
    assert r["data"]["vllm_gpu_memory_utilization"] == 0.8
    p, doc = preflight(fake, tmp_path, "--only", "gpu_memory", "--config", cfg, "--",
                       "policy.generation.vllm_cfg.gpu_memory_utilization=0.5")
    assert by_name(doc)["gpu_memory"]["status"] == "WARN"                      # enough free; a holder remains


def test_torch_arch_flags_are_cached_per_torch_installation(tmp_path):
    flags, desc = gpu.torch_arch_flags(tmp_path)          # imports torch once (a CPU build here: [])
    cache = tmp_path / "torch_arch.json"
    doc = json.loads(cache.read_text())
    assert doc["flags"] == flags and doc["desc"] == desc and "version.py" in doc["key"]
    doc["flags"] = ["sm_90"]                               # a hit must come from the file, not from torch
    cache.write_text(json.dumps(doc))
    assert gpu.torch_arch_flags(tmp_path) == (["sm_90"], desc)
    doc["key"] = "another torch"
    cache.write_text(json.dumps(doc))
    assert gpu.torch_arch_flags(tmp_path) == (flags, desc)  # a different installation: asked again
