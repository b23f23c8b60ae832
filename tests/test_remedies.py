"""Table-driven tests of the planner (ops.remedies.next_plan) over hand-built failures and configs."""

from pathlib import Path

import pytest

from ops.budget import BudgetState, Deadline, MaxAttempts, make_budget, parse_deadline
from ops.classify import Failure
from ops.errors import UserError
from ops.remedies import GiveUp, PastAttempt, PlanContext, Relaunch, cfg_get, estimate_fit, next_plan
from ops.state import State
from training.spec import Knob, Plan

KNOBS = (
    Knob("policy.tp", "tp", phases=("training", "logprob")),
    Knob("policy.train_micro_batch_size", "micro_batch", phases=("training",)),
    Knob("policy.logprob_batch_size", "logprob_batch", phases=("logprob",)),
    Knob("policy.activation_checkpointing", "act_ckpt", phases=("training",)),
    Knob("vllm.gpu_memory_utilization", "gen_mem", phases=("generation",)),
    Knob("grpo.num_prompts_per_step", "prompts", changes_experiment=True),
)
CFG = {"policy": {"tp": 1, "train_micro_batch_size": 32, "logprob_batch_size": 8, "train_global_batch_size": 64,
                  "activation_checkpointing": False},
       "vllm": {"gpu_memory_utilization": 0.8}, "grpo": {"num_prompts_per_step": 8}, "gpus": 1}


def violations(cfg):
    out = []
    p = cfg["policy"]
    if cfg["gpus"] % p["tp"]:
        out.append(f"gpus {cfg['gpus']} not divisible by tp {p['tp']}")
    if p["train_global_batch_size"] % p["train_micro_batch_size"]:
        out.append("global batch not a multiple of micro batch")
    return out


PLAN = Plan(Path("cfg.yaml"))
GIB = 1024.0


def ctx(cfg=CFG, model=None, **kw):
    return PlanContext(KNOBS, cfg, violations, model, **kw)


def oom(phase="training", **numbers):
    return Failure("cuda_oom", "CUDA out of memory", False, phase, numbers)


def decide(f, plan=PLAN, history=None, c=None):
    return next_plan(f, plan, history if history is not None else [PastAttempt(plan, f.kind, 3)], c or ctx())


def test_deterministic_gives_up_at_once():
    d = decide(Failure("config", "Could not override 'x'", True, "startup"))
    assert isinstance(d, GiveUp) and d.state is State.FAILED_CONFIG and "Could not override" in d.reason


def test_oom_with_memory_model_jumps_to_fit():
    # model: 10 GiB static + 2 GiB per sample; 80 GiB card -> largest fit at 6% margin: (75.2-10)/2 = 32.6..
    # failure at mb=32 says demand >= 70+8 = 78 GiB -> per sample >= (78-10)/32 = 2.125 GiB -> 30 fits; 30
    # does not divide 64, so the largest allowed value is 16? no: 64 % 30 != 0 .. down to 16.
    f = oom(tried_mib=8 * GIB, total_mib=80 * GIB, free_mib=1 * GIB, process_mib=70 * GIB)
    d = decide(f, c=ctx(model={"static_mib": 10 * GIB, "per_sample_mib": 2 * GIB, "device": "cuda", "tp": 1}))
    assert isinstance(d, Relaunch) and d.remedy == "micro_batch"
    assert d.plan.override_map()["policy.train_micro_batch_size"] == "16"
    assert d.plan_diff == {"policy.train_micro_batch_size": (32, 16)}
    assert not d.experiment_changed


def test_oom_without_model_scales_by_numbers_not_halving():
    cfg = {**CFG, "policy": {**CFG["policy"], "train_micro_batch_size": 10, "train_global_batch_size": 90}}
    f = oom(tried_mib=4 * GIB, total_mib=80 * GIB, free_mib=2 * GIB, process_mib=78 * GIB)
    d = decide(f, c=ctx(cfg))
    # demand >= 82 GiB at 10 -> 8.2 GiB/sample -> floor(75.2/8.2) = 9 -> 9 divides 90
    assert d.plan.override_map()["policy.train_micro_batch_size"] == "9"


def test_other_processes_reduce_capacity():
    f = oom(tried_mib=8 * GIB, total_mib=80 * GIB, free_mib=1 * GIB, process_mib=40 * GIB,
            other_processes_mib=30 * GIB)
    fit = estimate_fit(f, 32, None)
    assert fit.capacity_mib == 50 * GIB and fit.demand_mib == 48 * GIB


