"""Builds the router's gRPC server; `__main__` and the tests share it."""

from __future__ import annotations

from router_svc.heads_client import HeadClient
from router_svc.orchestrator import Orchestrator
from router_svc.servicer import AdminServicer, RouterServicer
from spiral.router.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc
from spiral_common.chat import limits_from
from spiral_common.config import Settings
from spiral_common.grpc_service import ServiceRuntime, build_server

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


def create_server(settings: Settings, heads: HeadClient, *, port: int | None = None) -> ServiceRuntime:
    router = RouterServicer(Orchestrator(heads, settings.router_instance), limits_from(settings))
    admin = AdminServicer()

    def add(server):  # type: ignore[no-untyped-def]
        router_pb2_grpc.add_RouterServiceServicer_to_server(router, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)

    return build_server(
        domain="router.spiral",
        host=settings.host,
        port=settings.router_port(settings.router_instance) if port is None else port,
        service_names=[ROUTER_SERVICE, ADMIN_SERVICE],
        add_servicers=add,
    )
