"""The canary through Envoy: the live weight, health gating under a killed router, streams across a weight
change, the local rate limit, and the verify script."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import httpx
import pytest

from deploy.platform import free_ports
from deploy.render import render_envoy
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import router_pb2, router_pb2_grpc
from spiral_common.config import load_settings, settings_env
from spiral_common.envoy_admin import admin_call
from tests.helpers import wait_until

pytestmark = pytest.mark.integration
ENVOY = str(Path(sys.executable).parent / "envoy")


def _token(platform) -> str:
    return (platform.run / "secrets.env").read_text().split("SPIRAL_ADMIN_TOKEN=")[1].split()[0]


def _served(platform, router: str) -> float:
    """Orchestrate calls a router counted itself (its own metrics, not Envoy's config)."""
    address = platform.settings.router.router_metrics_addr(router)
    text = httpx.get(f"http://{address}/metrics").text
    pattern = r'grpc_server_handled_total\{[^}]*grpc_method="Orchestrate"[^}]*\} ([0-9.e+]+)'
    return sum(float(v) for v in re.findall(pattern, text))


def _envoy_state(platform) -> tuple[dict[str, str], set[str]]:
    """(the split in Envoy's runtime, the router clusters whose host is healthy)."""
    socket = platform.settings.envoy_admin_path
    runtime = {k: v["final_value"] for k, v in json.loads(admin_call(socket, "/runtime"))["entries"].items()}
    healthy = {
        line.split("::")[0]
        for line in admin_call(socket, "/clusters").splitlines()
        if line.startswith("router_") and line.endswith("::health_flags::healthy")
    }
    return runtime, healthy


def _set_weight(platform, gateway_url: str, percent: int) -> None:
    reply = httpx.post(
        f"{gateway_url}/admin/canary",
        json={"percent": percent},
        headers={"authorization": f"Bearer {_token(platform)}"},
    )
    assert reply.status_code == 200, reply.text
    expected = {"spiral.routers.main_first": str(100 - percent), "spiral.routers.canary_first": str(percent)}
    wait_until(lambda: _envoy_state(platform)[0] == expected, 30, f"Envoy to apply weight {percent}")


async def _load(address: str, count: int, workers: int = 8, pin_draws: bool = False) -> list[grpc.aio.AioRpcError]:
    """`count` unary pattern-tier calls through Envoy; returns the failures. With pin_draws, call i pins
    Envoy's split draw to i, so the share follows the weights exactly instead of within sampling error
    (2,000 random draws at 25 % wander by about a point)."""
    failures: list[grpc.aio.AioRpcError] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def worker(start: int) -> None:
            for i in range(start, count, workers):
                request = router_pb2.OrchestrateRequest(
                    messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=f"what is {i} * 7?")]
                )
                metadata = (("x-spiral-split-draw", str(i)),) if pin_draws else ()
                try:
                    await stub.Orchestrate(request, timeout=30, metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    failures.append(exc)

        await asyncio.gather(*(worker(k) for k in range(workers)))
    return failures


@pytest.fixture
def default_weight(platform, gateway_url):
    yield
    _set_weight(platform, gateway_url, platform.settings.envoy.canary_weight_percent)


@pytest.mark.parametrize("percent", [5, 25])
async def test_the_split_follows_the_weight(platform, gateway_url, default_weight, percent):
    _set_weight(platform, gateway_url, percent)
    before = {r: _served(platform, r) for r in ("main", "canary")}
    assert not await _load(platform.settings.envoy.envoy_addr, 2000, pin_draws=True)
    served = {r: _served(platform, r) - before[r] for r in ("main", "canary")}
    share = 100 * served["canary"] / (served["main"] + served["canary"])
    assert served["main"] + served["canary"] == 2000
    assert abs(share - percent) <= 2, served
    got = httpx.get(f"{gateway_url}/admin/canary", headers={"authorization": f"Bearer {_token(platform)}"}).json()
    assert got == {"percent": percent}


async def test_a_killed_canary_fails_no_unary_call_and_gets_traffic_back(platform, gateway_url, default_weight):
    _set_weight(platform, gateway_url, 50)
    address = platform.settings.envoy.envoy_addr
    load = asyncio.create_task(_load(address, 1500, workers=4))
    canary_pid = platform.processes()["router-canary"]["pid"]
    await asyncio.to_thread(wait_until, lambda: _served(platform, "canary") > 0, 30, "the canary to serve")
    os.kill(canary_pid, signal.SIGKILL)  # supervisord restarts it; Envoy must absorb the gap
    failures = await load
    assert not failures, [f.code() for f in failures[:5]]
    await asyncio.to_thread(
        wait_until, lambda: platform.processes()["router-canary"]["pid"] != canary_pid, 30, "the canary's restart"
    )
    await asyncio.to_thread(
        wait_until, lambda: len(_envoy_state(platform)[1]) == 2, 30, "Envoy to see both routers healthy"
    )
    before = _served(platform, "canary")  # a fresh process counts from zero
    assert not await _load(address, 200)
    assert _served(platform, "canary") > before


async def test_open_streams_survive_weight_changes(platform, gateway_url, default_weight):
    async with grpc.aio.insecure_channel(platform.settings.envoy.envoy_addr) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def stream(i: int) -> list:
            request = router_pb2.OrchestrateStreamRequest(
                messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=f"Name a fruit, please ({i}).")],
                params=chat_pb2.GenerationParams(max_tokens=8),
            )
            return [event async for event in stub.OrchestrateStream(request, timeout=120)]

        streams = [asyncio.create_task(stream(i)) for i in range(10)]
        for percent in (25, 0, 100, 5):
            await asyncio.to_thread(_set_weight, platform, gateway_url, percent)
        results = await asyncio.gather(*streams)
    assert all(events and events[-1].HasField("end") for events in results)


