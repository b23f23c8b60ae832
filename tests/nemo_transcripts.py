"""Realistic NeMo RL driver transcripts for `ops diagnose` tests: the start-up lines, the config dump, Ray's
`(Worker pid=...)` prefixes, interleaved worker output, stage lines, results blocks and memory-tracker blocks,
ending in each failure text quoted in reference/nemo_rl.md section 5. Pure (builds strings).
"""

from __future__ import annotations

from dataclasses import dataclass

MEGATRON = "(MegatronPolicyWorker pid=35477)"
MEGATRON_R3 = "(MegatronPolicyWorker[rank=3] pid=35480)"
VLLM = "(VllmAsyncGenerationWorker pid=36012)"
RAYLET = "(raylet)"


def prelude() -> list[str]:
    """From the launch to SETUP COMPLETE: includes the full-config dump, which names every key."""
    return [
        "Loaded configuration from: examples/nemo_gym/grpo_workplace_assistant_nemotron_nano_v2_9b.yaml",
        "Overrides: ['++logger.log_dir=/r/results/exp', '++grpo.max_num_steps=3']",
        "📊 Using log directory: /r/results/exp/exp_001",
        "📊 Using checkpoint directory: /r/results/exp",
        "Final config:",
        "{'checkpointing': {'checkpoint_dir': '/r/results/exp', 'checkpoint_must_save_by': None,",
        "                   'metric_name': 'val:accuracy', 'save_period': 6},",
        " 'grpo': {'max_val_samples': None, 'num_prompts_per_step': 64, 'val_period': 10},",
        " 'policy': {'generation': {'vllm_cfg': {'gpu_memory_utilization': 0.8, 'tensor_parallel_size': 1,",
        "            'tool_parser_plugin': '/hf/hub/.../nemotron_toolcall_parser_no_streaming.py'}},",
        "            'megatron_cfg': {'tensor_model_parallel_size': 2, 'activation_checkpointing': True}}}",
        "2026-11-25 01:02:03,456\tINFO worker.py:1888 -- Started a local Ray instance.",
        f"{VLLM} INFO 11-25 01:02:30 [model_runner.py:1203] Loading model weights took 16.63 GiB",
        f"{MEGATRON} Converting HF checkpoint to Megatron format... [repeated 7x across cluster]",
        "  ✓ Reserved 8 vLLM server URLs: ['http://10.0.0.2:41233/v1', ...]",
        f"{VLLM} Reserved port 41233 on IP 10.0.0.2 for vLLM HTTP server",
        "Waiting for head server to spin up",
        "All 3 / 3 servers ready! Polling every 60s",
        "RL INIT TIMING BREAKDOWN",
        "SETUP COMPLETE",
        "🚀 Running synchronous GRPO training",
    ]


def memory_block(stage: str, before: float, after: float) -> list[str]:
    return [f"💭 Driver CPU memory tracker for {stage}:",
            f"- Mem usage before                  {before:>7.2f} GB",
            f"- Mem usage after                   {after:>7.2f} GB",
            f"- Mem usage diff (after - before)   {after - before:>+7.2f} GB",
            "- New variables: ['repeated_batch']", "", "⚡️ Ray memory snapshot:", "<skipped>"]


def step(n: int, total: int = 3, reward: float = 0.31, rss: float = 10.0) -> list[str]:
    return [
        "", f"========================= Step {n}/{total} =========================",
        "▶ Preparing batch...",
        "▶ Generating responses for batch of size 1024...",
        f"{VLLM} INFO 11-25 01:10:02 [loggers.py:116] Avg prompt throughput: 5120.3 tokens/s",
        *memory_block("Generation", rss - 0.4, rss),
        "▶ Processing rewards...,", "▶ Computing advantages...", "▶ Computing logprobs...",
        f"{MEGATRON} [Rank 0] logprob microbatch 12/128",
        "▶ Preparing for training...", "▶ Training policy...",
        f"{MEGATRON_R3} [Rank 3] train microbatch 64/256 loss=0.0123",
        "📊 Training Results:", "  • Loss: 0.0120", "  • Generation KL Error: 0.0011",
        f"  • Avg Reward: {reward:.4f}", "  • Mean Generation Length: 412.5000",
        "⏱️  Timing:", "  • Total step time: 412.10s", "  • generation: 250.00s (60.7%)", "🔍 Performance Metrics:",
    ]


