"""`ops preflight` as a person and a machine use it: real subprocesses, exit codes, one-line usage errors,
--only/--skip, --json shape, config-driven GPU count, secrets never printed; plus host and wandb verdicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from healthchecks import host
from healthchecks.base import REGISTRY, CheckContext, CheckResult, Status, register, run_check
from healthchecks.fake_gpu import FakeGpuReader
from healthchecks.registry_modules import load_checks

FIXTURES = Path(__file__).parent / "fixtures" / "nemo_rl"
NEMO_CFG = FIXTURES / "grpo_workplace_assistant_nemotron_nano_v2_9b.yaml"
OWN = ["gpu", "cuda_arch", "gpu_memory", "gpu_health", "stale_processes", "ray_cluster", "host", "wandb"]


def ops(*args, env_extra=None, drop=("WANDB_API_KEY", "WANDB_MODE", "GRPO_OPS_FAKE_GPU")):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_registry_order_of_the_node_checks():
    load_checks()
    names = list(REGISTRY)
    assert [n for n in names if n in OWN] == OWN
    assert names[: len(OWN)] == OWN


@pytest.mark.parametrize("args, needle", [
    (["--only", "gpu,nope"], "unknown check 'nope'; valid checks: gpu, cuda_arch"),
    (["--skip", "wandb", "--skip", "bogus"], "unknown check 'bogus'"),
    (["--gpus", "two"], "'two' is not a valid integer"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--config", "/no/such.yaml"], "config file '/no/such.yaml' not found or unreadable"),
    (["--dry-run"], "--dry-run only applies to --fix"),
    (["--results-dir", __file__], "is a file, not a directory"),
    (["--", "a=b"], "without --config"),
    (["--config", str(NEMO_CFG), "--", "policy.x=[1,"], "bad override 'policy.x=[1,'"),
    (["--trainer", "megatron"], "'megatron' is not one of"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    p = ops("preflight", *args)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    assert p.stdout == ""


def test_bad_fake_gpu_path_is_a_usage_error():
    p = ops("preflight", env_extra={"GRPO_OPS_FAKE_GPU": "/no/such/gpu.json"})
    assert p.returncode == 2 and "GRPO_OPS_FAKE_GPU='/no/such/gpu.json'" in p.stderr


def test_debug_shows_the_traceback_for_a_usage_error():
    p = ops("--debug", "preflight", "--only", "nope")
    assert p.returncode != 0 and "Traceback" in p.stderr and "UserError" in p.stderr


def test_json_shape_only_skip_and_exit_codes(tmp_path):
    fake = FakeGpuReader.healthy().dump(tmp_path / "gpu.json")
    env = {"GRPO_OPS_FAKE_GPU": str(fake), "WANDB_MODE": "offline"}
    p = ops("preflight", "--json", "--only", "gpu,wandb", "--only", "host", "--results-dir", str(tmp_path),
            env_extra=env)
    doc = json.loads(p.stdout)
    assert [r["name"] for r in doc["results"]] == ["gpu", "host", "wandb"]      # registry order
    assert set(doc["results"][0]) >= {"name", "status", "detail", "fix", "data", "fix_id"}
    s = doc["summary"]
    assert s["total"] == 3 and s["PASS"] + s["WARN"] + s["FAIL"] + s["UNKNOWN"] == 3
    assert p.returncode == s["exit_code"] == (1 if s["FAIL"] else 0)
    p = ops("preflight", "--json", "--skip", ",".join(OWN[1:]), env_extra=env)
    assert [r["name"] for r in json.loads(p.stdout)["results"]][:1] == ["gpu"]
    p = ops("preflight", "--json", "--only", "gpu", "--gpus", "4", env_extra=env)
    assert p.returncode == 1 and json.loads(p.stdout)["results"][0]["status"] == "FAIL"


def test_config_sets_gpus_required_unless_gpus_given(tmp_path):
    fake = FakeGpuReader.healthy(2).dump(tmp_path / "gpu.json")
    env = {"GRPO_OPS_FAKE_GPU": str(fake)}
    base = ["preflight", "--json", "--only", "gpu", "--config", str(NEMO_CFG)]
    doc = json.loads(ops(*base, env_extra=env).stdout)                          # cluster.gpus_per_node: 8
    assert doc["results"][0]["status"] == "FAIL" and "8 GPUs required" in doc["results"][0]["detail"]
    doc = json.loads(ops(*base, "--", "cluster.gpus_per_node=2", env_extra=env).stdout)
    assert doc["results"][0]["status"] == "PASS"
    doc = json.loads(ops(*base, "--gpus", "1", env_extra=env).stdout)
    assert doc["results"][0]["status"] == "PASS" and doc["results"][0]["data"]["required"] == 1


def test_table_for_people(tmp_path):
    fake = FakeGpuReader.ecc_errors().dump(tmp_path / "gpu.json")
    p = ops("preflight", "--only", "gpu_health,wandb", env_extra={"GRPO_OPS_FAKE_GPU": str(fake)})
    assert p.returncode == 1
    assert "gpu_health" in p.stdout and "FAIL" in p.stdout and "uncorrected" in p.stdout
    assert "2 checks: 0 PASS, 1 WARN, 1 FAIL, 0 UNKNOWN" in p.stdout


def test_wandb_key_is_never_printed(tmp_path):
    key = "0123456789abcdef0123456789abcdef01234567"
    for args in (["--json"], []):
        p = ops("preflight", *args, "--only", "wandb,stale_processes", env_extra={"WANDB_API_KEY": key})
        assert "WANDB_API_KEY is set (value hidden)" in p.stdout
        assert key not in p.stdout + p.stderr


def test_a_check_that_raises_is_unknown():
    @register("_boom_test_check")
    def boom(ctx):
        raise RuntimeError("disk on fire")
    try:
        [r] = run_check("_boom_test_check", CheckContext())
        assert r.status == Status.UNKNOWN and "RuntimeError: disk on fire" in r.detail
    finally:
        REGISTRY.pop("_boom_test_check")


# --- host / wandb verdicts (pure) -------------------------------------------------------------------------
def reading(**kw) -> host.HostReading:
    base = dict(results_dir="results", disk_free_gib=500.0, disk_writable=True, shm_gib=32.0, nofile_soft=1048576,
                nofile_hard=1048576, mem_available_gib=400.0, cgroup_limit_gib=None)
    return host.HostReading(**{**base, **kw})


@pytest.mark.parametrize("changes, status, needle", [
    ({}, Status.PASS, "500 GiB free at results"),
    ({"disk_free_gib": 20.0}, Status.FAIL, "only 20.0 GiB free"),
    ({"disk_writable": False}, Status.FAIL, "not writable"),
    ({"disk_free_gib": None}, Status.FAIL, "cannot read free space"),
    ({"shm_gib": 0.0625}, Status.FAIL, "/dev/shm is only 64 MiB"),
    ({"shm_gib": 2.0}, Status.WARN, "/dev/shm is 2.0 GiB"),
    ({"nofile_soft": 1024, "nofile_hard": 4096}, Status.WARN, "open-files limit 1024"),
    ({"nofile_soft": 1024, "nofile_hard": 1048576}, Status.PASS, "open files 1024"),  # Ray raises soft to hard
    ({"mem_available_gib": 2.0}, Status.FAIL, "only 2.0 GiB host memory"),
    ({"mem_available_gib": 10.0, "cgroup_limit_gib": 12.0}, Status.WARN, "cgroup limit 12.0 GiB"),
])
def test_host_verdicts(changes, status, needle):
    r = host.judge_host(reading(**changes), min_free_disk_gib=50.0)
    assert r.status == status and needle in r.detail
    assert (r.fix != "") == (status != Status.PASS)


def test_host_reads_this_machine(tmp_path):
    r = host.check_host(CheckContext(results_dir=tmp_path / "not" / "yet", min_free_disk_gib=0.0))
    assert r.data["disk_writable"] is True and r.data["disk_free_gib"] > 0 and r.data["shm_gib"] > 0


@pytest.mark.parametrize("env, netrc, required, status", [
    ({"WANDB_MODE": "offline"}, False, True, Status.PASS),
    ({"WANDB_MODE": "disabled"}, False, True, Status.PASS),
    ({"WANDB_API_KEY": "x" * 40}, False, True, Status.PASS),
    ({"WANDB_API_KEY": "short"}, False, True, Status.WARN),
    ({}, True, True, Status.PASS),
    ({}, False, True, Status.FAIL),
    ({}, False, False, Status.WARN),
    ({"WANDB_MODE": "online"}, False, True, Status.FAIL),
])
def test_wandb_verdicts(env, netrc, required, status):
    r = host.judge_wandb(env, netrc, required)
    assert r.status == status
    if "WANDB_API_KEY" in env:
        assert env["WANDB_API_KEY"] not in json.dumps(r.to_json())


def test_check_result_json_round_trip():
    r = CheckResult("x", Status.WARN, "d", "f", {"a": 1}, "fix")
    assert r.to_json() == {"name": "x", "status": "WARN", "detail": "d", "fix": "f", "data": {"a": 1},
                           "fix_id": "fix", "node": None}


def test_bad_override_is_the_training_config_fail_not_a_usage_error():
    import subprocess
    import sys
    from pathlib import Path
    cfg = Path(__file__).parent / "fixtures/nemo_rl/grpo_workplace_assistant_nemotron_nano_v2_9b.yaml"
    p = subprocess.run([sys.executable, "-m", "ops.cli", "preflight", "--json", "--trainer", "nemo-rl",
                        "--config", str(cfg), "--only", "training_config", "--", "policy.no_such=1"],
                       capture_output=True, text=True)
    assert p.returncode == 1, p.stderr
    assert "++policy.no_such=1" in p.stdout
