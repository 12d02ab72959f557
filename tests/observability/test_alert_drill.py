"""The alert drill: real Prometheus, Alertmanager and Pushgateway on free ports, a local receiver in place
of Slack and PagerDuty. A VRAM reading over the cap must reach the receiver with its labels and runbook,
then resolve; real cloud-bound traffic through a router must raise "local drift".

The production rules are used with every `for:` set to 0s and 1 s evaluation, so the drill takes seconds
(promtool's unit tests cover the real durations); the routes and receivers are the production ones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
import yaml

from deploy.platform import free_port_env, grpc_health
from deploy.render import RULES_FILE, render_alertmanager, render_prometheus
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import router_pb2, router_pb2_grpc
from spiral_common.config import load_settings
from tests.helpers import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("prometheus") is None, reason="needs Debian's prometheus packages (make test installs them)"
    ),
]


class Receiver:
    """Collects what Alertmanager posts (Slack webhook and PagerDuty events API formats)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["content-length"]))
                owner.posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def slack(self, title_prefix: str) -> list[dict]:
        return [
            a
            for path, body in self.posts
            if path == "/slack"
            for a in body.get("attachments", [])
            if a.get("title", "").startswith(title_prefix)
        ]


@pytest.fixture(scope="module")
def drill(tmp_path_factory):
    run = tmp_path_factory.mktemp("drill")
    settings = load_settings({"SPIRAL_RUN_DIR": str(run), **free_port_env()})
    receiver = Receiver()
    rules = yaml.safe_load(RULES_FILE.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    (run / "rules.yml").write_text(yaml.safe_dump(rules))
    (run / "prometheus.yml").write_text(
        render_prometheus(settings, scrape_interval="1s", evaluation_interval="1s", rules_file=run / "rules.yml")
    )
    (run / "alertmanager.yml").write_text(
        render_alertmanager(
            settings,
            {
                "SLACK_WEBHOOK_URL": f"{receiver.url}/slack",
                "PAGERDUTY_ROUTING_KEY": "drill-key",
                "PAGERDUTY_URL": f"{receiver.url}/pagerduty",
            },
            group_wait="1s",
            group_interval="1s",
            repeat_interval="1h",
        )
    )
    observability = settings.observability
    commands = [
        [
            "prometheus",
            f"--config.file={run}/prometheus.yml",
            f"--storage.tsdb.path={run}/tsdb",
            f"--web.listen-address={observability.prometheus_addr}",
        ],
        [
            "prometheus-alertmanager",
            f"--config.file={run}/alertmanager.yml",
            f"--storage.path={run}/am",
            f"--web.listen-address={observability.alertmanager_addr}",
            "--cluster.listen-address=",
        ],
        ["prometheus-pushgateway", f"--web.listen-address={observability.pushgateway_addr}"],
    ]
    log = (run / "drill.log").open("w")
    processes = [subprocess.Popen(c, stdout=log, stderr=subprocess.STDOUT) for c in commands]
    for address in (observability.prometheus_addr, observability.alertmanager_addr, observability.pushgateway_addr):
        wait_until(lambda a=address: _ready(f"http://{a}/-/ready"), 30, f"{address} ready")
    yield settings, receiver
    for process in processes:
        process.terminate()
        process.wait(10)
    receiver.server.shutdown()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


def _push(settings, body: str) -> None:
    request = urllib.request.Request(
        f"http://{settings.observability.pushgateway_addr}/metrics/job/chaos_drill/instance/gpu0",
        data=body.encode(),
        method="PUT",
    )
    urllib.request.urlopen(request, timeout=5).close()


def _alertmanager_alerts(settings, name: str) -> list[dict]:
    url = f"http://{settings.observability.alertmanager_addr}/api/v2/alerts?filter=alertname%3D%22{name}%22"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def test_a_vram_reading_over_the_cap_pages_slack_with_its_runbook_then_resolves(drill):
    settings, receiver = drill
    _push(settings, "spiral_gpu_memory_used_bytes 11e9\n")
    firing = wait_until(lambda: receiver.slack("FIRING: SpiralVRAMHigh"), 60, "the VRAM alert at the receiver")
    assert "[critical]" in firing[0]["text"]
    assert "runbook: docs/runbooks/alert_vram.md" in firing[0]["text"]
    (alert,) = _alertmanager_alerts(settings, "SpiralVRAMHigh")
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["instance"] == "gpu0"
    assert alert["annotations"]["runbook_url"] == "docs/runbooks/alert_vram.md"
    _push(settings, "spiral_gpu_memory_used_bytes 2e9\n")
    wait_until(lambda: receiver.slack("RESOLVED: SpiralVRAMHigh"), 60, "the VRAM alert to resolve")


def test_cloud_bound_traffic_raises_local_drift(drill, tmp_path):
    settings, receiver = drill
    # A real router on the drill's router-main metrics port, whose council disagrees, so every answer
    # comes from the (fake) cloud.
    env = {
        "SPIRAL_RUN_DIR": str(tmp_path),
        "SPIRAL_ROUTER_MAIN_METRICS_ADDR": settings.router.router_main_metrics_addr,
    }
    router = _start_router(tmp_path, env)
    try:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            for i in range(20):
                reply = stub.Orchestrate(
                    router_pb2.OrchestrateRequest(
                        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=f"question {i}?")]
                    ),
                    timeout=30,
                )
                assert reply.trace.tier == router_pb2.TIER_CLOUD
                time.sleep(0.1)  # spread the traffic over a few scrapes, as real traffic is
        firing = wait_until(lambda: receiver.slack("FIRING: SpiralLocalDrift"), 90, "the local drift alert")
        assert "runbook: docs/runbooks/local_drift.md" in firing[0]["text"]
    finally:
        router.stop()


class _Router:
    def __init__(self, process, address, cloud):
        self.process, self.address, self.cloud = process, address, cloud

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.cloud.stop()


def _start_router(tmp_path, env) -> _Router:
    import os
    import sys

    from deploy.gate.fake_cloud import FakeCloud, providers_json
    from deploy.platform import free_ports

    cloud = FakeCloud()
    cloud.start()
    (tmp_path / "providers.json").write_text(json.dumps(providers_json(cloud)))
    redis_port, port = free_ports(2)
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--save", "", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL
    )
    heads_port = free_ports(1)[0]  # nothing listens: every head fails, so local fails
    process = subprocess.Popen(
        [sys.executable, "-m", "router_svc"],
        env={
            **os.environ,
            **env,
            "SPIRAL_PROFILE": "quick_test",
            "SPIRAL_ROUTER_MAIN_ADDR": f"127.0.0.1:{port}",
            "SPIRAL_REDIS_ADDR": f"127.0.0.1:{redis_port}",
            "SPIRAL_REDIS_CACHE_ADDR": f"127.0.0.1:{redis_port}",  # one bare Redis for both
            "SPIRAL_HEAD_ADDR": f"127.0.0.1:{heads_port}",
            "SPIRAL_CLOUD_PROVIDERS_FILE": str(tmp_path / "providers.json"),
            "FAKE_CLOUD_KEY": "k",
            "SPIRAL_HEAD_DEADLINE_S": "2",
        },
        stdout=(tmp_path / "router.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    address = f"127.0.0.1:{port}"
    wait_until(lambda: grpc_health(address) == "SERVING", 30, "the drill router to serve")
    router = _Router(process, address, cloud)
    original_stop = router.stop

    def stop() -> None:
        original_stop()
        redis.terminate()
        redis.wait(10)

    router.stop = stop  # type: ignore[method-assign]
    return router
