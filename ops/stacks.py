"""Stack dumps before a hang kill: `py-spy dump` of every Python process of the trainer tree. Does I/O
(runs py-spy, writes results/<exp>/ops/stacks/attempt-N-<pid>.txt).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import psutil


def py_spy_path() -> str | None:
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def is_python(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        exe = os.path.basename(p.exe() or "")
        first = os.path.basename((p.cmdline() or [""])[0])
    except (psutil.Error, OSError):
        return False
    return exe.startswith("python") or first.startswith("python") or first.startswith("ray::")


def dump_stacks(pids: Iterable[int], out_dir: Path, attempt: int, timeout_s: float = 10.0) -> list[Path]:
    """One file per Python process; a failed dump writes its error instead (a missing dump says why)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = py_spy_path()
    written: list[Path] = []
    for pid in pids:
        if not is_python(pid):
            continue
        path = out_dir / f"attempt-{attempt}-{pid}.txt"
        if exe is None:
            path.write_text("py-spy not found: install py-spy to get stack dumps\n")
            written.append(path)
            continue
        try:
            res = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True,
                                 timeout=timeout_s)
            text = res.stdout + (f"\n[py-spy exit {res.returncode}] {res.stderr}" if res.returncode else "")
        except subprocess.TimeoutExpired:
            text = f"py-spy dump --pid {pid} timed out after {timeout_s:g}s\n"
        path.write_text(text)
        written.append(path)
    return written
