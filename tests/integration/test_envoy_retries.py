"""The real Envoy, rendered from the settings, in front of two stand-in routers: a router's refusal is not
retried (no retry storm), and the caller's deadline reaches the router."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deploy.platform import free_ports
from deploy.render import render_envoy
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import router_pb2, router_pb2_grpc
from spiral_common import errors
from spiral_common.config import load_settings
from spiral_common.envoy_admin import admin_call
from spiral_common.grpc_service import to_rpc_status
from tests.helpers import reason_of, wait_until

pytestmark = pytest.mark.integration
ENVOY = str(Path(sys.executable).parent / "envoy")
ROUTER_SERVICE = "spiral.router.v1.RouterService"


class RefusingRouter(router_pb2_grpc.RouterServiceServicer):
    """Answers every Orchestrate as a router whose tiers all failed, and counts the calls it saw."""

    def __init__(self) -> None:
        self.calls: list[float | None] = []  # each call's time remaining, as this router saw it

    async def Orchestrate(self, request, context):
        self.calls.append(context.time_remaining())
        refusal = errors.Unavailable("no tier could answer: no head answered", reason="NO_TIER_ANSWERED")
        await context.abort_with_status(to_rpc_status(refusal, "router.spiral"))


def _healthy_routers(admin_socket: Path) -> int:
    try:
        lines = admin_call(admin_socket, "/clusters", timeout_s=1).splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines if line.startswith("router_") and line.endswith("::health_flags::healthy"))


async def _router_server() -> tuple[grpc.aio.Server, RefusingRouter, int]:
    server = grpc.aio.server()
    router = RefusingRouter()
    router_pb2_grpc.add_RouterServiceServicer_to_server(router, server)
    checks = health.aio.HealthServicer()
    await checks.set(ROUTER_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, router, port


async def test_a_no_tier_answered_refusal_reaches_one_router_once_with_the_callers_deadline(tmp_path):
    (main, main_router, main_port), (canary, canary_router, canary_port) = [await _router_server() for _ in range(2)]
    ingress, internal, metrics, head, trainer, miner = free_ports(6)
    settings = load_settings(
        {
            "SPIRAL_PROFILE": "quick_test",
            "SPIRAL_RUN_DIR": str(tmp_path),
            "SPIRAL_ENVOY_ADDR": f"127.0.0.1:{ingress}",
            "SPIRAL_ENVOY_INTERNAL_ADDR": f"127.0.0.1:{internal}",
            "SPIRAL_ENVOY_METRICS_ADDR": f"127.0.0.1:{metrics}",
            "SPIRAL_ROUTER_MAIN_ADDR": f"127.0.0.1:{main_port}",
            "SPIRAL_ROUTER_CANARY_ADDR": f"127.0.0.1:{canary_port}",
            "SPIRAL_HEAD_ADDR": f"127.0.0.1:{head}",
            "SPIRAL_TRAINER_ADDR": f"127.0.0.1:{trainer}",
            "SPIRAL_MINER_ADDR": f"127.0.0.1:{miner}",
            "SPIRAL_CANARY_WEIGHT_PERCENT": "50",
        }
    )
    config = tmp_path / "envoy.yaml"
    config.write_text(render_envoy(settings))
    envoy = subprocess.Popen(
        [ENVOY, "-c", str(config), "--use-dynamic-base-id", "--log-level", "error"], stdout=subprocess.DEVNULL
    )
    try:
        await asyncio.to_thread(
            wait_until, lambda: _healthy_routers(settings.envoy_admin_path) == 2, 30, "Envoy to see both routers"
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ingress}") as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            request = router_pb2.OrchestrateRequest(
                messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content="hi")]
            )
            for _ in range(4):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Orchestrate(request, timeout=20)
                assert reason_of(caught.value)[:2] == (grpc.StatusCode.UNAVAILABLE, "NO_TIER_ANSWERED")
    finally:
        envoy.terminate()
        envoy.wait(10)
        await main.stop(None)
        await canary.stop(None)
    seen = main_router.calls + canary_router.calls
    assert len(seen) == 4  # each call reached one router, once: Envoy retried none of them
    assert all(remaining is not None and 10 < remaining <= 21 for remaining in seen), seen
