"""Test helpers: free ports, waiting on conditions with a deadline, reading gRPC error details."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc

from deploy.platform import free_ports  # noqa: F401 (re-exported for the tests)
from spiral.common.v1 import chat_pb2
from spiral.traffic.v1.traffic_pb2 import TrafficExchange
from spiral_common.auth import Credentials, bearer
from spiral_common.enums import Tier, Track
from spiral_common.grpc_service import error_info
from spiral_common.protoconv import FINISH_TO_PROTO
from spiral_common.traffic import teaches


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


def logged_exchange(
    prompt: str,
    answer: str,
    *,
    tier: Tier = Tier.CLOUD,
    teacher: str | None = None,
    finish_reason: str = "stop",
    answer_id: str | None = None,
    ts_ms: int = 0,
    pattern_id: str = "",
) -> TrafficExchange:
    """A traffic-log record of a single-turn exchange, as a router writes it (teaching decided the same way)."""
    import uuid

    finish = FINISH_TO_PROTO[finish_reason]
    default_teacher = {Tier.CLOUD: "fake-cloud", Tier.COUNCIL: "council:precise", Tier.HEAD: "head:precise"}
    return TrafficExchange(
        answer_id=answer_id or uuid.uuid4().hex,
        request_id=uuid.uuid4().hex,
        track=Track.MAIN.proto,
        model="spiral",
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=prompt)],
        tier=tier.proto,
        answer=answer,
        finish_reason=finish,
        teaches=teaches(tier, finish),
        teacher=default_teacher.get(tier, "") if teacher is None else teacher,
        ts_ms=ts_ms,
        pattern_id=pattern_id,
    )


# The credentials the in-process services of the tests accept on their state-changing methods.
TEST_CREDENTIALS = Credentials(admin_token="test-admin-token", service_token="test-service-token")


class _Bearer(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self.metadata = bearer(token)

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = (*tuple(details.metadata or ()), *self.metadata)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._with_token(details), request)

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._with_token(details), request)


def authorized_channel(address: str, token: str = TEST_CREDENTIALS.admin_token) -> grpc.aio.Channel:
    """An aio channel whose every call presents `token`."""
    return grpc.aio.insecure_channel(address, interceptors=[_Bearer(token)])
