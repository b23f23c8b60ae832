"""Preflight checks for NeMo RL runs: `hf_cache`, `chat_template`, `tool_parser_plugin`, `training_config`.

They apply when the run is a NeMo RL one (`--trainer nemo-rl`, or a config whose generation backend is vLLM);
for the embedded workload they return nothing. I/O: reads the config, the HF cache (`HF_HOME` from
`ctx.env`) and the GPU seam; the `chat_template` fix rewrites the cached template (training.chat_template).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from healthchecks.base import CheckContext, CheckResult, Status, register, register_fix
from training import chat_template, hf_cache, nemo_plan

_NO_MATCH = re.compile(r"Could not override '([^']+)'")
_NEMOTRON_V2 = re.compile(r"(?i)nemotron-nano-9b-v2")


def _cfg_or_error(ctx: CheckContext) -> tuple[dict | None, Exception | None]:
    from training.config import resolve
    try:
        return resolve(ctx.config_path, ctx.overrides), None
    except Exception as err:
        return None, err


def _raw_model(ctx: CheckContext) -> str | None:
    """policy.model_name without resolving (works even when an override is bad)."""
    for o in reversed(ctx.overrides):
        if o.lstrip("+").startswith("policy.model_name="):
            return o.split("=", 1)[1].strip("'\"")
    try:
        from training.config import load_with_inheritance
        value = load_with_inheritance(ctx.config_path).get("policy", {}).get("model_name")
    except Exception:
        return None
    return str(value) if value else None


def is_nemo_rl(ctx: CheckContext) -> bool:
    if ctx.trainer == "nemo-rl":
        return True
    if ctx.config_path is None or ctx.trainer != "embedded":
        return False
    try:
        from training.config import load_with_inheritance
        gen = load_with_inheritance(ctx.config_path).get("policy", {}).get("generation", {})
        return bool(gen) and gen.get("backend") == "vllm"
    except Exception:
        return False


def _model(ctx: CheckContext) -> str:
    return (_raw_model(ctx) if ctx.config_path else None) or hf_cache.DEFAULT_MODEL


def _snapshot(ctx: CheckContext, model: str) -> Path | None:
    if Path(model).is_dir():                      # a local model directory, not a Hub id
        return Path(model)
    snap = hf_cache.snapshot_dir(hf_cache.hub_cache_dir(ctx.env), model)
    return snap if snap is not None and snap.is_dir() else None


@register("hf_cache")
def check_hf_cache(ctx: CheckContext) -> list[CheckResult]:
    if not is_nemo_rl(ctx):
        return []
    model = _model(ctx)
    if Path(model).is_dir():
        return [CheckResult("hf_cache", Status.PASS, f"model is a local directory {model}")]
    cache = hf_cache.hub_cache_dir(ctx.env)
    report = hf_cache.verify_snapshot(cache, model)
    data = report.to_json()
    if report.complete:
        return [CheckResult("hf_cache", Status.PASS,
                            f"{model} complete in {cache} ({report.shards_present} shards, "
                            f"{report.size_bytes / 2**30:.1f} GiB); HF_HUB_OFFLINE=1 is safe", data=data)]
    offline = ctx.env.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    detail = "; ".join(report.problems) + ("; HF_HUB_OFFLINE is set, so the run cannot fetch it" if offline else "")
    return [CheckResult("hf_cache", Status.FAIL, detail, report.fix, data=data)]


@register("chat_template")
def check_chat_template(ctx: CheckContext) -> list[CheckResult]:
    if not is_nemo_rl(ctx):
        return []
    model = _model(ctx)
    snap = _snapshot(ctx, model)
    required = bool(_NEMOTRON_V2.search(model))
    if snap is None or not chat_template.template_files(snap):
        if not required:
            return []
        return [CheckResult("chat_template", Status.FAIL, f"{model} is not in the cache; cannot check its template",
                            f"ops prepare model --model {model} && ops prepare chat-template --model {model}")]
    results = chat_template.inspect_snapshot(snap)
    data = {"files": [{"path": str(r.path), "status": r.status} for r in results]}
    if all(r.status == "already patched" and r.ok for r in results):
        return [CheckResult("chat_template", Status.PASS, "patched and verified by rendering (thinking off by "
                            "default; a trailing assistant turn renders normally)", data=data)]
    if any(r.status == "would patch" for r in results):
        names = ", ".join(r.path.name for r in results if r.status == "would patch")
        return [CheckResult("chat_template", Status.FAIL, f"{names}: the tutorial's template edits are not made",
                            f"ops prepare chat-template --model {model}", data=data, fix_id="chat_template")]
    if not required:
        return []              # another model's template: the tutorial's edits do not apply
    problems = "; ".join(p for r in results for p in (r.verification.problems if r.verification else ()))
    return [CheckResult("chat_template", Status.FAIL, f"template not recognised as Nemotron Nano v2's: {problems}",
                        "compare the cached tokenizer_config.json with the model card and edit it by hand",
                        data=data)]


@register_fix("chat_template")
def fix_chat_template(ctx: CheckContext, dry_run: bool) -> list[str]:
    model = _model(ctx)
    snap = _snapshot(ctx, model)
    if snap is None:
        return [f"{model} is not in the cache: run 'ops prepare model' first"]
    return [f"{r.path.name}: {r.status}" + (f" (backup {r.backup.name})" if r.backup else "")
            for r in chat_template.patch_snapshot(snap, dry_run=dry_run)]


@register("tool_parser_plugin")
def check_tool_parser(ctx: CheckContext) -> list[CheckResult]:
    if not is_nemo_rl(ctx):
        return []
    given = next((o.split("=", 1)[1] for o in reversed(ctx.overrides)
                  if o.lstrip("+").startswith("policy.generation.vllm_cfg.tool_parser_plugin=")), None)
    if given:
        ok = Path(given).is_file()
        return [CheckResult("tool_parser_plugin", Status.PASS if ok else Status.FAIL,
                            f"given {given}" + ("" if ok else " does not exist"),
                            "" if ok else f"point ++policy.generation.vllm_cfg.tool_parser_plugin at "
                                          f"{hf_cache.TOOL_PARSER_FILE} in the model snapshot")]
    model = _model(ctx)
    if not _NEMOTRON_V2.search(model):
        return []
    found = hf_cache.find_tool_parser(_snapshot(ctx, model))
    if found is None:
        return [CheckResult("tool_parser_plugin", Status.FAIL,
                            f"{hf_cache.TOOL_PARSER_FILE} not found in the {model} snapshot",
                            f"ops prepare model --model {model} (the parser ships with the model)")]
    return [CheckResult("tool_parser_plugin", Status.PASS,
                        f"found {found}; ops run passes it as ++policy.generation.vllm_cfg.tool_parser_plugin",
                        data={"path": str(found)})]


def _visible_gpus(ctx: CheckContext) -> int | None:
    try:
        from healthchecks.gpu import read_gpus
        snap, _reason = read_gpus(ctx)
    except Exception:
        return None
    return len(snap.gpus) if snap is not None else None


def override_fix(err: Exception, overrides: tuple[str, ...]) -> str:
    """The fix line for a config error: `++` for keys absent from the YAML, else the config's own advice."""
    m = _NO_MATCH.search(str(err))
    if m:
        key = m.group(1)
        given = next((o for o in overrides if o.lstrip("+").split("=", 1)[0] == key), f"{key}=...")
        return f"'{key}' is not in the YAML: write it as ++{given.lstrip('+')}"
    return "fix the config or the override named above"


