"""Builds the trainer's gRPC server; `__main__` and the tests share it."""

from __future__ import annotations

from spiral.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from spiral_common.config import Settings
from spiral_common.grpc_service import ServiceRuntime, build_server
from trainer_svc.servicer import TrainerServicer

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


def create_server(settings: Settings, *, port: int | None = None) -> ServiceRuntime:
    servicer = TrainerServicer()
    return build_server(
        domain="trainer.spiral",
        host=settings.host,
        port=settings.trainer_port if port is None else port,
        service_names=[SERVICE_NAME],
        add_servicers=lambda server: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server),
    )
