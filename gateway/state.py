"""What the routes share: the settings, the metrics registry and the gRPC stubs to Envoy, in one object."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

import grpc
from fastapi import Depends, FastAPI, Request
from grpc_health.v1 import health_pb2_grpc
from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics
from spiral.router.v1 import admin_pb2_grpc, router_pb2_grpc
from spiral_common.auth import AUTHORIZATION
from spiral_common.chat import Limits, limits_from
from spiral_common.config import Settings
from spiral_common.errors import Unauthenticated
from spiral_common.logs import REQUEST_ID_HEADER


@dataclass(frozen=True)
class Upstream:
    """The stubs the routes call: the routers' client RPCs on Envoy's public ingress, their AdminService (which
    the public ingress does not route) on Envoy's internal listener."""

    channel: grpc.aio.Channel
    router: router_pb2_grpc.RouterServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    health: health_pb2_grpc.HealthStub
    internal_channel: grpc.aio.Channel | None = None

    @classmethod
    def connect(cls, address: str, internal_address: str | None = None) -> Upstream:
        channel = grpc.aio.insecure_channel(address)
        internal = grpc.aio.insecure_channel(internal_address) if internal_address else None
        return cls(
            channel=channel,
            router=router_pb2_grpc.RouterServiceStub(channel),
            admin=admin_pb2_grpc.AdminServiceStub(internal or channel),
            health=health_pb2_grpc.HealthStub(channel),
            internal_channel=internal,
        )

    async def close(self) -> None:
        await self.channel.close()
        if self.internal_channel is not None:
            await self.internal_channel.close()


@dataclass
class GatewayState:
    """One per app, kept on `app.state.gateway`; the routes reach it through the dependencies below."""

    settings: Settings
    registry: CollectorRegistry
    metrics: GatewayMetrics
    _upstream: Upstream | None = field(default=None, init=False)
    limits: Limits = field(init=False)  # the router's request limits, checked here before any call

    def __post_init__(self) -> None:
        self.limits = limits_from(self.settings)

    @property
    def upstream(self) -> Upstream:
        if self._upstream is None:
            raise RuntimeError("the gateway's lifespan has not started: there is no channel to Envoy yet")
        return self._upstream

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """The app's lifespan: the channel is opened here because a grpc.aio channel belongs to the running loop."""
        upstream = Upstream.connect(self.settings.envoy.envoy_addr, self.settings.envoy.envoy_internal_addr)
        self._upstream = upstream
        yield
        await upstream.close()


# FastAPI dependencies. They are `async def` on purpose: a plain `def` dependency runs in the thread pool,
# a thread hop on every request.
Metadata = tuple[tuple[str, str], ...]


async def gateway_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


async def upstream(request: Request) -> Upstream:
    return (await gateway_state(request)).upstream


async def chat_limits(request: Request) -> Limits:
    return (await gateway_state(request)).limits


async def call_timeout(request: Request) -> float:
    """The deadline of a call to the routers, seconds: Envoy, the router and the heads all hold to it."""
    return (await gateway_state(request)).settings.gateway.gateway_request_timeout_s


async def call_metadata(request: Request) -> Metadata:
    """The gRPC metadata of every call: the request id, so that the logs of every hop carry it."""
    return ((REQUEST_ID_HEADER, request.state.request_id),)


async def client_metadata(request: Request) -> Metadata:
    """The metadata of a client call: the request id and the client's `Authorization: Bearer <API key>`, passed
    on as it came; the router checks the key (in constant time) and applies its limits. With
    SPIRAL_CLIENT_AUTH=keys a call without one is refused here already (the router would refuse it too)."""
    header = request.headers.get(AUTHORIZATION, "")
    if not header and (await gateway_state(request)).settings.client_auth == "keys":
        raise Unauthenticated(
            "this gateway needs a client API key: `Authorization: Bearer sk-spiral-...` "
            "(an operator creates one with `make api-key NAME=<name>`)",
            reason="BAD_API_KEY",
        )
    return (*(await call_metadata(request)), *(((AUTHORIZATION, header),) if header else ()))


async def admin_metadata(request: Request) -> Metadata:
    # The bearer token is passed on as it came; the router checks it (in constant time) and logs
    # refusals without it.
    return (*(await call_metadata(request)), (AUTHORIZATION, request.headers.get(AUTHORIZATION, "")))


@dataclass(frozen=True)
class ChatCall:
    """What a chat completion needs for its call to the routers, in one dependency: FastAPI resolves each
    dependency with tens of microseconds of its own machinery, on every request of the hottest route."""

    stubs: Upstream
    metadata: Metadata
    limits: Limits
    timeout_s: float


async def chat_call(request: Request) -> ChatCall:
    state = await gateway_state(request)
    metadata = await client_metadata(request)  # refuses a call without a key when keys are required
    return ChatCall(state.upstream, metadata, state.limits, state.settings.gateway.gateway_request_timeout_s)


State = Annotated[GatewayState, Depends(gateway_state)]
ChatCallContext = Annotated[ChatCall, Depends(chat_call)]
Stubs = Annotated[Upstream, Depends(upstream)]
CallMetadata = Annotated[Metadata, Depends(call_metadata)]
ClientMetadata = Annotated[Metadata, Depends(client_metadata)]
CallTimeout = Annotated[float, Depends(call_timeout)]
ChatLimits = Annotated[Limits, Depends(chat_limits)]
AdminMetadata = Annotated[Metadata, Depends(admin_metadata)]