def raise_in(prefix: str, header: str, body: list[str], final: str) -> list[str]:
    """A Ray-forwarded traceback: every line carries the worker's prefix, interleaved with another worker."""
    lines = [f"{prefix} Traceback (most recent call last):"]
    for i, b in enumerate(body):
        lines.append(f"{prefix}   {b}")
        if i == 0:
            lines.append(f"{VLLM} INFO 11-25 01:12:00 [engine.py:310] Added request chatcmpl-5f1.")
    lines.append(f"{prefix} {final}")
    return [header, *lines] if header else lines


def driver_raise(final: str, where: str = "nemo_rl/algorithms/grpo.py") -> list[str]:
    return ["Traceback (most recent call last):", '  File "examples/nemo_gym/run_grpo_nemo_gym.py", line 312, '
            "in <module>", "    main()", f'  File "{where}", line 1402, in grpo_train', final]


@dataclass(frozen=True)
class Case:
    name: str
    lines: tuple[str, ...]
    kind: str
    deterministic: bool = False
    phase: str | None = None


def _case(name, body, kind, deterministic=False, phase=None, steps=1) -> Case:
    lines = prelude()
    for n in range(1, steps + 1):
        lines += step(n)
    return Case(name, tuple(lines + body), kind, deterministic, phase)


def _startup(name, body, kind, deterministic=False) -> Case:
    return Case(name, tuple(prelude()[:13] + body), kind, deterministic, "startup")


