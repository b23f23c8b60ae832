"""Read everything a finished (or running) run left on disk into one plain value. Does file I/O only.

Sources (docs/contracts.md): ops/journal.jsonl, ops/state.json, ops/heartbeat.json, exp_NNN/metrics.jsonl,
step_N/ checkpoints (training_info.json, config.yaml), output.log ("Saving checkpoint for step N" lines),
and the run's config (the newest checkpoint's config.yaml, else the plan's YAML plus its overrides).
Every reader tolerates what a crash leaves behind: a torn last line, a missing file, a bad JSON line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from training.spec import RunPaths

_STEP_DIR = re.compile(r"^step_(\d+)$")
_EXP_DIR = re.compile(r"^exp_(\d+)$")
_SAVE_LINE = re.compile(r"Saving checkpoint for step (\d+)")
ACCURACY_KEYS = ("val:accuracy", "val_accuracy", "validation/accuracy", "accuracy")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path
    accuracy: float | None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunSettings:
    """The few config values the report judges against (None when unknown)."""
    save_period: int | None = None
    keep_top_k: int | None = None
    max_num_steps: int | None = None
    val_period: int | None = None
    metric_name: str | None = None
    higher_is_better: bool = True
    model_name: str | None = None
    source: str = "unknown"


@dataclass(frozen=True)
class RunData:
    paths: RunPaths
    records: tuple[dict, ...]
    state: dict | None
    heartbeat: dict | None
    metrics: tuple[dict, ...]           # metric rows, each with "_attempt" and "_exp" added
    checkpoints: tuple[Checkpoint, ...]
    logged_saves: tuple[int, ...]       # steps named by "Saving checkpoint for step N" in output.log
    settings: RunSettings
    bad_lines: int = 0                  # journal lines that were not JSON (torn writes excluded)
    evals: tuple[dict, ...] = ()        # post-run evaluations: journal "eval" records, else ops/eval.json


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Objects of a JSON-lines file; a last line without '\\n' is ignored (being written). (rows, bad)."""
    try:
        data = path.read_bytes()
    except OSError:
        return [], 0
    lines = data.split(b"\n")[:-1]          # the piece after the last \n is incomplete
    rows, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows, bad


