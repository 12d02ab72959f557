"""The real Envoy, rendered from the settings, in front of two stand-in heads: the routers' calls are balanced
over every head, a call without a credential never reaches one, and a dead head fails no call that no head had
started answering."""

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
from spiral.head.v1 import head_pb2, head_pb2_grpc
from spiral_common.auth import bearer
from spiral_common.config import load_settings
from spiral_common.envoy_admin import admin_call
from tests.helpers import wait_until

pytestmark = pytest.mark.integration
ENVOY = str(Path(sys.executable).parent / "envoy")
HEAD_SERVICE = "spiral.head.v1.HeadService"


class NamedHead(head_pb2_grpc.HeadServiceServicer):
    """Streams its own name, then ends."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def Generate(self, request, context):
        yield head_pb2.GenerateResponse(delta=head_pb2.GenerateDelta(text=self.name))
        yield head_pb2.GenerateResponse(end=head_pb2.GenerateEnd(head=self.name))


async def _head(name: str) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    head_pb2_grpc.add_HeadServiceServicer_to_server(NamedHead(name), server)
    checks = health.aio.HealthServicer()
    await checks.set(HEAD_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def _healthy_heads(socket: Path) -> int:
    try:
        lines = admin_call(socket, "/clusters", timeout_s=1).splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines if line.startswith("head::") and line.endswith("::health_flags::healthy"))


async def _answer(stub: head_pb2_grpc.HeadServiceStub, metadata) -> str:
    call = stub.Generate(head_pb2.GenerateRequest(head="precise"), metadata=metadata, timeout=10)
    return "".join([m.delta.text async for m in call if m.HasField("delta")])


async def test_calls_are_balanced_over_every_head_and_a_dead_head_fails_none(tmp_path):
    (first, first_port), (second, second_port) = [await _head(name) for name in ("head-a", "head-b")]
    ingress, internal, metrics, router, trainer, miner = free_ports(6)
    settings = load_settings(
        {
            "SPIRAL_PROFILE": "quick_test",
            "SPIRAL_RUN_DIR": str(tmp_path),
            "SPIRAL_ENVOY_ADDR": f"127.0.0.1:{ingress}",
            "SPIRAL_ENVOY_INTERNAL_ADDR": f"127.0.0.1:{internal}",
            "SPIRAL_ENVOY_METRICS_ADDR": f"127.0.0.1:{metrics}",
            "SPIRAL_ROUTER_MAIN_ADDR": f"127.0.0.1:{router}",
            "SPIRAL_ROUTER_CANARY_ADDR": f"127.0.0.1:{router}",
            "SPIRAL_HEAD_ENDPOINTS": f"127.0.0.1:{first_port},127.0.0.1:{second_port}",
            "SPIRAL_TRAINER_ADDR": f"127.0.0.1:{trainer}",
            "SPIRAL_MINER_ADDR": f"127.0.0.1:{miner}",
        }
    )
    config = tmp_path / "envoy.yaml"
    config.write_text(render_envoy(settings))
    envoy = subprocess.Popen(
        [ENVOY, "-c", str(config), "--use-dynamic-base-id", "--log-level", "error"], stdout=subprocess.DEVNULL
    )
    token = bearer("a-service-token")  # Envoy asks only that there is one; the heads check it
    try:
        await asyncio.to_thread(
            wait_until, lambda: _healthy_heads(settings.envoy_admin_path) == 2, 30, "Envoy to see both heads"
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{internal}") as channel:
            stub = head_pb2_grpc.HeadServiceStub(channel)
            answers = await asyncio.gather(*(_answer(stub, token) for _ in range(20)))
            assert set(answers) == {"head-a", "head-b"}

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _answer(stub, ())
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # refused before any head

            await first.stop(None)  # a head dies; Envoy's health check has not seen it yet
            answers = await asyncio.gather(*(_answer(stub, token) for _ in range(20)))
            assert answers == ["head-b"] * 20  # none failed: each was retried on the live head

        async with grpc.aio.insecure_channel(f"127.0.0.1:{ingress}") as public:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _answer(head_pb2_grpc.HeadServiceStub(public), token)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED  # the public ingress has no head route
    finally:
        envoy.terminate()
        envoy.wait(10)
        await first.stop(None)
        await second.stop(None)
