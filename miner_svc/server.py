"""Builds the miner's gRPC server; `__main__` and the tests share it."""

from __future__ import annotations

from miner_svc.servicer import MinerServicer
from spiral.miner.v1 import miner_pb2, miner_pb2_grpc
from spiral_common.config import Settings
from spiral_common.grpc_service import ServiceRuntime, build_server

SERVICE_NAME = miner_pb2.DESCRIPTOR.services_by_name["MinerService"].full_name


def create_server(settings: Settings, *, port: int | None = None) -> ServiceRuntime:
    servicer = MinerServicer()
    return build_server(
        domain="miner.spiral",
        host=settings.host,
        port=settings.miner_port if port is None else port,
        service_names=[SERVICE_NAME],
        add_servicers=lambda server: miner_pb2_grpc.add_MinerServiceServicer_to_server(servicer, server),
    )
