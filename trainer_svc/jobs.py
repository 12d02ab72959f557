"""The durable job queue: training and mining jobs as messages on a Redis stream, read through a consumer group.

At-least-once, by construction of Redis streams:
- `<prefix>jobs` carries one message per attempt (field `job_id`); workers read it with XREADGROUP in the
  group `workers`, so a message is pending on exactly one worker until that worker acknowledges it.
- A worker heartbeats the job it runs by re-claiming its own pending message (XCLAIM ... JUSTID resets the
  message's idle time). A message idle longer than the lease belongs to a dead worker: any worker takes it
  over with XAUTOCLAIM and restarts the job.
- A job that failed for a transient reason is re-queued as a new message until it has used its attempts; then
  it is FAILED and copied, with its error, to the dead-letter stream `<prefix>jobs:dead`.
- A job the daily pool cannot pay for waits in `<prefix>jobs:deferred` (a sorted set by due time) and goes back
  on the stream at the UTC reset.

The job itself is a hash `<prefix>job:<id>`: its fields are the proto's, written by the worker that owns it;
state transitions that race with a caller (claim, cancel) are single Lua scripts. `<prefix>jobs:active:<kind>`
names the one job of a kind that is queued, waiting or running, so the scheduler never enqueues a second copy.
Redis runs with AOF (deploy/render.py), so a Redis restart loses no queued job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from spiral_common.errors import InvalidArgument, NotFound
from spiral_common.redis_values import as_text, text_fields

log = logging.getLogger(__name__)

KINDS = ("distill", "mine")
QUEUED, WAITING_BUDGET, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "waiting_budget",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
STAGES = ("", "dataset", "train", "export", "evaluate", "publish")
GROUP = "workers"

# Submit, unless a job of this kind is already queued, waiting or running. KEYS: active key, job hash (new),
# stream. ARGV: job id, kind, created_ms, time_budget_s, job-hash prefix.
_SUBMIT = """
local existing = redis.call('GET', KEYS[1])
if existing then
  local state = redis.call('HGET', ARGV[5] .. existing, 'state')
  if state == 'queued' or state == 'waiting_budget' or state == 'running' then
    return {0, existing}
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'job_id', ARGV[1], 'kind', ARGV[2], 'state', 'queued', 'created_ms', ARGV[3],
  'time_budget_s', ARGV[4], 'attempt', 0, 'error', '', 'stage', '', 'step', 0, 'total_steps', 0, 'loss', 0,
  'eta_ms', 0, 'result', '{}', 'cancel', 0, 'started_ms', 0, 'finished_ms', 0)
redis.call('XADD', KEYS[3], '*', 'job_id', ARGV[1])
return {1, ARGV[1]}
"""

# Start an attempt. KEYS: job hash. ARGV: now_ms. Returns the state the job was in ('' when unknown); the
# caller runs the job only when it was queued/waiting/running (a running job here was reclaimed).
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state == 'queued' or state == 'waiting_budget' or state == 'running' then
  if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 'cancel' end
  redis.call('HSET', KEYS[1], 'state', 'running', 'started_ms', ARGV[1], 'stage', '', 'step', 0,
    'total_steps', 0, 'loss', 0, 'eta_ms', 0, 'error', '')
  redis.call('HINCRBY', KEYS[1], 'attempt', 1)
end
return state
"""

# Cancel. KEYS: job hash, active key. ARGV: now_ms, job id. A job not yet running is cancelled here and now;
# a running one is flagged, and its worker stops it.
_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state == 'queued' or state == 'waiting_budget' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_ms', ARGV[1], 'cancel', 1)
  if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
  return 'cancelled'
end
if state == 'running' then redis.call('HSET', KEYS[1], 'cancel', 1) end
return state
"""

# Heartbeat: reset the idle time of this worker's message, unless another worker has taken it over.
# KEYS: stream. ARGV: group, consumer, message id.
_HEARTBEAT = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

# Finish. KEYS: job hash, active key. ARGV: state, now_ms, job id, error, result json.
_FINISH = """
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_ms', ARGV[2], 'error', ARGV[4], 'result', ARGV[5],
  'eta_ms', 0)
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""


