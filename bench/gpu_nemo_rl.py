"""The NeMo RL trainer's GPU-facing paths on a real GPU (the H100 machine), no fakes: TORCH_CUDA_ARCH_LIST from
NVML for the launch environment, and (when omegaconf + hydra-core are importable) the config constraints with
the real GPU count, for the tutorial's 8-GPU config and its single-GPU variant. Needs only nvidia-ml-py and this
repo (PYTHONPATH=.). Exit 0 when the expectations hold, 1 otherwise. I/O: NVML, a temp dir.

    PYTHONPATH=. python bench/gpu_nemo_rl.py
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from healthchecks.gpu_seam import GpuUnavailable  # noqa: E402
from healthchecks.nvml_reader import NvmlReader  # noqa: E402
from training.nemo_rl import NemoRLTrainer, arch_list  # noqa: E402
from training.spec import Plan, RunPaths  # noqa: E402

WORKPLACE = ROOT / "tests/fixtures/nemo_rl/grpo_workplace_assistant_nemotron_nano_v2_9b.yaml"


def main() -> int:
    ok = True
    t0 = time.perf_counter()
    try:
        snap = NvmlReader().snapshot()
    except GpuUnavailable as err:
        print(f"no GPU here: {err}")
        return 1
    caps = [g.compute_capability for g in snap.gpus]
    print(f"NVML: {len(snap.gpus)} GPU(s) {[g.name for g in snap.gpus]}, capabilities {caps}, driver "
          f"{snap.driver_version} ({(time.perf_counter() - t0) * 1000:.0f} ms)")
    expected = arch_list(caps)
    trainer = NemoRLTrainer(repo=ROOT, gpu_reader=NvmlReader())
    with tempfile.TemporaryDirectory() as d:
        launch = trainer.launch(Plan(WORKPLACE, ("cluster.gpus_per_node=1",)), RunPaths(Path(d) / "exp"),
                                {"HF_HOME": str(Path(d) / "hf")}, first=True)
    got = launch.env["TORCH_CUDA_ARCH_LIST"]
    print(f"launch env: TORCH_CUDA_ARCH_LIST={got!r} (expected {expected!r}; H100 -> '9.0'), "
          f"NRL_FORCE_REBUILD_VENVS={launch.env['NRL_FORCE_REBUILD_VENVS']}")
    print("argv:", " ".join(launch.argv))
    ok &= got == expected
    if importlib.util.find_spec("omegaconf") and importlib.util.find_spec("hydra"):
        arch = {"num_attention_heads": 40, "num_key_value_heads": 8}
        tutorial = trainer.resolve(Plan(WORKPLACE))
        single = trainer.resolve(Plan(WORKPLACE, ("cluster.gpus_per_node=1",
                                                  "policy.megatron_cfg.tensor_model_parallel_size=1")))
        from training import nemo_plan
        v8 = nemo_plan.violations(tutorial, len(snap.gpus), arch)
        v1 = nemo_plan.violations(single, len(snap.gpus), arch)
        print("8-GPU config on this node:", v8 or "no violations")
        print("single-GPU variant:", v1 or "no violations", "|", nemo_plan.effective_plan(single).lines()[0])
        ok &= (len(snap.gpus) >= 8) == (not v8) and v1 == []
    else:
        print("omegaconf/hydra-core not installed here: config constraints skipped")
    print("RESULT:", "OK" if ok else "UNEXPECTED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
