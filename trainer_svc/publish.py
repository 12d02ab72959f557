"""What a finished job tells the rest of the platform: the canary heads (a new adapter) and the Pushgateway.

The reload goes through Envoy's internal listener to a router's AdminService (the same call as
`/admin/reload?target=canary`), with the admin token from SPIRAL_ADMIN_TOKEN. Job metrics are pushed (pushadd,
grouped by job kind) so the last success time survives a failed night: `SpiralNightlyLoRAMissed` reads it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

from spiral.head.v1 import head_pb2, head_pb2_grpc
from spiral.router.v1 import admin_pb2, admin_pb2_grpc
from spiral_common.errors import FailedPrecondition
from trainer_svc.jobs import Job

log = logging.getLogger(__name__)

PUSH_JOB = "spiral_trainer"
RELOAD_ATTEMPTS = 3


class AdminPublisher:
    """Reads the main heads' adapter and reloads the canary heads, through Envoy."""

    def __init__(self, address: str, admin_token: str) -> None:
        self.address = address
        self.metadata = (("authorization", f"Bearer {admin_token}"),)
        self._channel: grpc.aio.Channel | None = None

    def _stubs(self) -> tuple[admin_pb2_grpc.AdminServiceStub, head_pb2_grpc.HeadServiceStub]:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address)
        return admin_pb2_grpc.AdminServiceStub(self._channel), head_pb2_grpc.HeadServiceStub(self._channel)

    async def current_adapter(self) -> str:
        _, heads = self._stubs()
        info = await heads.GetHeadInfo(head_pb2.GetHeadInfoRequest(), metadata=self.metadata, timeout=10)
        return info.heads[0].adapter_version if info.heads else ""

    async def publish_canary(self, version: str) -> None:
        admin, _ = self._stubs()
        request = admin_pb2.ReloadAdapterRequest(version=version, target=admin_pb2.RELOAD_TARGET_CANARY)
        for attempt in range(1, RELOAD_ATTEMPTS + 1):
            try:
                await admin.ReloadAdapter(request, metadata=self.metadata, timeout=120)
                log.info("adapter sent to the canary heads", extra={"version": version})
                return
            except grpc.aio.AioRpcError as exc:
                retryable = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if not retryable or attempt == RELOAD_ATTEMPTS:
                    # The adapter stays registered: an operator can send it with /admin/reload?lora=<version>.
                    raise FailedPrecondition(
                        f"adapter {version} is registered but the canary reload failed: {exc.code().name}: "
                        f"{exc.details()}",
                        reason="CANARY_RELOAD_FAILED",
                        version=version,
                    ) from exc
                await asyncio.sleep(2.0 * attempt)  # back-off between attempts

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def push_job_metrics(gateway: str, job: Job, outcome: str, result: dict[str, Any]) -> None:
    """Pushes one finished job's numbers; a success also moves `spiral_trainer_last_success_timestamp_seconds`."""
    registry = CollectorRegistry()
    labels = ["kind"]

    def gauge(name: str, doc: str, value: float, extra: dict[str, str] | None = None) -> None:
        names = labels + sorted(extra or {})
        metric = Gauge(name, doc, names, registry=registry)
        metric.labels(job.kind, *(v for _, v in sorted((extra or {}).items()))).set(value)

    duration_s = (job.finished_ms - (job.started_ms or job.created_ms)) / 1000 if job.finished_ms else 0.0
    gauge("spiral_trainer_job_duration_seconds", "Wall time of the last finished job", duration_s)
    gauge("spiral_trainer_last_finish_timestamp_seconds", "When the last job ended", time.time(), {"outcome": outcome})
    if outcome == "succeeded":
        gauge("spiral_trainer_last_success_timestamp_seconds", "When a job of this kind last succeeded", time.time())
    if "final_loss" in result:
        gauge("spiral_trainer_final_loss", "Training loss at the last step of the last job", result["final_loss"])
    if "eval_score_new" in result:
        scores = Gauge("spiral_trainer_eval_score", "Held-out score of the last job's adapters", ["kind", "adapter"],
                       registry=registry)  # fmt: skip
        for which in ("new", "current"):
            scores.labels(job.kind, which).set(result.get(f"eval_score_{which}", 0.0))
    if calibration := result.get("council_calibration"):
        answered, prompts = calibration["answered"], calibration["prompts"]
        gauge("spiral_trainer_council_threshold", "The last adapter's calibrated council threshold (+Inf: never)",
              calibration["threshold"])  # fmt: skip
        gauge("spiral_trainer_council_coverage", "Share of held-out prompts its council answers at that threshold",
              answered / prompts if prompts else 0.0)  # fmt: skip
        gauge("spiral_trainer_council_precision", "Share of those answers that matched the teacher's",
              calibration["right"] / answered if answered else 0.0)  # fmt: skip
    if "cost_usd_micros" in result:
        gauge("spiral_trainer_job_cost_usd_micros", "What the last job cost, micro-dollars", result["cost_usd_micros"])
    pushadd_to_gateway(gateway, job=PUSH_JOB, grouping_key={"kind": job.kind}, registry=registry, timeout=10)