@dataclass
class Job:
    """A job as its hash holds it; `result` is the job kind's own summary (see the proto's JobResult)."""

    job_id: str
    kind: str
    state: str
    created_ms: int
    time_budget_s: int = 0
    attempt: int = 0
    error: str = ""
    stage: str = ""
    step: int = 0
    total_steps: int = 0
    loss: float = 0.0
    eta_ms: int = 0
    started_ms: int = 0
    finished_ms: int = 0
    cancel_requested: bool = False
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @classmethod
    def from_hash(cls, raw: Any) -> Job:
        data = text_fields(raw)
        return cls(
            job_id=data["job_id"],
            kind=data["kind"],
            state=data["state"],
            created_ms=int(data.get("created_ms", 0)),
            time_budget_s=int(data.get("time_budget_s", 0)),
            attempt=int(data.get("attempt", 0)),
            error=data.get("error", ""),
            stage=data.get("stage", ""),
            step=int(data.get("step", 0)),
            total_steps=int(data.get("total_steps", 0)),
            loss=float(data.get("loss", 0.0)),
            eta_ms=int(data.get("eta_ms", 0)),
            started_ms=int(data.get("started_ms", 0)),
            finished_ms=int(data.get("finished_ms", 0)),
            cancel_requested=data.get("cancel", "0") == "1",
            result=json.loads(data.get("result") or "{}"),
        )


@dataclass(frozen=True)
class Claimed:
    """A job a worker now owns, and the stream message that carries this attempt."""

    job: Job
    message_id: str
    reclaimed: bool


def _now_ms() -> int:
    return int(time.time() * 1000)


