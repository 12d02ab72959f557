"""The spiral's clock: a distillation every night (02:00 UTC by default) and a mining run every 6 hours.

APScheduler in the trainer process enqueues the jobs; the queue refuses a second copy of a job already queued
or running, so a slow night or several trainer processes never stack jobs up.
"""

from __future__ import annotations

import logging
from datetime import UTC

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from spiral_common.config import ConfigError, Settings, env_name
from trainer_svc.jobs import JobQueue

log = logging.getLogger(__name__)


def distill_trigger(expression: str) -> CronTrigger | None:
    if not expression.strip():
        return None
    try:
        return CronTrigger.from_crontab(expression, timezone=UTC)
    except ValueError as exc:
        raise ConfigError(f"{env_name('distill_schedule')}={expression!r}: {exc}") from None


def build_scheduler(settings: Settings, queue: JobQueue) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone=UTC)

    async def enqueue(kind: str) -> None:
        try:
            job, created = await queue.submit(kind)
            log.info("scheduled job", extra={"kind": kind, "job_id": job.job_id, "created": created})
        except Exception:
            log.exception("scheduled job could not be enqueued", extra={"kind": kind})

    trigger = distill_trigger(settings.trainer.distill_schedule)
    if trigger is not None:
        # A night missed while the trainer was down runs once when it comes back, within an hour.
        scheduler.add_job(enqueue, trigger, args=["distill"], id="distill", coalesce=True, misfire_grace_time=3600)
    if settings.trainer.mine_interval_h > 0:
        scheduler.add_job(
            enqueue,
            IntervalTrigger(hours=settings.trainer.mine_interval_h, timezone=UTC),
            args=["mine"],
            id="mine",
            coalesce=True,
            misfire_grace_time=3600,
        )
    return scheduler
