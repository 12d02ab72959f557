"""The job worker: takes jobs off the queue one at a time, keeps their lease, and records how each ended.

While a job runs, a watchdog heartbeats it every SPIRAL_TRAINER_HEARTBEAT_S and checks for a cancel request;
a cancel (or a lease another worker took over) cancels the job's task, which kills its training process.
On SIGTERM the worker stops taking jobs and abandons the running one without acknowledging it: its message
stays pending, and the next worker (or this one, restarted) takes it over when the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from spiral_common.errors import FailedPrecondition, InvalidArgument, NotFound, SpiralError
from trainer_svc.distill import Deferred
from trainer_svc.jobs import STAGES, Claimed, Job, JobQueue

log = logging.getLogger(__name__)

JobRunner = Callable[[Job, Callable[..., Awaitable[None]]], Coroutine[Any, Any, dict[str, Any]]]
PERMANENT = (InvalidArgument, FailedPrecondition, NotFound)


class _Stop(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why  # "cancel", "lease_lost"


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Counter(
            "spiral_trainer_jobs", "Jobs that ended, by kind and outcome", ["kind", "outcome"], registry=registry
        )
        self.dead_letter = Gauge(
            "spiral_jobs_dead_letter", "Jobs in the dead-letter stream (failed every attempt)", registry=registry
        )
        self.queue_depth = Gauge("spiral_jobs_queued", "Jobs waiting for a worker or the budget", registry=registry)
        self.running = Gauge(
            "spiral_trainer_job_running", "1 while this worker runs a job", ["kind"], registry=registry
        )


class Worker:
    def __init__(
        self,
        queue: JobQueue,
        runners: dict[str, JobRunner],
        *,
        heartbeat_s: float,
        metrics: WorkerMetrics | None = None,
        on_finished: Callable[[Job, str, dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.queue = queue
        self.runners = runners
        self.heartbeat_s = heartbeat_s
        self.metrics = metrics
        self.on_finished = on_finished
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._refresh_gauges()
                claimed = await self.queue.claim(block_ms=int(min(self.heartbeat_s, 1.0) * 1000))
                if claimed is not None:
                    await self.run_one(claimed)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker loop error; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=self.heartbeat_s)

    async def _refresh_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.dead_letter.set(await self.queue.dead_letters())
            self.metrics.queue_depth.set(await self.queue.depth())

    async def run_one(self, claimed: Claimed) -> str:
        """Runs a claimed job to its end; returns the outcome (succeeded, failed, retried, cancelled, deferred,
        abandoned)."""
        job = claimed.job
        runner = self.runners.get(job.kind)
        if runner is None:
            await self.queue.fail(job, claimed.message_id, f"this worker runs no {job.kind!r} jobs", permanent=True)
            return "failed"
        started = time.monotonic()

        async def progress(**fields: Any) -> None:
            if "stage" in fields and fields["stage"] not in STAGES:
                fields.pop("stage")
            await self.queue.progress(job.job_id, **fields)

        task = asyncio.create_task(runner(job, progress))
        watchdog = asyncio.create_task(self._watch(claimed, task))
        stopping = asyncio.create_task(self._stopping.wait())
        if self.metrics is not None:
            self.metrics.running.labels(job.kind).set(1)
        outcome, result = "failed", {}
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():  # shutting down: leave the message pending for the next worker
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                log.warning("worker stopping; job abandoned to the next worker", extra={"job_id": job.job_id})
                outcome = "abandoned"
                return outcome
            try:
                result = task.result()
            except asyncio.CancelledError:
                why = watchdog.result() if watchdog.done() else "cancel"
                if why == "lease_lost":
                    log.warning("lease lost; another worker runs the job", extra={"job_id": job.job_id})
                    outcome = "abandoned"
                    return outcome
                outcome = "cancelled"
                await self.queue.cancelled(claimed, {"duration_ms": int((time.monotonic() - started) * 1000)})
                log.info("job cancelled", extra={"job_id": job.job_id})
                return outcome
            except Deferred as exc:
                outcome = "deferred"
                await self.queue.defer(claimed, exc.until, exc.reason)
                return outcome
            except PERMANENT as exc:
                outcome = "failed"
                await self.queue.fail(job, claimed.message_id, exc.message, permanent=True)
                return outcome
            except Exception as exc:
                error = exc.message if isinstance(exc, SpiralError) else f"{type(exc).__name__}: {exc}"
                log.exception("job attempt failed", extra={"job_id": job.job_id})
                await self.queue.fail(job, claimed.message_id, error, permanent=False)
                current = await self.queue.get(job.job_id)
                outcome = "failed" if current.final else "retried"
                return outcome
            outcome = "succeeded"
            await self.queue.succeed(claimed, result)
            return outcome
        finally:
            for helper in (watchdog, stopping):
                helper.cancel()
            if self.metrics is not None:
                self.metrics.running.labels(job.kind).set(0)
                if outcome != "abandoned":
                    self.metrics.jobs.labels(job.kind, outcome).inc()
            if self.on_finished is not None and outcome in ("succeeded", "failed", "cancelled"):
                try:
                    await self.on_finished(await self.queue.get(job.job_id), outcome, result)
                except Exception:
                    log.exception("after-job hook failed", extra={"job_id": job.job_id})

    async def _watch(self, claimed: Claimed, task: asyncio.Task) -> str:
        """Heartbeats the job; cancels its task on a cancel request or a lost lease, and says which."""
        interval = min(self.heartbeat_s, 1.0)
        last_beat = 0.0
        while True:
            await asyncio.sleep(interval)  # a heartbeat period, not a synchronisation
            if time.monotonic() - last_beat >= self.heartbeat_s:
                last_beat = time.monotonic()
                if not await self.queue.heartbeat(claimed):
                    task.cancel()
                    return "lease_lost"
            if await self.queue.cancel_requested(claimed.job.job_id):
                task.cancel()
                return "cancel"
