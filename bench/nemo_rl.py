"""Benchmark of the NeMo RL trainer's pure-ish paths at realistic sizes. Prints numbers and the machine state;
asserts nothing. I/O: temp files only.

- `training_config`: resolve the Workplace Assistant YAML (Hydra overrides, `${mul:}`), effective plan, constraints;
- `hf_cache`: verify a snapshot laid out as huggingface_hub does, with N shard links (Nemotron 9B has 4 shards;
  70B-class models ~30; we also try 1000 files);
- `chat_template`: patch + verify-by-rendering the pretty template;
- `classify`: NeMo RL's signatures + ops.classify over a long transcript (a night of steps, then an OOM), i.e.
  what `ops diagnose` costs on a big output.log; and the host-memory tracker scan over the same lines.

    .venv/bin/python bench/nemo_rl.py [--steps 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from nemo_support import TEMPLATES, WORKPLACE, build_cache, model_files  # noqa: E402
from nemo_transcripts import CASES, prelude, step  # noqa: E402
from ops.classify import Evidence, classify  # noqa: E402
from training import chat_template, hf_cache, nemo_plan  # noqa: E402
from training.config import resolve  # noqa: E402
from training.nemo_log import host_memory_growth  # noqa: E402
from training.nemo_rl import SIGNATURES  # noqa: E402


def timed(fn, runs: int = 5) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, python {sys.version.split()[0]}")

    s, cfg = timed(lambda: resolve(WORKPLACE, ["++grpo.max_num_steps=3"]))
    s2, _ = timed(lambda: (nemo_plan.effective_plan(cfg), nemo_plan.violations(cfg, 8, {"num_attention_heads": 40,
                                                                                      "num_key_value_heads": 8})))
    print(f"training_config: resolve {s * 1000:.1f} ms, plan + constraints {s2 * 1000:.2f} ms (median of 5)")

    with tempfile.TemporaryDirectory() as d:
        for shards in (4, 30, 1000):
            cache = Path(d) / f"c{shards}"
            build_cache(cache, model_files(shards=shards, shard_bytes=16))
            s, rep = timed(lambda: hf_cache.verify_snapshot(cache, "nvidia/NVIDIA-Nemotron-Nano-9B-v2"))
            print(f"hf_cache verify: {shards:5d} shards -> {s * 1000:7.2f} ms (complete={rep.complete})")

    pretty = (TEMPLATES / "chat_template.jinja").read_text()
    s, _ = timed(lambda: chat_template.patch_text(pretty))
    s2, v = timed(lambda: chat_template.verify_template(chat_template.patch_text(pretty).text))
    print(f"chat_template: patch {s * 1000:.2f} ms, patch + verify by rendering {s2 * 1000:.1f} ms (ok={v.ok})")

    oom = next(c for c in CASES if c.name == "ray_wrapped_training_oom").lines[len(prelude()) + len(step(1)):]
    lines = prelude()
    for n in range(1, args.steps + 1):
        lines += step(n, total=args.steps)
    lines += list(oom)
    s, f = timed(lambda: classify(Evidence(lines=tuple(lines)), SIGNATURES), runs=3)
    s2, _ = timed(lambda: host_memory_growth(lines), runs=3)
    print(f"classify: {len(lines)} lines ({args.steps} steps + OOM) -> {s:.2f} s, kind={f.kind} phase={f.phase}; "
          f"memory-tracker scan {s2:.2f} s")
    clean = lines[: -len(oom)]
    s3, _ = timed(lambda: classify(Evidence(lines=tuple(clean)), SIGNATURES), runs=3)
    print(f"classify a clean log of {len(clean)} lines (worst case: every signature scans every line): {s3:.2f} s")


if __name__ == "__main__":
    main()
