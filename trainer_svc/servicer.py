"""TrainerService over gRPC. The job queue and distillation are their own issue: every RPC says so."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from spiral.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from spiral_common.errors import NotImplementedYet

_MISSING = "the durable job queue and QLoRA distillation (the nightly spiral issue)"


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    async def SubmitJob(
        self, request: trainer_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.SubmitJobResponse:
        raise NotImplementedYet("SubmitJob", _MISSING)

    async def GetJob(
        self, request: trainer_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.GetJobResponse:
        raise NotImplementedYet("GetJob", _MISSING)

    async def WatchJob(
        self, request: trainer_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[trainer_pb2.WatchJobResponse]:
        raise NotImplementedYet("WatchJob", _MISSING)
        yield  # an async generator, as a server-streaming handler must be

    async def CancelJob(
        self, request: trainer_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.CancelJobResponse:
        raise NotImplementedYet("CancelJob", _MISSING)

    async def ListAdapters(
        self, request: trainer_pb2.ListAdaptersRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.ListAdaptersResponse:
        raise NotImplementedYet("ListAdapters", "the adapter registry (the heads issue)")
