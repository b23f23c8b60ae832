"""The supervisor loop against a real trainer process (tests/supervisor_fixture_trainer.py): success,
crash + resume, hang + stacks, deterministic error, cgroup OOM kill + smaller plan, budgets, listeners."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ops.backends.local import LocalBackend  # noqa: E402
from ops.budget import MaxAttempts  # noqa: E402
from cgroup_support import needs_memory_cgroup  # noqa: E402
from ops.journal import read_journal  # noqa: E402
from ops.state import State  # noqa: E402
from ops.supervisor import Supervisor, SupervisorOptions  # noqa: E402
from supervisor_fixture_trainer import FixtureTrainer  # noqa: E402
from training.spec import Plan, RunPaths  # noqa: E402

FAST = dict(poll_s=0.05, sample_s=0.2, grace_s=2.0, hang_factor=3.0, hang_floor_s=1.5, startup_timeout_s=20.0)


def make(tmp_path, overrides=(), budget=None, memory_limit_mib=None, listeners=(), spec_cls=None, backend_cls=None,
         **opts):
    cfg = tmp_path / "fixture.yaml"
    cfg.write_text("steps: 4\n")
    paths = RunPaths(tmp_path / "results" / "exp1")
    spec, backend = (spec_cls or FixtureTrainer)(cfg), (backend_cls or LocalBackend)(memory_limit_mib, paths.root.absolute())
    sup = Supervisor(spec, backend, paths, Plan(cfg, tuple(overrides)),
                     budget or MaxAttempts(4), run_id=f"test-{tmp_path.name}", listeners=listeners,
                     options=SupervisorOptions(**{**FAST, **opts}))
    return sup, paths


def kinds(paths):
    return [r["kind"] for r in read_journal(paths.journal)]


def records(paths, kind):
    return [r for r in read_journal(paths.journal) if r["kind"] == kind]


def test_success_records_everything(tmp_path):
    seen = []
    sup, paths = make(tmp_path, listeners=[seen.append, lambda r: 1 / 0])
    out = sup.run()
    assert out.state is State.SUCCEEDED and out.steps_done == 4 and out.attempts == 1
    recs = read_journal(paths.journal)
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert [r["seq"] for r in seen] == [r["seq"] for r in recs]        # listener saw each, a raising one ignored
    assert recs[0]["kind"] == "run_start" and recs[-1]["kind"] == "run_end"
    assert [r["to"] for r in records(paths, "transition")] == ["PREFLIGHT", "LAUNCHING", "RUNNING", "SUCCEEDED"]
    prog = records(paths, "progress")
    assert [p["step"] for p in prog] == [1, 2, 3, 4] and prog[-1]["reward"] == pytest.approx(0.4)
    st = __import__("json").loads(paths.state_file.read_text())
    assert st["state"] == "SUCCEEDED" and st["step"] == 4 and st["total_steps"] == 4
    hb = __import__("json").loads(paths.heartbeat.read_text())
    assert hb["pid"] == os.getpid() and hb["state"] == "SUCCEEDED"
    assert "### grpo-ops attempt 1 " in paths.output_log.read_text()
    env = records(paths, "attempt_start")[0]["env"]
    assert env["GRPO_OPS_RUN_ID"] == sup.run_id and env["GRPO_OPS_ATTEMPT"] == "1"


def test_crash_resumes_from_checkpoint(tmp_path):
    sup, paths = make(tmp_path, ["crash_at=3"])
    out = sup.run()
    assert out.state is State.SUCCEEDED and out.attempts == 2
    ends = records(paths, "attempt_end")
    assert ends[0]["failure"]["kind"] == "crash" and "injected crash at step 3" in ends[0]["failure"]["summary"]
    assert ends[0]["last_step"] == 2
    starts = records(paths, "attempt_start")
    assert starts[1]["resume_from_step"] == 2
    assert records(paths, "decision")[0]["remedy"] == "retry_same"
    assert not any("did not continue" in r.get("message", "") for r in records(paths, "warning"))


def test_deterministic_error_ends_at_once(tmp_path):
    sup, paths = make(tmp_path, ["fail_text='FixtureConfigError: bad key'"])
    out = sup.run()
    assert out.state is State.FAILED_CONFIG and out.attempts == 1
    assert "FixtureConfigError" in out.reason
    assert records(paths, "decision")[0]["action"] == "give_up"


def test_hang_detected_stacks_saved_relaunched(tmp_path):
    sup, paths = make(tmp_path, ["hang_at=3", "step_s=0.1"])
    out = sup.run()
    assert out.state is State.SUCCEEDED and out.attempts == 2
    end = records(paths, "attempt_end")[0]
    assert end["failure"]["kind"] == "hang" and end["stack_dumps"]
    dump = (paths.root / end["stack_dumps"][0]).read_text()
    assert "main" in dump and "supervisor_fixture_trainer.py" in dump
    assert records(paths, "decision")[0]["remedy"] == "retry_same"


def test_budget_stops_crash_loop(tmp_path):
    sup, paths = make(tmp_path, ["crash_at=2"], budget=MaxAttempts(1))
    out = sup.run()
    assert out.state is State.FAILED_BUDGET and "1 of 1 attempts" in out.reason


def test_same_failure_twice_without_progress_gives_up(tmp_path):
    sup, paths = make(tmp_path, ["exit_code=5", "steps=1"])
    out = sup.run()
    assert out.state is State.FAILED_CRASH and out.attempts == 2


@needs_memory_cgroup
def test_cgroup_oom_relaunched_smaller(tmp_path):
    # 8 x 20 MiB + ~30 MiB python > 150 MiB limit; the memory model line sizes the next plan.
    sup, paths = make(tmp_path, ["mib_per_sample=20", "global_batch=8"], memory_limit_mib=150)
    out = sup.run()
    assert out.state is State.SUCCEEDED, out
    end = records(paths, "attempt_end")[0]
    assert end["failure"]["kind"] == "host_oom" and end["exit"]["oom_killed"] is True
    dec = records(paths, "decision")[0]
    assert dec["remedy"] == "micro_batch" and dec["experiment_changed"] is False
    old, new = dec["plan_diff"]["micro_batch"]
    assert old == 8 and new in (1, 2, 4)
    assert not list(Path("/sys/fs/cgroup/memory/grpo-ops").glob(f"*{tmp_path.name}*/attempt-*"))


class _OneShotEnvTrainer(FixtureTrainer):
    """A spec whose environment remedy after a crash is one-shot (like NeMo RL's venv rebuild)."""
    one_shot_env = ("GRPO_OPS_TEST_ONCE",)

    def environment_remedy(self, failure, plan, env):
        return {"GRPO_OPS_TEST_ONCE": "1"} if failure.kind == "crash" else {}


def test_one_shot_environment_remedy_applies_to_the_next_launch_only(tmp_path):
    sup, paths = make(tmp_path, ["crash_at=3"], spec_cls=_OneShotEnvTrainer)
    out = sup.run()
    assert out.state is State.SUCCEEDED and out.attempts == 2
    assert records(paths, "decision")[0]["env_diff"] == {"GRPO_OPS_TEST_ONCE": [None, "1"]}
    assert "GRPO_OPS_TEST_ONCE" not in sup.extra_env


class _BackendGoneOnRelaunch(LocalBackend):
    """A real local backend whose second spawn fails as a backend that went away would (e.g. a lost Ray head)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.spawns = 0

    def spawn(self, launch, log_path):
        self.spawns += 1
        if self.spawns > 1:
            from ops.errors import UserError
            raise UserError("cannot reach the Ray dashboard at http://127.0.0.1:1")
        return super().spawn(launch, log_path)


def test_backend_gone_at_relaunch_is_a_crash_not_a_config_error(tmp_path):
    sup, _paths = make(tmp_path, ["crash_at=3"], backend_cls=_BackendGoneOnRelaunch)
    out = sup.run()
    assert out.state is State.FAILED_CRASH and "cannot relaunch the trainer (attempt 2)" in out.reason
