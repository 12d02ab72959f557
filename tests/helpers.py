"""Test helpers: free ports, waiting on conditions with a deadline, reading gRPC error details."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc

from deploy.platform import free_ports  # noqa: F401 (re-exported for the tests)
from spiral_common.grpc_service import error_info


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
