"""Table-driven tests of ops.classify over hand-built evidence (real PyTorch / Ray / vLLM texts)."""

import pytest

from ops.backends.base import Exit
from ops.classify import Evidence, classify, parse_oom_numbers, phase_of
from training.spec import Signature

TORCH_OOM = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
    "79.19 GiB of which 1.06 GiB is free. Process 4242 has 10.00 GiB memory in use. Including non-PyTorch "
    "memory, this process has 68.12 GiB memory in use. Of the allocated memory 65.03 GiB is allocated by "
    "PyTorch, and 2.47 GiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large "
    "try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation "
    "for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")
OLD_TORCH_OOM = ("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 1; 15.78 GiB total capacity; "
                 "14.56 GiB already allocated; 3.44 MiB free; 14.70 GiB reserved in total by PyTorch)")
RAY_WRAPPED = [
    "ray.exceptions.RayTaskError(OutOfMemoryError): ray::DTensorPolicyWorkerV2.get_logprobs() "
    "(pid=1234, ip=10.0.0.1, repr=DTensorPolicyWorkerV2[rank=0])",
    "  File \"/opt/nemo_rl/models/policy/workers/dtensor_policy_worker_v2.py\", line 812, in get_logprobs",
    TORCH_OOM,
]
TB = ["Traceback (most recent call last):", '  File "x.py", line 3, in <module>', "    main()"]


def ev(lines, code=1, sig=None, **kw):
    return Evidence(lines=tuple(lines), exit=Exit(code, sig), **kw)


CASES = [
    # (name, evidence, kind, family, deterministic)
    ("torch oom", ev(["▶ Training policy...", *TB, TORCH_OOM]), "cuda_oom", "oom", False),
    ("old torch oom", ev([*TB, OLD_TORCH_OOM]), "cuda_oom", "oom", False),
    ("ray wrapped oom", ev(["▶ Computing logprobs...", *TB, *RAY_WRAPPED,
                            "ray.exceptions.ActorDiedError: The actor died unexpectedly"]), "cuda_oom", "oom", False),
    ("accelerator error", ev(["(MegatronPolicyWorker pid=35477) torch.AcceleratorError: CUDA error: out of memory"]),
     "cuda_oom", "oom", False),
    ("vllm cumem", ev(["CUDA Error: out of memory at csrc/cumem_allocator.cpp:119"]), "vllm_oom", "oom", False),
    ("vllm cache blocks", ev(["ValueError: No available memory for the cache blocks. Try increasing "
                              "`gpu_memory_utilization` when initializing the engine."]), "vllm_oom", "oom", False),
    ("vllm free on startup", ev(["ValueError: Free memory on device (59.32/79.15 GiB) on startup is less than "
                                 "desired GPU memory utilization (0.9, 71.24 GiB)."]), "gpu_busy", "oom", False),
    ("cpu alloc", ev([*TB, "RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
                      "allocate memory: you tried to allocate 1073741824 bytes. Error code 12"]), "cpu_oom", "oom", False),
    ("sigkill no traceback", ev(["========================= Step 2/5 ========================="], None, 9),
     "host_oom", "oom", False),
    ("exit 137", ev(["hello"], 137), "host_oom", "oom", False),
    ("cgroup counter", ev([*TB, "KeyboardInterrupt"], None, 9, oom_kills=1, memory_limit_mib=512.0),
     "host_oom", "oom", False),
    ("hydra override", ev(["OverridesError: Failed to parse Hydra overrides: Could not override 'grpo.foo'. "
                           "No match in config."]), "config", "config", True),
    ("file not found", ev([*TB, "FileNotFoundError: [Errno 2] No such file or directory: 'cfg.yaml'"]),
     "missing_file", "config", True),
    ("module missing", ev([*TB, "ModuleNotFoundError: No module named 'vllm'"]), "import_error", "config", True),
    ("assert at startup", ev([*TB, "AssertionError: num_prompts must be positive"]), "config", "config", True),
    ("assert mid run", ev(["========================= Step 3/5 =========================", "▶ Training policy...",
                           *TB, "AssertionError: nan loss"]), "crash", "crash", False),
    ("port", ev([*TB, "OSError: [Errno 98] error while attempting to bind on address: address already in use"]),
     "port_in_use", "crash", False),
    ("plain crash", ev(["========================= Step 3/5 =========================", *TB,
                        "RuntimeError: injected crash at step 3"]), "crash", "crash", False),
    ("hang clock", Evidence(lines=("▶ Generating responses...",), exit=None, hung=True, hang_detail="no new step"),
     "hang", "hang", False),
    ("generation timeout", ev(["GenerationUnavailable: generation shard 0 (worker 0) did not return within 900.0s."]),
     "hang", "hang", False),
    ("segfault", ev(["========================= Step 3/5 ========================="], None, 11), "killed", "crash",
     False),
]


@pytest.mark.parametrize("name,evidence,kind,family,deterministic", CASES, ids=[c[0] for c in CASES])
def test_classify_table(name, evidence, kind, family, deterministic):
    f = classify(evidence)
    assert f is not None
    assert (f.kind, f.family, f.deterministic) == (kind, family, deterministic), f
    assert f.summary


def test_success_is_none():
    assert classify(ev(["done"], 0)) is None


def test_torch_oom_numbers():
    n = parse_oom_numbers(TORCH_OOM)
    assert n["tried_mib"] == 2048.0
    assert n["total_mib"] == pytest.approx(79.19 * 1024, rel=1e-4)
    assert n["free_mib"] == pytest.approx(1.06 * 1024, rel=1e-4)
    assert n["process_mib"] == pytest.approx(68.12 * 1024, rel=1e-4)
    assert n["allocated_mib"] == pytest.approx(65.03 * 1024, rel=1e-4)
    assert n["reserved_unallocated_mib"] == pytest.approx(2.47 * 1024, rel=1e-4)
    assert n["other_processes_mib"] == pytest.approx(10240.0)
    assert n["gpu"] == 0


def test_old_oom_numbers_and_wrapped_phase():
    n = parse_oom_numbers(OLD_TORCH_OOM)
    assert n["tried_mib"] == 20.0 and n["free_mib"] == pytest.approx(3.44) and n["gpu"] == 1
    f = classify(ev(["▶ Computing logprobs...", *TB, *RAY_WRAPPED]))
    assert f.phase == "logprob" and f.numbers["tried_mib"] == 2048.0
    assert any("RayTaskError" in ln for ln in f.evidence_lines)


def test_spec_signature_wins_over_generic():
    sig = Signature("vllm_oom", r"MyFramework: generation ran out of memory")
    lines = [*TB, "MyFramework: generation ran out of memory", TORCH_OOM]
    assert classify(ev(lines), [sig]).kind == "vllm_oom"
    assert classify(ev(lines)).kind == "cuda_oom"


def test_spec_deterministic_signature_unknown_kind():
    f = classify(ev(["RuntimeError: TORCH_CUDA_ARCH_LIST is not set"]),
                 [Signature("arch_list", r"TORCH_CUDA_ARCH_LIST is not set", deterministic=True)])
    assert f.kind == "arch_list" and f.family == "config"


@pytest.mark.parametrize("lines,phase", [
    ([], None),
    (["Loaded configuration from: x"], "startup"),
    (["========================= Step 1/3 =========================", "▶ Generating responses for batch"],
     "generation"),
    (["▶ Generating responses", "▶ Computing logprobs..."], "logprob"),
    (["▶ Computing logprobs...", "▶ Training policy...", "some noise"], "training"),
])
def test_phase_of(lines, phase):
    assert phase_of(lines) == phase
