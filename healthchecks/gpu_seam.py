"""The one narrow seam between grpo-ops and the GPU. Data types here; readers in `nvml_reader` (real) and
`fake_gpu` (tests). Everything else in grpo-ops reads GPUs only through `GpuReader.snapshot()`.

Selecting a reader: `default_reader(env)` returns the fake when `GRPO_OPS_FAKE_GPU` names a JSON file
(written by `FakeGpuReader.dump`) -- the only way a fake enters a real process -- else the NVML reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol


class GpuUnavailable(Exception):
    """NVML cannot be used; `str()` is a one-line reason a person understands."""


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_mib: int | None          # None when the driver does not say


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    uuid: str
    compute_capability: tuple[int, int]            # (9, 0) for H100
    memory_total_mib: int
    memory_used_mib: int
    memory_free_mib: int
    ecc_uncorrected_volatile: int | None = None    # None: not supported / unknown
    remapped_rows_failure: bool | None = None
    remapped_rows_pending: bool | None = None
    retired_pages_pending: bool | None = None
    clock_event_reasons: tuple[str, ...] = ()      # e.g. ("hw_slowdown", "sw_thermal", "hw_power_brake")
    recovery_action: str | None = None             # e.g. "none", "gpu_reset", "node_reboot", "drain_and_reset"
    temperature_c: int | None = None
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True)
class GpuSnapshot:
    driver_version: str
    cuda_driver_version: str | None
    gpus: tuple[GpuInfo, ...] = field(default_factory=tuple)


class GpuReader(Protocol):
    def snapshot(self) -> GpuSnapshot:
        """All visible GPUs now; raises GpuUnavailable with the reason when NVML cannot be used."""
        ...


def default_reader(env: Mapping[str, str] | None = None) -> GpuReader:
    import os
    env = os.environ if env is None else env
    fake = env.get("GRPO_OPS_FAKE_GPU")
    if fake:
        from healthchecks.fake_gpu import FakeGpuReader
        return FakeGpuReader.load(fake)
    from healthchecks.nvml_reader import NvmlReader
    return NvmlReader()
