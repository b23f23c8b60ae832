"""Evidence -> Failure: what went wrong in one attempt, with the numbers. Pure; no I/O, no clock.

`classify(evidence, signatures)` looks at the attempt's log lines, its exit, the cgroup OOM-kill counter and
the hang clock's verdict. The trainer spec's own signatures are tried before the generic ones below, so a
framework can name its errors more precisely (vLLM, Ray, NeMo RL). Each failure kind belongs to a family
("oom", "hang", "crash", "config") that decides the remedy and the terminal state.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ops.backends.base import Exit
from training.spec import Signature

# kind -> family. A spec signature may use any of these kinds; an unknown kind is a "crash" (or "config"
# when the signature says deterministic).
KIND_FAMILY: dict[str, str] = {
    "cuda_oom": "oom",            # torch.OutOfMemoryError / CUDA error: out of memory (training, logprob)
    "vllm_oom": "oom",            # vLLM: cumem allocator OOM, no memory for cache blocks
    "gpu_busy": "oom",            # vLLM: free memory on start-up below gpu_memory_utilization (stale holder)
    "cpu_oom": "oom",             # DefaultCPUAllocator: can't allocate memory
    "host_oom": "oom",            # SIGKILL by the kernel / cgroup OOM killer, Ray's memory monitor
    "device_oom": "oom",          # one rank's device memory ran out (a spec's signature, e.g. the embedded
                                  # workload's per-rank CPU "device" cgroup): more TP ranks can help
    "hang": "hang",               # no step within the deadline (hang clock) or a framework timeout
    "port_in_use": "crash",       # address already in use (a leftover holds the port: clean up, retry)
    "crash": "crash",             # a traceback / non-zero exit
    "killed": "crash",            # killed by a signal without OOM evidence
    "config": "config",           # bad override, bad config value, assertion on config
    "missing_file": "config",     # config / model / data not found
    "import_error": "config",     # broken environment
}

PHASES = {  # stage line -> phase (NeMo RL's grpo_train prints these; the embedded workload does too)
    "▶ Preparing batch": "preparing",
    "▶ Generating responses": "generation",
    "▶ Processing rewards": "rewards",
    "▶ Computing advantages": "advantages",
    "▶ Computing logprobs": "logprob",
    "▶ Preparing for training": "training",
    "▶ Training policy": "training",
    "Saving checkpoint for step": "checkpoint",
    "🔍 Running initial validation": "validation",
    "▶ Starting validation": "validation",
}


@dataclass(frozen=True)
class Evidence:
    """Everything observed about one attempt, as plain data."""
    lines: tuple[str, ...] = ()              # the attempt's output (tail plus lines flagged while streaming)
    exit: Exit | None = None                 # None: still running (hang) or unknown (a bare log file)
    hung: bool = False                       # the hang clock fired
    hang_detail: str = ""
    oom_kills: int = 0                       # rise of the cgroup oom_kill counter during the attempt
    memory_limit_mib: float | None = None    # the cgroup limit, when there is one
    peak_rss_mib: float | None = None
    last_step: int | None = None
    phase: str | None = None                 # from the last stage line; None -> derived from `lines`


@dataclass(frozen=True)
class Failure:
    kind: str
    summary: str
    deterministic: bool = False
    phase: str | None = None
    numbers: Mapping[str, float] = field(default_factory=dict)
    evidence_lines: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        if self.deterministic:
            return "config"
        return KIND_FAMILY.get(self.kind, "crash")

    def to_json(self) -> dict:
        return {"kind": self.kind, "family": self.family, "summary": self.summary,
                "deterministic": self.deterministic, "phase": self.phase, "numbers": dict(self.numbers),
                "evidence_lines": list(self.evidence_lines)}


# Generic signatures, in precedence order (after the spec's own). OOM first: an OOM drags secondary errors
# (ActorDiedError, NCCL aborts) behind it, and the root cause is the one to act on.
GENERIC_SIGNATURES: tuple[Signature, ...] = (
    Signature("cuda_oom", r"(OutOfMemoryError|CUDA out of memory|CUDA error: out of memory)"),
    Signature("vllm_oom", r"(out of memory at csrc/cumem_allocator|No available memory for the cache blocks)"),
    Signature("gpu_busy", r"Free memory on device \([\d.]+/[\d.]+ GiB\) on startup is less than desired"),
    Signature("cpu_oom", r"DefaultCPUAllocator: can't allocate memory"),
    Signature("host_oom", r"(killed due to the node running low on memory|Memory cgroup out of memory"
                          r"|OutOfMemoryError: Task was killed)"),
    Signature("config", r"(Could not override|OverridesError|ConfigKeyError|ConfigAttributeError"
                        r"|omegaconf\.errors\.|hydra\.errors\.|ConfigError|GRPO_OPS_ENABLE_FAULTS=1 is not set"
                        r"|must be divisible by|is not a multiple of|must be a multiple of)", deterministic=True),
    Signature("missing_file", r"(FileNotFoundError|RepositoryNotFoundError|is not a local folder and is not a "
                              r"valid model identifier|No such file or directory: )", deterministic=True),
    Signature("import_error", r"(ModuleNotFoundError|ImportError)", deterministic=True),
    Signature("port_in_use", r"(?i)address already in use"),
    Signature("hang", r"(did not return within [\d.]+s|GenerationUnavailable|Watchdog caught collective "
                      r"operation timeout)"),
)

_TRACEBACK = "Traceback (most recent call last)"
_EXC_LINE = re.compile(r"^(?:\([^)]*\)\s*)?([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))(?:\([^)]*\))?:?(.*)$")
_SIZE = r"([\d.]+)\s*(bytes|B|KiB|MiB|GiB|TiB)"
_UNIT = {"bytes": 1 / 2**20, "B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "TiB": 1024.0**2}

_OOM_FIELDS = (  # (name, regex) over the message; PyTorch >= 2.1 and the older "(GPU 0; ...)" form
    ("tried_mib", rf"Tried to allocate {_SIZE}"),
    ("total_mib", rf"total capacity of {_SIZE}"),
    ("free_mib", rf"of which {_SIZE} is free"),
    ("process_mib", rf"this process has {_SIZE} memory in use"),
    ("allocated_mib", rf"{_SIZE} is allocated by PyTorch"),
    ("reserved_unallocated_mib", rf"{_SIZE} is reserved by PyTorch but unallocated"),
    ("total_mib", rf"{_SIZE} total capacity"),
    ("allocated_mib", rf"{_SIZE} already allocated"),
    ("free_mib", rf"{_SIZE} free;"),
    ("reserved_mib", rf"{_SIZE} reserved in total by PyTorch"),
)
_OTHER_PROC = re.compile(rf"Process \d+ has {_SIZE} memory in use")
_GPU_INDEX = re.compile(r"GPU (\d+)")
_CPU_TRIED = re.compile(r"you tried to allocate (\d+) bytes")
_VLLM_FREE = re.compile(r"Free memory on device \(([\d.]+)/([\d.]+) GiB\) on startup is less than desired GPU "
                        r"memory utilization \(([\d.]+)")


def _mib(value: str, unit: str) -> float:
    return round(float(value) * _UNIT[unit], 2)


def parse_oom_numbers(text: str) -> dict[str, float]:
    """The numbers in PyTorch's CUDA OOM message (MiB), those vLLM prints, or the CPU allocator's."""
    out: dict[str, float] = {}
    for name, pattern in _OOM_FIELDS:
        m = re.search(pattern, text)
        if m and name not in out:
            out[name] = _mib(m.group(1), m.group(2))
    others = [_mib(v, u) for v, u in _OTHER_PROC.findall(text)]
    if others:
        out["other_processes_mib"] = round(sum(others), 2)
    m = _GPU_INDEX.search(text)
    if m and out:
        out["gpu"] = int(m.group(1))
    m = _CPU_TRIED.search(text)
    if m:
        out["tried_mib"] = round(int(m.group(1)) / 2**20, 2)
    m = _VLLM_FREE.search(text)
    if m:
        out.update(free_mib=float(m.group(1)) * 1024, total_mib=float(m.group(2)) * 1024,
                   gpu_memory_utilization=float(m.group(3)))
    return out


def phase_of(lines: Sequence[str]) -> str | None:
    """The phase named by the last stage line ("startup" before the first step line)."""
    for line in reversed(lines):
        for marker, phase in PHASES.items():
            if marker in line:
                return phase
        if _is_step_line(line):
            return "preparing"
    return "startup" if lines else None


_STEP_LINE = re.compile(r"={5,} Step (\d+)/(\d+) ={5,}")


def _is_step_line(line: str) -> bool:
    return bool(_STEP_LINE.search(line))


def _exception_line(lines: Sequence[str]) -> str | None:
    """The last `SomeError: message` line after the last traceback header."""
    start = max((i for i, ln in enumerate(lines) if _TRACEBACK in ln), default=None)
    if start is None:
        return None
    for line in reversed(lines[start:]):
        if _EXC_LINE.match(line.strip()) and not line.startswith((" ", "\t")):
            return line.strip()
    return None


def _first_match(sigs: Sequence[Signature], lines: Sequence[str]) -> tuple[Signature, int] | None:
    for sig in sigs:
        rx = re.compile(sig.pattern)
        for i, line in enumerate(lines):
            if rx.search(line):
                return sig, i
    return None


def _context(lines: Sequence[str], i: int, before: int = 2, after: int = 3) -> tuple[str, ...]:
    return tuple(ln[:2000] for ln in lines[max(0, i - before): i + after + 1])


def _summary(kind: str, line: str, numbers: Mapping[str, float]) -> str:
    if kind == "cuda_oom" and "tried_mib" in numbers:
        free = numbers.get("free_mib")
        return (f"CUDA out of memory: tried to allocate {numbers['tried_mib']:.0f} MiB"
                + (f" with {free:.0f} MiB free" if free is not None else "")
                + (f" of {numbers['total_mib']:.0f} MiB" if "total_mib" in numbers else ""))
    return line.strip()[:300]


def classify(ev: Evidence, signatures: Sequence[Signature] = ()) -> Failure | None:
    """The failure this evidence shows, or None when the attempt succeeded (exit 0, not hung)."""
    lines = list(ev.lines)
    phase = ev.phase or phase_of(lines)
    if ev.exit is not None and ev.exit.code == 0 and not ev.hung:
        return None
    hit = _first_match(tuple(signatures) + GENERIC_SIGNATURES, lines)
    if ev.hung and (hit is None or KIND_FAMILY.get(hit[0].kind) not in ("oom", "config")):
        return Failure("hang", ev.hang_detail or "no progress within the deadline", False, phase,
                       {}, tuple(lines[-5:]))
    if ev.oom_kills > 0 or (ev.exit is not None and ev.exit.oom_killed):
        numbers = {k: v for k, v in (("limit_mib", ev.memory_limit_mib), ("peak_rss_mib", ev.peak_rss_mib),
                                     ("oom_kills", ev.oom_kills)) if v is not None}
        return Failure("host_oom", "killed by the OOM killer"
                       + (f" at the {ev.memory_limit_mib:.0f} MiB memory limit" if ev.memory_limit_mib else ""),
                       False, phase, numbers, tuple(lines[-3:]))
    if hit is not None:
        sig, i = hit
        text = "\n".join(lines[i: i + 4])
        numbers = parse_oom_numbers(text) if KIND_FAMILY.get(sig.kind) == "oom" else {}
        return Failure(sig.kind, _summary(sig.kind, lines[i], numbers), sig.deterministic, phase, numbers,
                       _context(lines, i))
    exc = _exception_line(lines)
    sig_no = ev.exit.signal if ev.exit is not None else None
    if exc is None and (sig_no == 9 or (ev.exit is not None and ev.exit.code == 137)):
        return Failure("host_oom", "SIGKILL without a Python traceback (likely the kernel OOM killer)",
                       False, phase, {k: v for k, v in (("limit_mib", ev.memory_limit_mib),
                                                        ("peak_rss_mib", ev.peak_rss_mib)) if v is not None},
                       tuple(lines[-3:]))
    if exc is not None:
        if exc.startswith(("AssertionError", "ValueError")) and phase == "startup":
            # An assertion or bad value before the first step is the config, not luck: do not retry.
            return Failure("config", exc, True, phase, {}, tuple(lines[-6:]))
        return Failure("crash", exc, False, phase, {}, tuple(lines[-6:]))
    if ev.exit is None:
        return Failure("crash", "no failure text found in the log", False, phase, {}, tuple(lines[-3:]))
    how = f"signal {sig_no}" if sig_no else f"exit code {ev.exit.code}"
    return Failure("killed" if sig_no else "crash", f"ended with {how} without a traceback"
                   + (f" ({ev.exit.detail})" if ev.exit.detail else ""), False, phase, {}, tuple(lines[-3:]))
