"""The effective plan of a resolved NeMo RL config, and the constraints NeMo RL enforces on it. Pure; no I/O.

`effective_plan(cfg)` derives what NeMo RL will actually run (world size, TP/PP/CP, DP, batches, vLLM share)
from the resolved config; `violations(cfg, gpus, arch, env)` lists every constraint NeMo RL (or Megatron-Core,
or vLLM) would raise on, as one readable line each, with the code that raises it named in the text
(reference/nemo_rl.md section 1). The remedy planner calls `violations` on every candidate plan, so a remedy
never produces a config NeMo RL would reject.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from training.spec import cfg_get


get = cfg_get   # dotted lookup in the resolved config


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def is_dtensor(cfg: Mapping[str, Any]) -> bool:
    return bool(get(cfg, "policy.dtensor_cfg.enabled")) and not bool(get(cfg, "policy.megatron_cfg.enabled"))


def tp_key(cfg: Mapping[str, Any]) -> str:
    """The training tensor-parallel key of the backend that is on (Megatron unless only DTensor is)."""
    return "policy.dtensor_cfg.tensor_parallel_size" if is_dtensor(cfg) else \
        "policy.megatron_cfg.tensor_model_parallel_size"


@dataclass(frozen=True)
class EffectivePlan:
    backend: str                      # "megatron" | "dtensor"
    gpus_per_node: int
    num_nodes: int
    world_size: int                   # training GPUs (all of them when generation is colocated)
    tp: int
    pp: int
    cp: int
    dp: int | None                    # None when world is not divisible by TP*PP*CP
    prompts_per_step: int
    generations_per_prompt: int
    generated_batch: int              # prompts x generations: samples per GRPO step
    train_global_batch: int
    optimizer_steps_per_grpo_step: int | None
    train_micro_batch: int
    logprob_batch: int
    colocated: bool
    generation_gpus: int
    vllm_tp: int
    vllm_pp: int
    vllm_engines: int | None
    vllm_gpu_memory_utilization: float | None
    max_total_sequence_length: int | None
    activation_checkpointing: bool | None
    optimizer_cpu_offload: bool | None
    max_num_steps: int | None

    def to_json(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        dp = self.dp if self.dp is not None else "n/a"
        return [
            f"world {self.world_size} GPUs ({self.num_nodes} node x {self.gpus_per_node}), {self.backend}: "
            f"TP {self.tp} x PP {self.pp} x CP {self.cp} -> DP {dp}",
            f"batch: {self.prompts_per_step} prompts x {self.generations_per_prompt} generations = "
            f"{self.generated_batch} samples/step; global batch {self.train_global_batch} "
            f"({self.optimizer_steps_per_grpo_step or 'n/a'} optimizer step(s)/step); micro {self.train_micro_batch}, "
            f"logprob {self.logprob_batch}",
            f"generation: vLLM TP {self.vllm_tp} x PP {self.vllm_pp} on {self.generation_gpus} GPUs "
            f"({self.vllm_engines or 'n/a'} engines), gpu_memory_utilization {self.vllm_gpu_memory_utilization}, "
            f"{'colocated' if self.colocated else 'dedicated GPUs'}",
            f"sequence length {self.max_total_sequence_length}; activation checkpointing "
            f"{self.activation_checkpointing}; optimizer CPU offload {self.optimizer_cpu_offload}",
        ]


def _generation_gpus(cfg: Mapping[str, Any], total: int) -> int:
    if get(cfg, "policy.generation.colocated.enabled", True):
        return total
    res = get(cfg, "policy.generation.colocated.resources", {}) or {}
    nodes = _int(get(cfg, "cluster.num_nodes"), 1)
    if nodes == 1:
        return _int(res.get("gpus_per_node"), 0)
    return _int(res.get("num_nodes"), 0) * _int(get(cfg, "cluster.gpus_per_node"), 0)


def effective_plan(cfg: Mapping[str, Any], gpus: int | None = None) -> EffectivePlan:
    """What NeMo RL runs for `cfg`. `gpus` (visible on this node) replaces cluster.gpus_per_node when given."""
    per_node = _int(gpus if gpus is not None else get(cfg, "cluster.gpus_per_node"), 1)
    nodes = _int(get(cfg, "cluster.num_nodes"), 1)
    total = per_node * nodes
    gen_gpus = _generation_gpus(cfg, total)
    colocated = bool(get(cfg, "policy.generation.colocated.enabled", True))
    world = total if colocated else max(total - gen_gpus, 0)
    dtensor = is_dtensor(cfg)
    base = "policy.dtensor_cfg" if dtensor else "policy.megatron_cfg"
    tp = _int(get(cfg, tp_key(cfg)), 1)
    pp = 1 if dtensor else _int(get(cfg, f"{base}.pipeline_model_parallel_size"), 1)
    cp = _int(get(cfg, f"{base}.context_parallel_size"), 1)
    model_par = tp * pp * cp
    dp = world // model_par if model_par and world and world % model_par == 0 else None
    prompts = _int(get(cfg, "grpo.num_prompts_per_step"), 0)
    gens = _int(get(cfg, "grpo.num_generations_per_prompt"), 0)
    gbs = _int(get(cfg, "policy.train_global_batch_size"), 0)
    vtp = _int(get(cfg, "policy.generation.vllm_cfg.tensor_parallel_size"), 1)
    vpp = _int(get(cfg, "policy.generation.vllm_cfg.pipeline_parallel_size"), 1)
    util = get(cfg, "policy.generation.vllm_cfg.gpu_memory_utilization")
    return EffectivePlan(
        backend="dtensor" if dtensor else "megatron", gpus_per_node=per_node, num_nodes=nodes, world_size=world,
        tp=tp, pp=pp, cp=cp, dp=dp, prompts_per_step=prompts, generations_per_prompt=gens,
        generated_batch=prompts * gens, train_global_batch=gbs,
        optimizer_steps_per_grpo_step=(prompts * gens) // gbs if gbs and (prompts * gens) % gbs == 0 else None,
        train_micro_batch=_int(get(cfg, "policy.train_micro_batch_size"), 1),
        logprob_batch=_int(get(cfg, "policy.logprob_batch_size"), 1),
        colocated=colocated, generation_gpus=gen_gpus, vllm_tp=vtp, vllm_pp=vpp,
        vllm_engines=gen_gpus // (vtp * vpp) if vtp * vpp and gen_gpus % (vtp * vpp) == 0 else None,
        vllm_gpu_memory_utilization=float(util) if isinstance(util, (int, float)) else None,
        max_total_sequence_length=get(cfg, "policy.max_total_sequence_length"),
        activation_checkpointing=get(cfg, f"{base}.activation_checkpointing"),
        optimizer_cpu_offload=get(cfg, "policy.megatron_cfg.optimizer.optimizer_cpu_offload") if not dtensor
        else get(cfg, "policy.dtensor_cfg.cpu_offload"),
        max_num_steps=get(cfg, "grpo.max_num_steps"))


def violations(cfg: Mapping[str, Any], gpus: int | None = None, arch: Mapping[str, int] | None = None,
               env: Mapping[str, str] | None = None) -> list[str]:
    """Every constraint NeMo RL enforces that `cfg` breaks, one line each (what, why, where it is raised).

    `gpus`: GPUs visible on this node (None: trust cluster.gpus_per_node). `arch`: num_attention_heads /
    num_key_value_heads from the model's config.json (None: those checks are skipped, say unknown elsewhere).
    """
    env = env or {}
    out: list[str] = []
    mega, dten = bool(get(cfg, "policy.megatron_cfg.enabled")), bool(get(cfg, "policy.dtensor_cfg.enabled"))
    if mega and dten:
        out.append("policy.megatron_cfg.enabled and policy.dtensor_cfg.enabled are both true; NeMo RL needs "
                   "exactly one training backend (lm_policy.py ValueError)")
    elif not mega and not dten:
        out.append("neither policy.megatron_cfg.enabled nor policy.dtensor_cfg.enabled is true; enable one "
                   "(lm_policy.py ValueError)")
    asked = _int(get(cfg, "cluster.gpus_per_node"), 0)
    if gpus is not None and asked > gpus:
        out.append(f"cluster.gpus_per_node={asked} but only {gpus} GPU(s) are visible on this node; set "
                   f"cluster.gpus_per_node={gpus} (Ray would wait for GPUs that never come)")
    p = effective_plan(cfg)
    out += _parallel_violations(p, tp_key(cfg), arch or {}, env)
    out += _batch_violations(p, cfg)
    out += _generation_violations(p, cfg)
    metric = get(cfg, "checkpointing.metric_name")
    if isinstance(metric, str) and not metric.startswith(("val:", "train:")):
        out.append(f"checkpointing.metric_name {metric!r} must start with 'val:' or 'train:' (grpo.py)")
    if get(cfg, "env.should_use_nemo_gym"):
        out.extend(_gym_violations(cfg))
    return out


def _parallel_violations(p: EffectivePlan, key: str, arch: Mapping[str, int], env: Mapping[str, str]) -> list[str]:
    out = []
    model_par = p.tp * p.pp * p.cp
    if p.world_size < model_par:
        out.append(f"World size ({p.world_size}) is insufficient for the parallelism configuration: TP {p.tp} x "
                   f"PP {p.pp} x CP {p.cp} = {model_par} (lm_policy.py)")
    elif model_par and p.world_size % model_par:
        out.append(f"World size ({p.world_size}) must be divisible by PP * CP * TP ({model_par}): {key}={p.tp} "
                   f"does not divide {p.world_size} GPUs (lm_policy.py)")
    for name, label in (("num_attention_heads", "num_attention_heads"), ("num_key_value_heads", "num_query_groups")):
        n = arch.get(name)
        if isinstance(n, int) and p.tp and n % p.tp:
            out.append(f"{label} ({n}) must be a multiple of tensor_model_parallel_size ({p.tp}): {key}={p.tp} "
                       f"does not divide the model's {n} (Megatron-Core TransformerConfig)")
        if isinstance(n, int) and p.vllm_tp and n % p.vllm_tp:
            out.append(f"vLLM tensor_parallel_size {p.vllm_tp} does not divide the model's {name} ({n})")
    if p.tp >= 4 and p.train_micro_batch != p.logprob_batch and env.get("NRL_IGNORE_TP_ACCURACY_CHECK") != "1":
        out.append(f"TP {p.tp} >= 4 needs policy.train_micro_batch_size ({p.train_micro_batch}) == "
                   f"policy.logprob_batch_size ({p.logprob_batch}): known batch-variant accuracy issue (lm_policy.py)")
    return out


def _batch_violations(p: EffectivePlan, cfg: Mapping[str, Any]) -> list[str]:
    out = []
    if p.generated_batch and p.train_global_batch and p.generated_batch % p.train_global_batch:
        out.append(f"Total batch size ({p.generated_batch} = prompts x generations) is not a multiple of batch_size "
                   f"({p.train_global_batch} = policy.train_global_batch_size) (batched_data_dict.py)")
    if p.dp and p.train_global_batch % p.dp:
        out.append(f"Batch size ({p.train_global_batch}) is not a multiple of shards ({p.dp} data-parallel ranks) "
                   "(batched_data_dict.py)")
    dyn = bool(get(cfg, "policy.dynamic_batching.enabled"))
    if dyn and p.pp != 1:
        out.append(f"dynamic batching needs pipeline_model_parallel_size 1, not {p.pp} (lm_policy.py)")
    if dyn and get(cfg, "policy.sequence_packing.enabled"):
        out.append("policy.dynamic_batching and policy.sequence_packing are both enabled; pick one (lm_policy.py)")
    return out


def _generation_violations(p: EffectivePlan, cfg: Mapping[str, Any]) -> list[str]:
    out = []
    vmp = p.vllm_tp * p.vllm_pp
    if get(cfg, "policy.generation.backend") == "vllm" and vmp and p.generation_gpus % vmp:
        out.append(f"World size must be a multiple of model parallel size: vLLM TP {p.vllm_tp} x PP {p.vllm_pp} = "
                   f"{vmp} does not divide {p.generation_gpus} generation GPUs (vllm_generation.py)")
    if p.vllm_pp > 1 and not get(cfg, "policy.generation.vllm_cfg.async_engine"):
        out.append("vLLM pipeline_parallel_size > 1 needs policy.generation.vllm_cfg.async_engine=true")
    util = p.vllm_gpu_memory_utilization
    if util is not None and not 0.05 <= util <= 1.0:
        out.append(f"policy.generation.vllm_cfg.gpu_memory_utilization={util} is outside (0.05, 1.0]")
    if not p.colocated and p.num_nodes == 1 and p.generation_gpus <= 0:
        out.append("No enough GPUs for training: non-colocated generation on one node needs "
                   "policy.generation.colocated.resources.gpus_per_node > 0 (grpo.py)")
    return out


def _gym_violations(cfg: Mapping[str, Any]) -> list[str]:
    out = []
    for key in ("async_engine", "expose_http_server"):
        if get(cfg, f"policy.generation.vllm_cfg.{key}") is False:
            out.append(f"NeMo Gym needs policy.generation.vllm_cfg.{key}=true (nemo_gym.py should_use_nemo_gym)")
    if get(cfg, "grpo.max_val_samples") is not None:
        out.append("grpo.max_val_samples must be null with NeMo Gym (run_grpo_nemo_gym.py rejects it)")
    return out


def valid_tp(cfg: Mapping[str, Any], arch: Mapping[str, int] | None = None) -> list[int]:
    """Training TP values that keep world size, attention heads and KV groups divisible (PP, CP as set)."""
    p = effective_plan(cfg)
    heads = [n for n in ((arch or {}).get("num_attention_heads"), (arch or {}).get("num_key_value_heads"))
             if isinstance(n, int)]
    return [t for t in range(1, p.world_size + 1)
            if p.world_size % (t * p.pp * p.cp) == 0 and all(n % t == 0 for n in heads)]