def read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def iso_to_epoch(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def read_metrics(root: Path, records: list[dict]) -> list[dict]:
    """All exp_NNN/metrics.jsonl rows, each tagged with the attempt that wrote it (by start time)."""
    exps = sorted((int(m.group(1)), p) for p in _safe_iterdir(root)
                  if (m := _EXP_DIR.match(p.name)) and p.is_dir())
    starts = [(r.get("attempt", 0), iso_to_epoch(r.get("ts"))) for r in records if r.get("kind") == "attempt_start"]
    out: list[dict] = []
    for index, (_, exp_dir) in enumerate(exps):
        rows, _ = read_jsonl(exp_dir / "metrics.jsonl")
        first_time = next((r["time"] for r in rows if isinstance(r.get("time"), (int, float))), None)
        attempt = _attempt_for(first_time, starts, index)
        for row in rows:
            out.append({**row, "_attempt": attempt, "_exp": exp_dir.name})
    return out


def _attempt_for(first_time: float | None, starts: list[tuple[int, float | None]], index: int) -> int:
    if first_time is not None:
        # 1 s of slack: the journal's ISO stamps and the trainer's epoch come from different clocks' reads.
        earlier = [a for a, t in starts if t is not None and t <= first_time + 1.0]
        if earlier:
            return max(earlier)
    return starts[index][0] if index < len(starts) else index + 1


def read_checkpoints(root: Path) -> list[Checkpoint]:
    out = []
    for p in _safe_iterdir(root):
        m = _STEP_DIR.match(p.name)
        if not (m and p.is_dir()):
            continue
        info = read_json(p / "training_info.json") or {}
        acc = next((float(info[k]) for k in ACCURACY_KEYS if isinstance(info.get(k), (int, float))), None)
        out.append(Checkpoint(int(m.group(1)), p, acc, info))
    return sorted(out, key=lambda c: c.step)


def read_logged_saves(output_log: Path, max_bytes: int = 256 * 2**20) -> list[int]:
    """Steps of "Saving checkpoint for step N" lines (the last `max_bytes` of a huge log only)."""
    try:
        with output_log.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return sorted({int(m.group(1)) for m in _SAVE_LINE.finditer(text)})


def read_settings(checkpoints: list[Checkpoint], records: list[dict]) -> RunSettings:
    """Checkpoint/validation settings from the newest step_N/config.yaml, else the plan's YAML + overrides."""
    from omegaconf import OmegaConf

    cfg, source = None, "unknown"
    for ckpt in reversed(checkpoints):
        if (ckpt.path / "config.yaml").is_file():
            try:
                cfg, source = OmegaConf.load(ckpt.path / "config.yaml"), f"{ckpt.path.name}/config.yaml"
                break
            except Exception:       # a torn or foreign YAML: try the next source
                continue
    if cfg is None:
        cfg, source = plan_config(records)
    if cfg is None:
        return RunSettings()
    return RunSettings(
        save_period=_int(select(cfg, "checkpointing.save_period")),
        keep_top_k=_int(select(cfg, "checkpointing.keep_top_k")),
        max_num_steps=_int(select(cfg, "grpo.max_num_steps")),
        val_period=_int(select(cfg, "grpo.val_period")),
        metric_name=select(cfg, "checkpointing.metric_name"),
        higher_is_better=bool(select(cfg, "checkpointing.higher_is_better", True)),
        model_name=select(cfg, "policy.model_name"),
        source=source,
    )


def plan_config(records: list[dict]) -> tuple[Any, str]:
    """The config of the latest plan in `records` (unresolved DictConfig) and where it came from."""
    from omegaconf import OmegaConf

    plan = next((r.get("plan") for r in reversed(records)
                 if r.get("kind") in ("attempt_start", "run_start") and r.get("plan")), None)
    if not plan:
        return None, "unknown"
    source = f"{Path(plan['config_path']).name} + overrides"
    try:                            # NeMo RL's loader (defaults: inheritance, Hydra overrides) when installed
        from training.config import load_config
        return load_config(plan["config_path"], tuple(plan.get("overrides", ()))), source
    except Exception:               # not installed, or it refused the plan: plain YAML + dotlist below
        pass
    try:
        base = OmegaConf.load(plan["config_path"])
        dotlist = [o.lstrip("+") for o in plan.get("overrides", ()) if "=" in o and not o.startswith("~")]
        return OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist)), source
    except Exception:               # unreadable plan config: settings stay unknown, the report says so
        return None, "unknown"


def select(cfg: Any, key: str, default: Any = None) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(cfg, key, default=default, throw_on_resolution_failure=False)
    except Exception:
        return default


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _safe_iterdir(root: Path) -> list[Path]:
    try:
        return list(root.iterdir())
    except OSError:
        return []


def load_run(root: Path) -> RunData:
    paths = RunPaths(Path(root))
    records, bad = read_jsonl(paths.journal)
    checkpoints = read_checkpoints(paths.root)
    return RunData(
        paths=paths,
        records=tuple(records),
        state=read_json(paths.state_file),
        heartbeat=read_json(paths.heartbeat),
        metrics=tuple(read_metrics(paths.root, records)),
        checkpoints=tuple(checkpoints),
        logged_saves=tuple(read_logged_saves(paths.output_log)),
        settings=read_settings(checkpoints, records),
        bad_lines=bad,
        evals=tuple(read_evals(paths, records)),
    )


def read_evals(paths: RunPaths, records: list[dict]) -> list[dict]:
    # "eval" records also carry preflight results and validation accuracy; a post-run one names `which`.
    from_journal = [r for r in records if r.get("kind") == "eval" and r.get("which")]
    if from_journal:
        return from_journal
    doc = read_json(paths.ops_dir / "eval.json") or {}
    return [r for r in doc.get("results", []) if isinstance(r, dict)]
