"""TrainerService over gRPC: submit, get, watch and cancel jobs on the durable queue; list and send the adapters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from spiral.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from spiral_common.adapters import LATEST, AdapterInfo, AdapterRegistry
from spiral_common.council_vote import Calibration
from spiral_common.errors import InvalidArgument
from trainer_svc.jobs import STAGES, Job, JobQueue

KIND_FROM_PROTO = {trainer_pb2.JOB_KIND_DISTILL: "distill", trainer_pb2.JOB_KIND_MINE: "mine"}
KIND_TO_PROTO = {v: k for k, v in KIND_FROM_PROTO.items()}
STATE_TO_PROTO = {
    "queued": trainer_pb2.JOB_STATE_QUEUED,
    "waiting_budget": trainer_pb2.JOB_STATE_WAITING_BUDGET,
    "running": trainer_pb2.JOB_STATE_RUNNING,
    "succeeded": trainer_pb2.JOB_STATE_SUCCEEDED,
    "failed": trainer_pb2.JOB_STATE_FAILED,
    "cancelled": trainer_pb2.JOB_STATE_CANCELLED,
}
STAGE_TO_PROTO = {name: number for number, name in enumerate(STAGES)}  # the enum follows STAGES' order
MAX_TIME_BUDGET_S = 24 * 3600
FETCH_CHUNK_BYTES = 1 << 20  # well under gRPC's 4 MiB message limit


def _timestamp(ms: int) -> Timestamp | None:
    if not ms:
        return None
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def _wall_ms(job: Job) -> int:
    """A job that ended before its run reported a duration: its wall time from start to end."""
    return job.finished_ms - job.started_ms if job.finished_ms and job.started_ms else 0


def job_to_proto(job: Job) -> trainer_pb2.Job:
    r = job.result
    return trainer_pb2.Job(
        job_id=job.job_id,
        kind=KIND_TO_PROTO.get(job.kind, trainer_pb2.JOB_KIND_UNSPECIFIED),
        state=STATE_TO_PROTO.get(job.state, trainer_pb2.JOB_STATE_UNSPECIFIED),
        created_at=_timestamp(job.created_ms),
        started_at=_timestamp(job.started_ms),
        finished_at=_timestamp(job.finished_ms),
        attempt=job.attempt,
        error=job.error,
        progress=trainer_pb2.JobProgress(
            stage=trainer_pb2.JobStage.Name(STAGE_TO_PROTO.get(job.stage, trainer_pb2.JOB_STAGE_UNSPECIFIED)),
            step=job.step,
            total_steps=job.total_steps,
            loss=job.loss,
            eta_ms=job.eta_ms,
        ),
        result=trainer_pb2.JobResult(
            adapter_version=r.get("adapter_version", ""),
            eval_score_new=r.get("eval_score_new", 0.0),
            eval_score_current=r.get("eval_score_current", 0.0),
            published=r.get("published", False),
            cost_usd_micros=r.get("cost_usd_micros", 0),
            duration_ms=r.get("duration_ms") or _wall_ms(job),
            council_calibration=calibration_to_proto(
                None if not r.get("council_calibration") else Calibration(**r["council_calibration"])
            ),
        ),
    )


def adapter_to_proto(info: AdapterInfo) -> trainer_pb2.Adapter:
    created = None
    if info.created_at:
        try:
            created = Timestamp()
            created.FromDatetime(datetime.fromisoformat(info.created_at))
        except ValueError:
            created = None
    return trainer_pb2.Adapter(
        version=info.version,
        base_model_sha256=info.base_model_sha256,
        job_id=info.job_id,
        eval_score=info.eval_score,
        created_at=created,
        size_bytes=info.size_bytes,
        council_calibration=calibration_to_proto(info.council),
    )


def calibration_to_proto(calibration: Calibration | None) -> trainer_pb2.CouncilCalibration | None:
    if calibration is None:
        return None
    return trainer_pb2.CouncilCalibration(
        threshold=calibration.threshold,
        prompts=calibration.prompts,
        coverage=calibration.coverage,
        precision=calibration.precision,
        max_error=calibration.max_error,
    )


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, queue: JobQueue, registry: AdapterRegistry) -> None:
        self.queue = queue
        self.registry = registry

    async def SubmitJob(
        self, request: trainer_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.SubmitJobResponse:
        kind = KIND_FROM_PROTO.get(request.kind)
        if kind is None:
            raise InvalidArgument("kind must be JOB_KIND_DISTILL or JOB_KIND_MINE", reason="BAD_JOB_KIND", field="kind")
        if not 0 <= request.time_budget_s <= MAX_TIME_BUDGET_S:
            message = f"time_budget_s must be within [0, {MAX_TIME_BUDGET_S}]"
            raise InvalidArgument(message, reason="BAD_TIME_BUDGET", field="time_budget_s")
        job, _ = await self.queue.submit(kind, time_budget_s=request.time_budget_s)
        return trainer_pb2.SubmitJobResponse(job=job_to_proto(job))

    async def GetJob(
        self, request: trainer_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.GetJobResponse:
        return trainer_pb2.GetJobResponse(job=job_to_proto(await self.queue.get(request.job_id)))

    async def WatchJob(
        self, request: trainer_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[trainer_pb2.WatchJobResponse]:
        await self.queue.get(request.job_id)  # NOT_FOUND before the stream starts
        async for job in self.queue.watch(request.job_id):
            yield trainer_pb2.WatchJobResponse(job=job_to_proto(job))

    async def CancelJob(
        self, request: trainer_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.CancelJobResponse:
        return trainer_pb2.CancelJobResponse(job=job_to_proto(await self.queue.cancel(request.job_id)))

    async def ListAdapters(
        self, request: trainer_pb2.ListAdaptersRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.ListAdaptersResponse:
        infos = await asyncio.to_thread(lambda: list(self.registry.usable()))
        return trainer_pb2.ListAdaptersResponse(adapters=[adapter_to_proto(i) for i in infos])

    async def FetchAdapter(
        self, request: trainer_pb2.FetchAdapterRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[trainer_pb2.FetchAdapterResponse]:
        info = await asyncio.to_thread(self.registry.resolve, request.version or LATEST)
        if info is None:
            raise InvalidArgument("version 'none' is the base model: no file to send", reason="BAD_VERSION")
        sha256 = await asyncio.to_thread(self.registry.sha256, info.version)
        record = trainer_pb2.AdapterRecord(adapter=adapter_to_proto(info), sha256=sha256)
        yield trainer_pb2.FetchAdapterResponse(record=record)
        with info.path.open("rb") as fh:  # one open file: the bytes of the version recorded above
            while chunk := await asyncio.to_thread(fh.read, FETCH_CHUNK_BYTES):
                yield trainer_pb2.FetchAdapterResponse(chunk=chunk)
