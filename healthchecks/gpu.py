"""GPU checks: `gpu` (NVML, driver, count), `cuda_arch` (TORCH_CUDA_ARCH_LIST and the torch build cover each
card), `gpu_memory` (free memory; who holds it), `gpu_health` (ECC, row remapping, retired pages, clock
events, recovery action). GPU readings come only through `ctx.gpu` (the seam); the verdicts are pure
functions of a `GpuSnapshot`. I/O: the reader, the process table (to name GPU holders), importing torch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from healthchecks.base import CheckContext, CheckResult, Status, register
from healthchecks.gpu_seam import GpuInfo, GpuReader, GpuSnapshot, GpuUnavailable, default_reader
from ops import procs


class OnceReader:
    """Wraps a reader so that all GPU checks of one preflight share one NVML snapshot (or one failure)."""

    def __init__(self, inner: GpuReader):
        self._inner = inner
        self._result: GpuSnapshot | GpuUnavailable | None = None

    def snapshot(self) -> GpuSnapshot:
        if self._result is None:
            try:
                self._result = self._inner.snapshot()
            except GpuUnavailable as err:
                self._result = err
        if isinstance(self._result, GpuUnavailable):
            raise self._result
        return self._result


def read_gpus(ctx: CheckContext) -> tuple[GpuSnapshot | None, str]:
    """(snapshot restricted to CUDA_VISIBLE_DEVICES, "") or (None, the reason NVML cannot be used)."""
    reader = ctx.gpu if ctx.gpu is not None else default_reader(ctx.env)
    try:
        snap = reader.snapshot()
    except GpuUnavailable as err:
        return None, str(err)
    visible = visible_gpus(snap.gpus, ctx.env.get("CUDA_VISIBLE_DEVICES"))
    return GpuSnapshot(snap.driver_version, snap.cuda_driver_version, visible), ""


def visible_gpus(gpus: Sequence[GpuInfo], cvd: str | None) -> tuple[GpuInfo, ...]:
    """The GPUs CUDA would expose under CUDA_VISIBLE_DEVICES (indices or UUID prefixes; stops at the first
    invalid entry, as CUDA does). Pure."""
    if cvd is None:
        return tuple(gpus)
    out: list[GpuInfo] = []
    for token in (t.strip() for t in cvd.split(",")):
        match = [g for g in gpus if (token.isdigit() and g.index == int(token))
                 or (token.startswith(("GPU-", "MIG-")) and g.uuid.startswith(token))]
        if not match or match[0] in out:
            break
        out.append(match[0])
    return tuple(out)


def _no_gpu(name: str, ctx: CheckContext, reason: str) -> CheckResult:
    status = Status.FAIL if ctx.require_gpu else Status.UNKNOWN
    return CheckResult(name, status, reason,
                       "run on a node where nvidia-smi works (in a container: docker run --gpus all)")


def snapshot_or_verdict(name: str, ctx: CheckContext, need_gpus: bool = True
                        ) -> tuple[GpuSnapshot | None, CheckResult | None]:
    """The GPU snapshot to judge, or the check's verdict when there is nothing to judge: NVML unusable
    (UNKNOWN, FAIL with --require-gpu) or, when `need_gpus`, no GPU visible (UNKNOWN)."""
    snap, reason = read_gpus(ctx)
    if snap is None:
        return None, _no_gpu(name, ctx, reason)
    if need_gpus and not snap.gpus:
        return None, CheckResult(name, Status.UNKNOWN, "no GPU visible", "unset or fix CUDA_VISIBLE_DEVICES")
    return snap, None


def _cc(gpu: GpuInfo) -> str:
    return f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}"


# --- gpu ------------------------------------------------------------------------------------------------
def judge_gpu(snap: GpuSnapshot, required: int | None, require_gpu: bool, cvd: str | None) -> CheckResult:
    """Pure verdict on GPU count and driver."""
    names = sorted({g.name for g in snap.gpus})
    found = f"{len(snap.gpus)} x {', '.join(names) or 'GPU'}" if snap.gpus else "no GPU visible"
    detail = f"{found}; driver {snap.driver_version}, CUDA {snap.cuda_driver_version or '?'}"
    data = {"count": len(snap.gpus), "driver_version": snap.driver_version,
            "cuda_driver_version": snap.cuda_driver_version, "names": names, "required": required}
    if cvd is not None:
        detail += f" (CUDA_VISIBLE_DEVICES={cvd!r})"
    if required is not None and len(snap.gpus) < required:
        return CheckResult("gpu", Status.FAIL, f"{required} GPUs required, {detail}",
                           f"set cluster.gpus_per_node={len(snap.gpus)} (or --gpus {len(snap.gpus)}), "
                           "or fix CUDA_VISIBLE_DEVICES / run on a node with enough GPUs", data)
    if not snap.gpus:
        status = Status.FAIL if require_gpu else Status.WARN
        return CheckResult("gpu", status, detail, "unset or fix CUDA_VISIBLE_DEVICES", data)
    return CheckResult("gpu", Status.PASS, detail, "", data)


@register("gpu")
def check_gpu(ctx: CheckContext) -> CheckResult:
    snap, verdict = snapshot_or_verdict("gpu", ctx, need_gpus=False)
    if verdict:
        return verdict
    return judge_gpu(snap, ctx.gpus_required, ctx.require_gpu, ctx.env.get("CUDA_VISIBLE_DEVICES"))


# --- cuda_arch ------------------------------------------------------------------------------------------
_NAMED_ARCHES = {"kepler": ("3.5",), "maxwell": ("5.0", "5.2"), "pascal": ("6.0", "6.1"), "volta": ("7.0",),
                 "turing": ("7.5",), "ampere": ("8.0", "8.6"), "ada": ("8.9",), "hopper": ("9.0",),
                 "blackwell": ("10.0", "12.0")}


@dataclass(frozen=True)
class ArchEntry:
    arch: tuple[int, int]
    ptx: bool


def parse_arch_list(text: str) -> tuple[list[ArchEntry], list[str]]:
    """TORCH_CUDA_ARCH_LIST ("9.0 10.0", "8.0;9.0+PTX", "9.0a", "Hopper") -> (entries, bad tokens). Pure."""
    entries: list[ArchEntry] = []
    bad: list[str] = []
    for token in (t for t in re.split(r"[\s;,]+", text.strip()) if t):
        ptx = token.upper().endswith("+PTX")
        core = token[:-4] if ptx else token
        values = _NAMED_ARCHES.get(core.lower(), (core,))
        for value in values:
            m = re.fullmatch(r"(\d+)\.(\d+)[af]?", value)
            if m:
                entries.append(ArchEntry((int(m.group(1)), int(m.group(2))), ptx))
            else:
                bad.append(token)
    return entries, bad


def coverage(cc: tuple[int, int], entries: Sequence[ArchEntry]) -> str:
    """"native" (SASS for this arch), "ptx" (only through PTX JIT from an older arch) or "none". Pure."""
    if any(e.arch == cc for e in entries):
        return "native"
    if any(e.ptx and e.arch <= cc for e in entries):
        return "ptx"
    return "none"


def torch_arch_entries(flags: Sequence[str]) -> list[ArchEntry]:
    """torch's arch flags (`sm_90`, `sm_90a`, `compute_90`) as entries. Pure."""
    out = []
    for f in flags:
        m = re.fullmatch(r"(sm|compute)_(\d+?)(\d)[af]?", f)
        if m:
            out.append(ArchEntry((int(m.group(2)), int(m.group(3))), m.group(1) == "compute"))
    return out


