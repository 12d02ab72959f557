"""Operations: liveness with the router's gRPC health, and the Prometheus metrics."""

from __future__ import annotations

import grpc
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from grpc_health.v1 import health_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.state import State, Stubs
from spiral.router.v1 import router_pb2

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name

router = APIRouter()


@router.get("/healthz", summary="Gateway liveness and the router's gRPC health through Envoy")
async def healthz(stubs: Stubs) -> JSONResponse:
    try:
        reply = await stubs.health.Check(health_pb2.HealthCheckRequest(service=ROUTER_SERVICE), timeout=2)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.aio.AioRpcError as exc:
        status = f"UNREACHABLE ({exc.code().name})"
    code = 200 if status == "SERVING" else 503
    return JSONResponse({"status": "ok" if code == 200 else "degraded", "router": status}, status_code=code)


@router.get("/metrics", summary="Prometheus metrics of the gateway")
async def metrics_endpoint(state: State) -> Response:
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)
