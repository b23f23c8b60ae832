"""The troubleshooting table as ordered, named remedies, and `next_plan`. Pure; no I/O, no clock.

`next_plan(failure, plan, history, ctx)` -> `Relaunch(new plan, reason, ...)` or `GiveUp(reason, state)`:
- deterministic errors (bad config, missing file, import error): give up at once;
- OOM: use the numbers (PyTorch's message, the cgroup limit, the workload's memory-model line) to jump to the
  plan predicted to fit, trying the trainer's knobs in its preferred order (more TP, then a smaller micro
  batch with the same global batch, then activation checkpointing, offload, ...; knobs that change the
  experiment last), each only when the trainer's constraints still hold;
- hang: the same plan once, then change something;
- crash / port in use: the same plan (the trainer resumes from its checkpoint), unless the same failure
  already happened under this plan without progress since.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ops.classify import Failure
from ops.state import FAMILY_TERMINAL, State
from training.spec import Knob, Plan, cfg_get, override_key

MARGIN = 0.06            # aim this fraction below the capacity: allocator slack, fragmentation, noise
_ALL_PHASES = {None, "startup", "preparing", "checkpoint", "rewards", "advantages"}


@dataclass(frozen=True)
class PastAttempt:
    """One attempt in the run's history (the current, just-failed one is the last)."""
    plan: Plan
    kind: str | None                # failure kind; None on success
    last_step: int | None = None


@dataclass(frozen=True)
class PlanContext:
    """What the planner may know about the trainer and the current plan, as plain data."""
    knobs: tuple[Knob, ...] = ()
    cfg: Mapping[str, Any] = field(default_factory=dict)          # resolved config of the current plan
    violations: Callable[[Mapping[str, Any]], list[str]] = lambda cfg: []
    memory_model: Mapping[str, Any] | None = None                # static_mib, per_sample_mib, device, tp
    margin: float = MARGIN


@dataclass(frozen=True)
class Relaunch:
    plan: Plan
    reason: str
    remedy: str
    plan_diff: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    experiment_changed: bool = False


@dataclass(frozen=True)
class GiveUp:
    reason: str
    state: State


Decision = Relaunch | GiveUp


# ---------------------------------------------------------------- config helpers (pure)
def cfg_with(cfg: Mapping[str, Any], items: Mapping[str, Any]) -> dict:
    """A deep copy of `cfg` with the dotted `items` set."""
    out = copy.deepcopy(dict(cfg))
    for key, value in items.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


# ---------------------------------------------------------------- memory arithmetic (pure)
@dataclass(frozen=True)
class Fit:
    """Capacity and demand in MiB per device, and the model of demand vs micro batch when known."""
    capacity_mib: float | None
    demand_mib: float | None           # a lower bound on what the failed plan needed
    static_mib: float = 0.0
    per_sample_mib: float | None = None

    def largest_batch(self, margin: float) -> int | None:
        if self.capacity_mib is None or not self.per_sample_mib:
            return None
        return math.floor((self.capacity_mib * (1 - margin) - self.static_mib) / self.per_sample_mib)


def estimate_fit(f: Failure, batch: int, model: Mapping[str, Any] | None) -> Fit:
    n = f.numbers
    if f.kind == "host_oom":
        cap = n.get("limit_mib")
        demand = max(cap or 0.0, n.get("peak_rss_mib") or 0.0) or None
        device_ok = model is not None and str(model.get("device", "")).startswith("cpu")
    else:
        cap = n["total_mib"] - n.get("other_processes_mib", 0.0) if "total_mib" in n else None
        demand = n["process_mib"] + n["tried_mib"] if "process_mib" in n and "tried_mib" in n else None
        if demand is None and "tried_mib" in n and "total_mib" in n and "free_mib" in n:
            demand = n["total_mib"] - n["free_mib"] + n["tried_mib"]
        device_ok = model is not None and not str(model.get("device", "cuda")).startswith("cpu")
    if device_ok and model.get("per_sample_mib"):
        static, per = float(model.get("static_mib", 0.0)), float(model["per_sample_mib"])
        if demand is not None and batch > 0:          # calibrate: the model must explain the failure
            per = max(per, (demand - static) / batch)
        return Fit(cap, demand, static, per)
    if f.kind == "host_oom":                          # the kill hides how far off it was: halve instead
        return Fit(cap, None)
    if demand is not None and batch > 0:              # no model: assume demand grows with the batch
        return Fit(cap, demand, 0.0, demand / batch)
    return Fit(cap, demand)


