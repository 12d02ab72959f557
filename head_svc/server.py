"""Builds the head's gRPC server; `__main__` and the tests share it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from head_svc.heads import HeadPool
from head_svc.servicer import HeadServicer
from spiral.head.v1 import head_pb2, head_pb2_grpc
from spiral_common.adapters import AdapterRegistry
from spiral_common.auth import Credentials
from spiral_common.chat import limits_from
from spiral_common.config import Settings
from spiral_common.grpc_service import ServiceRuntime, build_server
from spiral_common.serving import ServingRecord
from spiral_common.specs import load_heads

SERVICE_NAME = head_pb2.DESCRIPTOR.services_by_name["HeadService"].full_name


def build_pool(
    settings: Settings,
    registry: AdapterRegistry | None = None,
    state_path: Path | None = None,
    fetch: Callable[[str], Awaitable[str]] | None = None,
) -> HeadPool:
    return HeadPool(
        load_heads(settings.head.heads_file),
        settings.head.head_max_concurrent,
        flush_interval_ms=settings.head.head_stream_flush_ms,
        registry=registry,
        state_path=state_path,
        fetch=fetch,
    )


def create_server(
    settings: Settings,
    pool: HeadPool,
    base_model: head_pb2.BaseModel,
    *,
    port: int | None = None,
    metrics: CollectorRegistry | None = None,
    credentials: Credentials | None = None,
    serving: ServingRecord | None = None,
) -> ServiceRuntime:
    """The head's server; LoadAdapter (it changes what is served) needs the admin or the service token
    (`credentials`, default from the secrets)."""
    servicer = HeadServicer(pool, limits_from(settings), base_model, serving)
    return build_server(
        domain="head.spiral",
        host=settings.head.head_addr.host,
        port=settings.head.head_addr.port if port is None else port,
        service_names=[SERVICE_NAME],
        add_servicers=lambda server: head_pb2_grpc.add_HeadServiceServicer_to_server(servicer, server),
        registry=metrics,
        protected=[f"/{SERVICE_NAME}/LoadAdapter"],
        credentials=credentials,
    )