def judge_cuda_arch(gpus: Sequence[GpuInfo], arch_list: str | None,
                    torch_flags: Sequence[str] | None, torch_desc: str, torch_is_fatal: bool) -> CheckResult:
    """Pure verdict: each card's compute capability against TORCH_CUDA_ARCH_LIST and the torch build."""
    caps = sorted({g.compute_capability for g in gpus})
    cc_text = ", ".join(f"{a}.{b}" for a, b in caps)
    data: dict = {"compute_capabilities": [f"{a}.{b}" for a, b in caps], "TORCH_CUDA_ARCH_LIST": arch_list,
                  "torch_arch_list": list(torch_flags) if torch_flags is not None else None}
    problems: list[tuple[Status, str]] = []
    if not arch_list or not arch_list.strip():
        problems.append((Status.FAIL, "TORCH_CUDA_ARCH_LIST is not set (NeMo RL's Megatron backend requires it)"))
        entries: list[ArchEntry] = []
    else:
        entries, bad = parse_arch_list(arch_list)
        if bad:
            problems.append((Status.FAIL, f"TORCH_CUDA_ARCH_LIST has unrecognised entries {bad}"))
        for cc in caps:
            cov = coverage(cc, entries)
            if cov == "none":
                problems.append((Status.FAIL, f"TORCH_CUDA_ARCH_LIST={arch_list!r} does not cover compute "
                                              f"capability {cc[0]}.{cc[1]}"))
            elif cov == "ptx":
                problems.append((Status.WARN, f"TORCH_CUDA_ARCH_LIST={arch_list!r} covers {cc[0]}.{cc[1]} only "
                                              "through PTX JIT (slow first start; some kernels need native code)"))
    needed = [f"{a}.{b}" for a, b in caps]
    keep = [f"{e.arch[0]}.{e.arch[1]}" for e in entries]
    value = " ".join(sorted(set(keep) | set(needed), key=lambda s: tuple(int(x) for x in s.split("."))))
    fix = f'export TORCH_CUDA_ARCH_LIST="{value}"' if problems else ""
    if torch_flags is not None:
        t_entries = torch_arch_entries(torch_flags)
        for cc in caps:
            cov = coverage(cc, t_entries)
            if cov != "native":
                worst_status = Status.FAIL if (torch_is_fatal and cov == "none") else Status.WARN
                problems.append((worst_status, f"{torch_desc} is built for {' '.join(torch_flags) or 'no CUDA arch'}"
                                               f", not sm_{cc[0]}{cc[1]}"))
                fix = (fix + "; " if fix else "") + f"install a torch build with sm_{cc[0]}{cc[1]} " \
                                                    "(e.g. a CUDA 12.x wheel from download.pytorch.org)"
    if not problems:
        torch_note = f"; {torch_desc} has sm_{'/'.join(f'{a}{b}' for a, b in caps)}" if torch_flags else ""
        return CheckResult("cuda_arch", Status.PASS,
                           f"compute capability {cc_text} covered by TORCH_CUDA_ARCH_LIST={arch_list!r}{torch_note}",
                           "", data)
    order = [Status.WARN, Status.FAIL]
    status = max((s for s, _ in problems), key=order.index)
    return CheckResult("cuda_arch", status, "; ".join(msg for _, msg in problems), fix, data)


