"""A fake `GpuReader` for tests: a fixed `GpuSnapshot` (or a fixed "unavailable" reason), with named
scenarios and a JSON file form so a real `ops` subprocess can use it (`GRPO_OPS_FAKE_GPU=<file>`, read by
`healthchecks.gpu_seam.default_reader`). `load`/`dump` do file I/O; everything else is pure.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from healthchecks.gpu_seam import GpuInfo, GpuProcess, GpuSnapshot, GpuUnavailable

H100_MIB = 81559


def h100(index: int = 0, **changes) -> GpuInfo:
    """A healthy, idle H100 80GB HBM3 as NVML reports it (compute capability 9.0)."""
    base = GpuInfo(index=index, name="NVIDIA H100 80GB HBM3", uuid=f"GPU-fake-{index:04d}",
                   compute_capability=(9, 0), memory_total_mib=H100_MIB, memory_used_mib=1,
                   memory_free_mib=H100_MIB - 1, ecc_uncorrected_volatile=0, remapped_rows_failure=False,
                   remapped_rows_pending=False, retired_pages_pending=False, clock_event_reasons=("gpu_idle",),
                   recovery_action="none", temperature_c=31, processes=())
    return dataclasses.replace(base, **changes)


@dataclass(frozen=True)
class FakeGpuReader:
    snap: GpuSnapshot | None = None
    unavailable: str | None = None      # when set, snapshot() raises GpuUnavailable(unavailable)

    def snapshot(self) -> GpuSnapshot:
        if self.unavailable is not None or self.snap is None:
            raise GpuUnavailable(self.unavailable or "fake GPU reader without a snapshot")
        return self.snap

    # --- scenarios -------------------------------------------------------------------------------------
    @classmethod
    def of(cls, *gpus: GpuInfo, driver: str = "580.95.05", cuda: str = "13.0") -> "FakeGpuReader":
        return cls(GpuSnapshot(driver_version=driver, cuda_driver_version=cuda, gpus=tuple(gpus)))

    @classmethod
    def healthy(cls, n: int = 1) -> "FakeGpuReader":
        return cls.of(*(h100(i) for i in range(n)))

    @classmethod
    def ecc_errors(cls, n: int = 1) -> "FakeGpuReader":
        """GPU 0 has uncorrected volatile ECC errors, a row-remap failure and a reset pending."""
        bad = h100(0, ecc_uncorrected_volatile=3, remapped_rows_failure=True, remapped_rows_pending=True,
                   retired_pages_pending=True, recovery_action="gpu_reset")
        return cls.of(bad, *(h100(i) for i in range(1, n)))

    @classmethod
    def throttled(cls, n: int = 1, reasons: tuple[str, ...] = ("hw_slowdown", "sw_thermal")) -> "FakeGpuReader":
        return cls.of(h100(0, clock_event_reasons=reasons, temperature_c=89), *(h100(i) for i in range(1, n)))

    @classmethod
    def foreign_process(cls, pid: int, used_mib: int = 80000, n: int = 1) -> "FakeGpuReader":
        """GPU 0 mostly full, held by process `pid` (a real pid in tests, so user and command line resolve)."""
        busy = h100(0, memory_used_mib=used_mib + 500, memory_free_mib=H100_MIB - used_mib - 500,
                    processes=(GpuProcess(pid, used_mib),))
        return cls.of(busy, *(h100(i) for i in range(1, n)))

    @classmethod
    def uncovered_arch(cls, capability: tuple[int, int] = (12, 0)) -> "FakeGpuReader":
        """A card whose compute capability the tutorial's TORCH_CUDA_ARCH_LIST="9.0 10.0" does not cover."""
        return cls.of(h100(0, name="NVIDIA RTX PRO 6000 Blackwell Server Edition", compute_capability=capability,
                           memory_total_mib=97887, memory_free_mib=97886))

    @classmethod
    def no_gpu(cls, reason: str = "NVML library not found: no NVIDIA driver on this machine") -> "FakeGpuReader":
        return cls(unavailable=reason)

    # --- file form -------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"unavailable": self.unavailable, "snapshot": dataclasses.asdict(self.snap) if self.snap else None}

    @classmethod
    def from_json(cls, data: dict) -> "FakeGpuReader":
        snap = data.get("snapshot")
        if snap is None:
            return cls(unavailable=data.get("unavailable") or "fake GPU file without a snapshot")
        gpus = tuple(
            GpuInfo(**{**g, "compute_capability": tuple(g["compute_capability"]),
                       "clock_event_reasons": tuple(g.get("clock_event_reasons", ())),
                       "processes": tuple(GpuProcess(**p) for p in g.get("processes", ()))})
            for g in snap.get("gpus", ()))
        return cls(GpuSnapshot(snap["driver_version"], snap.get("cuda_driver_version"), gpus),
                   unavailable=data.get("unavailable"))

    def dump(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FakeGpuReader":
        return cls.from_json(json.loads(Path(path).read_text()))
