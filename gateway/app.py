"""The gateway's HTTP app: `create_app` wires the shared state, middleware, error handlers and the routers."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from gateway.errors import EXCEPTION_HANDLERS
from gateway.metrics import GatewayMetrics
from gateway.middleware import BodyLimit, RequestContext
from gateway.routes import admin, native, openai, ops
from gateway.state import GatewayState
from spiral_common.config import Settings, check_gateway_exposure
from spiral_common.grpc_service import service_registry


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    check_gateway_exposure(settings)  # never open to the network without client keys
    registry = registry or service_registry()
    state = GatewayState(settings=settings, registry=registry, metrics=GatewayMetrics(registry))
    app = FastAPI(
        title="Spiral gateway",
        version="0.1.0",
        description="OpenAI-compatible chat completions and the native cascade API of the Spiral platform.",
        lifespan=state.lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.gateway = state
    # The last added runs first: the request id is set before the body cap may refuse.
    app.add_middleware(BodyLimit, max_bytes=settings.gateway.gateway_max_body_bytes)
    app.add_middleware(RequestContext, metrics=state.metrics)
    for area in (ops, openai, native, admin):  # this order is the order of the paths in /openapi.json
        app.include_router(area.router)
    return app