@register("training_config")
def check_training_config(ctx: CheckContext) -> list[CheckResult]:
    if not is_nemo_rl(ctx) or ctx.config_path is None:
        return []
    cfg, err = _cfg_or_error(ctx)
    if cfg is None:
        text = " ".join(str(err).split())
        return [CheckResult("training_config", Status.FAIL, text, override_fix(err, ctx.overrides))]
    model = nemo_plan.get(cfg, "policy.model_name") or ""
    arch = hf_cache.model_architecture(_snapshot(ctx, model)) if model else {}
    gpus = _visible_gpus(ctx)
    problems = nemo_plan.violations(cfg, gpus, arch, ctx.env)
    plan = nemo_plan.effective_plan(cfg)
    data: dict[str, Any] = {"plan": plan.to_json(), "model_arch": arch or None, "visible_gpus": gpus,
                            "violations": problems}
    tps = ", ".join(map(str, nemo_plan.valid_tp(cfg, arch)))
    out = [CheckResult("training_config", Status.FAIL, p, _fix_for(p).replace("{tps}", tps), data=data)
           for p in problems]
    if not out:
        out.append(CheckResult("training_config", Status.PASS, " | ".join(plan.lines()), data=data))
    if not arch:
        out.append(CheckResult("training_config", Status.UNKNOWN,
                               f"attention heads / KV groups of {model or 'the model'} unknown (no config.json in "
                               "the cache): TP divisibility not checked", f"ops prepare model --model {model}"))
    return out


def _fix_for(problem: str) -> str:
    if "divisible by PP * CP * TP" in problem or "insufficient for the parallelism" in problem:
        return "use a TP that fits the GPUs and the model: one of {tps}"
    if "must be a multiple of tensor_model_parallel_size" in problem:
        return "use a TP that divides the model's attention heads and KV groups: one of {tps}"
    if "TP " in problem and "logprob_batch_size" in problem:
        return "set policy.logprob_batch_size equal to policy.train_micro_batch_size"
    if "GPU(s) are visible" in problem:
        return problem.split("; ", 1)[1].split(" (")[0] if "; " in problem else "match cluster.gpus_per_node"
    if "not a multiple of" in problem:
        return "make prompts x generations a multiple of train_global_batch_size, itself a multiple of DP"
    return "change the setting named above"

