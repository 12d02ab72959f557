"""The mesh as an operator sees it: reflection through Envoy, health, metrics, supervision."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import wait_until

pytestmark = pytest.mark.integration
BUF = str(Path(sys.executable).parent / "buf")


def _buf_curl(platform, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_buf_curl_calls_the_router_through_envoy_by_reflection(platform):
    address = f"http://{platform.settings.envoy.envoy_addr}"
    listed = _buf_curl(platform, "--list-services", address)
    assert "spiral.router.v1.RouterService" in listed.stdout.split(), listed.stderr
    body = {
        "messages": [{"role": "ROLE_USER", "content": "Name a colour."}],
        "params": {"max_tokens": 8, "temperature": 0},
    }
    reply = _buf_curl(platform, "-d", json.dumps(body), f"{address}/spiral.router.v1.RouterService/Orchestrate")
    assert reply.returncode == 0, reply.stderr
    answer = json.loads(reply.stdout)
    assert answer["text"] and answer["trace"]["tier"] in ("TIER_COUNCIL", "TIER_LOCAL_FALLBACK", "TIER_CACHE")


def test_every_service_reports_serving_on_grpc_health(platform):
    s = platform.settings
    for address, service in [
        (s.head.head_addr, "spiral.head.v1.HeadService"),
        (s.router.router_main_addr, "spiral.router.v1.RouterService"),
        (s.router.router_canary_addr, "spiral.router.v1.AdminService"),
        (s.trainer.trainer_addr, "spiral.trainer.v1.TrainerService"),
        (s.miner.miner_addr, "spiral.miner.v1.MinerService"),
        (s.envoy.envoy_addr, ""),
    ]:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, (address, service)


def test_every_metrics_port_serves_prometheus_text(platform, gateway_url):
    s = platform.settings
    body = {"messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 4}
    assert httpx.post(f"{gateway_url}/orchestrate", json=body, timeout=60).status_code == 200
    addresses = [
        s.router.router_main_metrics_addr,
        s.router.router_canary_metrics_addr,
        s.head.head_metrics_addr,
        s.trainer.trainer_metrics_addr,
        s.miner.miner_metrics_addr,
    ]
    for url in [f"http://{a}/metrics" for a in addresses] + [f"{gateway_url}/metrics"]:
        reply = httpx.get(url)
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain")
        assert "process_resident_memory_bytes" in reply.text, url
    head = httpx.get(f"http://{s.head.head_metrics_addr}/metrics").text
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="Generate"' in head


def test_a_crashed_service_is_restarted_and_the_restart_is_logged(platform):
    before = platform.processes()["trainer"]["pid"]
    os.kill(before, signal.SIGKILL)
    wait_until(
        lambda: (
            platform.processes()["trainer"]["statename"] == "RUNNING"
            and platform.processes()["trainer"]["pid"] != before
        ),
        30,
        "supervisord to restart the trainer",
    )
    platform.wait_serving(30)
    log = (platform.run / "logs" / "supervisord.log").read_text()
    assert "exited: trainer (terminated by SIGKILL" in log
