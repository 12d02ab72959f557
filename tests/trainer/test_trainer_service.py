"""TrainerService over real gRPC: submit, get, watch, cancel, list adapters, and clear errors for bad input.
The worker is off here, so jobs stay queued until a test moves them; the scheduler's triggers are checked
without waiting for 02:00."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest

from spiral.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from spiral_common.config import ConfigError, load_settings
from tests.helpers import TEST_CREDENTIALS, authorized_channel, reason_of
from trainer_svc.scheduler import build_scheduler, distill_trigger
from trainer_svc.server import TrainerDeps, create_trainer


class NoPublisher:
    async def current_adapter(self) -> str:
        return ""

    async def publish_canary(self, version: str) -> None:
        raise AssertionError("nothing is published here")


@pytest.fixture
async def trainer(redis_client, prefix, tmp_path, model_path, taught_adapter):
    settings = load_settings(
        {"SPIRAL_PROFILE": "quick_test", "SPIRAL_RUN_DIR": str(tmp_path), "SPIRAL_REDIS_PREFIX": prefix}
    )
    settings.adapters_path.mkdir(parents=True)
    (settings.adapters_path / "taught.gguf").write_bytes(taught_adapter[1].read_bytes())
    (settings.adapters_path / "junk.gguf").write_bytes(b"not a gguf")
    deps = TrainerDeps(
        redis=redis_client,
        publisher=NoPublisher(),
        model_path=model_path,
        run_worker=False,
        run_scheduler=False,
        credentials=TEST_CREDENTIALS,
    )
    app = create_trainer(settings, deps, port=0)
    await app.start()
    channel = authorized_channel(f"127.0.0.1:{app.runtime.port}")
    yield trainer_pb2_grpc.TrainerServiceStub(channel), app
    await channel.close()
    await app.stop()
    await app.runtime.server.stop(None)


async def test_submit_get_watch_and_cancel(trainer):
    stub, app = trainer
    submitted = (await stub.SubmitJob(trainer_pb2.SubmitJobRequest(kind=trainer_pb2.JOB_KIND_DISTILL))).job
    assert submitted.state == trainer_pb2.JOB_STATE_QUEUED and submitted.kind == trainer_pb2.JOB_KIND_DISTILL
    assert submitted.created_at.ToDatetime(tzinfo=UTC).year >= 2026
    again = (await stub.SubmitJob(trainer_pb2.SubmitJobRequest(kind=trainer_pb2.JOB_KIND_DISTILL))).job
    assert again.job_id == submitted.job_id  # the queued copy, not a second job

    got = (await stub.GetJob(trainer_pb2.GetJobRequest(job_id=submitted.job_id))).job
    assert got == submitted

    updates = []

    async def watch():
        async for update in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=submitted.job_id)):
            updates.append(update.job.state)

    watcher = asyncio.create_task(watch())
    cancelled = (await stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=submitted.job_id))).job
    assert cancelled.state == trainer_pb2.JOB_STATE_CANCELLED and cancelled.finished_at.seconds > 0
    await asyncio.wait_for(watcher, 10)  # the stream ends at the final state
    assert updates[-1] == trainer_pb2.JOB_STATE_CANCELLED


async def test_bad_requests_get_clear_errors(trainer):
    stub, _ = trainer
    cases = [
        (stub.SubmitJob(trainer_pb2.SubmitJobRequest()), grpc.StatusCode.INVALID_ARGUMENT, "BAD_JOB_KIND"),
        (
            stub.SubmitJob(trainer_pb2.SubmitJobRequest(kind=trainer_pb2.JOB_KIND_MINE, time_budget_s=10**6)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "BAD_TIME_BUDGET",
        ),
        (stub.GetJob(trainer_pb2.GetJobRequest(job_id="nope")), grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND"),
        (stub.CancelJob(trainer_pb2.CancelJobRequest(job_id="nope")), grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND"),
    ]
    for call, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert reason_of(caught.value)[:2] == (code, reason)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id="nope")):
            pass
    assert reason_of(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")


async def test_list_adapters_shows_the_registry(trainer, taught_adapter):
    stub, _ = trainer
    adapters = (await stub.ListAdapters(trainer_pb2.ListAdaptersRequest())).adapters
    assert [a.version for a in adapters] == ["taught"]  # the junk file is not listed
    (taught,) = adapters
    assert taught.job_id == "job-42" and taught.eval_score == pytest.approx(0.91)
    assert taught.size_bytes == taught_adapter[1].stat().st_size and len(taught.base_model_sha256) == 64
    calibration = taught.council_calibration  # what its job measured of its council
    assert (calibration.threshold, calibration.prompts, calibration.max_error) == (0.85, 150, 0.02)
    assert calibration.coverage == pytest.approx(90 / 150) and calibration.precision == pytest.approx(89 / 90)


async def test_the_scheduler_runs_distillation_nightly_and_mining_every_six_hours(redis_client, prefix, tmp_path):
    trigger = distill_trigger("0 2 * * *")
    after = datetime(2026, 11, 25, 21, 30, tzinfo=UTC)
    assert trigger.get_next_fire_time(None, after) == datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    with pytest.raises(ConfigError, match="SPIRAL_DISTILL_SCHEDULE"):
        distill_trigger("at two")

    from trainer_svc.jobs import JobQueue

    settings = load_settings({"SPIRAL_RUN_DIR": str(tmp_path), "SPIRAL_REDIS_PREFIX": prefix})
    queue = JobQueue(redis_client, prefix=prefix, consumer="s", lease_s=30, max_attempts=3)
    scheduler = build_scheduler(settings, queue)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"distill", "mine"}
    assert jobs["mine"].trigger.interval.total_seconds() == 6 * 3600
    # Firing twice (a slow night, or two trainers) leaves one queued job of the kind.
    enqueue = jobs["distill"].func
    await enqueue("distill")
    await enqueue("distill")
    queued = [j for j in await queue.list_recent() if j.kind == "distill"]
    assert len(queued) == 1 and queued[0].state == "queued"


@pytest.mark.parametrize("token", ["", "not-the-token"])
async def test_submit_and_cancel_need_a_token_and_change_nothing_without_one(trainer, token):
    _, app = trainer
    address = f"127.0.0.1:{app.runtime.port}"
    async with authorized_channel(address, token) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        for call in (
            stub.SubmitJob(trainer_pb2.SubmitJobRequest(kind=trainer_pb2.JOB_KIND_DISTILL)),
            stub.CancelJob(trainer_pb2.CancelJobRequest(job_id="any")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert reason_of(caught.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED, "BAD_CREDENTIALS")
        assert (await stub.ListAdapters(trainer_pb2.ListAdaptersRequest())).adapters  # reading needs nothing
    assert await app.queue.redis.xlen(app.queue.stream) == 0  # no job was submitted
    async with authorized_channel(address, TEST_CREDENTIALS.service_token) as channel:  # a service may
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        assert (await stub.SubmitJob(trainer_pb2.SubmitJobRequest(kind=trainer_pb2.JOB_KIND_MINE))).job.job_id
