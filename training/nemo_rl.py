"""The NeMo RL trainer spec ("nemo-rl"): the tutorial's command and environment, NeMo RL's knobs, constraints and
log signatures. Reads files (the config, the HF cache, the GPU seam); starts nothing.

The launch is the tutorial's (Gym `single-node-training.mdx`), as argv with no shell:
    uv run python examples/nemo_gym/run_grpo_nemo_gym.py --config=<cfg> <overrides>
        ++logger.log_dir=results/<exp> ++checkpointing.checkpoint_dir=results/<exp>
        ++policy.generation.vllm_cfg.tool_parser_plugin=<the snapshot's parser> [++logger.wandb_enabled=false]
        [++checkpointing.checkpoint_must_save_by=DD:HH:MM:SS]
in the NeMo RL checkout, with TORCH_CUDA_ARCH_LIST from the detected GPUs, HF_HOME, HF_HUB_OFFLINE=1 once the
cache is complete, NRL_FORCE_REBUILD_VENVS=true on the first launch only. Secrets stay in the environment, never
on argv. PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True is removed: it breaks vLLM's memory pool (RL #2471).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training import hf_cache, nemo_plan
from training.spec import Knob, Launch, Plan, RunPaths, Signature, override_key

RUNNER = "examples/nemo_gym/run_grpo_nemo_gym.py"
DEFAULT_CONFIG = "examples/nemo_gym/grpo_workplace_assistant_nemotron_nano_v2_9b.yaml"
TUTORIAL_ARCH_LIST = "9.0 10.0"          # the tutorial's value, used only when no GPU can be read
PARSER_KEY = "policy.generation.vllm_cfg.tool_parser_plugin"

# The troubleshooting table as ordered knobs: more parallelism and smaller micro batches first (the experiment
# stays the same), then memory-for-time trades, then fewer prompts per step (the experiment changes). Phases
# are the ones classify derives from NeMo RL's stage lines: an OOM while generating points at vLLM's share, one
# while computing logprobs or training at the policy's.
_TRAIN = ("training", "logprob")
MEGATRON_KNOBS: tuple[Knob, ...] = (
    Knob("policy.megatron_cfg.tensor_model_parallel_size", "tp", phases=_TRAIN),
    Knob("policy.train_micro_batch_size", "micro_batch", phases=("training",)),
    Knob("policy.logprob_batch_size", "logprob_batch", phases=("logprob",)),
    Knob("policy.generation.vllm_cfg.gpu_memory_utilization", "gen_mem", phases=("generation",)),
    Knob("policy.generation.vllm_cfg.tensor_parallel_size", "gen_tp", phases=("generation",)),
    Knob("policy.megatron_cfg.activation_checkpointing", "act_ckpt", phases=("training",)),
    Knob("policy.megatron_cfg.optimizer.optimizer_cpu_offload", "offload", phases=("training",)),
    Knob("grpo.num_prompts_per_step", "prompts", changes_experiment=True),
)
DTENSOR_KNOBS: tuple[Knob, ...] = tuple(
    Knob(k.key.replace("policy.megatron_cfg.tensor_model_parallel_size", "policy.dtensor_cfg.tensor_parallel_size")
         .replace("policy.megatron_cfg.activation_checkpointing", "policy.dtensor_cfg.activation_checkpointing")
         .replace("policy.megatron_cfg.optimizer.optimizer_cpu_offload", "policy.dtensor_cfg.cpu_offload"),
         k.kind, k.changes_experiment, k.phases) for k in MEGATRON_KNOBS)

# NeMo RL, vLLM and Ray texts (reference/nemo_rl.md section 5), tried before ops.classify's generic ones, in
# this order: root causes (OOM) before what they drag behind them (dead actors, timeouts). Kinds follow
# ops.classify.KIND_FAMILY; the extra kinds (hf_rate_limit, uv_rate_limit, venv_broken, actor_died,
# gym_server_died, refit_failed) fall in the "crash" family and get an environment remedy where one exists.
SIGNATURES: tuple[Signature, ...] = (
    Signature("cuda_oom", r"RayTaskError\(OutOfMemoryError\)|torch\.OutOfMemoryError|CUDA out of memory"),
    Signature("cuda_oom", r"torch\.AcceleratorError: CUDA error: out of memory"),
    Signature("vllm_oom", r"CUDA Error: out of memory at csrc/cumem_allocator"),
    Signature("vllm_oom", r"No available memory for the cache blocks"),
    Signature("gpu_busy", r"Free memory on device \([\d.]+/[\d.]+ GiB\) on startup is less than desired GPU "
                          r"memory utilization"),
    Signature("host_oom", r"killed due to the node running low on memory|Memory cgroup out of memory"),
    Signature("config", r"OverridesError: Failed to parse Hydra overrides|Could not override '", True),
    Signature("config", r"World size \(\d+\) (is insufficient for the parallelism|must be divisible by PP \* CP \* TP)",
              True),
    Signature("config", r"must be a multiple of tensor_model_parallel_size|num_query_groups \(\d+\) must be a multiple",
              True),
    Signature("config", r"known batch-variant accuracy issue with TP>=4", True),
    Signature("config", r"Total batch size \(\d+\) is not a multiple of batch_size|Batch size \(\d+\) is not a "
                        r"multiple of shards", True),
    Signature("config", r"World size must be a multiple of model parallel size", True),
    Signature("config", r"TORCH_CUDA_ARCH_LIST is not set", True),
    Signature("config", r"Expandable segments are not compatible with memory pool", True),
    Signature("config", r"No enough GPUs for training", True),
    # uv (venv builds) and the Hub both answer 429; the URL tells them apart.
    Signature("uv_rate_limit", r"(?i)(HTTP status client error \(429 Too Many Requests\)(?!.*huggingface)|"
                               r"429 Too Many Requests.*(pypi\.org|pythonhosted\.org|astral\.sh|github\.com))"),
    Signature("hf_rate_limit", r"(?i)(429 Client Error: Too Many Requests for url: https://huggingface\.co|"
                               r"HfHubHTTPError: 429|huggingface\.co\S*.*429 Too Many Requests)"),
    Signature("venv_broken", r"\(raylet\) ModuleNotFoundError: No module named 'ray'|have not registered within "
                             r"the timeout"),
    Signature("port_in_use", r"(?i)address already in use"),
    Signature("hang", r"GenerationUnavailable: generation shard \d+ \(worker \d+\) did not return within"),
    Signature("actor_died", r"generation shard \d+ .*is unavailable: ActorDiedError|ray\.exceptions\.ActorDiedError"
                            r"|The actor died unexpectedly before finishing this task"),
    Signature("gym_server_died", r"NeMo-Gym actor has no running servers|RuntimeError: Process finished unexpectedly"),
    Signature("refit_failed", r"Updating weights for the generation policy failed during refit"),
)

FORBIDDEN_ENV = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


def must_save_by(deadline_ts: float, now: float, margin_s: float) -> str | None:
    """`checkpointing.checkpoint_must_save_by` (DD:HH:MM:SS from this launch) so a save lands `margin_s` before
    the deadline; None when that moment has passed. Pure."""
    left = int(math.floor(deadline_ts - now - margin_s))
    if left <= 0:
        return None
    days, rem = divmod(left, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, seconds = divmod(rem, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{seconds:02d}"


def arch_list(capabilities: Sequence[tuple[int, int]]) -> str:
    """TORCH_CUDA_ARCH_LIST for these compute capabilities: "9.0" for H100, "9.0 10.0" for a mix. Pure."""
    return " ".join(f"{a}.{b}" for a, b in sorted(set(capabilities)))


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class NemoRLTrainer:
    """training.spec.TrainerSpec for NeMo RL. `repo` is the NeMo RL checkout the command runs in."""
    repo: Path = Path(".")
    deadline_ts: float | None = None            # --deadline, wall epoch seconds
    save_margin_s: float = 900.0                # the save has to finish before the deadline
    clock: Callable[[], float] = time.time
    gpu_reader: Any = None                      # healthchecks.gpu_seam.GpuReader; None -> default_reader(env)
    name: str = "nemo-rl"
    # A venv rebuild is asked for one launch (after a broken venv), then NeMo RL's default (false) again.
    one_shot_env: tuple[str, ...] = ("NRL_FORCE_REBUILD_VENVS",)
    signatures: tuple[Signature, ...] = SIGNATURES
    _arch_cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "repo", Path(self.repo))   # the CLI may pass a str

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return MEGATRON_KNOBS

    def knobs_for(self, cfg: Mapping[str, Any]) -> tuple[Knob, ...]:
        """The knobs of the backend that is on (DTensor's TP / offload keys when only DTensor is enabled)."""
        return DTENSOR_KNOBS if nemo_plan.is_dtensor(cfg) else MEGATRON_KNOBS

    def default_config(self) -> Path:
        return self.repo / DEFAULT_CONFIG

    # -- config ---------------------------------------------------------------------------------------
    def resolve(self, plan: Plan) -> dict:
        from training.config import resolve
        return resolve(plan.config_path, plan.overrides)

    def model_arch(self, model: str | None, env: Mapping[str, str] | None = None) -> dict:
        """Heads and KV groups of `model` from its config.json in the HF cache ({} when unknown)."""
        if not model:
            return {}
        if model not in self._arch_cache:
            path = Path(model)
            snap = path if path.is_dir() else hf_cache.snapshot_dir(hf_cache.hub_cache_dir(env or _os_env()), model)
            self._arch_cache[model] = hf_cache.model_architecture(snap)
        return self._arch_cache[model]

    def constraint_violations(self, cfg: Mapping[str, Any], gpus: int | None = None,
                              env: Mapping[str, str] | None = None) -> list[str]:
        env = env if env is not None else _os_env()
        arch = self.model_arch(nemo_plan.get(cfg, "policy.model_name"), env)
        return nemo_plan.violations(cfg, gpus, arch, env)

    def effective_plan(self, cfg: Mapping[str, Any]) -> nemo_plan.EffectivePlan:
        return nemo_plan.effective_plan(cfg)

    # -- launch ---------------------------------------------------------------------------------------
    def detected_arch_list(self, env: Mapping[str, str]) -> str | None:
        try:
            from healthchecks.gpu_seam import default_reader
            snap = (self.gpu_reader or default_reader(env)).snapshot()
        except Exception:   # no NVML, no fake: the caller falls back and says so
            return None
        return arch_list([g.compute_capability for g in snap.gpus]) or None

    def launch(self, plan: Plan, paths: RunPaths, base_env: Mapping[str, str], first: bool) -> Launch:
        env = {k: v for k, v in base_env.items()}
        for key, bad in FORBIDDEN_ENV.items():
            if bad in env.get(key, ""):
                env.pop(key)
        env["TORCH_CUDA_ARCH_LIST"] = (self.detected_arch_list(base_env) or base_env.get("TORCH_CUDA_ARCH_LIST")
                                       or TUTORIAL_ARCH_LIST)
        cache = hf_cache.hub_cache_dir(base_env)
        env["HF_HOME"] = base_env.get("HF_HOME") or str(cache.parent)
        env["NRL_FORCE_REBUILD_VENVS"] = "true" if first else base_env.get("NRL_FORCE_REBUILD_VENVS", "false")
        model = self._model_name(plan)
        snap = hf_cache.snapshot_dir(cache, model) if model else None
        if model and hf_cache.verify_snapshot(cache, model).complete:
            env["HF_HUB_OFFLINE"] = "1"
            env["TRANSFORMERS_OFFLINE"] = "1"
        root = paths.root.resolve()
        given = plan.override_map()
        forced = [f"++logger.log_dir={root}", f"++checkpointing.checkpoint_dir={root}"]
        parser = hf_cache.find_tool_parser(snap)
        if PARSER_KEY not in given and parser is not None:
            forced.append(f"++{PARSER_KEY}={parser}")
        if not base_env.get("WANDB_API_KEY") and env.get("WANDB_MODE") not in ("offline", "disabled"):
            forced.append("++logger.wandb_enabled=false")
        elif "logger.wandb.name" not in given:
            forced.append(f"++logger.wandb.name={paths.root.name}")
        if self.deadline_ts is not None:
            by = must_save_by(self.deadline_ts, self.clock(), self.save_margin_s)
            if by is not None:
                forced.append(f"++checkpointing.checkpoint_must_save_by={by}")
        forced_keys = {override_key(o) for o in forced}
        kept = [o for o in plan.overrides if override_key(o) not in forced_keys]
        argv = ("uv", "run", "python", RUNNER, f"--config={self._config_arg(plan)}", *kept, *forced)
        return Launch(argv=argv, env=env, cwd=self.repo.resolve(), labels={"trainer": self.name})

    def _config_arg(self, plan: Plan) -> str:
        path = plan.config_path
        if path.is_absolute():
            return str(path)
        if path.exists():                 # relative to where ops runs
            return str(path.resolve())
        return str(path)                  # relative to the NeMo RL checkout, as in the tutorial

    def _config_path(self, plan: Plan) -> Path:
        path = plan.config_path
        return path if path.is_absolute() or path.exists() else self.repo / path

    def _model_name(self, plan: Plan) -> str | None:
        given = plan.override_map().get("policy.model_name")
        if given:
            return given.strip("'\"")
        try:
            from training.config import load_with_inheritance
            value = load_with_inheritance(self._config_path(plan)).get("policy", {}).get("model_name")
        except Exception:
            return None
        return str(value) if value else None

    # -- what the log says beyond failures ----------------------------------------------------------------
    def log_warnings(self, lines: Sequence[str], host_limit_gb: float | None = None) -> list[str]:
        """Warnings to journal from the attempt's log so far (pure): driver host memory growing step over step
        (NeMo RL's `💭 Driver CPU memory tracker` blocks), before the host OOM killer acts."""
        from training.nemo_log import host_memory_growth
        growth = host_memory_growth(lines, limit_gb=host_limit_gb)
        return [growth.message] if growth is not None else []

    # -- remedies the generic planner cannot make -------------------------------------------------------
    def environment_remedy(self, failure: Any, plan: Plan, env: Mapping[str, str]) -> dict[str, str]:
        """Environment changes for the next launch after `failure` (an ops.classify.Failure); {} when none.

        uv rate limit -> stop rebuilding venvs (NRL_FORCE_REBUILD_VENVS=false); broken venv -> rebuild once;
        HF 429 -> HF_HUB_OFFLINE=1 when the cache is complete; a vLLM generation timeout the second time ->
        NeMo RL's own advice, NRL_VLLM_ASYNC_TIMEOUT_SECONDS doubled (from its default 900 s).
        """
        kind = getattr(failure, "kind", failure)
        if kind == "uv_rate_limit":
            return {"NRL_FORCE_REBUILD_VENVS": "false"}
        if kind == "venv_broken":
            return {} if env.get("NRL_FORCE_REBUILD_VENVS") == "true" else {"NRL_FORCE_REBUILD_VENVS": "true"}
        if kind == "hf_rate_limit":
            model = self._model_name(plan)
            if model and hf_cache.verify_snapshot(hf_cache.hub_cache_dir(env), model).complete:
                return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
            return {}
        text = " ".join(getattr(failure, "evidence_lines", ())) + getattr(failure, "summary", "")
        if kind == "hang" and "did not return within" in text:
            current = int(env.get("NRL_VLLM_ASYNC_TIMEOUT_SECONDS") or 900)
            return {"NRL_VLLM_ASYNC_TIMEOUT_SECONDS": str(current * 2)}
        return {}

    # -- dry run --------------------------------------------------------------------------------------
    def describe(self, plan: Plan, paths: RunPaths, base_env: Mapping[str, str], first: bool = True) -> str:
        """What `ops run --trainer nemo-rl --dry-run` prints: command, environment, plan, problems, ladder."""
        from ops.remedies import ladder
        launch = self.launch(plan, paths, base_env, first)
        notes: list[str] = []
        try:
            cfg = self.resolve(plan)
            plan_lines = nemo_plan.effective_plan(cfg).lines()
            problems = self.constraint_violations(cfg, None, base_env)
            knobs = self.knobs_for(cfg)
        except Exception as err:   # a bad config is reported, not raised: the dry run is for finding out
            plan_lines, problems, knobs = [f"cannot resolve the config: {err}"], [], self.knobs
        if self.detected_arch_list(base_env) is None:
            notes.append(f"no GPU readable here: TORCH_CUDA_ARCH_LIST={launch.env['TORCH_CUDA_ARCH_LIST']} "
                         "(from the environment or the tutorial)")
        if "HF_HUB_OFFLINE" not in launch.env:
            notes.append("the model cache is not complete: HF_HUB_OFFLINE stays unset (run 'ops prepare model')")
        if not any(a.startswith(f"++{PARSER_KEY}=") or a.startswith(f"{PARSER_KEY}=") for a in launch.argv):
            notes.append(f"{hf_cache.TOOL_PARSER_FILE} not found in the model snapshot")
        for key, bad in FORBIDDEN_ENV.items():
            if bad in base_env.get(key, ""):
                notes.append(f"removed {key}={base_env[key]}: it breaks vLLM's memory pool (NeMo RL #2471)")
        notes += [f"constraint: {p}" for p in problems]
        return describe_launch(launch, ladder(knobs), plan_lines, notes)


def _os_env() -> dict[str, str]:
    import os
    return dict(os.environ)


def describe_launch(launch: Launch, ladder: Sequence[str], plan_lines: Sequence[str], notes: Sequence[str] = ()
                    ) -> str:
    """The --dry-run text: command, environment grpo-ops sets (secrets redacted), effective plan, remedy ladder."""
    import shlex

    from ops.logs import REDACTED, redact_env, secret_values
    command = " ".join(shlex.quote(a) for a in launch.argv)
    for value in secret_values(dict(launch.env)):   # none should be there; make sure (paths hold 40-hex commits,
        command = command.replace(value, REDACTED)  # so token-shaped redaction would garble them)
    shown = {k: v for k, v in launch.env.items() if k in _SET_BY_US or k.startswith(("NRL_", "GRPO_OPS_"))}
    lines = [f"cd {shlex.quote(str(launch.cwd))}", command, "",
             "environment (set by grpo-ops; secrets redacted):"]
    lines += [f"  {k}={v}" for k, v in sorted(redact_env(shown).items())]
    secrets = [k for k in ("WANDB_API_KEY", "HF_TOKEN") if launch.env.get(k)]
    if secrets:
        lines.append(f"  passed through, redacted: {', '.join(secrets)}")
    lines += ["", "effective plan:", *(f"  {ln}" for ln in plan_lines), "", "remedy ladder:",
              *(f"  {ln}" for ln in ladder)]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


_SET_BY_US = ("TORCH_CUDA_ARCH_LIST", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "NRL_FORCE_REBUILD_VENVS",
              "WANDB_MODE", "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF", "RAY_ADDRESS")
