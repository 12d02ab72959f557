"""Builds the trainer: its gRPC server, the job queue, the worker and the scheduler. `__main__` and the tests
share it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from redis.asyncio import Redis

from spiral.miner.v1 import miner_pb2, miner_pb2_grpc
from spiral.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from spiral_common.adapters import AdapterRegistry
from spiral_common.auth import Credentials, bearer
from spiral_common.budget import BudgetLedger
from spiral_common.config import Settings
from spiral_common.grpc_service import ServiceRuntime, build_server, service_registry
from spiral_common.model_files import file_sha256
from spiral_common.specs import council_members, load_heads
from trainer_svc.distill import DistillRunner, Publisher
from trainer_svc.jobs import Job, JobQueue
from trainer_svc.publish import push_job_metrics
from trainer_svc.scheduler import build_scheduler
from trainer_svc.servicer import TrainerServicer
from trainer_svc.worker import Worker, WorkerMetrics

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
log = logging.getLogger(__name__)


@dataclass
class TrainerDeps:
    redis: Redis
    publisher: Publisher
    model_path: Path
    # Where mining jobs go: the miner's gRPC address (through Envoy in the platform).
    miner_address: str = ""
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    run_worker: bool = True
    run_scheduler: bool = True
    push_metrics: bool = True
    # SubmitJob and CancelJob need one of these tokens; the service token also goes with its calls to the miner.
    credentials: Credentials | None = None


@dataclass
class Trainer:
    runtime: ServiceRuntime
    queue: JobQueue
    worker: Worker | None
    scheduler: AsyncIOScheduler | None
    _worker_task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.runtime.start()
        await self.queue.ensure_group()
        if self.worker is not None:
            self._worker_task = asyncio.create_task(self.worker.run_forever(), name="trainer-worker")
        if self.scheduler is not None:
            self.scheduler.start()

    async def stop(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.worker is not None and self._worker_task is not None:
            self.worker.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker_task


def mine_runner(address: str, service_token: str = ""):  # type: ignore[no-untyped-def]
    """A mining job asks the miner service to mine now (the miner owns the patterns), as a service."""
    import grpc

    async def run(job: Job, progress: Any) -> dict[str, Any]:
        if not address:
            raise RuntimeError("no miner address is configured")
        await progress(stage="dataset")
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await miner_pb2_grpc.MinerServiceStub(channel).Mine(
                miner_pb2.MineRequest(), timeout=3600, metadata=bearer(service_token)
            )
        return {
            "prompts_read": reply.prompts_read,
            "clusters": reply.clusters,
            "patterns_published": reply.patterns_published,
            "patterns_retired": reply.patterns_retired,
            "pattern_set_version": reply.pattern_set_version,
            "duration_ms": reply.duration_ms,
        }

    return run


def create_trainer(settings: Settings, deps: TrainerDeps, *, port: int | None = None) -> Trainer:
    registry = service_registry()
    credentials = deps.credentials or Credentials.from_secrets()
    queue = JobQueue(
        deps.redis,
        prefix=settings.redis.redis_prefix,
        consumer=deps.consumer,
        lease_s=settings.trainer.trainer_lease_s,
        max_attempts=settings.trainer.trainer_max_attempts,
    )
    adapters = AdapterRegistry(settings.adapters_path, file_sha256(deps.model_path))
    ledger = BudgetLedger(
        deps.redis,
        prefix=settings.redis.redis_prefix,
        pool_usd_micros=settings.budget.daily_pool_usd_micros,
        reservation_ttl_s=settings.budget.budget_reservation_ttl_s,
    )
    heads = load_heads(settings.head.heads_file)
    by_name = {h.name: h for h in heads}
    distill = DistillRunner(
        settings,
        deps.redis,
        ledger,
        adapters,
        deps.publisher,
        model_path=deps.model_path,
        system_prompts=[h.system_prompt for h in heads],
        # The council to calibrate for: the routers' (SPIRAL_COUNCIL_HEADS), or every head when that is off now
        # (e.g. while the cloud teaches): the adapter may serve a council later, and must carry a threshold then.
        council=[by_name[n] for n in council_members(settings.router.council_heads, heads)] or heads,
    )
    gateway = f"{settings.observability.pushgateway_addr}"

    async def push(job: Job, outcome: str, result: dict[str, Any]) -> None:
        if deps.push_metrics:
            try:
                await asyncio.to_thread(push_job_metrics, gateway, job, outcome, result)
            except OSError as exc:  # the Pushgateway is optional; the job's outcome stands
                log.warning("job metrics not pushed", extra={"gateway": gateway, "error": str(exc)})

    worker = None
    if deps.run_worker:
        worker = Worker(
            queue,
            {"distill": distill.run, "mine": mine_runner(deps.miner_address, credentials.service_token)},
            heartbeat_s=settings.trainer.trainer_heartbeat_s,
            metrics=WorkerMetrics(registry),
            on_finished=push,
        )
    scheduler = build_scheduler(settings, queue) if deps.run_scheduler else None
    servicer = TrainerServicer(queue, adapters)
    runtime = build_server(
        domain="trainer.spiral",
        host=settings.trainer.trainer_addr.host,
        port=settings.trainer.trainer_addr.port if port is None else port,
        service_names=[SERVICE_NAME],
        add_servicers=lambda server: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server),
        registry=registry,
        # FetchAdapter changes nothing, but the adapters are the platform's own: only its services and operators.
        protected=[f"/{SERVICE_NAME}/SubmitJob", f"/{SERVICE_NAME}/CancelJob", f"/{SERVICE_NAME}/FetchAdapter"],
        credentials=credentials,
    )
    return Trainer(runtime, queue, worker, scheduler)