async def test_the_local_rate_limit_answers_resource_exhausted(platform, tmp_path):
    ingress, internal, metrics = free_ports(3)
    env = {
        "SPIRAL_PROFILE": "quick_test",
        "SPIRAL_RUN_DIR": str(platform.run),
        "SPIRAL_ENVOY_ADDR": f"127.0.0.1:{ingress}",
        "SPIRAL_ENVOY_INTERNAL_ADDR": f"127.0.0.1:{internal}",
        "SPIRAL_ENVOY_METRICS_ADDR": f"127.0.0.1:{metrics}",
        "SPIRAL_ENVOY_ADMIN_SOCKET": str(tmp_path / "envoy-admin.sock"),
        "SPIRAL_ENVOY_RATE_LIMIT_RPS": "1",
        "SPIRAL_ENVOY_RATE_LIMIT_BURST": "2",
    }
    running = settings_env(platform.settings)
    upstreams = {
        k: running[k]
        for k in (
            "SPIRAL_ROUTER_MAIN_ADDR",
            "SPIRAL_ROUTER_CANARY_ADDR",
            "SPIRAL_HEAD_ADDR",
            "SPIRAL_TRAINER_ADDR",
            "SPIRAL_MINER_ADDR",
        )
    }
    settings = load_settings({**env, **upstreams})
    config = tmp_path / "envoy.yaml"
    config.write_text(render_envoy(settings))
    envoy = subprocess.Popen(
        [ENVOY, "-c", str(config), "--use-dynamic-base-id", "--log-level", "error"], stdout=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: _ready(metrics), 30, "the second Envoy")
        failures = await _load(f"127.0.0.1:{ingress}", 12, workers=4)
    finally:
        envoy.terminate()
        envoy.wait(10)
    assert failures and {f.code() for f in failures} == {grpc.StatusCode.RESOURCE_EXHAUSTED}


def _ready(metrics_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/ready", timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


def test_the_verify_script_passes(platform):
    s = platform.settings
    result = subprocess.run(
        ["bash", "envoy/verify.sh"],
        env={
            **os.environ,
            "ENVOY_ADMIN_SOCKET": str(s.envoy_admin_path),
            "ENVOY_INGRESS": s.envoy.envoy_addr,
            "ENVOY_INTERNAL": s.envoy.envoy_internal_addr,
            "BUF": str(Path(sys.executable).parent / "buf"),
        },
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK")