def _import_torch_arch_flags() -> tuple[list[str] | None, str]:
    try:
        import torch
    except Exception as err:  # not installed, or broken: the trainer may use its own venv
        return None, f"torch not importable ({type(err).__name__})"
    desc = f"torch {torch.__version__}"
    if not getattr(torch.version, "cuda", None):
        return [], f"{desc} (a CPU-only build)"
    getter = getattr(torch._C, "_cuda_getArchFlags", None)
    flags = (getter() or "").split() if getter else list(torch.cuda.get_arch_list())
    return flags, f"{desc} (CUDA {torch.version.cuda})"


def _torch_identity() -> str | None:
    """Which torch installation `import torch` would load, without importing it: paths, sizes, mtimes."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    parts = []
    for rel in ("version.py", "_C.cpython*.so", "lib/libtorch_cuda.so", "lib/libtorch_cpu.so"):
        for f in sorted(root.glob(rel)):
            st = f.stat()
            parts.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts) or None


def torch_arch_flags(cache_dir: Path | None = None) -> tuple[list[str] | None, str]:
    """(arch flags of the importable torch, a description) or (None, why not).

    Importing torch costs 1-3 s, most of a preflight's time, so the answer is cached per torch installation
    (keyed by its files' paths, sizes and mtimes) under ~/.cache/grpo-ops. I/O: reads/writes the cache,
    imports torch on a miss.
    """
    cache = (cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "grpo-ops") \
        / "torch_arch.json"
    key = _torch_identity()
    if key is None:
        return None, "torch not importable (not installed)"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["flags"], cached["desc"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    flags, desc = _import_torch_arch_flags()
    if flags is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": key, "flags": flags, "desc": desc}))
            tmp.replace(cache)
        except OSError:
            pass
    return flags, desc


@register("cuda_arch")
def check_cuda_arch(ctx: CheckContext) -> CheckResult:
    snap, verdict = snapshot_or_verdict("cuda_arch", ctx)
    if verdict:
        return verdict
    flags, desc = torch_arch_flags()
    return judge_cuda_arch(snap.gpus, ctx.env.get("TORCH_CUDA_ARCH_LIST"), flags, desc,
                           torch_is_fatal=(ctx.trainer == "embedded"))


# --- gpu_memory -----------------------------------------------------------------------------------------
def describe_holders(pids: Sequence[int], table: Mapping[int, procs.ProcInfo]) -> dict[int, str]:
    """pid -> "pid N (user U): cmdline", or a note when the pid is outside this pid namespace. Pure."""
    return {pid: procs.describe(table[pid]) if pid in table
            else f"pid {pid} (not visible here: another pid namespace, e.g. a container)" for pid in pids}


def judge_gpu_memory(gpus: Sequence[GpuInfo], min_free_mib: int, holders: Mapping[int, str],
                     mine: set[int], vllm_fraction: float | None = None) -> CheckResult:
    """Pure verdict on free GPU memory and the processes holding it. With `vllm_fraction` (the config's
    vLLM gpu_memory_utilization) a GPU needs that share of its total free, as vLLM checks at start-up."""
    status = Status.PASS
    parts, lines = [], []
    for g in gpus:
        need = max(min_free_mib, int(vllm_fraction * g.memory_total_mib) if vllm_fraction else 0)
        parts.append(f"GPU {g.index}: {g.memory_free_mib}/{g.memory_total_mib} MiB free")
        for p in g.processes:
            lines.append(f"GPU {g.index} {p.used_mib if p.used_mib is not None else '?'} MiB: {holders.get(p.pid)}")
        if g.memory_free_mib < need:
            status = Status.FAIL
            if need > min_free_mib:
                parts[-1] += f" < {need} MiB that vLLM gpu_memory_utilization={vllm_fraction:g} needs"
        elif g.processes and status == Status.PASS:
            status = Status.WARN
    detail = "; ".join(parts)
    if lines:
        detail += " | held by " + "; ".join(lines)
    fix = ""
    if status != Status.PASS:
        pids = sorted({p.pid for g in gpus for p in g.processes})
        if pids and set(pids) <= mine:
            fix = "these are your leftover processes: ops preflight --fix (or kill " + " ".join(map(str, pids)) + ")"
        elif pids:
            fix = "wait for or ask the owners to stop: " + ", ".join(holders.get(p, str(p)).split(":")[0] for p in pids)
        else:
            fix = f"free GPU memory (need {min_free_mib} MiB free per GPU); check nvidia-smi"
    data = {"gpus": [{"index": g.index, "free_mib": g.memory_free_mib, "total_mib": g.memory_total_mib,
                      "processes": [{"pid": p.pid, "used_mib": p.used_mib, "process": holders.get(p.pid)}
                                    for p in g.processes]} for g in gpus],
            "min_free_gpu_mib": min_free_mib, "vllm_gpu_memory_utilization": vllm_fraction}
    return CheckResult("gpu_memory", status, detail, fix, data)


def vllm_fraction(ctx: CheckContext) -> float | None:
    """policy.generation.vllm_cfg.gpu_memory_utilization from --config (+ overrides) when generation is vLLM;
    None without a config or when it cannot be read (the training_config check reports broken configs)."""
    if ctx.config_path is None:
        return None
    try:
        from omegaconf import OmegaConf

        from training.config import load_config
        cfg = load_config(ctx.config_path, ctx.overrides)
        backend = OmegaConf.select(cfg, "policy.generation.backend", default=None)
        value = OmegaConf.select(cfg, "policy.generation.vllm_cfg.gpu_memory_utilization", default=None)
    except Exception:
        return None
    if backend not in (None, "vllm") or not isinstance(value, (int, float)) or not 0 < value <= 1:
        return None
    return float(value)


@register("gpu_memory")
def check_gpu_memory(ctx: CheckContext) -> CheckResult:
    snap, verdict = snapshot_or_verdict("gpu_memory", ctx, need_gpus=False)
    if verdict:
        return verdict
    pids = [p.pid for g in snap.gpus for p in g.processes]
    table = procs.snapshot(with_markers=False) if pids else {}
    mine = {pid for pid in pids if pid in table and table[pid].uid == ctx.uid}
    return judge_gpu_memory(snap.gpus, ctx.min_free_gpu_mib, describe_holders(pids, table), mine,
                            vllm_fraction(ctx))


# --- gpu_health -----------------------------------------------------------------------------------------
_HW_EVENTS = ("hw_slowdown", "hw_thermal", "hw_power_brake")
_SW_EVENTS = ("sw_thermal", "sw_power_cap")


def gpu_findings(g: GpuInfo) -> tuple[list[str], list[str], list[str]]:
    """(fail findings, warn findings, signals the driver did not report) for one GPU. Pure."""
    fail, warn, unknown = [], [], []
    if g.ecc_uncorrected_volatile is None:
        unknown.append("ECC")
    elif g.ecc_uncorrected_volatile > 0:
        fail.append(f"{g.ecc_uncorrected_volatile} uncorrected volatile ECC errors")
    if g.remapped_rows_failure is None:
        unknown.append("row remapping")
    else:
        if g.remapped_rows_failure:
            fail.append("row-remap failure")
        if g.remapped_rows_pending:
            fail.append("row remap pending (needs a GPU reset)")
    if g.retired_pages_pending:
        fail.append("retired pages pending (needs a GPU reset)")
    if g.recovery_action not in (None, "none"):
        fail.append(f"driver asks for recovery action {g.recovery_action}")
    hw = [r for r in g.clock_event_reasons if r in _HW_EVENTS]
    sw = [r for r in g.clock_event_reasons if r in _SW_EVENTS]
    if hw:
        fail.append("clocks slowed by " + "+".join(hw))
    if sw:
        warn.append("clocks slowed by " + "+".join(sw))
    if g.temperature_c is not None and g.temperature_c >= 85:
        warn.append(f"{g.temperature_c} C")
    return fail, warn, unknown


def judge_gpu_health(gpus: Sequence[GpuInfo]) -> CheckResult:
    status = Status.PASS
    parts, data = [], []
    any_known = False
    for g in gpus:
        fail, warn, unknown = gpu_findings(g)
        any_known = any_known or len(unknown) < 2
        if fail:
            status = Status.FAIL
        elif warn and status != Status.FAIL:
            status = Status.WARN
        text = ", ".join(fail + warn) or "healthy"
        if unknown:
            text += f" ({', '.join(unknown)} not reported)"
        parts.append(f"GPU {g.index}: {text}")
        data.append({"index": g.index, "uuid": g.uuid, "fail": fail, "warn": warn, "not_reported": unknown,
                     "clock_event_reasons": list(g.clock_event_reasons), "recovery_action": g.recovery_action,
                     "temperature_c": g.temperature_c})
    if status == Status.PASS and gpus and not any_known:
        status = Status.UNKNOWN
    fix = {Status.FAIL: "drain this GPU: reset it (nvidia-smi -r -i <index>, no processes on it) or reboot; "
                        "if errors recur, report the card for RMA",
           Status.WARN: "check cooling and power limits (nvidia-smi -q -d PERFORMANCE,TEMPERATURE)",
           Status.UNKNOWN: "the driver does not report ECC/row-remap health here; run dcgmi diag -r 1"}
    return CheckResult("gpu_health", status, "; ".join(parts) or "no GPU visible", fix.get(status, ""),
                       {"gpus": data})


@register("gpu_health")
def check_gpu_health(ctx: CheckContext) -> CheckResult:
    snap, verdict = snapshot_or_verdict("gpu_health", ctx)
    if verdict:
        return verdict
    return judge_gpu_health(snap.gpus)
