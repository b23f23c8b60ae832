"""Journal listeners for real: a local webhook server, Prometheus scraped and parsed, W&B offline files."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from report_fixtures import SECRET, hang_then_recover, oom_give_up
from tenacity import wait_fixed

from ops.errors import UserError
from ops.rundata import read_jsonl
from ops.sinks import build_listeners, close_listeners, wants_wandb
from ops.sinks.base import BackgroundSink
from ops.sinks.notify import WebhookNotifier, resolve_url
from ops.sinks.prometheus import PrometheusExporter
from ops.sinks.wandb_sink import WandbEvents, project_from_plan, wandb_mode
from training.spec import RunPaths


def records(root: Path) -> list[dict]:
    return read_jsonl(root / "ops" / "journal.jsonl")[0]


class Blocking:
    name = "blocking"

    def __init__(self):
        self.gate, self.seen, self.closed = threading.Event(), [], False

    def handle(self, record):
        self.gate.wait(60)
        if record.get("boom"):
            raise RuntimeError("handler bug")
        self.seen.append(record["n"])

    def close(self):
        self.closed = True


def test_background_sink_never_blocks_and_survives_a_failing_handler():
    handler = Blocking()
    sink = BackgroundSink(handler, maxsize=2)
    for n in range(6):                 # the handler is stuck: these calls must still return
        sink({"n": n})
    assert sink.dropped >= 3
    handler.gate.set()
    assert sink.flush(30)
    sink({"n": 98, "boom": True})
    sink({"n": 99})
    assert sink.close(30)
    assert handler.closed and sink.failed == 1
    assert handler.seen[0] == 0 and handler.seen[-1] == 99 and len(handler.seen) == 6 - sink.dropped + 1


class Hook:
    """A Slack-like webhook on 127.0.0.1 answering a scripted list of statuses, then 200."""

    def __init__(self, statuses=()):
        self.statuses, self.bodies, self.lock = list(statuses), [], threading.Lock()
        hook = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with hook.lock:
                    status = hook.statuses.pop(0) if hook.statuses else 200
                    hook.bodies.append((status, json.loads(body)))
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/{SECRET}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_webhook_posts_recovery_and_success_with_retries_after_500_and_429(tmp_path):
    hook = Hook([500, 429])
    try:
        sink = BackgroundSink(WebhookNotifier(hook.url, wait=wait_fixed(0.01)))
        for rec in records(hang_then_recover(tmp_path / "run")):
            sink(rec)
        assert sink.close(60)
    finally:
        hook.close()
    assert [s for s, _ in hook.bodies] == [500, 429, 200, 200]
    texts = [b["text"] for s, b in hook.bodies if s == 200]
    assert "recovered: attempt 2 is training again at step 4/12 after hang" in texts[0]
    assert "succeeded: 12/12 steps in 2 attempt(s)" in texts[1]
    assert all(b["blocks"][0]["text"]["text"] == b["text"] for _, b in hook.bodies)
    assert sink.handler.sent == 2


def test_webhook_give_up_and_no_retry_on_400(tmp_path):
    hook = Hook([400])
    try:
        sink = BackgroundSink(WebhookNotifier(hook.url, wait=wait_fixed(0.01)))
        for rec in records(oom_give_up(tmp_path / "run")):
            sink(rec)
        sink({"kind": "run_end", "run_id": "x", "attempt": 1, "state": "FAILED_HANG", "reason": "HF_TOKEN=" + SECRET})
        assert sink.close(60)
    finally:
        hook.close()
    statuses = [s for s, _ in hook.bodies]
    assert statuses == [400, 200, 200]             # the recovery got a 400 (not retried); the rest went out
    assert "recovered: attempt 2" in hook.bodies[0][1]["text"]
    assert "gave up: FAILED_OOM after 2 attempt(s), 2/12 steps" in hook.bodies[1][1]["text"]
    assert "gave up: FAILED_HANG" in hook.bodies[2][1]["text"] and "HF_TOKEN=***" in hook.bodies[2][1]["text"]
    assert SECRET not in json.dumps(hook.bodies)


def test_webhook_down_is_bounded_and_silent_for_the_caller(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                  # nothing listens here once closed
    sink = BackgroundSink(WebhookNotifier(f"http://127.0.0.1:{port}/x", attempts=3, wait=wait_fixed(0.01)))
    sink({"kind": "run_end", "run_id": "x", "attempt": 1, "state": "SUCCEEDED"})
    assert sink.close(60) and sink.failed == 0 and sink.handler.sent == 0


def test_notify_url_from_env_and_bad_urls(monkeypatch):
    monkeypatch.setenv("MY_HOOK", "https://hooks.example/abc")
    assert resolve_url("env:MY_HOOK") == "https://hooks.example/abc"
    with pytest.raises(UserError, match="MY_EMPTY is empty"):
        resolve_url("env:MY_EMPTY")
    with pytest.raises(UserError, match="not an http"):
        resolve_url("hooks.example/abc")


def scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return parse(text)


def parse(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_prometheus_endpoint_and_textfile_parse(tmp_path):
    textfile = tmp_path / "node" / "grpo_ops.prom"
    exporter = PrometheusExporter(port=0, textfile=textfile, addr="127.0.0.1")
    sink = BackgroundSink(exporter)
    recs = records(hang_then_recover(tmp_path / "run"))
    for rec in recs[:-1]:
        sink(rec)
    assert sink.flush(30)
    live = scrape(exporter.port)
    assert live[("grpo_ops_step", ())] == 12
    assert live[("grpo_ops_attempt", ())] == 2
    assert live[("grpo_ops_reward", ())] == pytest.approx(recs[-4]["reward"])
    assert live[("grpo_ops_step_time_seconds", ())] == 1.0
    assert live[("grpo_ops_failures_total", (("kind", "hang"),))] == 1
    assert live[("grpo_ops_state", (("grpo_ops_state", "LAUNCHING"),))] == 1
    sink(recs[-1])                                           # run_end
    assert sink.close(30)
    assert exporter.server is None
    final = parse(textfile.read_text())
    assert final[("grpo_ops_state", (("grpo_ops_state", "SUCCEEDED"),))] == 1
    assert final[("grpo_ops_state", (("grpo_ops_state", "RUNNING"),))] == 0
    assert final[("grpo_ops_total_steps", ())] == 12
    assert final[("grpo_ops_run_info", (("run_id", recs[0]["run_id"]), ("trainer", "embedded")))] == 1


def test_prometheus_busy_port_is_a_user_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(UserError, match=f"--metrics-port {s.getsockname()[1]}: the port is in use"):
            PrometheusExporter(port=s.getsockname()[1], addr="127.0.0.1")


def test_wandb_offline_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = hang_then_recover(tmp_path / "run")
    sink = BackgroundSink(WandbEvents(RunPaths(root)))
    for rec in records(root):
        sink(rec)
    assert sink.close(120) and sink.failed == 0
    runs = list((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    assert data, "no .wandb record file"
    assert b"grpo-ops: recovered" in data                  # the alert on recovery
    assert b"ops/failures/hang" in data and b"trainer/step" in data
    assert SECRET.encode() not in data


def test_wandb_mode_and_project():
    assert wandb_mode({"WANDB_MODE": "disabled"}) == "disabled"
    assert wandb_mode({"WANDB_API_KEY": "k" * 40}) == "online"
    assert wandb_mode({}, home=Path("/nonexistent")) == "offline"
    assert project_from_plan({"overrides": ["++logger.wandb.project=p1", "logger.wandb.name=n1"]}) == ("p1", "n1")
    assert project_from_plan(None) == ("grpo-ops", None)
    assert wants_wandb(None, {}) is False and wants_wandb(None, {"WANDB_MODE": "offline"}) is True
    assert wants_wandb(True, {}) is True and wants_wandb(False, {"WANDB_API_KEY": "x"}) is False


def test_build_listeners_from_run_flags(tmp_path):
    hook = Hook()
    try:
        paths = RunPaths(tmp_path / "run")
        listeners = build_listeners({"notify": hook.url, "metrics_textfile": tmp_path / "m.prom", "wandb": False},
                                    paths)
        assert [x.name for x in listeners] == ["notify", "prometheus"]
        for x in listeners:
            x({"kind": "run_end", "run_id": "r", "attempt": 1, "state": "SUCCEEDED", "steps_done": 3,
               "total_steps": 3})
        close_listeners(listeners)
    finally:
        hook.close()
    assert len(hook.bodies) == 1
    assert parse((tmp_path / "m.prom").read_text())[("grpo_ops_state", (("grpo_ops_state", "SUCCEEDED"),))] == 1


def test_wandb_project_from_the_plans_config_file():
    cfg = Path(__file__).resolve().parents[1] / "training" / "configs" / "grpo_workplace_tiny.yaml"
    assert project_from_plan({"config_path": str(cfg), "overrides": []}) == ("grpo-ops", "grpo-workplace-tiny")
    assert project_from_plan({"config_path": str(cfg), "overrides": ["++logger.wandb.name=x"]})[1] == "x"


def test_wandb_follows_the_trainers_own_wandb_setting():
    from ops.cmd_run import _trainer_logs_wandb
    from training.embedded import EmbeddedTrainer
    from training.spec import Plan

    assert wants_wandb(None, {}, trainer_logs_wandb=True) is True
    assert wants_wandb(False, {}, trainer_logs_wandb=True) is False
    spec = EmbeddedTrainer()
    plan = Plan(spec.default_config())
    assert _trainer_logs_wandb(spec, plan) is False
    assert _trainer_logs_wandb(spec, plan.with_overrides({"logger.wandb_enabled": True})) is True