def test_tp_preferred_when_gpus_allow():
    cfg = {**CFG, "gpus": 2}
    f = oom(tried_mib=4 * GIB, total_mib=80 * GIB, free_mib=1 * GIB, process_mib=79 * GIB)
    d = decide(f, c=ctx(cfg))
    assert d.remedy == "tp" and d.plan.override_map()["policy.tp"] == "2"


def test_tp_skipped_on_one_gpu():
    f = oom(tried_mib=4 * GIB, total_mib=80 * GIB, free_mib=1 * GIB, process_mib=79 * GIB)
    assert decide(f).remedy == "micro_batch"


def test_logprob_phase_uses_logprob_batch():
    f = oom(phase="logprob", tried_mib=4 * GIB, total_mib=80 * GIB, free_mib=1 * GIB, process_mib=79 * GIB)
    d = decide(f)
    assert d.remedy == "logprob_batch" and int(d.plan.override_map()["policy.logprob_batch_size"]) < 8


def test_micro_batch_one_moves_to_act_ckpt_then_experiment_change():
    cfg = {**CFG, "policy": {**CFG["policy"], "train_micro_batch_size": 1}}
    f = oom(tried_mib=4 * GIB, total_mib=80 * GIB, free_mib=1 * GIB, process_mib=79 * GIB)
    d = decide(f, c=ctx(cfg))
    assert d.remedy == "act_ckpt" and not d.experiment_changed
    cfg2 = {**cfg, "policy": {**cfg["policy"], "activation_checkpointing": True}}
    d2 = decide(f, c=ctx(cfg2))
    assert d2.remedy == "prompts" and d2.experiment_changed and "experiment itself changes" in d2.reason


def test_generation_oom_lowers_vllm_util():
    f = Failure("vllm_oom", "CUDA Error: out of memory at csrc/cumem_allocator.cpp", False, "generation", {})
    d = decide(f)
    assert d.remedy == "gen_mem" and d.plan.override_map()["vllm.gpu_memory_utilization"] == "0.7"


def test_gpu_busy_sizes_util_to_free_memory():
    f = Failure("gpu_busy", "free memory", False, "startup",
                {"free_mib": 59.32 * 1024, "total_mib": 79.15 * 1024, "gpu_memory_utilization": 0.9})
    d = decide(f)
    assert d.remedy == "gen_mem" and d.plan.override_map()["vllm.gpu_memory_utilization"] == "0.71"


def test_host_oom_with_cpu_model():
    f = Failure("host_oom", "killed", False, "training", {"limit_mib": 1000.0, "peak_rss_mib": 900.0})
    model = {"static_mib": 300.0, "per_sample_mib": 20.0, "device": "cpu"}
    d = decide(f, c=ctx(model=model))
    # calibrated per-sample >= (1000-300)/32 = 21.9 -> floor((940-300)/21.9) = 29 -> allowed divisor of 64: 16
    assert d.plan.override_map()["policy.train_micro_batch_size"] == "16"


def test_host_oom_without_model_halves():
    f = Failure("host_oom", "killed", False, "training", {"limit_mib": 1000.0})
    assert decide(f).plan.override_map()["policy.train_micro_batch_size"] == "16"


def test_oom_twice_same_plan_gives_up():
    f = oom(tried_mib=1.0, total_mib=80 * GIB, free_mib=0.0, process_mib=80 * GIB)
    d = decide(f, history=[PastAttempt(PLAN, "cuda_oom", 3), PastAttempt(PLAN, "cuda_oom", 3)])
    assert isinstance(d, GiveUp) and d.state is State.FAILED_OOM


def test_nothing_left_gives_up_oom():
    c = PlanContext((), CFG, violations)
    d = next_plan(oom(total_mib=1.0), PLAN, [PastAttempt(PLAN, "cuda_oom")], c)
    assert isinstance(d, GiveUp) and d.state is State.FAILED_OOM


def test_hang_same_plan_once_then_change():
    f = Failure("hang", "no new step", False, "training")
    d1 = decide(f, history=[PastAttempt(PLAN, "hang", 3)])
    assert isinstance(d1, Relaunch) and d1.plan == PLAN and d1.remedy == "retry_same"
    d2 = decide(f, history=[PastAttempt(PLAN, "hang", 3), PastAttempt(PLAN, "hang", 3)])
    assert isinstance(d2, Relaunch) and d2.plan != PLAN


