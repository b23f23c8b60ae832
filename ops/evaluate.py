"""Post-run evaluation (`ops run --eval-cmd CMD`): the tutorial's "Measuring Real-World Improvement".

After a successful run, CMD runs twice: on the base model (`policy.model_name`) and on the best
checkpoint (by the checkpoint metric; the newest step_N when none has it). Placeholders, substituted
inside each argument of the split command (no shell, so no quoting surprises): `{model}` (the model
name or the step_N directory), `{which}` ("base" | "trained"), `{out}` (a JSON file the command may
write) and `{step}`. The score is the JSON file's "score" (or "accuracy", or its only number), else
the last number the command printed. A failing, missing or timed-out evaluation is recorded, never
raised: it never fails the run. Does process and file I/O; `parse_score` and `choose_models` are pure.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ops.errors import UserError
from ops.logs import redact
from ops.rundata import Checkpoint, read_checkpoints, read_settings
from ops.journal import read_journal, write_json_atomic
from training.spec import RunPaths

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
SCORE_KEYS = ("score", "accuracy", "overall_accuracy", "acc")
PLACEHOLDERS = ("{model}", "{which}", "{out}", "{step}")


def check_template(template: str) -> list[str]:
    """The split command; UserError when it is empty, unbalanced or lacks {model}."""
    try:
        argv = shlex.split(template)
    except ValueError as err:
        raise UserError(f"--eval-cmd {template!r}: {err}; quote it like a shell command") from None
    if not argv or not any("{model}" in a for a in argv):
        raise UserError(f"--eval-cmd {template!r}: it must contain {{model}} (replaced by the model to evaluate)")
    return argv


def parse_score(stdout: str, json_doc: object = None) -> float | None:
    """The score from a JSON document (preferred) or the last number in the output."""
    if isinstance(json_doc, Mapping):
        for key in SCORE_KEYS:
            if isinstance(json_doc.get(key), (int, float)) and not isinstance(json_doc.get(key), bool):
                return float(json_doc[key])
        numbers = [v for v in json_doc.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) == 1:
            return float(numbers[0])
    elif isinstance(json_doc, (int, float)) and not isinstance(json_doc, bool):
        return float(json_doc)
    found = _NUMBER.findall(stdout or "")
    return float(found[-1]) if found else None


def choose_models(base_model: str | None, checkpoints: Sequence[Checkpoint], higher_is_better: bool = True
                  ) -> list[tuple[str, str, int | None]]:
    """[(which, model, step)]: the base model, then the best checkpoint (newest when none is scored)."""
    out: list[tuple[str, str, int | None]] = []
    if base_model:
        out.append(("base", str(base_model), None))
    scored = [c for c in checkpoints if c.accuracy is not None]
    if scored:
        best = sorted(scored, key=lambda c: (c.accuracy, c.step), reverse=higher_is_better)[0]
    else:
        best = max(checkpoints, key=lambda c: c.step, default=None)
    if best is not None:
        out.append(("trained", str(best.path), best.step))
    return out


def run_one(argv_template: Sequence[str], which: str, model: str, step: int | None, paths: RunPaths,
            timeout_s: float, env: Mapping[str, str] | None = None) -> dict:
    """Run one evaluation; a dict for the journal's `eval` record (never raises for the command's faults)."""
    out_json = paths.ops_dir / f"eval-{which}.json"
    log_path = paths.ops_dir / f"eval-{which}.log"
    out_json.unlink(missing_ok=True)
    subs = {"{model}": model, "{which}": which, "{out}": str(out_json), "{step}": "" if step is None else str(step)}
    argv = [_substitute(a, subs) for a in argv_template]
    result = {"which": which, "model": model, "step": step, "score": None, "ok": False, "error": None,
              "exit_code": None, "duration_s": None, "log": str(log_path.relative_to(paths.root))}
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True, cwd=paths.root,
                                env=dict(os.environ if env is None else env))
    except OSError as err:
        result["error"] = f"cannot start {argv[0]!r}: {err.strerror or err}"
        return result
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        output, _ = proc.communicate()
        result["error"] = f"timed out after {timeout_s:.0f} s (killed)"
    result["duration_s"] = round(time.monotonic() - start, 3)
    result["exit_code"] = proc.returncode
    log_path.write_text(redact(output or ""))
    if result["error"] is None and proc.returncode != 0:
        tail = (output or "").strip().splitlines()[-1:] or [""]
        result["error"] = redact(f"exit code {proc.returncode}: {tail[0][:200]}")
    if result["error"] is None:
        result["score"] = parse_score(output, _read_json_any(out_json))
        result["ok"] = result["score"] is not None
        if not result["ok"]:
            result["error"] = "no score: write JSON to {out} or print a number last"
    return result


def run_evals(template: str, paths: RunPaths, timeout_s: float = 6 * 3600.0,
              env: Mapping[str, str] | None = None) -> list[dict]:
    """Evaluate the base model and the best checkpoint of the run at `paths`; write ops/eval.json.

    Returns the results (one dict per model) for the supervisor to journal as `eval` records."""
    argv = check_template(template)
    checkpoints = read_checkpoints(paths.root)
    settings = read_settings(checkpoints, read_journal(paths.journal))
    paths.ops_dir.mkdir(parents=True, exist_ok=True)
    results = [run_one(argv, which, model, step, paths, timeout_s, env)
               for which, model, step in choose_models(settings.model_name, checkpoints, settings.higher_is_better)]
    scores = {r["which"]: r["score"] for r in results if r["score"] is not None}
    delta = scores["trained"] - scores["base"] if {"base", "trained"} <= scores.keys() else None
    write_json_atomic(paths.ops_dir / "eval.json", {"command": redact(template), "results": results, "delta": delta})
    return results


def _substitute(arg: str, subs: Mapping[str, str]) -> str:
    for key, value in subs.items():
        arg = arg.replace(key, value)
    return arg


def _read_json_any(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue
