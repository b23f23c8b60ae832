"""Prometheus metrics of a supervised run: an HTTP endpoint (--metrics-port) and/or a textfile for
node_exporter's textfile collector (--metrics-textfile). Does network and file I/O.

Gauges follow the journal: state (an Enum: one series per state, 1 for the current one), attempt,
step, total steps, reward, accuracy, step time, host RSS and GPU memory, the time of the last record;
`grpo_ops_failures_total{kind}` counts failed attempts by failure kind. Each sink has its own registry,
so two runs in one process never mix.
"""

from __future__ import annotations

import errno
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Info, start_http_server, write_to_textfile

from ops.errors import UserError
from ops.state import State

PREFIX = "grpo_ops"


class PrometheusExporter:
    """Handler for a BackgroundSink. The HTTP server binds at construction, so a busy port fails early."""

    name = "prometheus"

    def __init__(self, port: int | None = None, textfile: Path | None = None, addr: str = "0.0.0.0"):
        self.registry = CollectorRegistry()
        r = self.registry
        self.state = Enum(f"{PREFIX}_state", "Supervisor state", states=[s.value for s in State], registry=r)
        self.info = Info(f"{PREFIX}_run", "The supervised run", registry=r)
        self.gauges = {
            "attempt": Gauge(f"{PREFIX}_attempt", "Current attempt (1-based; 0 before the first launch)", registry=r),
            "step": Gauge(f"{PREFIX}_step", "Last completed trainer step", registry=r),
            "total_steps": Gauge(f"{PREFIX}_total_steps", "Steps the run is configured for", registry=r),
            "reward": Gauge(f"{PREFIX}_reward", "Reward mean of the last step", registry=r),
            "accuracy": Gauge(f"{PREFIX}_accuracy", "Last validation accuracy", registry=r),
            "step_time_s": Gauge(f"{PREFIX}_step_time_seconds", "Duration of the last step", registry=r),
            "rss_mib": Gauge(f"{PREFIX}_rss_mib", "Host RSS of the trainer's process tree (MiB)", registry=r),
            "gpu_mib": Gauge(f"{PREFIX}_gpu_mib", "GPU memory in use, max over GPUs (MiB)", registry=r),
        }
        self.last_record = Gauge(f"{PREFIX}_last_record_timestamp_seconds", "Wall time of the last journal record",
                                 registry=r)
        self.failures = Counter(f"{PREFIX}_failures", "Failed attempts by failure kind", ["kind"], registry=r)
        self.textfile = Path(textfile) if textfile else None
        self.server = None
        if port is not None:
            try:
                self.server, _ = start_http_server(port, addr=addr, registry=r)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise UserError(f"--metrics-port {port}: the port is in use; choose a free port") from None
                raise UserError(f"--metrics-port {port}: cannot listen on {addr}:{port} ({err.strerror})") from None
        if self.textfile:
            self.textfile.parent.mkdir(parents=True, exist_ok=True)
            self._write_textfile()

    @property
    def port(self) -> int | None:
        return self.server.server_port if self.server else None

    def handle(self, record: dict) -> None:
        kind = record.get("kind")
        if "attempt" in record:
            self.gauges["attempt"].set(record["attempt"])
        if kind == "run_start":
            self.info.info({"run_id": str(record.get("run_id", "")), "trainer": str(record.get("trainer", ""))})
            if record.get("total_steps"):
                self.gauges["total_steps"].set(record["total_steps"])
            self.state.state(State.PREFLIGHT.value)
        elif kind == "transition" and record.get("to") in State.__members__:
            self.state.state(record["to"])
        elif kind == "run_end" and record.get("state") in State.__members__:
            self.state.state(record["state"])
        elif kind == "progress":
            for key in ("step", "total_steps", "reward", "accuracy", "step_time_s", "rss_mib", "gpu_mib"):
                if isinstance(record.get(key), (int, float)):
                    self.gauges[key].set(record[key])
        elif kind == "attempt_end" and record.get("failure"):
            self.failures.labels(kind=str(record["failure"].get("kind", "unknown"))).inc()
        self.last_record.set_to_current_time()
        if self.textfile:
            self._write_textfile()

    def _write_textfile(self) -> None:
        write_to_textfile(str(self.textfile), self.registry)      # tmp file + rename: readers never see half

    def close(self) -> None:
        if self.textfile:
            self._write_textfile()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
