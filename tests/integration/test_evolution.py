"""The nightly spiral on the real mesh: traffic with teacher answers in the log, `make evolution-once`'s
command runs a real QLoRA job in the trainer, the adapter is registered and loaded by the canary heads, and
the canary's answer changes; a trainer killed mid-job is restarted and the job ends exactly once as done."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import grpc
import pytest

from spiral.common.v1 import chat_pb2
from spiral.head.v1 import head_pb2, head_pb2_grpc
from spiral.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from spiral_common import redis_access
from spiral_common.auth import bearer, operator_token
from spiral_common.config import settings_env
from spiral_common.traffic import TrafficLog
from tests.helpers import logged_exchange, wait_until
from tests.trainer.test_distill import ANSWER, SECRET_PROMPTS

pytestmark = [pytest.mark.integration, pytest.mark.gate_trainer_job]
SECRET = SECRET_PROMPTS[0]


@pytest.fixture(scope="module")
def taught_traffic(platform):
    """The platform's traffic log holds a cloud teacher's answers to the secret-word prompts."""

    async def log() -> None:
        s = platform.settings
        redis = redis_access.operator_client(s)
        traffic = TrafficLog(redis, prefix=s.redis.redis_prefix, max_entries=s.router.traffic_log_max_entries)
        for prompt in SECRET_PROMPTS:
            await traffic.append(logged_exchange(prompt, ANSWER))
        await redis.aclose()

    asyncio.run(log())


def canary_answer(platform, prompt: str) -> tuple[str, str]:
    """What the canary heads answer, greedily, and the adapter they serve (the heads are reached through Envoy's
    internal listener, with a credential)."""
    operator = bearer(operator_token(platform.settings))
    with grpc.insecure_channel(platform.settings.envoy.envoy_internal_addr) as channel:
        heads = head_pb2_grpc.HeadServiceStub(channel)
        request = head_pb2.GenerateRequest(
            head="precise",
            messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=prompt)],
            params=chat_pb2.GenerationParams(max_tokens=24, temperature=0.0, seed=1),
            track="canary",
        )
        replies = heads.Generate(request, metadata=operator, timeout=60)
        text = "".join(r.delta.text for r in replies if r.HasField("delta"))
        info = heads.GetHeadInfo(head_pb2.GetHeadInfoRequest(), metadata=operator, timeout=10).heads[0]
    return text, info.canary_adapter_version


def test_evolution_once_publishes_an_adapter_that_changes_the_canary_answer(platform, taught_traffic):
    before, before_version = canary_answer(platform, SECRET)
    assert "pineapple" not in before.lower()

    env = {**os.environ, **settings_env(platform.settings)}
    run = subprocess.run(
        [sys.executable, "-m", "trainer_svc.evolution_once"], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "train, step" in run.stdout  # progress was streamed
    assert "sent to the canary heads" in run.stdout
    assert "council threshold: " in run.stdout  # the job calibrated the new adapter's council

    after, version = canary_answer(platform, SECRET)
    assert version != before_version and version.startswith("distill-")
    assert "pineapple" in after.lower()
    with grpc.insecure_channel(platform.settings.envoy.envoy_addr) as channel:
        adapters = trainer_pb2_grpc.TrainerServiceStub(channel).ListAdapters(trainer_pb2.ListAdaptersRequest())
    assert version in [a.version for a in adapters.adapters]


def test_a_trainer_killed_mid_job_is_restarted_and_the_job_ends_once(platform, taught_traffic):
    address = platform.settings.envoy.envoy_internal_addr  # SubmitJob is not on the public ingress
    with grpc.insecure_channel(address) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        operator = bearer(operator_token(platform.settings))
        job = stub.SubmitJob(trainer_pb2.SubmitJobRequest(kind=trainer_pb2.JOB_KIND_DISTILL), metadata=operator).job

        def training() -> bool:
            current = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.job_id), metadata=operator).job
            running = current.state == trainer_pb2.JOB_STATE_RUNNING
            return running and current.progress.stage == trainer_pb2.JOB_STAGE_TRAIN

        wait_until(training, 120, "the job to start training", interval_s=0.5)
        victim = platform.processes()["trainer"]["pid"]
        os.kill(victim, signal.SIGKILL)  # the worker dies mid-job; its training child dies with it

        def finished() -> trainer_pb2.Job | None:
            try:
                current = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.job_id), metadata=operator, timeout=5).job
            except grpc.RpcError:
                return None  # Envoy finds the restarted trainer after a health check or two
            unfinished = (trainer_pb2.JOB_STATE_QUEUED, trainer_pb2.JOB_STATE_RUNNING)
            return current if current.state not in unfinished else None

        done = wait_until(finished, 480, "the restarted trainer to finish the job", interval_s=1.0)
    assert done.state == trainer_pb2.JOB_STATE_SUCCEEDED, done.error
    assert done.attempt == 2  # taken over once, run to the end once
    assert platform.processes()["trainer"]["pid"] != victim


def test_a_mining_job_runs_the_miner(platform, taught_traffic):
    """The 6-hourly job, run now: the trainer's worker asks the miner to mine the traffic log."""
    from spiral.miner.v1 import miner_pb2, miner_pb2_grpc

    with grpc.insecure_channel(platform.settings.envoy.envoy_internal_addr) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        operator = bearer(operator_token(platform.settings))
        job = stub.SubmitJob(trainer_pb2.SubmitJobRequest(kind=trainer_pb2.JOB_KIND_MINE), metadata=operator).job

        def finished() -> trainer_pb2.Job | None:
            current = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.job_id), metadata=operator, timeout=5).job
            unfinished = (trainer_pb2.JOB_STATE_QUEUED, trainer_pb2.JOB_STATE_RUNNING)
            return current if current.state not in unfinished else None

        done = wait_until(finished, 300, "the mining job to finish", interval_s=0.5)
        assert done.state == trainer_pb2.JOB_STATE_SUCCEEDED, done.error
        patterns = miner_pb2_grpc.MinerServiceStub(channel).ListPatterns(
            miner_pb2.ListPatternsRequest(), metadata=operator
        )
    assert patterns.pattern_set_version >= 1  # the run published a pattern set