# ---------------------------------------------------------------- remedies: knob kind -> assignment
Proposal = tuple[dict[str, Any], str] | None    # (key -> new value, why) or None when it cannot help


def _batch_down(knob: Knob, f: Failure, ctx: PlanContext) -> Proposal:
    mb = cfg_get(ctx.cfg, knob.key)
    if not isinstance(mb, int) or mb <= 1:
        return None
    fit = estimate_fit(f, mb, ctx.memory_model) if f.family == "oom" else Fit(None, None)
    best = fit.largest_batch(ctx.margin)
    if best is None:
        new, why = max(1, mb // 2), "halved (no numbers to size it)"
    else:
        new = max(1, min(mb - 1, best))
        why = (f"predicted to fit: {fit.static_mib:.0f} + {new} x {fit.per_sample_mib:.0f} MiB "
               f"<= {(1 - ctx.margin) * 100:.0f}% of {fit.capacity_mib:.0f} MiB")
    for cand in range(new, 0, -1):                   # largest value the trainer's constraints allow
        items = {knob.key: cand}
        if not ctx.violations(cfg_with(ctx.cfg, items)):
            return items, why if cand == new else f"{why}; {new} breaks a constraint, {cand} keeps them"
    return None


def _tp_up(knob: Knob, f: Failure, ctx: PlanContext) -> Proposal:
    tp = cfg_get(ctx.cfg, knob.key)
    if not isinstance(tp, int) or tp < 1 or f.kind in ("host_oom", "cpu_oom"):
        return None                                      # more ranks split device memory, not the host's
    new = tp * 2
    if f.family == "oom":
        fit = estimate_fit(f, 1, None)
        if fit.capacity_mib and fit.demand_mib and fit.demand_mib * tp / new > fit.capacity_mib * (1 - ctx.margin):
            return None                                  # not enough alone: let a later knob do it
    return {knob.key: new}, f"tensor parallel {tp} -> {new} splits the per-device footprint"


def _enable(knob: Knob, f: Failure, ctx: PlanContext) -> Proposal:
    if cfg_get(ctx.cfg, knob.key) is True:
        return None
    return {knob.key: True}, f"{knob.kind} on trades time for memory"


def _gen_mem(knob: Knob, f: Failure, ctx: PlanContext) -> Proposal:
    util = cfg_get(ctx.cfg, knob.key)
    if not isinstance(util, (int, float)):
        return None
    n = f.numbers
    if f.kind == "gpu_busy" and n.get("total_mib"):
        new = math.floor((n["free_mib"] / n["total_mib"] - 0.03) * 100) / 100
    elif "No available memory for the cache blocks" in " ".join(f.evidence_lines) and util < 0.95:
        new = round(min(0.95, util + 0.05), 2)           # vLLM's own advice: the cache got no room
    else:
        new = round(util - 0.1, 2)
    if new < 0.2 or new == util:
        return None
    return {knob.key: new}, f"vLLM gpu_memory_utilization {util} -> {new}"


def _halve(knob: Knob, f: Failure, ctx: PlanContext) -> Proposal:
    """Half, else three quarters, else one less: the first the trainer's constraints allow."""
    v = cfg_get(ctx.cfg, knob.key)
    if not isinstance(v, int) or v <= 1:
        return None
    for new in dict.fromkeys((v // 2, v * 3 // 4, v - 1)):
        if 1 <= new < v and not ctx.violations(cfg_with(ctx.cfg, {knob.key: new})):
            return {knob.key: new}, f"{knob.key} {v} -> {new}"
    return None


REMEDIES: dict[str, Callable[[Knob, Failure, PlanContext], Proposal]] = {
    "tp": _tp_up,
    "gen_tp": _tp_up,
    "micro_batch": _batch_down,
    "logprob_batch": _batch_down,
    "act_ckpt": _enable,
    "offload": _enable,
    "gen_mem": _gen_mem,
    "prompts": _halve,
    "seq_len": _halve,
}


def _applies(knob: Knob, phase: str | None) -> bool:
    return not knob.phases or phase in _ALL_PHASES or phase in knob.phases


def ladder(knobs: Sequence[Knob]) -> list[str]:
    """The remedy ladder as text (for --dry-run and docs)."""
    return [f"{i + 1}. {k.kind}: {k.key}" + (" (changes the experiment)" if k.changes_experiment else "")
            + (f" [phases: {', '.join(k.phases)}]" if k.phases else "") for i, k in enumerate(knobs)]


_GENERATION_KINDS = ("vllm_oom", "gpu_busy")     # vLLM's memory, whatever stage line came last


def _phases_to_try(f: Failure) -> list[str | None]:
    """Validation is generation (vLLM's, in NeMo RL): try the generation knobs first, then any knob."""
    if f.kind in _GENERATION_KINDS:
        return ["generation"]
    return ["generation", None] if f.phase == "validation" else [f.phase]


def _change_something(f: Failure, plan: Plan, ctx: PlanContext, why: str) -> Decision:
    for phase in _phases_to_try(f):
        for knob in ctx.knobs:
            fn = REMEDIES.get(knob.kind)
            if fn is None or not _applies(knob, phase):
                continue
            proposal = fn(knob, f, ctx)
            if proposal is None:
                continue
            items, how = proposal
            if ctx.violations(cfg_with(ctx.cfg, items)):
                continue
            new_plan = plan.with_overrides(items)
            diff = {k: (cfg_get(ctx.cfg, k), v) for k, v in items.items()}
            note = " (the experiment itself changes)" if knob.changes_experiment else ""
            return Relaunch(new_plan, f"{why}: {how}{note}", knob.kind, diff, knob.changes_experiment)
    return GiveUp(f"{why}, and no remedy is left that the trainer's constraints allow", FAMILY_TERMINAL[f.family])


def next_plan(failure: Failure, plan: Plan, history: Sequence[PastAttempt], ctx: PlanContext) -> Decision:
    """Decide what follows a failed attempt. `history` ends with the attempt that just failed."""
    family = failure.family
    if family == "config":
        return GiveUp(f"deterministic error, not retried: {failure.summary}", State.FAILED_CONFIG)
    current = history[-1] if history else PastAttempt(plan, failure.kind)
    same = [h for h in history[:-1] if h.plan == plan and h.kind == failure.kind
            and (h.last_step or 0) >= (current.last_step or 0)]
    if family == "oom":
        if same:
            return GiveUp(f"{failure.kind} twice under the same plan: {failure.summary}", State.FAILED_OOM)
        return _change_something(failure, plan, ctx, f"{failure.kind} ({failure.summary})")
    if family == "hang":
        if not same:
            return Relaunch(plan, f"hang ({failure.summary}); relaunching the same plan once", "retry_same")
        return _change_something(failure, plan, ctx, "hung twice under the same plan")
    if same:
        return GiveUp(f"{failure.kind} twice under the same plan without progress: {failure.summary}",
                      FAMILY_TERMINAL[family])
    return Relaunch(plan, f"{failure.kind} ({failure.summary}); relaunching the same plan, resuming from the "
                    "last checkpoint", "retry_same")


def plan_diff(old: Plan, new: Plan) -> dict[str, tuple[Any, Any]]:
    """Override-level difference between two plans: key -> [old, new] (None when absent)."""
    a, b = old.override_map(), new.override_map()
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


__all__ = ["Decision", "Fit", "GiveUp", "PastAttempt", "PlanContext", "REMEDIES", "Relaunch", "cfg_get",
           "cfg_with", "estimate_fit", "ladder", "next_plan", "override_key", "plan_diff"]


def prefer_environment_remedy(decision: Decision, f: Failure, plan: Plan,
                              env_diff: Mapping[str, Any]) -> Decision:
    """A give-up that a changed environment may still cure (the trainer spec's environment remedy; never for a
    config error) becomes a relaunch of the same plan. Pure."""
    if isinstance(decision, GiveUp) and env_diff and f.family != "config":
        return Relaunch(plan, f"{f.kind}: changing the environment ({', '.join(env_diff)})", "env")
    return decision