class JobQueue:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        consumer: str,
        lease_s: float,
        max_attempts: int,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.consumer = consumer
        self.lease_ms = int(lease_s * 1000)
        self.max_attempts = max_attempts
        self.stream = f"{prefix}jobs"
        self.dead_stream = f"{prefix}jobs:dead"
        self.deferred = f"{prefix}jobs:deferred"
        self.events = f"{prefix}jobs:events"
        self._submit = redis.register_script(_SUBMIT)
        self._claim = redis.register_script(_CLAIM)
        self._cancel = redis.register_script(_CANCEL)
        self._finish = redis.register_script(_FINISH)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._group_ready = False

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _active_key(self, kind: str) -> str:
        return f"{self.prefix}jobs:active:{kind}"

    async def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # -- callers ---------------------------------------------------------------------------------------------

    async def submit(self, kind: str, *, time_budget_s: int = 0) -> tuple[Job, bool]:
        """Enqueue a job; returns it and True, or the already queued/running job of that kind and False."""
        if kind not in KINDS:
            raise InvalidArgument(f"job kind must be one of {', '.join(KINDS)}", reason="BAD_JOB_KIND", field="kind")
        if time_budget_s < 0:
            raise InvalidArgument("time_budget_s must be >= 0", reason="BAD_TIME_BUDGET", field="time_budget_s")
        await self.ensure_group()
        job_id = f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        created, existing = await self._submit(
            keys=[self._active_key(kind), self._job_key(job_id), self.stream],
            args=[job_id, kind, _now_ms(), time_budget_s, f"{self.prefix}job:"],
        )
        job = await self.get(as_text(existing))
        if created:
            log.info("job queued", extra={"job_id": job.job_id, "kind": kind})
            await self._notify(job.job_id)
        return job, bool(created)

    async def get(self, job_id: str) -> Job:
        raw = await self.redis.hgetall(self._job_key(job_id)) if job_id else {}
        if not raw:
            raise NotFound(f"no job {job_id!r}", reason="JOB_NOT_FOUND", field="job_id")
        return Job.from_hash(raw)

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        await self._cancel(keys=[self._job_key(job_id), self._active_key(job.kind)], args=[_now_ms(), job_id])
        await self._notify(job_id)
        return await self.get(job_id)

    async def list_recent(self, limit: int = 20) -> list[Job]:
        jobs = []
        async for key in self.redis.scan_iter(match=f"{self.prefix}job:*", count=500):
            raw = await self.redis.hgetall(key)
            if raw and "job_id" in text_fields(raw):
                jobs.append(Job.from_hash(raw))
        return sorted(jobs, key=lambda j: j.created_ms, reverse=True)[:limit]

    async def watch(self, job_id: str, *, poll_s: float = 1.0, keepalive_s: float = 15.0) -> AsyncIterator[Job]:
        """The job now, then after every change, until it is final. Change events come over pub/sub; the poll
        is the fallback for an event lost while reconnecting (pub/sub does not buffer). An unchanged job is
        sent again every `keepalive_s`, so that a quiet stretch (loading the model) does not look like an
        idle stream to a proxy (Envoy's stream_idle_timeout)."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.events)
        try:
            last: Job | None = None
            sent_at = 0.0
            while True:
                job = await self.get(job_id)
                if job != last or time.monotonic() - sent_at >= keepalive_s:
                    yield job
                    last, sent_at = job, time.monotonic()
                if job.final:
                    return
                deadline = time.monotonic() + poll_s
                while (left := deadline - time.monotonic()) > 0:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                    if message is not None and message["data"].decode() == job_id:
                        break
        finally:
            await pubsub.unsubscribe(self.events)
            await pubsub.aclose()

    async def dead_letters(self) -> int:
        return int(await self.redis.xlen(self.dead_stream))

    async def depth(self) -> int:
        """Messages not yet delivered to a worker, plus deferred jobs."""
        await self.ensure_group()
        groups = await self.redis.xinfo_groups(self.stream)
        lag = next((g.get("lag") or 0 for g in groups if g["name"] in (GROUP, GROUP.encode())), 0)
        return int(lag) + int(await self.redis.zcard(self.deferred))

    # -- workers ---------------------------------------------------------------------------------------------

    async def claim(self, *, block_ms: int) -> Claimed | None:
        """The next job for this worker: first one a dead worker left behind, else a new message."""
        await self.ensure_group()
        await self.release_due()
        _, reclaimed, _ = await self.redis.xautoclaim(
            self.stream, GROUP, self.consumer, min_idle_time=self.lease_ms, start_id="0-0", count=1
        )
        messages = [(reclaimed, True)] if reclaimed else []
        if not messages:
            batch: Any = await self.redis.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=1, block=block_ms)
            if batch:
                messages = [(batch[0][1], False)]
        for entries, was_reclaimed in messages:
            for message_id, fields in entries:
                claimed = await self._start(as_text(message_id), text_fields(fields), was_reclaimed)
                if claimed is not None:
                    return claimed
        return None

    async def _start(self, message_id: str, fields: dict[str, str], reclaimed: bool) -> Claimed | None:
        job_id = fields.get("job_id", "")
        key = self._job_key(job_id)
        if reclaimed:
            job = await self.get(job_id) if await self.redis.exists(key) else None
            if job is not None and job.state == RUNNING and job.attempt >= self.max_attempts:
                # Its worker died on every attempt: stop retrying a job that kills workers.
                error = f"its worker was lost on each of {job.attempt} attempts"
                await self.fail(job, message_id, error, permanent=False)
                return None
        state = as_text(await self._claim(keys=[key], args=[_now_ms()]))
        if state == "cancel":
            await self._finish_job(job_id, CANCELLED, "", {})
            await self.ack(message_id)
            return None
        if state not in (QUEUED, WAITING_BUDGET, RUNNING):
            await self.ack(message_id)  # gone or already final: a duplicate delivery
            return None
        job = await self.get(job_id)
        log.info(
            "job claimed",
            extra={"job_id": job_id, "kind": job.kind, "attempt": job.attempt, "reclaimed": reclaimed},
        )
        await self._notify(job_id)
        return Claimed(job, message_id, reclaimed)

    async def heartbeat(self, claimed: Claimed) -> bool:
        """Keeps the lease; False when this worker lost the message (another worker reclaimed it)."""
        owned = await self._heartbeat(keys=[self.stream], args=[GROUP, self.consumer, claimed.message_id])
        return bool(owned)

    async def cancel_requested(self, job_id: str) -> bool:
        return await self.redis.hget(self._job_key(job_id), "cancel") == b"1"

    async def progress(self, job_id: str, **fields: Any) -> None:
        await self.redis.hset(self._job_key(job_id), mapping={k: v for k, v in fields.items()})
        await self._notify(job_id)

    async def succeed(self, claimed: Claimed, result: dict[str, Any]) -> None:
        await self._finish_job(claimed.job.job_id, SUCCEEDED, "", result)
        await self.ack(claimed.message_id)

    async def cancelled(self, claimed: Claimed, result: dict[str, Any]) -> None:
        await self._finish_job(claimed.job.job_id, CANCELLED, "", result)
        await self.ack(claimed.message_id)

    async def fail(
        self, job: Job, message_id: str, error: str, *, permanent: bool, result: dict[str, Any] | None = None
    ) -> None:
        """A failed attempt. A transient failure is re-queued while attempts are left, then the job is FAILED and
        copied with its error to the dead-letter stream; a permanent one (bad input, too little data) is FAILED
        at once and is not a dead letter: retrying cannot help, and there is nothing for an operator to replay."""
        current = await self.get(job.job_id)
        if not permanent and current.attempt < self.max_attempts:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._job_key(job.job_id), mapping={"state": QUEUED, "error": error, "stage": ""})
                pipe.xadd(self.stream, {"job_id": job.job_id})
                pipe.xack(self.stream, GROUP, message_id)
                await pipe.execute()
            log.warning("job attempt failed; re-queued", extra={"job_id": job.job_id, "error": error})
            await self._notify(job.job_id)
            return
        if not permanent:
            await self.redis.xadd(
                self.dead_stream,
                {"job_id": job.job_id, "kind": job.kind, "attempts": current.attempt, "error": error},
            )
            log.error("job dead-lettered", extra={"job_id": job.job_id, "error": error})
        else:
            log.error("job failed", extra={"job_id": job.job_id, "error": error})
        await self._finish_job(job.job_id, FAILED, error, result or {})
        await self.ack(message_id)

    async def defer(self, claimed: Claimed, until: datetime, reason: str) -> None:
        """Park a job until `until` (the UTC reset): acknowledged now, back on the stream when due."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._job_key(claimed.job.job_id), mapping={"state": WAITING_BUDGET, "error": reason})
            pipe.hincrby(self._job_key(claimed.job.job_id), "attempt", -1)  # waiting is not a failed attempt
            pipe.zadd(self.deferred, {claimed.job.job_id: until.timestamp()})
            pipe.xack(self.stream, GROUP, claimed.message_id)
            await pipe.execute()
        log.info("job waits for the budget", extra={"job_id": claimed.job.job_id, "until": until.isoformat()})
        await self._notify(claimed.job.job_id)

    async def release_due(self, now: float | None = None) -> int:
        """Put deferred jobs whose time has come back on the stream."""
        due = await self.redis.zrangebyscore(self.deferred, "-inf", now if now is not None else time.time())
        released = 0
        for raw in due:
            job_id = as_text(raw)
            if await self.redis.zrem(self.deferred, job_id):  # exactly one worker moves each
                await self.redis.xadd(self.stream, {"job_id": job_id})
                released += 1
        return released

    async def ack(self, message_id: str) -> None:
        await self.redis.xack(self.stream, GROUP, message_id)

    async def _finish_job(self, job_id: str, state: str, error: str, result: dict[str, Any]) -> None:
        kind = as_text(await self.redis.hget(self._job_key(job_id), "kind"))
        await self._finish(
            keys=[self._job_key(job_id), self._active_key(kind)],
            args=[state, _now_ms(), job_id, error, json.dumps(result)],
        )
        await self._notify(job_id)

    async def _notify(self, job_id: str) -> None:
        await self.redis.publish(self.events, job_id)


async def wait_for(queue: JobQueue, job_id: str, timeout_s: float) -> Job:
    """The job once final (for callers that do not stream)."""
    async with asyncio.timeout(timeout_s):
        async for job in queue.watch(job_id):
            last = job
    return last  # watch ends on the final job