CASES: tuple[Case, ...] = (
    _case("ray_wrapped_training_oom", [
        "", "========================= Step 2/3 =========================", "▶ Preparing batch...",
        "▶ Generating responses for batch of size 1024...", "▶ Processing rewards...,", "▶ Computing logprobs...",
        "▶ Preparing for training...", "▶ Training policy...",
        *raise_in(MEGATRON, "", ['File "megatron_policy_worker.py", line 801, in train', "loss.backward()"],
                  "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                  "capacity of 79.11 GiB of which 1.02 GiB is free. Including non-PyTorch memory, this process has "
                  "78.07 GiB memory in use. Of the allocated memory 70.50 GiB is allocated by PyTorch, and 5.12 GiB "
                  "is reserved by PyTorch but unallocated."),
        *driver_raise("ray.exceptions.RayTaskError(OutOfMemoryError): ray::MegatronPolicyWorker.train() "
                      "(pid=35477, ip=10.0.0.2, actor_id=9f8e, repr=MegatronPolicyWorker[rank=0])"),
    ], "cuda_oom", phase="training"),
    _case("ray_wrapped_logprob_oom_dtensor", [
        "▶ Preparing batch...", "▶ Generating responses for batch of size 1024...", "▶ Computing logprobs...",
        *driver_raise("ray.exceptions.RayTaskError(OutOfMemoryError): ray::DTensorPolicyWorkerV2.get_logprobs() "
                      "(pid=40211, ip=10.0.0.2, repr=DTensorPolicyWorkerV2[rank=0])"),
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 15.62 GiB. GPU 0 has a total capacity of "
        "79.11 GiB of which 9.80 GiB is free.",
    ], "cuda_oom", phase="logprob"),
    _startup("megatron_init_accelerator_oom", [
        f"{MEGATRON} Converting HF checkpoint to Megatron format...",
        *raise_in(MEGATRON, "", ['File "megatron/bridge/models/conversion.py", line 220, in load_hf_weights'],
                  "torch.AcceleratorError: CUDA error: out of memory"),
        f"{MEGATRON} CUDA kernel errors might be asynchronously reported at some other API call",
    ], "cuda_oom"),
    _case("vllm_cumem_wakeup_oom", [
        "", "========================= Step 2/3 =========================", "▶ Preparing batch...",
        "▶ Generating responses for batch of size 1024...",
        f"{VLLM} CUDA Error: out of memory at csrc/cumem_allocator.cpp:62",
        *driver_raise("ray.exceptions.RayTaskError(RuntimeError): ray::VllmAsyncGenerationWorker.wake_up() "
                      "(pid=36012, ip=10.0.0.2)"),
    ], "vllm_oom", phase="generation"),
    _startup("vllm_no_cache_blocks", [
        *raise_in(VLLM, "", ['File "vllm/v1/core/kv_cache_utils.py", line 640, in check_enough_kv_cache_memory'],
                  "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
                  "when initializing the engine."),
    ], "vllm_oom"),
    _startup("vllm_free_memory_below_utilization", [
        *raise_in(VLLM, "", ['File "vllm/worker/worker.py", line 165, in init_device'],
                  "ValueError: Free memory on device (59.32/79.15 GiB) on startup is less than desired GPU memory "
                  "utilization (0.9, 71.24 GiB). Decrease GPU memory utilization or reduce GPU memory used by other "
                  "processes."),
    ], "gpu_busy"),
    _startup("expandable_segments_vs_vllm_pool", [
        *raise_in(VLLM, "", ['File "vllm/device_allocator/cumem.py", line 204, in use_memory_pool'],
                  "AssertionError: Expandable segments are not compatible with memory pool. Please track "
                  "https://github.com/pytorch/pytorch/issues/147851 for the latest updates."),
    ], "config", deterministic=True),
    _case("generation_timeout", [
        "", "========================= Step 2/3 =========================", "▶ Preparing batch...",
        "▶ Generating responses for batch of size 1024...",
        *driver_raise("nemo_rl.models.generation.vllm.vllm_generation.GenerationUnavailable: generation shard 3 "
                      "(worker 3) did not return within 900.0s. If generation is legitimately slow, export "
                      "NRL_VLLM_ASYNC_TIMEOUT_SECONDS=1800"),
    ], "hang", phase="generation"),
    _case("generation_shard_actor_died", [
        "▶ Generating responses for batch of size 1024...",
        *driver_raise("nemo_rl.models.generation.vllm.vllm_generation.GenerationUnavailable: generation shard 1 "
                      "(worker 1) is unavailable: ActorDiedError: The actor died unexpectedly before finishing "
                      "this task."),
    ], "actor_died", phase="generation"),
    _case("ray_actor_died_generic", [
        "▶ Training policy...",
        *driver_raise("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task."),
        "\tclass_name: MegatronPolicyWorker", "\tactor_id: 5d3c", "\tpid: 35480",
        "Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection error code "
        "2. End of file. There are some potential root causes. (1) The process is killed by SIGKILL by OOM killer "
        "due to high memory usage. (2) ray stop --force is called. (3) The worker is crashed unexpectedly due to "
        "SIGSEGV or other unexpected errors.",
    ], "actor_died", phase="training"),
    _startup("port_in_use", [
        "Waiting for head server to spin up",
        "ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', 5123): address already in use",
        *driver_raise("RuntimeError: Process finished unexpectedly!", where="nemo_gym/cli/env.py"),
    ], "port_in_use"),
    _startup("gym_actor_without_servers", [
        *driver_raise("RuntimeError: NeMo-Gym actor has no running servers: _spinup() was never called on this "
                      "instance (the actor was likely restarted by Ray)", where="nemo_rl/environments/nemo_gym.py"),
    ], "gym_server_died"),
    _startup("raylet_venv_missing_ray", [
        f"{RAYLET} ModuleNotFoundError: No module named 'ray'",
        f"{RAYLET} ModuleNotFoundError: No module named 'ray' [repeated 15x across cluster]",
        f"{RAYLET} [2026-11-25 01:05:00,000 E 4411 4411] (raylet) worker_pool.cc:581: Some workers of the worker "
        "process(4512) have not registered within the timeout. The process is still alive, probably it's hanging "
        "during start.",
    ], "venv_broken"),
    _startup("uv_rate_limit", [
        f"{RAYLET} Installing nemo_rl.models.policy.workers.megatron_policy_worker.MegatronPolicyWorker venv",
        "  × Failed to download `torch==2.9.0`",
        "  ├─▶ Failed to fetch: `https://pypi.org/simple/torch/`",
        "  ╰─▶ HTTP status client error (429 Too Many Requests) for url (https://pypi.org/simple/torch/)",
        *driver_raise("subprocess.CalledProcessError: Command '['uv', 'pip', 'install', ...]' returned non-zero "
                      "exit status 2.", where="nemo_rl/utils/venvs.py"),
    ], "uv_rate_limit"),
    _startup("hf_rate_limit", [
        *driver_raise("huggingface_hub.errors.HfHubHTTPError: 429 Client Error: Too Many Requests for url: "
                      "https://huggingface.co/api/models/nvidia/NVIDIA-Nemotron-Nano-9B-v2/revision/main",
                      where="transformers/utils/hub.py"),
    ], "hf_rate_limit"),
    Case("hydra_override_error", (
        "Loaded configuration from: examples/nemo_gym/grpo_workplace_assistant_nemotron_nano_v2_9b.yaml",
        "Overrides: ['policy.generation.vllm_cfg.tool_parser_plugin=/x.py']",
        *driver_raise("nemo_rl.utils.config.OverridesError: Failed to parse Hydra overrides: Could not override "
                      "'policy.generation.vllm_cfg.tool_parser_plugin'.", where="nemo_rl/utils/config.py"),
        "No match in config.", "To append to your config use +policy.generation.vllm_cfg.tool_parser_plugin=/x.py",
    ), "config", True, "startup"),
    _startup("megatron_heads_not_divisible", [
        *raise_in(MEGATRON, "", ['File "megatron/core/transformer/transformer_config.py", line 512, in __post_init__'],
                  "ValueError: num_attention_heads (40) must be a multiple of tensor_model_parallel_size (3)."),
    ], "config", deterministic=True),
    _startup("world_size_not_divisible", [
        *driver_raise("AssertionError: World size (8) must be divisible by PP * CP * TP (3). Please adjust the "
                      "parallelism configuration.", where="nemo_rl/models/policy/lm_policy.py"),
    ], "config", deterministic=True),
    _startup("tp4_batch_variant", [
        *driver_raise("AssertionError: There is a known batch-variant accuracy issue with TP>=4 when "
                      "train_micro_batch_size != logprob_batch_size. Set NRL_IGNORE_TP_ACCURACY_CHECK=1 to bypass.",
                      where="nemo_rl/models/policy/lm_policy.py"),
    ], "config", deterministic=True),
    _case("batch_not_multiple_of_shards", [
        "▶ Training policy...",
        *driver_raise("AssertionError: Batch size (1000) is not a multiple of shards (8)",
                      where="nemo_rl/distributed/batched_data_dict.py"),
    ], "config", deterministic=True, phase="training"),
    _startup("torch_cuda_arch_list_missing", [
        *driver_raise("RuntimeError: TORCH_CUDA_ARCH_LIST is not set. Please set it to the compute capability of "
                      "your GPUs, e.g. export TORCH_CUDA_ARCH_LIST='9.0'", where="nemo_rl/models/policy/lm_policy.py"),
    ], "config", deterministic=True),
    _case("refit_failed", [
        "▶ Generating responses for batch of size 1024...",
        f"{VLLM} NCCL WARN Cuda failure 'invalid argument'",
        *driver_raise("RuntimeError: ❌ Error: Updating weights for the generation policy failed during refit."),
    ], "refit_failed", phase="generation"),
)

CLEAN = Case("clean_run", tuple(prelude() + step(1) + step(2) + step(3) + [
    "Max number of steps has been reached, stopping training early", "🛑 Shutting down environment nemo_gym..."]),
    "none")


def growing_memory(steps: int = 5, start: float = 10.0, per_step: float = 1.5) -> list[str]:
    lines = prelude()
    for n in range(1, steps + 1):
        lines += step(n, total=steps, rss=start + per_step * (n - 1))
    return lines
