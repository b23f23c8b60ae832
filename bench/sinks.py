"""How long the supervisor waits on its listeners: per-record call latency of the sinks (p50 / p99 / max)
while the webhook is slow (a local server answering after 0.5 s) and the Prometheus textfile is written,
against a direct synchronous post. Prints numbers; asserts nothing.

    .venv/bin/python bench/sinks.py [records]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ops.sinks.base import BackgroundSink
from ops.sinks.notify import WebhookNotifier, slack_payload
from ops.sinks.prometheus import PrometheusExporter


class Slow(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(0.5)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def records(n: int):
    yield {"kind": "run_start", "run_id": "bench", "attempt": 0, "total_steps": n, "trainer": "embedded"}
    for step in range(1, n + 1):
        yield {"kind": "progress", "run_id": "bench", "attempt": 1, "step": step, "total_steps": n, "reward": 0.5,
               "accuracy": None, "step_time_s": 1.0, "rss_mib": 900.0, "gpu_mib": None}
        if step % 50 == 0:       # a failure + recovery every 50 steps: the webhook gets work
            yield {"kind": "attempt_end", "run_id": "bench", "attempt": 1, "failure": {"kind": "hang"}}
            yield {"kind": "progress", "run_id": "bench", "attempt": 2, "step": step, "total_steps": n}
    yield {"kind": "run_end", "run_id": "bench", "attempt": 2, "state": "SUCCEEDED", "steps_done": n,
           "total_steps": n}


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    with tempfile.TemporaryDirectory() as tmp:
        sinks = [BackgroundSink(WebhookNotifier(url)),
                 BackgroundSink(PrometheusExporter(port=0, textfile=Path(tmp) / "m.prom", addr="127.0.0.1"))]
        lat = []
        for rec in records(n):
            t0 = time.perf_counter()
            for s in sinks:
                s(rec)
            lat.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for s in sinks:
            s.close(120)
        drain = time.perf_counter() - t0
    direct = WebhookNotifier(url)
    t0 = time.perf_counter()
    direct._post(slack_payload("bench"))
    one_post = time.perf_counter() - t0
    server.shutdown()
    us = [x * 1e6 for x in lat]
    print(f"records: {len(lat)}  sinks: webhook (0.5 s server) + prometheus (port + textfile)")
    print(f"listener call latency: p50 {statistics.median(us):.1f} us  p99 {pct(us, 0.99):.1f} us  "
          f"max {max(us):.1f} us")
    print(f"one synchronous webhook post would block: {one_post * 1e3:.0f} ms")
    print(f"drain at close (queued posts + textfile writes): {drain:.2f} s")


if __name__ == "__main__":
    main()
