"""A small real trainer process for supervisor tests, plus its TrainerSpec. Prints NeMo RL's log lines,
writes step_N checkpoints, resumes from the highest one, and injects faults (crash, hang, memory) once.

Run as `python tests/supervisor_fixture_trainer.py CONFIG.yaml key=value ...`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from training.spec import Knob, Launch, Plan, RunPaths, Signature, override_key

DEFAULTS = {"leftover": 0, "steps": 4, "step_s": 0.05, "micro_batch": 8, "global_batch": 8, "mib_per_sample": 0,
            "crash_at": 0, "hang_at": 0, "exit_code": 0, "fail_text": "", "ckpt_dir": "."}
HERE = Path(__file__).resolve()


def load(config: str, overrides: list[str]) -> dict:
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.load(config) if config else {},
                          OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
    return OmegaConf.to_container(cfg)


def once(ckpt: Path, name: str) -> bool:
    marker = ckpt / f".fired_{name}"
    if marker.exists():
        return False
    marker.write_text("1")
    return True


def main() -> int:
    cfg = load(sys.argv[1], sys.argv[2:])
    ckpt = Path(cfg["ckpt_dir"])
    ckpt.mkdir(parents=True, exist_ok=True)
    if cfg["fail_text"]:
        print("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>")
        print(cfg["fail_text"], flush=True)
        return 1
    done = max((int(p.name[5:]) for p in ckpt.glob("step_*")), default=0)
    if cfg["leftover"] and once(ckpt, "leftover"):
        # a helper in its own session: outlives this process, like a Gym server or a Ray daemon would
        import subprocess
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
        (ckpt / "leftover.pid").write_text(str(p.pid))
    print(f"grpo-ops: memory model: static_mib=30 per_sample_mib={cfg['mib_per_sample']} device=cpu tp=1",
          flush=True)
    hold = []
    for step in range(done + 1, cfg["steps"] + 1):
        print(f"========================= Step {step}/{cfg['steps']} =========================", flush=True)
        print("▶ Training policy...", flush=True)
        if cfg["mib_per_sample"]:
            hold = [bytearray(cfg["mib_per_sample"] << 20) for _ in range(cfg["micro_batch"])]
            for b in hold:
                b[:: 4096] = b"x" * len(b[:: 4096])
        if step == cfg["crash_at"] and once(ckpt, f"crash{step}"):
            print("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>", flush=True)
            print(f"RuntimeError: injected crash at step {step}", flush=True)
            return 1
        if step == cfg["hang_at"] and once(ckpt, f"hang{step}"):
            while True:
                time.sleep(1)
        time.sleep(cfg["step_s"])
        (ckpt / f"step_{step}").mkdir(exist_ok=True)
        print(f"📊 Training Results:\n  • Loss: 0.1000\n  • Avg Reward: {0.1 * step:.4f}", flush=True)
        print(f"⏱️  Timing:\n  • Total step time: {cfg['step_s']:.2f}s", flush=True)
    print("Max number of steps has been reached, stopping training early", flush=True)
    return cfg["exit_code"]


class FixtureTrainer:
    """TrainerSpec for the fixture trainer."""
    name = "fixture"
    knobs = (Knob("micro_batch", "micro_batch", phases=("training",)),)
    signatures = (Signature("config", r"FixtureConfigError", deterministic=True),)

    def __init__(self, config: Path | None = None, **_ignored):
        self.config = config or HERE.with_name("supervisor_fixture.yaml")

    def default_config(self) -> Path:
        return self.config

    def resolve(self, plan: Plan) -> dict:
        return load(str(plan.config_path), list(plan.overrides))

    def constraint_violations(self, cfg, gpus=None) -> list[str]:
        if cfg["global_batch"] % cfg["micro_batch"]:
            return [f"global_batch {cfg['global_batch']} is not a multiple of micro_batch {cfg['micro_batch']}"]
        return []

    def launch(self, plan: Plan, paths: RunPaths, base_env, first: bool) -> Launch:
        ovr = [o for o in plan.overrides if override_key(o) != "ckpt_dir"] + [f"ckpt_dir={paths.checkpoint_dir}"]
        env = {**base_env, "PYTHONPATH": str(HERE.parent.parent), "PYTHONUNBUFFERED": "1"}
        return Launch((sys.executable, str(HERE), str(plan.config_path), *ovr), env, paths.root)


if __name__ == "__main__":
    sys.exit(main())
