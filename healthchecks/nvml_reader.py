"""The real GPU reader: NVML (nvidia-ml-py) behind `GpuReader.snapshot()`. Does I/O (driver calls).

Every per-GPU reading a driver may not offer (ECC on consumer cards, remapped rows before Ampere, the
recovery-action field on older drivers) becomes None rather than an error: a check then says UNKNOWN for
that signal instead of "fine".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from healthchecks.gpu_seam import GpuInfo, GpuProcess, GpuSnapshot, GpuUnavailable

T = TypeVar("T")

NO_NVML = "NVML library not found: no NVIDIA driver on this machine"

# nvmlClocksEventReason* bits (nvml.h); "gpu_idle" and "applications_clocks_setting" are benign.
CLOCK_EVENT_BITS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake",
    0x100: "display_clock_setting",
}
RECOVERY_ACTIONS = {0: "none", 1: "gpu_reset", 2: "node_reboot", 3: "drain_p2p", 4: "drain_and_reset",
                    5: "recover_imex_domain", 6: "bus_reset", 7: "system_reboot"}


def clock_event_names(mask: int) -> tuple[str, ...]:
    """The names of the bits set in an NVML clock-event-reasons mask. Pure."""
    return tuple(name for bit, name in CLOCK_EVENT_BITS.items() if mask & bit)


def _maybe(fn: Callable[[], T]) -> T | None:
    """A reading, or None when the driver does not support it (or refuses it)."""
    try:
        return fn()
    except Exception:  # pynvml raises NVMLError subclasses per NVML return code; all mean "not available"
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlReader:
    """`GpuReader` over NVML. One `nvmlInit`/`nvmlShutdown` per snapshot."""

    def snapshot(self) -> GpuSnapshot:
        try:
            import pynvml
        except ImportError as err:
            raise GpuUnavailable(f"nvidia-ml-py is not installed ({err}); pip install nvidia-ml-py") from err
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound as err:
            raise GpuUnavailable(NO_NVML) from err
        except pynvml.NVMLError as err:
            raise GpuUnavailable(f"NVML init failed: {err} (is the NVIDIA driver loaded? try nvidia-smi)") from err
        try:
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
            cuda = _maybe(lambda: pynvml.nvmlSystemGetCudaDriverVersion_v2())
            cuda_text = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None
            gpus = tuple(self._gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount()))
            return GpuSnapshot(driver_version=driver, cuda_driver_version=cuda_text, gpus=gpus)
        except pynvml.NVMLError as err:
            raise GpuUnavailable(f"NVML query failed: {err}") from err
        finally:
            _maybe(pynvml.nvmlShutdown)

    def _gpu(self, nv: Any, index: int) -> GpuInfo:
        h = nv.nvmlDeviceGetHandleByIndex(index)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        mib = 1024 * 1024
        remapped = _maybe(lambda: nv.nvmlDeviceGetRemappedRows(h))  # (corr, unc, is_pending, failure)
        reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            nv.nvmlDeviceGetCurrentClocksThrottleReasons
        reasons = _maybe(lambda: reasons_fn(h))
        pending = _maybe(lambda: nv.nvmlDeviceGetRetiredPagesPendingStatus(h))
        return GpuInfo(
            index=index,
            name=_text(nv.nvmlDeviceGetName(h)),
            uuid=_text(nv.nvmlDeviceGetUUID(h)),
            compute_capability=tuple(nv.nvmlDeviceGetCudaComputeCapability(h)),
            memory_total_mib=mem.total // mib,
            memory_used_mib=mem.used // mib,
            memory_free_mib=mem.free // mib,
            ecc_uncorrected_volatile=_maybe(lambda: int(nv.nvmlDeviceGetTotalEccErrors(
                h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC))),
            remapped_rows_failure=bool(remapped[3]) if remapped else None,
            remapped_rows_pending=bool(remapped[2]) if remapped else None,
            retired_pages_pending=(pending == nv.NVML_FEATURE_ENABLED) if pending is not None else None,
            clock_event_reasons=clock_event_names(int(reasons)) if reasons is not None else (),
            recovery_action=_recovery_action(nv, h),
            temperature_c=_maybe(lambda: int(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))),
            processes=_processes(nv, h),
        )


def _recovery_action(nv: Any, h: Any) -> str | None:
    field_id = getattr(nv, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", None)
    if field_id is None:
        return None
    values = _maybe(lambda: nv.nvmlDeviceGetFieldValues(h, [field_id]))
    if not values or values[0].nvmlReturn != nv.NVML_SUCCESS:
        return None
    code = int(values[0].value.uiVal)
    return RECOVERY_ACTIONS.get(code, f"unknown({code})")


def _processes(nv: Any, h: Any) -> tuple[GpuProcess, ...]:
    found: dict[int, GpuProcess] = {}
    for name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        for p in _maybe(lambda: getattr(nv, name)(h)) or ():
            used = getattr(p, "usedGpuMemory", None)
            used_mib = used // (1024 * 1024) if isinstance(used, int) and used < 2**63 else None
            found.setdefault(int(p.pid), GpuProcess(int(p.pid), used_mib))
    return tuple(found.values())
