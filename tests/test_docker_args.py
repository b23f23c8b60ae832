"""The Docker backend's pure part (ops.backends.docker_args): argv, environment, mounts, GPU requests,
names and Docker's exit verdicts, table-driven."""

from pathlib import Path

import pytest

from ops.backends import docker_args as da


@pytest.mark.parametrize("argv0,want", [
    ("/work/main/.venv/bin/python", "python"), ("/usr/bin/python3", "python"), ("python3.11", "python"),
    ("/bin/sh", "/bin/sh"), ("uv", "uv"), ("/opt/pythonista", "/opt/pythonista"),
])
def test_host_python_becomes_the_images(argv0, want):
    assert da.container_argv([argv0, "-m", "training.grpo"]) == [want, "-m", "training.grpo"]


def test_environment_passes_what_the_run_set_and_the_stack_reads_never_host_paths():
    host = {"PATH": "/host/bin", "HOME": "/root", "LS_COLORS": "x", "HF_TOKEN": "hf_abc", "NCCL_DEBUG": "INFO",
            "VIRTUAL_ENV": "/work/.venv", "CUDA_VISIBLE_DEVICES": "1", "MY_TOOL": "1", "OMP_NUM_THREADS": "4"}
    launch = {**host, "GRPO_OPS_RUN_ID": "d/e_001", "GRPO_OPS_ATTEMPT": "2", "NRL_FORCE_REBUILD_VENVS": "true",
              "PATH": "/changed/by/spec", "PYTHONPATH": "/work/main"}
    env = da.container_env(launch, host, passthrough=("MY_TOOL",))
    assert env == {"HF_TOKEN": "hf_abc", "NCCL_DEBUG": "INFO", "GRPO_OPS_RUN_ID": "d/e_001", "GRPO_OPS_ATTEMPT": "2",
                   "NRL_FORCE_REBUILD_VENVS": "true", "PYTHONPATH": "/work/main", "MY_TOOL": "1",
                   "OMP_NUM_THREADS": "4"}


@pytest.mark.parametrize("gpus,env,has_gpu,want", [
    ("auto", {}, False, None),
    ("auto", {}, True, {"count": -1, "capabilities": [["gpu"]]}),
    ("all", {}, False, {"count": -1, "capabilities": [["gpu"]]}),
    ("none", {}, True, None),
    ("2", {}, True, {"count": 2, "capabilities": [["gpu"]]}),
    ("auto", {"CUDA_VISIBLE_DEVICES": "2, 3"}, True, {"device_ids": ["2", "3"], "capabilities": [["gpu"]]}),
])
def test_gpu_request(gpus, env, has_gpu, want):
    assert da.gpu_request(gpus, env, has_gpu) == want


def test_mounts_same_paths_nested_once_config_read_only(tmp_path):
    repo, hf, cfgdir = tmp_path / "repo", tmp_path / "hf", tmp_path / "cfgs"
    for d in (repo / "results" / "e", hf, cfgdir):
        d.mkdir(parents=True)
    (cfgdir / "a.yaml").write_text("x: 1\n")
    argv = ["python", "-m", "training.grpo", f"--config={cfgdir / 'a.yaml'}", "++x=/not/there", str(repo / "y")]
    vols = da.mounts(repo, repo / "results" / "e", argv, hf, ["/data:/mnt/data:ro"], Path.exists)
    assert vols == {str(repo): {"bind": str(repo), "mode": "rw"}, str(hf): {"bind": str(hf), "mode": "rw"},
                    str(cfgdir): {"bind": str(cfgdir), "mode": "ro"}, "/data": {"bind": "/mnt/data", "mode": "ro"}}
    assert da.mounts(Path("/"), tmp_path, ["sh"], tmp_path / "nohf", [], Path.exists) == \
        {str(tmp_path): {"bind": str(tmp_path), "mode": "rw"}}
    with pytest.raises(ValueError, match="host:container"):
        da.mounts(repo, repo, ["sh"], hf, ["/only-host"], Path.exists)


def test_hf_cache_dir_order():
    assert da.hf_cache_dir({"HF_HOME": "/h", "HF_HUB_CACHE": "/c/hub"}, None) == Path("/h")
    assert da.hf_cache_dir({"HF_HUB_CACHE": "/c/hub"}, None) == Path("/c")
    assert da.hf_cache_dir({"HOME": "/u"}, None) == Path("/u/.cache/huggingface")
    assert da.hf_cache_dir({"HF_HOME": "/h"}, Path("/given")) == Path("/given")


