"""Test helpers: free ports, waiting on conditions with a deadline, reading gRPC error details."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import grpc

from spiral_common.grpc_service import error_info

PORT_SETTINGS = (
    "redis_port", "envoy_ingress_port", "envoy_admin_port", "gateway_port", "router_main_port",
    "router_canary_port", "head_port", "trainer_port", "miner_port", "router_main_metrics_port",
    "router_canary_metrics_port", "head_metrics_port", "trainer_metrics_port", "miner_metrics_port",
)  # fmt: skip


def free_ports(count: int) -> list[int]:
    """Distinct ports that were free a moment ago (all sockets are held until every port is picked)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [s.getsockname()[1] for s in sockets]
    for sock in sockets:
        sock.close()
    return ports


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


async def wait_until_async(
    condition: Callable[[], Awaitable[object]], timeout_s: float, what: str, interval_s: float = 0.05
) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


def reason_of(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    info = error_info(exc)
    assert info is not None, f"no ErrorInfo in {exc.code()}: {exc.details()}"
    return exc.code(), info.reason, dict(info.metadata)
