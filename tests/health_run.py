"""A real supervisor (ops.supervisor + LocalBackend + RunLock) over the fixture trainer, as its own process,
for `ops health` tests: `python tests/health_run.py RESULTS EXP [override ...]`. Its hang deadline is long,
so a hung trainer stays hung until the test ends it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ops.backends.local import LocalBackend  # noqa: E402
from ops.budget import MaxAttempts  # noqa: E402
from ops.runs import RunLock, exp_dir  # noqa: E402
from ops.supervisor import Supervisor, SupervisorOptions  # noqa: E402
from supervisor_fixture_trainer import FixtureTrainer  # noqa: E402
from training.spec import Plan, RunPaths  # noqa: E402


def main() -> int:
    results, exp, overrides = Path(sys.argv[1]), sys.argv[2], tuple(sys.argv[3:])
    cfg = results / "fixture.yaml"
    cfg.write_text("steps: 4\n")
    paths = RunPaths(exp_dir(exp, results))
    paths.ops_dir.mkdir(parents=True, exist_ok=True)
    opts = SupervisorOptions(poll_s=0.05, sample_s=0.2, grace_s=1.0, hang_floor_s=600.0, startup_timeout_s=600.0)
    with RunLock(paths, exp):
        sup = Supervisor(FixtureTrainer(cfg), LocalBackend(), paths, Plan(cfg, overrides), MaxAttempts(2),
                         run_id=exp, options=opts)
        out = sup.run()
    return 0 if out.ok else 1


if __name__ == "__main__":
    sys.exit(main())