@pytest.mark.parametrize("state,code,sig,oom", [
    ({"ExitCode": 0}, 0, None, False),
    ({"ExitCode": 3}, 3, None, False),
    ({"ExitCode": 137, "OOMKilled": True}, None, 9, True),
    ({"ExitCode": 137, "OOMKilled": False}, None, 9, False),
    ({"ExitCode": 143}, None, 15, False),
    ({"ExitCode": 255}, 255, None, False),
    ({"ExitCode": 127, "Error": "exec: not found"}, 127, None, False),
])
def test_exit_from_state(state, code, sig, oom):
    e = da.exit_from_state(state, "c1")
    assert (e.code, e.signal, e.oom_killed) == (code, sig, oom)
    assert e.detail.startswith(f"container c1 exit code {state['ExitCode']}")
    assert ("OOMKilled" in e.detail) == oom and ("exec: not found" in e.detail) == ("Error" in state)


def test_labels_and_names():
    lab = da.labels("20261125/embedded/x_001", "3", {"team": "rl"})
    assert lab == {"team": "rl", "grpo-ops.run": "20261125/embedded/x_001", "grpo-ops.attempt": "3",
                   "grpo-ops.backend": "docker"}
    assert da.container_name("20261125/embedded/x_001", "3", "ab12cd") == "grpo-ops-20261125-embedded-x_001-a3-ab12cd"


@pytest.mark.parametrize("kw,msg", [
    (dict(image=""), "image must be given"), (dict(image="i", memory_limit_mib=8), "at least 16 MiB"),
    (dict(image="i", gpus="many"), "auto, all, none or a count"), (dict(image="i", shm_size="lots"), "16g"),
])
def test_options_name_the_bad_value(kw, msg):
    with pytest.raises(ValueError, match=msg):
        da.DockerOptions(**kw).validate()


def test_create_args_for_a_gpu_training_container(tmp_path):
    """What DockerBackend asks the engine for, on a GPU host's settings (no engine, no GPU needed)."""
    from ops.backends.docker import DockerBackend
    from training.spec import Launch
    b = DockerBackend("nvcr.io/nvidia/nemo-rl:v0.4.0", memory_limit_mib=512, gpus="all", shm_size="16g",
                      hf_cache=tmp_path, client=object(), check_image=False, host_env={"PATH": "/usr/bin"})
    run = tmp_path / "results" / "e"
    run.mkdir(parents=True)
    launch = Launch(("/work/.venv/bin/python", "-m", "training.grpo"),
                    {"PATH": "/usr/bin", "GRPO_OPS_RUN_ID": "e", "GRPO_OPS_ATTEMPT": "2", "WANDB_API_KEY": "k",
                     "CUDA_VISIBLE_DEVICES": "0,1"}, run, {"exp": "e", "attempt": "2"})
    a = b.create_args(launch, run / "output.log")
    assert a["entrypoint"] == ["python"] and a["command"] == ["-m", "training.grpo"]
    assert a["device_requests"][0]["DeviceIDs"] == ["0", "1"] and a["device_requests"][0]["Capabilities"] == [["gpu"]]
    assert "ipc_mode" not in a and a["shm_size"] == "16g"
    assert a["mem_limit"] == a["memswap_limit"] == "512m" and a["init"] is True and a["network_mode"] == "host"
    assert {(u["Name"], u["Soft"], u["Hard"]) for u in a["ulimits"]} == {("memlock", -1, -1),
                                                                         ("stack", 64 << 20, 64 << 20)}
    assert a["environment"] == {"GRPO_OPS_RUN_ID": "e", "GRPO_OPS_ATTEMPT": "2", "WANDB_API_KEY": "k",
                                "HF_HOME": str(tmp_path)}
    assert a["labels"]["grpo-ops.run"] == "e" and a["labels"]["grpo-ops.attempt"] == "2"
    assert a["working_dir"] == str(run) and a["name"].startswith("grpo-ops-e-a2-")
    assert "k" not in " ".join(a["command"]) and all("WANDB" not in x for x in a["entrypoint"])