def test_hang_twice_no_knob_gives_up_hang():
    c = PlanContext((), CFG, violations)
    f = Failure("hang", "no new step", False, "training")
    d = next_plan(f, PLAN, [PastAttempt(PLAN, "hang", 3), PastAttempt(PLAN, "hang", 3)], c)
    assert isinstance(d, GiveUp) and d.state is State.FAILED_HANG


@pytest.mark.parametrize("prev_step,now_step,gives_up", [(3, 3, True), (3, 5, False), (None, None, True)])
def test_crash_twice_without_progress(prev_step, now_step, gives_up):
    f = Failure("crash", "RuntimeError: boom", False, "training")
    hist = [PastAttempt(PLAN, "crash", prev_step), PastAttempt(PLAN, "crash", now_step)]
    d = decide(f, history=hist)
    assert isinstance(d, GiveUp) == gives_up
    if gives_up:
        assert d.state is State.FAILED_CRASH


def test_first_crash_relaunches_same_plan():
    d = decide(Failure("crash", "RuntimeError: boom", False, "training"))
    assert isinstance(d, Relaunch) and d.plan == PLAN and "checkpoint" in d.reason


def test_cfg_get():
    assert cfg_get(CFG, "policy.tp") == 1 and cfg_get(CFG, "a.b", 7) == 7


def test_budgets_compose():
    b = MaxAttempts(3) | Deadline(1000.0)
    assert b.exhausted(BudgetState(2, 999.0)) is None
    assert "3 of 3" in b.exhausted(BudgetState(3, 10.0))
    assert "deadline" in b.exhausted(BudgetState(1, 1000.0))
    assert "max 3 attempts or deadline" in b.describe()


def test_parse_deadline_next_occurrence():
    import datetime as dt
    now = dt.datetime(2026, 11, 25, 19, 0)
    assert dt.datetime.fromtimestamp(parse_deadline("07:00", now)) == dt.datetime(2026, 11, 26, 7, 0)
    assert dt.datetime.fromtimestamp(parse_deadline("20:30", now)) == dt.datetime(2026, 11, 25, 20, 30)
    with pytest.raises(UserError, match="HH:MM"):
        make_budget(3, "7pm", now)
    with pytest.raises(UserError, match="max-attempts"):
        make_budget(0, None, now)


def test_host_oom_never_raises_tp():
    cfg = {**CFG, "gpus": 4}
    f = Failure("host_oom", "killed", False, "training", {"limit_mib": 1000.0})
    assert decide(f, c=ctx(cfg)).remedy == "micro_batch"


def test_cuda_oom_during_validation_goes_to_generation_knobs_first():
    """In NeMo RL validation is vLLM generation: an OOM there lowers vLLM's share, not TP."""
    f = oom("validation", tried_mib=4 * GIB, total_mib=80 * GIB, free_mib=1 * GIB, process_mib=79 * GIB)
    d = decide(f)
    assert d.remedy == "gen_mem"


def test_validation_oom_without_generation_knobs_falls_back_to_any_knob():
    f = oom("validation", tried_mib=4 * GIB, total_mib=80 * GIB, free_mib=1 * GIB, process_mib=79 * GIB)
    knobs = tuple(k for k in KNOBS if "generation" not in k.phases)
    d = decide(f, c=PlanContext(knobs, CFG, violations, None))
    assert d.remedy is not None and d.remedy != "gen_mem"


def test_environment_remedy_turns_a_give_up_into_a_same_plan_relaunch():
    from ops.remedies import prefer_environment_remedy
    crash = Failure("venv_broken", "ModuleNotFoundError in a worker venv", False, None, {})
    give_up = GiveUp("no remedy", State.FAILED_CRASH)
    d = prefer_environment_remedy(give_up, crash, PLAN, {"NRL_FORCE_REBUILD_VENVS": (None, "true")})
    assert isinstance(d, Relaunch) and d.plan == PLAN and d.remedy == "env"
    assert prefer_environment_remedy(give_up, crash, PLAN, {}) is give_up
    config = Failure("config", "Could not override 'x'", True, None, {})
    assert prefer_environment_remedy(give_up, config, PLAN, {"X": (None, "1")}) is give_up
