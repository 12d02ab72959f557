"""The durable job queue and its worker, on a real Redis: at-least-once delivery, lease take-over, retries and
dead letters, cancellation, waiting for the budget, no duplicate jobs, and surviving a Redis restart.

The job bodies here are small coroutines: what is under test is the queue's bookkeeping. The distillation
itself runs in tests/trainer/test_distill.py and, end to end, in tests/integration/test_evolution.py."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from spiral_common.errors import FailedPrecondition
from tests.helpers import free_ports, wait_until_async
from trainer_svc.distill import Deferred
from trainer_svc.jobs import JobQueue, wait_for
from trainer_svc.worker import Worker


def make_queue(redis_client, prefix, consumer="w1", *, lease_s=30.0, max_attempts=3) -> JobQueue:
    return JobQueue(redis_client, prefix=prefix, consumer=consumer, lease_s=lease_s, max_attempts=max_attempts)


async def test_a_second_copy_of_a_queued_job_is_not_enqueued(redis_client, prefix):
    queue = make_queue(redis_client, prefix)
    first, created = await queue.submit("distill")
    again, created_again = await queue.submit("distill")
    assert created and not created_again and again.job_id == first.job_id
    other_kind, created_other = await queue.submit("mine")
    assert created_other and other_kind.job_id != first.job_id
    await queue.cancel(first.job_id)
    fresh, created_fresh = await queue.submit("distill")
    assert created_fresh and fresh.job_id != first.job_id


async def test_bad_submissions_are_refused(redis_client, prefix):
    from spiral_common.errors import InvalidArgument, NotFound

    queue = make_queue(redis_client, prefix)
    with pytest.raises(InvalidArgument):
        await queue.submit("paint")
    with pytest.raises(InvalidArgument):
        await queue.submit("distill", time_budget_s=-1)
    with pytest.raises(NotFound):
        await queue.get("no-such-job")


async def test_a_job_runs_once_and_its_progress_is_watched(redis_client, prefix):
    queue = make_queue(redis_client, prefix)
    runs = []

    async def body(job, progress):
        runs.append(job.job_id)
        await progress(stage="train", step=1, total_steps=2, loss=1.5)
        await progress(stage="train", step=2, total_steps=2, loss=0.5)
        return {"adapter_version": "v1", "final_loss": 0.5}

    worker = Worker(queue, {"distill": body}, heartbeat_s=0.2)
    job, _ = await queue.submit("distill")
    seen = []

    async def watch():
        async for snapshot in queue.watch(job.job_id, poll_s=5):
            seen.append((snapshot.state, snapshot.stage, snapshot.step))

    watcher = asyncio.create_task(watch())

    async def watching() -> bool:
        return bool(seen)

    # The watcher's first snapshot comes before the job runs (on a loaded box the task may start late).
    await wait_until_async(watching, 10, "the watcher's first snapshot")
    claimed = await queue.claim(block_ms=1000)
    assert await worker.run_one(claimed) == "succeeded"
    await asyncio.wait_for(watcher, 10)
    final = await queue.get(job.job_id)
    assert final.state == "succeeded" and final.attempt == 1 and final.result["adapter_version"] == "v1"
    assert runs == [job.job_id]
    assert seen[0][0] in ("queued", "running") and seen[-1][0] == "succeeded"
    assert ("running", "train", 2) in seen or any(s[1] == "train" for s in seen)
    assert await queue.claim(block_ms=100) is None  # acknowledged: nothing is delivered twice


async def test_a_job_whose_worker_died_is_taken_over_and_ends_once(redis_client, prefix):
    dead = make_queue(redis_client, prefix, "dead-worker", lease_s=0.5)
    job, _ = await dead.submit("distill")
    claimed = await dead.claim(block_ms=1000)
    assert claimed is not None and claimed.job.attempt == 1  # ... and this worker never heartbeats again

    alive = make_queue(redis_client, prefix, "live-worker", lease_s=0.5)
    ends = []

    async def body(job, progress):
        ends.append(job.attempt)
        return {}

    worker = Worker(alive, {"distill": body}, heartbeat_s=0.1)

    async def take_over():
        return await alive.claim(block_ms=100)

    taken = await wait_until_async(take_over, 10, "the live worker to take the job over")
    assert taken.reclaimed and taken.job.job_id == job.job_id
    assert await worker.run_one(taken) == "succeeded"
    assert ends == [2]
    assert (await alive.get(job.job_id)).state == "succeeded"
    # The dead worker's lease is gone: its heartbeat says so, and the job is not delivered again.
    assert not await dead.heartbeat(claimed)
    assert await alive.claim(block_ms=100) is None


async def test_a_heartbeating_job_is_not_taken_over(redis_client, prefix):
    owner = make_queue(redis_client, prefix, "owner", lease_s=0.6)
    other = make_queue(redis_client, prefix, "other", lease_s=0.6)
    release = asyncio.Event()

    async def body(job, progress):
        await release.wait()
        return {}

    worker = Worker(owner, {"distill": body}, heartbeat_s=0.1)
    await owner.submit("distill")
    run = asyncio.create_task(worker.run_one(await owner.claim(block_ms=1000)))
    for _ in range(8):  # well past the lease, while the owner heartbeats
        assert await other.claim(block_ms=200) is None
    release.set()
    assert await run == "succeeded"


async def test_transient_failures_are_retried_then_dead_lettered(redis_client, prefix):
    queue = make_queue(redis_client, prefix, max_attempts=2)

    async def body(job, progress):
        raise RuntimeError(f"disk full on attempt {job.attempt}")

    worker = Worker(queue, {"distill": body}, heartbeat_s=0.2)
    job, _ = await queue.submit("distill")
    assert await worker.run_one(await queue.claim(block_ms=1000)) == "retried"
    assert (await queue.get(job.job_id)).state == "queued"
    assert await worker.run_one(await queue.claim(block_ms=1000)) == "failed"
    final = await queue.get(job.job_id)
    assert final.state == "failed" and final.attempt == 2 and "attempt 2" in final.error
    assert await queue.dead_letters() == 1
    (entry,) = await redis_client.xrange(queue.dead_stream)
    assert entry[1][b"job_id"].decode() == job.job_id and b"disk full" in entry[1][b"error"]


async def test_a_permanent_failure_fails_at_once_without_a_dead_letter(redis_client, prefix):
    queue = make_queue(redis_client, prefix)

    async def body(job, progress):
        raise FailedPrecondition("the traffic log holds 3 distinct prompts", reason="DATASET_TOO_SMALL")

    worker = Worker(queue, {"distill": body}, heartbeat_s=0.2)
    job, _ = await queue.submit("distill")
    assert await worker.run_one(await queue.claim(block_ms=1000)) == "failed"
    final = await queue.get(job.job_id)
    assert final.state == "failed" and final.attempt == 1 and "3 distinct prompts" in final.error
    assert await queue.dead_letters() == 0
    assert (await queue.submit("distill"))[1]  # the kind is free again


async def test_cancelling_a_queued_job_and_a_running_one(redis_client, prefix):
    queue = make_queue(redis_client, prefix)
    queued, _ = await queue.submit("mine")
    assert (await queue.cancel(queued.job_id)).state == "cancelled"
    assert await queue.claim(block_ms=100) is None  # its message is skipped

    started, stopped = asyncio.Event(), asyncio.Event()

    async def body(job, progress):
        started.set()
        try:
            await asyncio.Event().wait()  # runs until cancelled
        finally:
            stopped.set()

    worker = Worker(queue, {"distill": body}, heartbeat_s=0.2)
    job, _ = await queue.submit("distill")
    run = asyncio.create_task(worker.run_one(await queue.claim(block_ms=1000)))
    await asyncio.wait_for(started.wait(), 5)
    await queue.cancel(job.job_id)
    assert await asyncio.wait_for(run, 5) == "cancelled"
    assert stopped.is_set()
    assert (await queue.get(job.job_id)).state == "cancelled"


async def test_a_job_the_pool_cannot_pay_for_waits_for_the_reset(redis_client, prefix):
    queue = make_queue(redis_client, prefix)
    reset = datetime.now(UTC) + timedelta(hours=3)
    calls = []

    async def body(job, progress):
        calls.append(job.attempt)
        if len(calls) == 1:
            raise Deferred(reset, "the daily pool is spent")
        return {}

    worker = Worker(queue, {"distill": body}, heartbeat_s=0.2)
    job, _ = await queue.submit("distill")
    assert await worker.run_one(await queue.claim(block_ms=1000)) == "deferred"
    waiting = await queue.get(job.job_id)
    assert waiting.state == "waiting_budget" and "spent" in waiting.error
    assert (await queue.submit("distill"))[0].job_id == job.job_id  # still the one job of its kind
    assert await queue.claim(block_ms=100) is None  # not before the reset
    assert await queue.release_due(now=reset.timestamp() + 1) == 1
    assert await worker.run_one(await queue.claim(block_ms=1000)) == "succeeded"
    assert calls == [1, 1]  # waiting did not use up an attempt


async def test_no_queued_job_is_lost_when_redis_restarts(tmp_path):
    """Redis as the platform runs it (AOF on): a job queued before a restart is there after it."""
    (port,) = free_ports(1)
    command = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
               "--dir", str(tmp_path), "--appendonly", "yes", "--save", ""]  # fmt: skip

    async def start():
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        client = aioredis.from_url(f"redis://127.0.0.1:{port}/0")

        async def up():
            try:
                return await client.ping()
            except aioredis.ConnectionError:
                return False

        await wait_until_async(up, 10, "redis-server to answer PING")
        return server, client

    server, client = await start()
    job, _ = await make_queue(client, "spiral:").submit("distill")
    await client.aclose()
    server.terminate()  # SIGTERM: Redis shuts down as `make down` stops it
    server.wait(10)
    server, client = await start()
    try:
        queue = make_queue(client, "spiral:")
        claimed = await queue.claim(block_ms=1000)
        assert claimed is not None and claimed.job.job_id == job.job_id
        assert await queue.get(job.job_id)
    finally:
        await client.aclose()
        server.terminate()
        server.wait(10)


async def test_wait_for_returns_the_final_job(redis_client, prefix):
    queue = make_queue(redis_client, prefix)
    job, _ = await queue.submit("mine")
    waiter = asyncio.create_task(wait_for(queue, job.job_id, 10))
    await queue.cancel(job.job_id)
    assert (await waiter).state == "cancelled"
